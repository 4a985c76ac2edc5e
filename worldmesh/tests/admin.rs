//! The admin port: `/metrics` of a running cluster has the named series and they move;
//! `/readyz` of a zone process turns ready only once it has registered with the coordinator,
//! while `/healthz` says alive throughout; the gRPC health service answers SERVING.

mod common;

use std::time::Duration;

use common::procs::{Proc, free_tcp_port, http_get, metric, zone};
use common::{Backend, start_cluster};

/// A series' value, summed over every label set (`name{...} v` and `name v`).
fn total(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bare = series.split('{').next().unwrap_or(series);
        if bare == name {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_running_cluster_exist_and_move() {
    // The recorder first: series recorded before it exists go nowhere.
    worldmesh_runtime::admin::install_recorder();
    let admin = worldmesh_runtime::admin::start(
        &worldmesh_runtime::admin::AdminArgs {
            admin_listen: "127.0.0.1:0".into(),
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
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
    let bots = tokio::spawn(worldmesh_load_test::run(
        worldmesh_load_test::Config {
            gateways: cluster.gateway_addrs.clone(),
            bots: 10,
            ramp_per_s: 20.0,
            duration: Some(Duration::from_secs(6)),
            name_prefix: format!("adm{}-", worldmesh_testkit::unique_suffix()),
            status_every: None,
            ..Default::default()
        },
        tokio_util::sync::CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, first) = http_get(admin, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, second) = http_get(admin, "/metrics").await.expect("scrape");
    bots.await.unwrap().unwrap();

    for name in [
        "worldmesh_zone_tick_duration_seconds_bucket",
        "worldmesh_zone_players",
        "worldmesh_zone_entities",
        "worldmesh_zone_snapshot_bytes_total",
        "worldmesh_zone_saves_total",
        "worldmesh_gateway_connections",
        "worldmesh_gateway_logins_total",
        "worldmesh_gateway_datagrams_in_total",
        "worldmesh_persistence_logins_total",
        "worldmesh_coordinator_zones",
    ] {
        assert!(
            total(&second, name).is_some(),
            "{name} missing from /metrics:\n{second}"
        );
    }
    for name in [
        "worldmesh_zone_tick_duration_seconds_count",
        "worldmesh_zone_snapshot_bytes_total",
        "worldmesh_gateway_datagrams_in_total",
        "worldmesh_gateway_datagrams_out_total",
    ] {
        let (a, b) = (
            total(&first, name).unwrap_or(0.0),
            total(&second, name).unwrap_or(0.0),
        );
        assert!(b > a, "{name} did not move: {a} then {b}");
    }
    assert_eq!(
        total(&second, "worldmesh_zone_players"),
        Some(10.0),
        "{second}"
    );
    assert_eq!(metric(&second, "worldmesh_coordinator_zones"), 2.0);
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_is_ready_only_once_registered() {
    let secret = worldmesh_runtime::random_secret();
    let cport = free_tcp_port();
    let coordinator_url = format!("http://127.0.0.1:{cport}");
    // No coordinator yet: the zone is alive but not ready.
    let z = zone(0, &coordinator_url, "http://127.0.0.1:1", &secret);
    let mut alive = false;
    for _ in 0..50 {
        if z.admin_get("/healthz").await.map(|r| r.0) == Some(200) {
            alive = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(alive, "zone admin port never answered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = z.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("zone-0 registered"), "{body}");

    // The coordinator appears; the zone registers and turns ready.
    let _c = Proc::start(
        "coordinator",
        &[
            "coordinator".into(),
            "--listen".into(),
            format!("127.0.0.1:{cport}"),
        ],
        &secret,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if z.admin_get("/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "zone never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(z.admin_get("/healthz").await.map(|r| r.0), Some(200));

    // The coordinator's gRPC health service (what Kubernetes gRPC probes ask).
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        worldmesh_runtime::grpc_channel(&coordinator_url).unwrap(),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
