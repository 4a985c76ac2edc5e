//! Inventories in play, over real QUIC, gRPC, Redis and PostgreSQL: a zone claims a player's
//! inventory when the character comes into play and shows it to the client; a handoff to
//! another zone claims it again at the new epoch (the client is shown what the ledger holds),
//! and from then on the zone it left can no longer change it.

mod common;

use std::time::Duration;

use common::*;
use worldmesh_client::Session;
use worldmesh_economy::{AbortReason, Change, ChangeId, Item, ItemId, ItemKind, Outcome};
use worldmesh_protocol::{InventoryView, ItemView, ServerMessage};

/// The next inventory the client is shown, within `wait`.
async fn next_inventory(s: &mut Session, wait: Duration) -> InventoryView {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.next_control()).await {
            Ok(Some(ServerMessage::Inventory(v))) => return v,
            Ok(Some(ServerMessage::Kick(k))) => panic!("kicked: {k:?}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the control stream ended"),
            Err(_) => panic!("no inventory shown within {wait:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_claims_the_inventory_again_and_fences_the_zone_left_behind() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let cluster = worldmesh::cluster::Cluster::start(small_world(persistence.clone()))
        .await
        .unwrap();
    // The test's own view of the ledger (no flusher: the cluster's persistence runs one).
    let store = worldmesh_persistence::Store::connect(&worldmesh_persistence::Config {
        run_flusher: false,
        ..persistence.clone()
    })
    .await
    .unwrap();
    let ledger = store.ledger();
    let endpoint = endpoint();
    let mut s = Session::login(&endpoint, cluster.gateway_addr, "inv_ann")
        .await
        .unwrap();
    let me = s.welcome.entity_id;

    // In play on the west zone: claimed at its epoch, shown (empty) to the client.
    let first = next_inventory(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        first,
        InventoryView {
            gold: 0,
            items: vec![]
        }
    );
    let (west, epoch) = owner(&cluster.coordinator_url, me.0).await;
    let claimed = ledger.inventory(me.0).await.unwrap().unwrap();
    assert_eq!(
        claimed.epoch, epoch,
        "claimed at the epoch the coordinator granted"
    );

    // Loot, as the west zone would record it (its claim in force).
    let ids = ledger.reserve_ids(10).await.unwrap();
    let loot = [
        Change::Gold(40),
        Change::Grant(Item {
            id: ItemId(ids),
            kind: ItemKind(3),
            count: 2,
            version: 1,
        }),
    ];
    let got = ledger
        .change(ChangeId(ids + 1), me.0, epoch, &loot)
        .await
        .unwrap();
    assert_eq!(got, Outcome::Committed);

    // Across the border: the east zone claims it at the new epoch and shows what the
    // ledger holds.
    let mut seq = 0;
    walk_until(&mut s, &mut seq, 0.0, |x| x > 215.0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (east, new_epoch) = loop {
        let (z, e) = owner(&cluster.coordinator_url, me.0).await;
        if z != west {
            break (z, e);
        }
        assert!(tokio::time::Instant::now() < deadline, "never handed off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(new_epoch > epoch);
    let shown = next_inventory(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        shown,
        InventoryView {
            gold: 40,
            items: vec![ItemView {
                id: ids,
                kind: 3,
                count: 2
            }],
        },
        "east ({east}) shows what the ledger holds"
    );
    assert_eq!(
        ledger.inventory(me.0).await.unwrap().unwrap().epoch,
        new_epoch
    );

    // The zone left behind is a zombie for this inventory now.
    let late = ledger
        .change(ChangeId(ids + 2), me.0, epoch, &[Change::Gold(1_000)])
        .await
        .unwrap();
    assert_eq!(late, Outcome::Aborted(AbortReason::Fenced));
    assert_eq!(ledger.inventory(me.0).await.unwrap().unwrap().gold, 40);

    s.bye().await.unwrap();
    store.close().await;
    cluster.stop().await;
    backend.cleanup().await;
}
