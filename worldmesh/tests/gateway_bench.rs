//! Gateway figures for BENCHMARKS.md (ignored by default; run with
//! `cargo test -p worldmesh --test gateway_bench -- --ignored --nocapture`):
//! the gateway as its own process in front of two zone processes, N bots for 20 s; its CPU per
//! relayed datagram and relayed datagrams/s (in + out, from its /metrics), beside a bare quinn
//! datagram echo with the same connection count, rate and mean payload measured in the same
//! run; then accepted handshakes per second (with address validation) from 64 spammers.

mod common;

use std::time::{Duration, Instant};

use common::procs::{Core, free_udp_port, metric};
use common::*;
use worldmesh_testkit as testing;

const RUN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures, asserts nothing about speed"]
async fn gateway_relay_and_handshake_figures() {
    let bots: Vec<usize> = std::env::var("WORLDMESH_BENCH_BOTS")
        .unwrap_or_else(|_| "200,500".into())
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let (backend, persistence) = Backend::tiered().await;
    let core = Core::start(&persistence, 2, &[]).await;
    let gport = free_udp_port();
    let gateway = core.gateway("gateway", gport, &[]).await;
    let gw: std::net::SocketAddr = ([127, 0, 0, 1], gport).into();
    let datagrams = |m: &str| {
        metric(m, "worldmesh_gateway_datagrams_in_total")
            + metric(m, "worldmesh_gateway_datagrams_out_total")
    };
    for n in bots {
        let stats = std::sync::Arc::new(worldmesh_load_test::Stats::default());
        let fleet = tokio::spawn(worldmesh_load_test::run_with(
            worldmesh_load_test::Config {
                gateways: vec![gw],
                bots: n,
                ramp_per_s: 200.0,
                duration: Some(RUN + Duration::from_secs(4)),
                name_prefix: format!("gb{n}x{}-", testing::unique_suffix()),
                chat_every_s: 0.0,
                status_every: None,
                ..Default::default()
            },
            stats,
            tokio_util::sync::CancellationToken::new(),
        ));
        // Measure a window after the ramp.
        tokio::time::sleep(Duration::from_secs_f64(n as f64 / 200.0 + 2.0)).await;
        let (_, m0) = gateway.admin_get("/metrics").await.unwrap();
        let (cpu0, t0) = (gateway.cpu_s(), Instant::now());
        tokio::time::sleep(RUN - Duration::from_secs(2)).await;
        let (_, m1) = gateway.admin_get("/metrics").await.unwrap();
        let (cpu1, secs) = (gateway.cpu_s(), t0.elapsed().as_secs_f64());
        let report = fleet.await.unwrap().unwrap();
        let relayed = datagrams(&m1) - datagrams(&m0);
        let relayed_per_s = relayed / secs;
        let cpu_us = (cpu1 - cpu0) * 1e6 / relayed.max(1.0);
        // The ceiling: a bare quinn echo, same connections, 20 Hz each way, the mean payload.
        let payload = ((report.bytes_down_per_bot_per_s + report.bytes_up_per_bot_per_s) / 40.0)
            .round() as usize;
        let echo = worldmesh_load_test::echo::run(worldmesh_load_test::echo::EchoConfig {
            connections: n,
            rate_hz: 20,
            payload: payload.max(16),
            duration: RUN,
            ramp_per_s: 500.0,
        })
        .await
        .unwrap();
        let echo_per_s = 2.0 * echo.echoed_per_s;
        println!(
            "{}",
            serde_json::json!({
                "bots": n, "connected": report.bots_connected, "disconnects": report.disconnects,
                "rtt_ms": report.rtt_ms, "snapshots_per_bot_per_s": report.snapshots_per_bot_per_s,
                "gateway_relayed_datagrams_per_s": relayed_per_s.round(),
                "gateway_cpu_us_per_datagram": (cpu_us * 100.0).round() / 100.0,
                "gateway_cores": ((cpu1 - cpu0) / secs * 100.0).round() / 100.0,
                "echo_payload": payload, "echo_datagrams_per_s": echo_per_s.round(),
                "echo_delivered": echo.delivered_ratio, "echo_rtt_ms": echo.echo_rtt_ms,
                "ratio": (relayed_per_s / echo_per_s * 1000.0).round() / 1000.0,
            })
        );
    }
    // Handshakes: 64 spammers connect (Retry + TLS 1.3 handshake) and drop, for 10 s.
    let endpoint = endpoint();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(10);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (endpoint, done) = (endpoint.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                if let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(5), endpoint.connect(gw)).await
                {
                    c.close(0u32.into(), b"bench");
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let cpu0 = gateway.cpu_s();
    while tasks.join_next().await.is_some() {}
    let n = done.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({"handshakes_per_s": n as f64 / 10.0, "gateway_cpu_us_per_handshake": ((gateway.cpu_s() - cpu0) * 1e6 / n.max(1) as f64).round()})
    );
    drop(gateway);
    backend.cleanup().await;
}
