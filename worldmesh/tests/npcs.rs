//! The world's NPCs over a real cluster (coordinator, zones, gRPC, embedded storage): placed by
//! the coordinator, `--npcs N` meaning N in the whole world, handed between zones as they
//! wander across the border, and audited like characters — none lost, none doubled. The same
//! rules under loss, crashes and restarts are the deterministic simulation's
//! (`zone-server/tests/simulation.rs`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

const NPCS: u64 = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worlds_npcs_are_placed_once_and_walk_across_the_border() {
    let (backend, persistence) = Backend::embedded();
    // Two zones, the border at x = 200 of a 400 m world.
    let mut config = small_world(persistence);
    config.coordinator.npcs = NPCS;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();

    // Every second each zone publishes what it holds at the same tick: a round of audits.
    let mut rounds = 0;
    let mut last_tick = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handed = 0;
    while rounds < 8 || handed == 0 {
        assert!(
            Instant::now() < deadline,
            "{rounds} rounds, {handed} handoffs in a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let audits: Vec<_> = cluster
            .zone_stats
            .iter()
            .map(|z| z.audit.lock().unwrap().clone())
            .collect();
        let tick = audits[0].tick;
        if tick == 0 || tick == last_tick || audits.iter().any(|a| a.tick != tick) {
            continue;
        }
        last_tick = tick;
        rounds += 1;
        // Each NPC simulated by exactly one zone, or frozen mid-handoff (simulated by the
        // other, or frozen at both ends for the tick the decision takes).
        let mut simulated: BTreeMap<u64, usize> = BTreeMap::new();
        let mut present = std::collections::BTreeSet::new();
        for a in &audits {
            for id in &a.npcs.active {
                *simulated.entry(id.0).or_default() += 1;
                present.insert(id.0);
            }
            present.extend(a.npcs.frozen.iter().chain(&a.npcs_waiting).map(|id| id.0));
        }
        assert!(
            simulated.values().all(|&n| n == 1),
            "an NPC simulated twice at tick {tick}: {simulated:?}"
        );
        assert_eq!(
            present.len() as u64,
            NPCS,
            "the world has {NPCS} NPCs, at tick {tick}: {present:?}"
        );
        assert!(
            present
                .iter()
                .all(|id| worldmesh_protocol::EntityId(*id).is_npc()),
            "only NPC ids"
        );
        handed = cluster
            .zone_stats
            .iter()
            .map(|z| z.handoffs_in.load(Ordering::Relaxed))
            .sum::<u64>();
    }
    // Both zones hold some: spawn points are spread over the whole world.
    for z in &cluster.zone_stats {
        let a = z.audit.lock().unwrap().clone();
        assert!(a.npcs.active.len() > 5, "a zone holds too few: {a:?}");
        assert!(a.characters.active.is_empty(), "NPCs are not characters");
    }
    cluster.stop().await;
    backend.cleanup().await;
}
