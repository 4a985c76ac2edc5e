//! A hostile crowd against a real gateway process: 200 good bots play while 500 hostile
//! clients on loopback send random bytes, oversized frames, input floods, handshake spam,
//! half-open connections and wrong versions. The good bots must not notice (every one connects
//! and none disconnects, and they keep playing: p99 RTT under a second), the gateway's memory
//! stays bounded, and every hostile is cut off with a reason the gateway counts in its metrics.
//!
//! The RTT with hostiles against the same cluster without them (measured first in the same
//! run) is printed, not asserted: the hostiles run in this process, on the same two cores as
//! the gateway, zones and bots, so the ratio measures the machine's contention as much as the
//! gateway (BENCHMARKS.md records it).

mod common;

use std::time::Duration;

use common::procs::{Core, free_udp_port, metric, rss_kib_of};
use common::*;
use worldmesh_load_test::hostile::{self, Attack};
use worldmesh_testkit as testing;

const GOOD_BOTS: usize = 200;
const HOSTILES: usize = 500;
const PHASE: Duration = Duration::from_secs(20);

fn fleet(gateway: std::net::SocketAddr, prefix: String) -> worldmesh_load_test::Config {
    worldmesh_load_test::Config {
        gateways: vec![gateway],
        bots: GOOD_BOTS,
        ramp_per_s: 100.0,
        duration: Some(PHASE),
        name_prefix: prefix,
        chat_every_s: 0.0,
        status_every: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_bots_play_through_a_hostile_crowd() {
    let (backend, persistence) = Backend::tiered().await;
    let core = Core::start(&persistence, 2, &[]).await;
    let gport = free_udp_port();
    let gateway = core.gateway("gateway", gport, &[]).await;
    let gw: std::net::SocketAddr = ([127, 0, 0, 1], gport).into();
    let suffix = testing::unique_suffix();

    // Phase A: the good bots alone (the baseline of the same run).
    let rss_before = gateway.rss_kib();
    let calm = worldmesh_load_test::run(
        fleet(gw, format!("calm{suffix}-")),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let rss_calm = gateway.rss_kib();

    // Phase B: the same number of good bots, with the hostile crowd.
    let stop = tokio_util::sync::CancellationToken::new();
    let crowd = tokio::spawn(hostile::run(gw, HOSTILES, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sampler_stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let pid = gateway.child.id();
        let stop = sampler_stop.clone();
        tokio::spawn(async move {
            let mut max = 0u64;
            while !stop.is_cancelled() {
                let rss = rss_kib_of(pid);
                max = max.max(rss);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            max
        })
    };
    let stormy = worldmesh_load_test::run(
        fleet(gw, format!("storm{suffix}-")),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    stop.cancel();
    let crowd = crowd.await.unwrap();
    sampler_stop.cancel();
    let rss_max = sampler.await.unwrap();
    let (_, metrics) = gateway.admin_get("/metrics").await.expect("metrics");

    println!(
        "{}",
        serde_json::json!({
            "calm": {"connected": calm.bots_connected, "disconnects": calm.disconnects, "rtt_ms": calm.rtt_ms},
            "stormy": {"connected": stormy.bots_connected, "disconnects": stormy.disconnects, "rtt_ms": stormy.rtt_ms},
            "gateway_rss_kib": {"start": rss_before, "after_calm": rss_calm, "max_stormy": rss_max},
            "hostiles": crowd,
        })
    );

    // The good bots did not notice.
    assert_eq!(
        stormy.bots_connected, GOOD_BOTS as u64,
        "every good bot connected: {stormy:?}"
    );
    assert_eq!(
        stormy.disconnects, 0,
        "no good bot disconnected: {stormy:?}"
    );
    let (calm_p99, stormy_p99) = (calm.rtt_ms.p99, stormy.rtt_ms.p99);
    println!(
        "p99 RTT {stormy_p99} ms with hostiles vs {calm_p99} ms without ({:.2}x)",
        stormy_p99 / calm_p99
    );
    assert!(
        stormy_p99 < 1000.0,
        "the good bots kept playing: p99 RTT {stormy_p99} ms with hostiles vs {calm_p99} ms without"
    );
    // Bounded memory: the crowd costs the gateway tens of MiB, not a growing queue.
    assert!(
        rss_max < rss_calm + 256 * 1024,
        "gateway RSS grew from {rss_calm} KiB to {rss_max} KiB"
    );

    // Every hostile was cut off, each attack with the reason it deserves. (A handshake the
    // crowd's own packets lost on a saturated loopback is reported, not a cut-off failure;
    // it must stay rare.)
    assert_eq!(crowd.not_cut_off(), 0, "{crowd:?}");
    assert!(
        crowd.total("handshake_timeout") * 100 <= crowd.all_attempts(),
        "{crowd:?}"
    );
    for attack in hostile::ATTACKS {
        assert!(
            crowd.attempts(attack) > 0,
            "{attack:?} never ran: {crowd:?}"
        );
    }
    // A stateless reset is the gateway cutting off a connection it already closed (the close
    // was lost); a handshake timeout never reached it.
    let all = |attack: Attack, outcome: &str| {
        assert_eq!(
            crowd.count(attack, outcome)
                + crowd.count(attack, "stateless_reset")
                + crowd.count(attack, "handshake_timeout"),
            crowd.attempts(attack),
            "{attack:?} should end in {outcome}: {crowd:?}"
        );
    };
    all(Attack::Oversized, "FrameTooLarge");
    all(Attack::WrongAlpn, "alpn_refused");
    all(Attack::HalfOpen, "Timeout");
    all(Attack::InputFlood, "RateLimited");
    all(Attack::WrongVersion, "UnsupportedVersion");
    // And the gateway counted them.
    let kicks = |reason: &str| {
        metric(
            &metrics,
            &format!("worldmesh_gateway_kicks_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(kicks("FrameTooLarge") >= crowd.count(Attack::Oversized, "FrameTooLarge") as f64);
    assert!(kicks("RateLimited") >= crowd.count(Attack::InputFlood, "RateLimited") as f64);
    assert!(kicks("Timeout") >= crowd.count(Attack::HalfOpen, "Timeout") as f64);
    assert!(
        metric(
            &metrics,
            "worldmesh_gateway_handshake_failures_total{reason=\"alpn\"}"
        ) >= crowd.count(Attack::WrongAlpn, "alpn_refused") as f64
    );
    drop(gateway);
    backend.cleanup().await;
}
