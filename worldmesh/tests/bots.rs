//! The load-test bots against a real cluster over a bad network: 5 % loss each way, 100 ms
//! latency, 20 ms jitter. Nobody disconnects, snapshots keep coming (minus the loss), and the
//! bots report their prediction correction error and snapshot jitter.

mod common;

use std::time::Duration;

use common::{Backend, start_cluster};
use worldmesh_client::conditioner::LinkConditions;
use worldmesh_load_test::bot::Behaviour;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_play_through_loss_latency_and_jitter() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(
        worldmesh_persistence::Config {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..persistence
        },
        2,
    )
    .await;
    let report = worldmesh_load_test::run(
        worldmesh_load_test::Config {
            gateways: cluster.gateway_addrs.clone(),
            bots: 30,
            ramp_per_s: 30.0,
            duration: Some(Duration::from_secs(10)),
            name_prefix: format!("lossy{}-", worldmesh_testkit::unique_suffix()),
            behaviour: Behaviour::Mixed,
            status_every: None,
            link: LinkConditions {
                loss: 0.05,
                latency: Duration::from_millis(100),
                jitter: Duration::from_millis(20),
            },
            ..Default::default()
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    println!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.bots_connected, 30, "{report:?}");
    assert_eq!(report.disconnects, 0, "{report:?}");
    // 5 % of snapshots lost on the way in.
    assert!(report.snapshots_per_bot_per_s > 16.0, "{report:?}");
    // RTT carries 2 × 100-120 ms of added latency.
    assert!(report.rtt_ms.p50 > 200.0, "{report:?}");
    // The bots predicted and reconciled (every moving bot has a correction to report).
    assert!(report.correction_error_m.max > 0.0, "{report:?}");
    assert!(report.snapshot_jitter_ms.p99 > 0.0, "{report:?}");
    cluster.stop().await;
    backend.cleanup().await;
}
