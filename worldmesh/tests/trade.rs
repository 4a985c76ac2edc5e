//! Trades in play, over real QUIC, gRPC, Redis and PostgreSQL, with the example game's
//! starter kits (100 gold, 3 gems): two players in one zone trade; two players either side of
//! a zone border trade (the trade hosted by one zone, the other party's steps and news
//! relayed by the other); hostile steps are refused with nothing moved. SQL is audited after
//! each: every item held once, gold conserved.

mod common;

use std::time::Duration;

use common::*;
use worldmesh_client::Session;
use worldmesh_persistence::Store;
use worldmesh_protocol::{
    InventoryView, ServerMessage, TradeNews, TradeOutcome, TradeRefusal, TradeRequest, TradeView,
};

const WAIT: Duration = CONTROL_WAIT;

async fn view(s: &mut Session, pick: impl Fn(&TradeView) -> bool) -> TradeView {
    next_control(s, |m| match m {
        ServerMessage::Trade(TradeNews::View(v)) if pick(&v) => Some(v),
        _ => None,
    })
    .await
}

async fn done(s: &mut Session) -> TradeOutcome {
    next_control(s, |m| match m {
        ServerMessage::Trade(TradeNews::Done { outcome, .. }) => Some(outcome),
        _ => None,
    })
    .await
}

async fn refused(s: &mut Session) -> TradeRefusal {
    next_control(s, |m| match m {
        ServerMessage::Trade(TradeNews::Refused { why, .. }) => Some(why),
        _ => None,
    })
    .await
}

/// Every item in SQL held by exactly one character and the sum of their gold.
async fn audit(store: &Store, who: &[u64]) -> (Vec<(u64, u64)>, u64) {
    let ledger = store.ledger();
    let (mut items, mut gold) = (Vec::new(), 0);
    for &w in who {
        let inv = ledger.inventory(w).await.unwrap().unwrap();
        gold += inv.gold;
        items.extend(inv.items.iter().map(|i| (i.id.0, w)));
    }
    items.sort_unstable();
    (items, gold)
}

