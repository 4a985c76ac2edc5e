//! The whole path, end to end, over real QUIC, real gRPC and real storage: bots log in, walk,
//! see themselves and each other at the tick rate, log out, and come back where they left.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_walk_and_come_back_on_redis_and_postgres() {
    let (backend, persistence) = Backend::tiered().await;
    let cluster = start_cluster(persistence, 2).await;
    walk_and_reconnect(cluster.gateway_addr, "walker", 10).await;
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_walk_and_come_back_on_embedded_storage() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(persistence, 2).await;
    walk_and_reconnect(cluster.gateway_addr, "walker", 10).await;
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_survive_a_whole_cluster_restart() {
    let (backend, persistence) = Backend::tiered().await;
    let cluster = start_cluster(persistence.clone(), 2).await;
    let endpoint = endpoint();
    let mut s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "restarter")
        .await
        .unwrap();
    let w = walk(&mut s, 1.0, 1.0).await;
    let end = w.last_self.unwrap();
    // No Bye: the cluster stops under the player, which must still be saved.
    cluster.stop().await;
    drop(s);
    let cluster = start_cluster(persistence, 2).await;
    let again = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "restarter")
        .await
        .unwrap();
    assert!(
        distance((again.welcome.x, again.welcome.y), (end.x, end.y)) < 0.03,
        "came back at ({}, {}), left at ({}, {})",
        again.welcome.x,
        again.welcome.y,
        end.x,
        end.y
    );
    again.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_in_front_of_the_same_zones() {
    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 2;
    config.gateways = 2;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    assert_eq!(cluster.gateway_addrs.len(), 2);
    let endpoint = endpoint();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let gw = cluster.gateway_addrs[i % 2];
        sessions.push(
            worldmesh_client::Session::login(&endpoint, gw, &format!("twogw{i}"))
                .await
                .unwrap(),
        );
    }
    let spawns: Vec<(worldmesh_protocol::EntityId, (f32, f32))> = sessions
        .iter()
        .map(|s| (s.welcome.entity_id, (s.welcome.x, s.welcome.y)))
        .collect();
    let walks = futures_join(sessions.iter_mut().map(|s| walk(s, 0.0, 2.0))).await;
    for (i, w) in walks.iter().enumerate() {
        let rate = w.snapshots as f64 / w.seconds;
        assert!(
            (16.0..=24.0).contains(&rate),
            "bot {i} on gateway {}: {rate:.1} snapshots/s",
            i % 2
        );
        // Neighbours are seen whichever gateway they came through.
        for (id, at) in &spawns {
            if *id != spawns[i].0 && distance(spawns[i].1, *at) < 80.0 {
                assert!(w.others_seen.contains(id), "bot {i} never saw {id}");
            }
        }
    }
    for s in sessions {
        s.bye().await.unwrap();
    }
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_refuse_links_without_the_cluster_secret() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(persistence, 1).await;
    // A gateway that does not know the secret: its players cannot be placed in any zone.
    let rogue = worldmesh_gateway::Config {
        name: "rogue".into(),
        coordinator_url: cluster.coordinator_url.clone(),
        persistence_url: cluster.persistence_url.clone(),
        cluster_secret: Some("wrong".into()),
        allow_guests: true,
        ..Default::default()
    };
    let socket = worldmesh_gateway::bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let rogue_addr = socket.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let rogue_task = tokio::spawn(worldmesh_gateway::run(socket, rogue, stop.clone()));
    let endpoint = endpoint();
    match worldmesh_client::Session::login(&endpoint, rogue_addr, "intruder").await {
        Err(worldmesh_client::ClientError::Kicked { code, .. }) => {
            assert_eq!(code, worldmesh_protocol::ErrorCode::Unavailable);
        }
        Err(e) => panic!("expected a typed kick, got {e}"),
        Ok(_) => panic!("a gateway without the secret placed a player in a zone"),
    }
    // The real gateway still works.
    worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "legit")
        .await
        .unwrap()
        .bye()
        .await
        .unwrap();
    stop.cancel();
    let _ = rogue_task.await;
    cluster.stop().await;
    backend.cleanup().await;
}

/// One character, two gateways: the newer login wins and the older session is told why,
/// instead of silently losing its character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_through_another_gateway_takes_the_character_over() {
    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 1;
    config.gateways = 2;
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let endpoint = endpoint();
    let mut first = worldmesh_client::Session::login(&endpoint, cluster.gateway_addrs[0], "twice")
        .await
        .unwrap();
    let second = worldmesh_client::Session::login(&endpoint, cluster.gateway_addrs[1], "twice")
        .await
        .expect("the newer login gets the character");
    assert_eq!(second.welcome.entity_id, first.welcome.entity_id);
    let kicked = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match first.next_control().await {
                Some(worldmesh_protocol::ServerMessage::Kick(k)) => return Some(k.code),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("the older session hears about it");
    assert_eq!(
        kicked,
        Some(worldmesh_protocol::ErrorCode::LoggedInElsewhere)
    );
    second.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}
