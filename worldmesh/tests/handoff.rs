//! Seamless handoff over the real stack: one QUIC connection, one continuous snapshot stream,
//! while the character crosses between zone servers through the coordinator (gRPC), with
//! authority epochs in SQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use worldmesh_protocol::ids::EntityId;

async fn cross_and_come_back(persistence: worldmesh_persistence::Config) {
    let cluster = worldmesh::cluster::Cluster::start(small_world(persistence))
        .await
        .expect("cluster starts");
    let endpoint = endpoint();
    let mut s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "traveller")
        .await
        .expect("login");
    let me = s.welcome.entity_id;
    assert!(s.welcome.x < 200.0);
    let (west, epoch0) = owner(&cluster.coordinator_url, me.into()).await;
    assert_ne!(west, 0, "the west zone holds the character");

    let mut seq = 0;
    // East, well past the border (hysteresis is 5 m).
    walk_until(&mut s, &mut seq, 0.0, |x| x > 225.0).await;
    let (east, epoch1) = owner(&cluster.coordinator_url, me.into()).await;
    assert_ne!(east, west, "the east zone took the character over");
    assert!(
        epoch1 > epoch0,
        "the handoff raised the epoch: {epoch0} -> {epoch1}"
    );

    // The player still steers it: back west across the border.
    walk_until(&mut s, &mut seq, std::f32::consts::PI, |x| x < 175.0).await;
    let (back, epoch2) = owner(&cluster.coordinator_url, me.into()).await;
    assert_eq!(back, west, "handed back to the west zone");
    assert!(epoch2 > epoch1);

    // Logout saves it where it stands, by whoever holds it now.
    let end = walk_until(&mut s, &mut seq, 0.0, |_| true).await;
    s.bye().await.unwrap();
    let again = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "traveller")
        .await
        .expect("login again");
    assert!(
        (again.welcome.x - end).abs() < 1.0,
        "came back at x={}, left at x={end}",
        again.welcome.x
    );
    again.bye().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_crosses_zones_and_back_on_one_connection() {
    let (backend, persistence) = Backend::tiered().await;
    cross_and_come_back(persistence).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_on_embedded_storage() {
    let (backend, persistence) = Backend::embedded();
    cross_and_come_back(persistence).await;
    backend.cleanup().await;
}

/// The coordinator restarts mid-game: zones keep ticking (the player keeps getting
/// snapshots), re-sync from what they hold, and handoffs work again from the authority rows
/// in SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_stops_nothing() {
    let (backend, persistence) = Backend::tiered().await;
    let mut cluster = worldmesh::cluster::Cluster::start(small_world(persistence))
        .await
        .expect("cluster starts");
    let endpoint = endpoint();
    let mut s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "survivor")
        .await
        .expect("login");
    let me = s.welcome.entity_id;
    let (west, epoch0) = owner(&cluster.coordinator_url, me.into()).await;
    let mut seq = 0;
    // Walk while the coordinator is down for a second: snapshots must keep coming.
    let restart = cluster.restart_coordinator(Duration::from_secs(1));
    let walk = walk_until(&mut s, &mut seq, std::f32::consts::PI, {
        let start = Instant::now();
        move |_| start.elapsed() > Duration::from_millis(1500)
    });
    let (restarted, _) = tokio::join!(restart, walk);
    restarted.expect("coordinator restarts");
    // The restarted coordinator resumed the authority row from SQL.
    let (still, epoch_still) = owner(&cluster.coordinator_url, me.into()).await;
    assert_eq!((still, epoch_still), (west, epoch0));
    // And handoffs work again.
    walk_until(&mut s, &mut seq, 0.0, |x| x > 225.0).await;
    let (east, epoch1) = owner(&cluster.coordinator_url, me.into()).await;
    assert_ne!(east, west);
    assert!(epoch1 > epoch0);
    s.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}

/// Reads snapshots for up to `within`, until one shows entity `other`.
async fn sees(s: &mut worldmesh_client::Session, other: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_millis(100), s.recv_snapshot()).await
            && v.newest
            && v.entities.iter().any(|e| e.id == EntityId(other))
        {
            return true;
        }
    }
    false
}

/// Border visibility: two players in different zones, 40-50 m apart across the border, see
/// each other (each zone streams its border characters to the other as read-only copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_see_across_a_zone_border() {
    let (backend, persistence) = Backend::embedded();
    let cluster = worldmesh::cluster::Cluster::start(small_world(persistence))
        .await
        .expect("cluster starts");
    let endpoint = endpoint();
    let mut west = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "westerner")
        .await
        .unwrap();
    let mut east = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "easterner")
        .await
        .unwrap();
    let (w_id, e_id) = (west.welcome.entity_id, east.welcome.entity_id);
    let (mut ws, mut es) = (0, 0);
    walk_until(&mut west, &mut ws, std::f32::consts::PI, |x| x < 180.0).await;
    walk_until(&mut east, &mut es, 0.0, |x| x > 220.0).await;
    // Stop both (a standing input) and check who owns whom.
    walk_until(&mut west, &mut ws, 0.0, |_| true).await;
    let (wz, _) = owner(&cluster.coordinator_url, w_id.into()).await;
    let (ez, _) = owner(&cluster.coordinator_url, e_id.into()).await;
    assert_ne!(wz, ez, "the two players are in different zones");
    assert!(
        sees(&mut west, e_id.into(), Duration::from_secs(2)).await,
        "the west player sees the east one across the border"
    );
    assert!(
        sees(&mut east, w_id.into(), Duration::from_secs(2)).await,
        "the east player sees the west one across the border"
    );
    west.bye().await.unwrap();
    east.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}

/// Two gateways in front of the zones: players on either are handed between zones, and keep
/// their one connection to their own gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_work_for_players_on_either_gateway() {
    let (backend, persistence) = Backend::embedded();
    let mut config = small_world(persistence);
    config.gateways = 2;
    let cluster = worldmesh::cluster::Cluster::start(config)
        .await
        .expect("cluster starts");
    let endpoint = endpoint();
    for (i, gateway) in cluster.gateway_addrs.iter().enumerate() {
        let mut s = worldmesh_client::Session::login(&endpoint, *gateway, &format!("via{i}"))
            .await
            .expect("login");
        let me = s.welcome.entity_id;
        let mut seq = 0;
        walk_until(&mut s, &mut seq, std::f32::consts::PI, |x| x < 185.0).await;
        let (west, e0) = owner(&cluster.coordinator_url, me.into()).await;
        walk_until(&mut s, &mut seq, 0.0, |x| x > 225.0).await;
        let (east, e1) = owner(&cluster.coordinator_url, me.into()).await;
        assert_ne!(west, east, "player on gateway {i} was handed over");
        assert!(e1 > e0);
        // Still steerable through its own gateway after the handoff.
        walk_until(&mut s, &mut seq, 0.0, |x| x > 235.0).await;
        s.bye().await.unwrap();
    }
    cluster.stop().await;
    backend.cleanup().await;
}
