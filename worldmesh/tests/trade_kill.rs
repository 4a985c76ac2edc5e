//! Trades under SIGKILL, against the real binaries on real Redis and PostgreSQL: pairs of
//! trading bots (the arena's starter kits) trade across a zone border while the test kills a
//! zone, persistence or the coordinator every few seconds and starts it again, 24 kills in
//! all. Then SQL is audited: every item exists exactly once (three per starter kit given),
//! the traders' gold is exactly what their kits gave (conserved), and every trade a player
//! was told committed is committed in the ledger (none lost; none applied twice, or gold and
//! items would not add up).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::procs::{Core, zone_with};
use common::*;
use worldmesh_economy::{ChangeId, Outcome, TradeId};
use worldmesh_persistence::Store;

const PAIRS: usize = 12;
const KILLS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_hold_under_sigkills_of_zones_persistence_and_the_coordinator() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    // The default world's two zones meet at x = 1,000; everyone spawns within 8 m of it.
    let mut core = Core::start_with(
        &persistence,
        2,
        &["--spawn", "1000,1000", "--spawn-spread", "8"],
        &["--game", "arena"],
    )
    .await;
    let gport = common::procs::free_udp_port();
    let _gateway = core.gateway("gateway-0", gport, &[]).await;
    let stats = Arc::new(worldmesh_load_test::Stats::default());
    let bots = tokio::spawn(worldmesh_load_test::run_with(
        bot_config(
            gport,
            PAIRS * 2,
            "tk",
            worldmesh_load_test::bot::Behaviour::Trade,
            105,
        ),
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(8)).await;
    for k in 0..KILLS {
        let victim = match k % 4 {
            0 => {
                core.zones[0].signal("-KILL");
                "zone-0"
            }
            1 => {
                core.persistence.signal("-KILL");
                "persistence"
            }
            2 => {
                core.zones[1].signal("-KILL");
                "zone-1"
            }
            _ => {
                core.coordinator.signal("-KILL");
                "coordinator"
            }
        };
        eprintln!("kill {k}: SIGKILL {victim}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        match k % 4 {
            0 | 2 => {
                let i = k % 4 / 2;
                core.zones[i] = zone_with(
                    i,
                    &core.coordinator_url,
                    &core.persistence_url,
                    &core.secret,
                    &["--game", "arena"],
                );
            }
            1 => core.restart_persistence(&[]),
            _ => core.restart_coordinator(),
        }
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
    let report = bots.await.unwrap().expect("the bots ran");
    eprintln!("{}", report.table());

    // The audit, from SQL (a view of the ledger without a flusher of its own).
    let store = Store::connect(&worldmesh_persistence::Config {
        run_flusher: false,
        ..persistence.clone()
    })
    .await
    .unwrap();
    let ledger = store.ledger();
    let traders = stats.trade.traders();
    assert!(
        traders.len() >= PAIRS,
        "most bots traded: {}",
        traders.len()
    );
    let (mut kits, mut gold, mut items) = (0u64, 0u64, Vec::new());
    for &t in &traders {
        let kit = ChangeId::once(t.into(), worldmesh_arena::STARTER_KIT).unwrap();
        if ledger.outcome(kit.0).await.unwrap() == Some(Outcome::Committed) {
            kits += 1;
        }
        if let Some(inv) = ledger.inventory(t).await.unwrap() {
            gold += inv.gold;
            items.extend(inv.items.iter().map(|i| i.id));
        }
    }
    let distinct: HashSet<_> = items.iter().collect();
    assert_eq!(distinct.len(), items.len(), "no item held twice");
    assert_eq!(
        items.len() as u64,
        3 * kits,
        "every item exists exactly once"
    );
    assert_eq!(gold, 100 * kits, "gold conserved");
    let told = stats.trade.committed_trades();
    for id in &told {
        assert_eq!(
            ledger.outcome(TradeId(*id).0).await.unwrap(),
            Some(Outcome::Committed),
            "trade {id} was told committed"
        );
    }
    eprintln!(
        "{KILLS} kills; {} traders, {kits} kits; {} trades committed, aborted {:?}",
        traders.len(),
        told.len(),
        report.trades_aborted
    );
    assert!(
        told.len() >= 20,
        "trades went on between the kills: {}",
        told.len()
    );
    store.close().await;
    drop(core);
    backend.cleanup().await;
}
