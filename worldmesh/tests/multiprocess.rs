//! The real binaries on loopback, on real Redis and PostgreSQL: a coordinator, persistence,
//! two gateways and four zone servers, each its own process (`worldmesh <service>`), with 200 bots
//! travelling across zone borders for 60 s. During the run one zone is SIGKILLed (failover),
//! another gets SIGTERM (it drains by live handoff) and a fresh zone joins (it receives cells).
//! At the end every bot is connected and its character in play at a live zone, and the
//! characters in SQL match the bots one to one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::procs::{Core, Proc, free_udp_port, live_zones, log_dir, zone};
use common::*;
use worldmesh_persistence::testing;
use worldmesh_protocol::grpc::coordinator::{
    LocateEntityRequest, coordinator_client::CoordinatorClient,
};

const BOTS: usize = 200;
const RUN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_die_drain_and_join_under_200_travelling_bots() {
    let (backend, persistence) = Backend::tiered().await;
    let db = persistence.database_url.clone();
    // Spawn points on the borders of four zones' stripes, so travellers cross them.
    let core = Core::start(
        &persistence,
        0,
        &[
            "--spawn",
            "500,1000",
            "--spawn",
            "1000,1000",
            "--spawn",
            "1500,1000",
        ],
    )
    .await;
    let (coordinator_url, persistence_url, secret) = (
        core.coordinator_url.clone(),
        core.persistence_url.clone(),
        core.secret.clone(),
    );
    let mut zones: Vec<Option<Proc>> = (0..4)
        .map(|i| Some(zone(i, &coordinator_url, &persistence_url, &secret)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while live_zones(&coordinator_url).await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "zones did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two gateways in front of the zones; the bots spread across them.
    let gports = [free_udp_port(), free_udp_port()];
    let _gateways = [
        core.gateway("gateway-0", gports[0], &[]).await,
        core.gateway("gateway-1", gports[1], &[]).await,
    ];

    let prefix = format!("mp{}-", testing::unique_suffix());
    let stats = Arc::new(worldmesh_load_test::Stats::default());
    let bots = tokio::spawn(worldmesh_load_test::run_with(
        worldmesh_load_test::Config {
            gateways: gports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect(),
            bots: BOTS,
            ramp_per_s: 100.0,
            duration: Some(RUN),
            name_prefix: prefix.clone(),
            behaviour: worldmesh_load_test::bot::Behaviour::Travel,
            chat_every_s: 0.0,
            status_every: None,
            ..Default::default()
        },
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));

    // The faults, while the bots play.
    tokio::time::sleep(Duration::from_secs(15)).await;
    eprintln!("SIGKILL zone-1");
    zones[1].as_mut().unwrap().signal("-KILL");
    tokio::time::sleep(Duration::from_secs(12)).await;
    eprintln!("SIGTERM zone-2 (drains)");
    let draining = zones[2].take().unwrap();
    draining.signal("-TERM");
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!("zone-4 joins");
    zones.push(Some(zone(4, &coordinator_url, &persistence_url, &secret)));

    // Near the end, every bot's character must be in play at a live zone.
    tokio::time::sleep(RUN - Duration::from_secs(40)).await;
    let entities = stats.entities();
    let mut c = CoordinatorClient::connect(coordinator_url.clone())
        .await
        .unwrap();
    let mut homeless = Vec::new();
    for &e in &entities {
        let r = c
            .locate_entity(LocateEntityRequest { entity_id: e })
            .await
            .unwrap()
            .into_inner();
        if r.zone.is_none() {
            homeless.push(e);
        }
    }
    let report = bots.await.unwrap().expect("bots ran");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    let draining_exit = {
        let mut d = draining;
        let status = tokio::task::spawn_blocking(move || {
            let s = d.child.wait();
            (d, s)
        })
        .await
        .unwrap();
        status.1.ok()
    };

    let context = format!("{report:?}; logs in {}", log_dir().display());
    assert_eq!(
        entities.len(),
        BOTS,
        "every bot logged in and stayed: {context}"
    );
    assert!(
        homeless.is_empty(),
        "characters in no live zone: {homeless:?}; {context}"
    );
    assert_eq!(report.bots_connected, BOTS as u64, "{report:?}");
    assert_eq!(report.disconnects, 0, "{report:?}");
    assert!(
        draining_exit.is_some_and(|s| s.success()),
        "the SIGTERMed zone drained and exited cleanly: {draining_exit:?}"
    );

    // SQL: one character per bot, none extra.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM characters WHERE name LIKE $1")
        .bind(format!("{prefix}%"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let names: std::collections::BTreeSet<String> = rows.into_iter().map(|r| r.0).collect();
    assert_eq!(names.len(), BOTS, "characters in SQL match the bots");
    pool.close().await;
    drop(zones);
    backend.cleanup().await;
}