/// Both sides offer, both accept the last revision; returns the outcome each was told.
async fn trade(
    a: &mut Session,
    b: &mut Session,
    a_gives: (Vec<u64>, u64),
    b_gives: (Vec<u64>, u64),
) -> (TradeOutcome, TradeOutcome) {
    let with = b.welcome.entity_id.0;
    a.trade(TradeRequest::Open { with }).await.unwrap();
    let opened = view(a, |v| v.revision == 1).await;
    let id = opened.trade;
    view(b, |v| v.trade == id).await;
    a.trade(TradeRequest::Offer {
        trade: id,
        items: a_gives.0,
        gold: a_gives.1,
    })
    .await
    .unwrap();
    view(b, |v| v.revision == 2).await;
    b.trade(TradeRequest::Offer {
        trade: id,
        items: b_gives.0,
        gold: b_gives.1,
    })
    .await
    .unwrap();
    let last = view(a, |v| v.revision == 3).await;
    assert_eq!(last.theirs.items.len(), 1, "b's offer shown to a: {last:?}");
    a.trade(TradeRequest::Accept {
        trade: id,
        revision: 3,
    })
    .await
    .unwrap();
    view(b, |v| v.they_accepted).await;
    b.trade(TradeRequest::Accept {
        trade: id,
        revision: 3,
    })
    .await
    .unwrap();
    (done(a).await, done(b).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_trade_in_one_zone_and_across_a_border_and_hostile_steps_move_nothing() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let mut config = small_world(persistence.clone());
    config.zone.game = worldmesh::games::by_name("arena").unwrap();
    // Spawn within trading range of each other.
    config.coordinator.geometry.spawn_spread = 2.0;
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let store = Store::connect(&worldmesh_persistence::Config {
        run_flusher: false,
        ..persistence.clone()
    })
    .await
    .unwrap();
    let endpoint = endpoint();
    let mut ann = Session::login(&endpoint, cluster.gateway_addr, "trade_ann")
        .await
        .unwrap();
    let mut bob = Session::login(&endpoint, cluster.gateway_addr, "trade_bob")
        .await
        .unwrap();
    let ids = [ann.welcome.entity_id.0, bob.welcome.entity_id.0];
    // The starter kits arrive.
    let kit = |v: &InventoryView| v.gold == 100 && v.items.len() == 3;
    let ann_kit = next_inventory(&mut ann, kit).await;
    let bob_kit = next_inventory(&mut bob, kit).await;
    let before = audit(&store, &ids).await;
    assert_eq!(before.0.len(), 6);
    assert_eq!(before.1, 200);

    // One zone: ann gives a gem and 30 gold for one of bob's gems.
    let (a, b) = trade(
        &mut ann,
        &mut bob,
        (vec![ann_kit.items[0].id], 30),
        (vec![bob_kit.items[0].id], 0),
    )
    .await;
    assert_eq!((a, b), (TradeOutcome::Committed, TradeOutcome::Committed));
    let ann_now = next_inventory(&mut ann, |v| v.gold == 70).await;
    assert!(ann_now.items.iter().any(|i| i.id == bob_kit.items[0].id));
    let bob_now = next_inventory(&mut bob, |v| v.gold == 130).await;
    assert!(bob_now.items.iter().any(|i| i.id == ann_kit.items[0].id));
    let after = audit(&store, &ids).await;
    assert_eq!(after.1, 200, "gold conserved");
    assert_eq!(after.0.len(), 6, "every item once");

    // Hostile steps: nothing moves.
    ann.trade(TradeRequest::Open { with: ids[0] })
        .await
        .unwrap();
    assert_eq!(refused(&mut ann).await, TradeRefusal::WithSelf);
    ann.trade(TradeRequest::Open { with: ids[1] })
        .await
        .unwrap();
    let v = view(&mut ann, |v| v.revision == 1).await;
    ann.trade(TradeRequest::Offer {
        trade: v.trade,
        items: vec![bob_now.items[0].id],
        gold: 0,
    })
    .await
    .unwrap();
    assert_eq!(refused(&mut ann).await, TradeRefusal::NotHeld, "bob's item");
    ann.trade(TradeRequest::Offer {
        trade: v.trade,
        items: vec![],
        gold: 71,
    })
    .await
    .unwrap();
    assert_eq!(refused(&mut ann).await, TradeRefusal::NotEnoughGold);
    ann.trade(TradeRequest::Accept {
        trade: v.trade,
        revision: 7,
    })
    .await
    .unwrap();
    assert_eq!(refused(&mut ann).await, TradeRefusal::StaleRevision);
    ann.trade(TradeRequest::Offer {
        trade: v.trade,
        items: (0..17).collect(),
        gold: 0,
    })
    .await
    .unwrap();
    assert_eq!(refused(&mut ann).await, TradeRefusal::NotHeld, "17 items");
    bob.trade(TradeRequest::Cancel { trade: v.trade })
        .await
        .unwrap();
    assert_eq!(done(&mut ann).await, TradeOutcome::Cancelled);
    assert_eq!(audit(&store, &ids).await, after, "nothing moved");

    // Across the border (x = 200): bob crosses into the east zone and stops just beyond;
    // ann walks up to the border on her side.
    let (west, _) = owner(&cluster.coordinator_url, ids[0]).await;
    let mut seq_b = 0;
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
    let mut seq_a = 0;
    walk_until(&mut ann, &mut seq_a, 0.0, |x| x > 199.0).await;
    stand_still(&mut ann, &mut seq_a).await;
    assert_eq!(owner(&cluster.coordinator_url, ids[0]).await.0, west);
    let (a, b) = trade(
        &mut ann,
        &mut bob,
        (vec![ann_now.items[0].id], 5),
        (vec![bob_now.items[0].id], 0),
    )
    .await;
    assert_eq!((a, b), (TradeOutcome::Committed, TradeOutcome::Committed));
    next_inventory(&mut ann, |v| v.gold == 65).await;
    next_inventory(&mut bob, |v| v.gold == 135).await;
    let last = audit(&store, &ids).await;
    assert_eq!(last.1, 200, "gold conserved");
    assert_eq!(last.0.len(), 6, "every item once");

    ann.bye().await.unwrap();
    bob.bye().await.unwrap();
    store.close().await;
    cluster.stop().await;
    backend.cleanup().await;
}
