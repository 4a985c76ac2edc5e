//! The real binaries on loopback, on PostgreSQL and a Redis of the test's own (AOF,
//! `appendfsync always`): a coordinator, persistence, two gateways and four zone servers, each
//! its own process (`worldmesh <service>`), with 200 bots travelling across zone borders. During
//! the run, one fault after another: a zone is paused past its lease (SIGSTOP, then SIGCONT),
//! the coordinator is SIGKILLed for 5 s, persistence is SIGKILLed and restarted, Redis is
//! SIGKILLed and restarted from its AOF, a zone is SIGKILLed (failover), a fresh zone joins (it
//! receives cells) and another gets SIGTERM (it drains by live handoff).
//!
//! What must hold: no bot disconnects, no player goes without snapshots for more than 3 s,
//! every character is in play at a live zone near the end, none is lost or simulated twice
//! (audited through the zones, as `load-test run --coordinator` does), and after a clean stop
//! SQL holds, for every character, the last version Redis acknowledged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::procs::{Core, Proc, free_udp_port, live_zones, log_dir, zone};
use common::*;
use worldmesh_protocol::grpc::coordinator::{
    LocateEntityRequest, coordinator_client::CoordinatorClient,
};
use worldmesh_testkit as testing;

const BOTS: usize = 200;
const RUN: Duration = Duration::from_secs(95);

/// SIGTERM, then waits (bounded) for the exit; true if it exited 0.
async fn stop(p: Proc) -> bool {
    p.signal("-TERM");
    tokio::task::spawn_blocking(move || {
        let mut p = p;
        for _ in 0..300 {
            if let Ok(Some(s)) = p.child.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_a_sequence_of_faults_under_200_travelling_bots() {
    let mut redis = testing::RedisServer::start_new().await;
    let (backend, mut persistence) = Backend::tiered().await;
    persistence.redis_url = Some(redis.url());
    let db = persistence.database_url.clone();
    let redis_prefix = persistence.redis_prefix.clone();
    // Spawn points on the borders of four zones' stripes, so travellers cross them.
    let mut core = Core::start(
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
    let gateways = [
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
            audit: Some((coordinator_url.clone(), Some(secret.clone()))),
            ..Default::default()
        },
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));

    // The faults, while the bots play, each given time to settle.
    let started = tokio::time::Instant::now();
    let at = |s: u64| tokio::time::sleep_until(started + Duration::from_secs(s));
    at(10).await;
    eprintln!("SIGSTOP zone-0 for 6 s (past its lease)");
    zones[0].as_ref().unwrap().signal("-STOP");
    at(16).await;
    zones[0].as_ref().unwrap().signal("-CONT");
    at(24).await;
    eprintln!("SIGKILL coordinator for 5 s");
    core.coordinator.signal("-KILL");
    at(29).await;
    core.restart_coordinator();
    at(37).await;
    eprintln!("SIGKILL persistence, restarted after 1 s");
    core.persistence.signal("-KILL");
    at(38).await;
    core.restart_persistence(&[]);
    at(46).await;
    eprintln!("SIGKILL Redis, restarted from its AOF after 1 s");
    redis.kill().await;
    at(47).await;
    redis.start().await;
    at(55).await;
    eprintln!("SIGKILL zone-1");
    zones[1].as_mut().unwrap().signal("-KILL");
    at(63).await;
    eprintln!("zone-4 joins");
    zones.push(Some(zone(4, &coordinator_url, &persistence_url, &secret)));
    at(70).await;
    eprintln!("SIGTERM zone-2 (drains)");
    let draining = zones[2].take().unwrap();
    draining.signal("-TERM");

    // Near the end, every bot's character must be in play at a live zone.
    at(85).await;
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
        report.longest_snapshot_gap_ms <= 3000.0,
        "a player went {} ms without snapshots: {context}",
        report.longest_snapshot_gap_ms
    );
    assert_eq!(report.lost_entities, Some(0), "{context}");
    assert_eq!(report.duplicated_entities, Some(0), "{context}");
    assert!(
        draining_exit.is_some_and(|s| s.success()),
        "the SIGTERMed zone drained and exited cleanly: {draining_exit:?}"
    );

    // A clean stop, front to back: the bots have logged out (their characters saved); then
    // the gateways, the zones and persistence, whose last flush empties the stream.
    for g in gateways {
        stop(g).await;
    }
    for z in zones.into_iter().flatten() {
        stop(z).await;
    }
    let Core { persistence, .. } = core;
    assert!(stop(persistence).await, "persistence stopped cleanly");

    // SQL: one character per bot, none extra, each at the version Redis acknowledged last.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("SELECT id, name, epoch, version FROM characters WHERE name LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), BOTS, "characters in SQL match the bots");
    let mut hot = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut behind = Vec::new();
    for (id, name, epoch, version) in &rows {
        let (e, v): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(format!("{redis_prefix}char:{id}"))
            .arg("epoch")
            .arg("version")
            .query_async(&mut hot)
            .await
            .unwrap();
        if let (Some(e), Some(v)) = (e, v)
            && (e, v) != (*epoch, *version)
        {
            behind.push(format!(
                "{name}: SQL ({epoch}, {version}), acked ({e}, {v})"
            ));
        }
    }
    assert!(
        behind.is_empty(),
        "SQL holds the last acknowledged version of every character: {behind:?}"
    );
    pool.close().await;
    drop(redis);
    backend.cleanup().await;
}
