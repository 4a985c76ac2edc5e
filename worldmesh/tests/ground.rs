//! Items on the ground, over real QUIC, gRPC, Redis and PostgreSQL, with the example game's
//! starter kits: a player drops a gem at a zone border; players on both sides see it (one
//! zone holds it, the other shows a ghost); two of them, one per zone, reach for it at once
//! and exactly one gets it; it vanishes for everyone; hostile requests are refused with
//! nothing moved; a dropped item is still there after the whole cluster restarts (a new zone
//! reads the ledger's ground in its cells). SQL is audited: every item held once.
//!
//! With real processes: the zone holding a dropped item is SIGKILLed; the zone that takes its
//! cells over reads the item from the ledger, the player (relocated there) sees it again and
//! picks it up.

mod common;

use std::time::Duration;

use common::*;
use worldmesh_client::Session;
use worldmesh_persistence::Store;
use worldmesh_protocol::{
    ComponentKind, EntityId, GroundItemView, Input, InventoryView, ItemRefusalReason, ItemRequest,
    ServerMessage,
};

const WAIT: Duration = CONTROL_WAIT;

/// One cluster at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Stands still and reads snapshots until `until` holds for the newest view.
async fn watch(
    s: &mut Session,
    seq: &mut u32,
    what: &str,
    until: impl Fn(&Session, &worldmesh_client::View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
                *seq += 1;
                s.send_input(Input { seq: *seq, ack_tick: s.ack_tick(), heading: 0.0, speed: 0.0, actions: 0 }).unwrap();
            }
            v = s.recv_snapshot() => {
                let v = v.expect("snapshot");
                if v.newest && until(s, &v) {
                    return;
                }
            }
        }
    }
}

fn sees(v: &worldmesh_client::View, entity: EntityId) -> bool {
    v.entities.iter().any(|e| e.id == entity)
}

async fn refused(s: &mut Session) -> ItemRefusalReason {
    next_control(s, |m| match m {
        ServerMessage::ItemRefused(r) => Some(r.why),
        _ => None,
    })
    .await
}

/// A pick-up's end for this player: the item in its inventory (true) or refused (false).
async fn picked(s: &mut Session, item: u64) -> bool {
    next_control(s, |m| match m {
        ServerMessage::Inventory(v) if v.items.iter().any(|i| i.id == item) => Some(true),
        ServerMessage::ItemRefused(r) => {
            assert_eq!(
                r.why,
                ItemRefusalReason::Gone,
                "the loser is told it is gone"
            );
            Some(false)
        }
        _ => None,
    })
    .await
}

/// Every item in SQL: (item, holder) for the characters `who`, and the ground's.
async fn audit(store: &Store, who: &[u64]) -> Vec<(u64, u64)> {
    let ledger = store.ledger();
    let mut items = Vec::new();
    for &w in who {
        let inv = ledger.inventory(w).await.unwrap().unwrap();
        items.extend(inv.items.iter().map(|i| (i.id.0, w)));
    }
    let ground = ledger
        .ground_items([f32::MIN, f32::MIN, f32::MAX, f32::MAX])
        .await
        .unwrap();
    items.extend(ground.iter().map(|(i, _)| (i.id.0, 0)));
    items.sort_unstable();
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_item_is_seen_across_a_border_picked_up_once_and_outlives_a_restart() {
    let _serial = serial().await;
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let mut config = small_world(persistence.clone());
    config.zone.game = worldmesh::games::by_name("arena").unwrap();
    config.coordinator.geometry.spawn_spread = 2.0;
    let cluster = worldmesh::cluster::Cluster::start(config.clone())
        .await
        .unwrap();
    let store = Store::connect(&worldmesh_persistence::Config {
        run_flusher: false,
        ..persistence.clone()
    })
    .await
    .unwrap();
    let endpoint = endpoint();
    let mut ann = Session::login(&endpoint, cluster.gateway_addr, "ground_ann")
        .await
        .unwrap();
    let mut bob = Session::login(&endpoint, cluster.gateway_addr, "ground_bob")
        .await
        .unwrap();
    let mut cat = Session::login(&endpoint, cluster.gateway_addr, "ground_cat")
        .await
        .unwrap();
    let ids = [
        ann.welcome.entity_id.0,
        bob.welcome.entity_id.0,
        cat.welcome.entity_id.0,
    ];
    let kit = |v: &InventoryView| v.gold == 100 && v.items.len() == 3;
    let ann_kit = next_inventory(&mut ann, kit).await;
    let bob_kit = next_inventory(&mut bob, kit).await;
    next_inventory(&mut cat, kit).await;
    let before = audit(&store, &ids).await;
    assert_eq!(before.len(), 9);

    // The border runs at x = 200. Bob crosses into the east zone and comes back to just
    // beyond it (still the east zone's: a character is handed back 5 m inside); ann walks up
    // to the border, cat a little behind her, both in the west zone.
    let (west, _) = owner(&cluster.coordinator_url, ids[0]).await;
    let (mut seq_a, mut seq_b, mut seq_c) = (0, 0, 0);
    walk_until(&mut bob, &mut seq_b, 0.0, |x| x > 206.0).await;
    stand_still(&mut bob, &mut seq_b).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while owner(&cluster.coordinator_url, ids[1]).await.0 == west {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never handed off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    walk_until(&mut bob, &mut seq_b, std::f32::consts::PI, |x| x < 203.5).await;
    stand_still(&mut bob, &mut seq_b).await;
    walk_until(&mut ann, &mut seq_a, 0.0, |x| x > 199.0).await;
    stand_still(&mut ann, &mut seq_a).await;
    walk_until(&mut cat, &mut seq_c, 0.0, |x| x > 196.5).await;
    stand_still(&mut cat, &mut seq_c).await;
    assert_ne!(owner(&cluster.coordinator_url, ids[1]).await.0, west);
    assert_eq!(owner(&cluster.coordinator_url, ids[0]).await.0, west);
    assert_eq!(owner(&cluster.coordinator_url, ids[2]).await.0, west);

    // Ann drops a gem at her feet; everyone sees it, with what it is.
    let gem = ann_kit.items[0];
    let on_ground = EntityId::item(gem.id).unwrap();
    ann.item(ItemRequest::Drop { item: gem.id }).await.unwrap();
    next_inventory(&mut ann, |v| v.items.len() == 2).await;
    for (s, seq) in [
        (&mut ann, &mut seq_a),
        (&mut bob, &mut seq_b),
        (&mut cat, &mut seq_c),
    ] {
        watch(s, seq, "the gem shows", |s, v| {
            sees(v, on_ground)
                && s.fields(on_ground)
                    .and_then(|f| f.get::<GroundItemView>(ComponentKind::GROUND_ITEM))
                    .and_then(Result::ok)
                    .is_some_and(|g| g.kind == gem.kind && g.count == gem.count)
        })
        .await;
    }

    // Hostile requests: nothing moves.
    cat.item(ItemRequest::Drop {
        item: bob_kit.items[0].id,
    })
    .await
    .unwrap();
    assert_eq!(refused(&mut cat).await, ItemRefusalReason::NotHeld);
    cat.item(ItemRequest::PickUp { item: 1 << 40 })
        .await
        .unwrap();
    assert_eq!(refused(&mut cat).await, ItemRefusalReason::TooFar);

    // Bob (east zone, through its ghost) and cat (west zone) reach for it at once.
    let (b, c) = tokio::join!(
        bob.item(ItemRequest::PickUp { item: gem.id }),
        cat.item(ItemRequest::PickUp { item: gem.id })
    );
    b.unwrap();
    c.unwrap();
    let (bob_got, cat_got) = tokio::join!(picked(&mut bob, gem.id), picked(&mut cat, gem.id));
    assert!(
        bob_got != cat_got,
        "exactly one got it (bob {bob_got}, cat {cat_got})"
    );
    let winner = if bob_got { ids[1] } else { ids[2] };
    for (s, seq) in [
        (&mut ann, &mut seq_a),
        (&mut bob, &mut seq_b),
        (&mut cat, &mut seq_c),
    ] {
        watch(s, seq, "the gem goes", |_, v| !sees(v, on_ground)).await;
    }
    let after = audit(&store, &ids).await;
    assert_eq!(after.len(), 9, "every item once: {after:?}");
    assert!(after.contains(&(gem.id, winner)));

    // The winner drops it again; the cluster stops and starts anew from the same database:
    // a new zone reads the ground in its cells, and a player sees it lying there.
    let winner_s = if bob_got { &mut bob } else { &mut cat };
    winner_s
        .item(ItemRequest::Drop { item: gem.id })
        .await
        .unwrap();
    next_inventory(winner_s, |v| v.items.len() == 3).await;
    let lying = audit(&store, &ids).await;
    assert!(lying.contains(&(gem.id, 0)), "on the ground: {lying:?}");
    for s in [ann, bob, cat] {
        s.bye().await.unwrap();
    }
    cluster.stop().await;
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let mut ann = Session::login(&endpoint, cluster.gateway_addr, "ground_ann")
        .await
        .unwrap();
    watch(
        &mut ann,
        &mut seq_a,
        "the gem lies there after a restart",
        |_, v| sees(v, on_ground),
    )
    .await;
    assert_eq!(audit(&store, &ids).await, lying, "nothing moved");
    ann.bye().await.unwrap();
    store.close().await;
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_taking_a_killed_zones_cells_shows_its_items_and_they_are_picked_up_there() {
    use worldmesh_protocol::grpc::coordinator::{
        GetWorldRequest, LocateZoneRequest, coordinator_client::CoordinatorClient,
    };
    let _serial = serial().await;
    let (backend, persistence) = Backend::tiered().await;
    let core = common::procs::Core::start_with(
        &persistence,
        2,
        &["--spawn", "500,1000", "--spawn-spread", "0.5"],
        &["--game", "arena"],
    )
    .await;
    let gport = common::procs::free_udp_port();
    let _gateway = core.gateway("gateway-0", gport, &[]).await;
    let store = Store::connect(&worldmesh_persistence::Config {
        run_flusher: false,
        ..persistence.clone()
    })
    .await
    .unwrap();
    let name = format!("gk{}", worldmesh_testkit::unique_suffix());
    let mut a =
        worldmesh_load_test::bot::login(&endpoint(), ([127, 0, 0, 1], gport).into(), &name, true)
            .await
            .unwrap();
    let me = a.welcome.entity_id.0;
    let kit = next_inventory(&mut a, |v| v.items.len() == 3).await;
    let gem = kit.items[0];
    let on_ground = EntityId::item(gem.id).unwrap();
    let mut seq = 0;
    a.item(ItemRequest::Drop { item: gem.id }).await.unwrap();
    next_inventory(&mut a, |v| v.items.len() == 2).await;
    watch(&mut a, &mut seq, "the gem shows", |_, v| sees(v, on_ground)).await;

    // The zone holding the player and the gem dies; the other takes its cells.
    let mut c = CoordinatorClient::connect(core.coordinator_url.clone())
        .await
        .unwrap();
    let holder = c
        .locate_zone(LocateZoneRequest {
            x: 500.0,
            y: 1000.0,
        })
        .await
        .unwrap()
        .into_inner()
        .zone
        .unwrap();
    core.zones
        .iter()
        .find(|p| p.name == holder.name)
        .unwrap()
        .signal("-KILL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let map = c.get_world(GetWorldRequest {}).await.unwrap().into_inner();
        if map.zones.iter().all(|z| z.zone_id != holder.zone_id) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never failed over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (survivor, _) = owner(&core.coordinator_url, me).await;
    assert!(survivor != 0 && survivor != holder.zone_id);
    watch(
        &mut a,
        &mut seq,
        "the gem shows again after failover",
        |_, v| sees(v, on_ground) && v.entities.iter().any(|e| e.id.0 == me),
    )
    .await;

    // Picked up from the survivor: into the inventory, off the ground, once.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        a.item(ItemRequest::PickUp { item: gem.id }).await.unwrap();
        let got = next_control(&mut a, |m| match m {
            ServerMessage::Inventory(v) if v.items.iter().any(|i| i.id == gem.id) => Some(None),
            ServerMessage::ItemRefused(r) => Some(Some(r.why)),
            _ => None,
        })
        .await;
        match got {
            None => break,
            // Right after the failover the route or the inventory may not be ready yet.
            Some(ItemRefusalReason::NotReady) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(why) => panic!("pick-up refused: {why:?}"),
        }
    }
    watch(&mut a, &mut seq, "the gem goes", |_, v| !sees(v, on_ground)).await;
    let held = audit(&store, &[me]).await;
    assert_eq!(held.len(), 3, "the kit, once: {held:?}");
    assert!(held.contains(&(gem.id, me)));
    drop(a);
    store.close().await;
    drop(core);
    backend.cleanup().await;
}
