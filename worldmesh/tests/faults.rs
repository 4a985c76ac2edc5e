//! Faults injected into real processes on loopback, one at a time, each with what must hold:
//!
//! - Redis SIGKILLed and restarted from its AOF while checkpoints flow: the flusher resumes,
//!   SQL catches up to the last acknowledged version, the backlog gauge shows the backlog.
//! - A zone SIGSTOPped for longer than its lease: its players get snapshots again within the
//!   lease expiry plus a second; after SIGCONT it is fenced (it owns nothing and registers
//!   anew).
//! - The coordinator SIGKILLed for 6 s: every player keeps receiving snapshots (a character
//!   frozen mid-handoff still sees the world; no new handoff starts), and handoffs resume when
//!   it is back.
//!
//! The whole sequence at once, with 200 bots, is `multiprocess.rs`. The tests here run one at a
//! time (each is a cluster of processes on a 2-core machine).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{Core, Proc, free_udp_port, metric};
use common::*;
use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, LocateZoneRequest, coordinator_client::CoordinatorClient,
};
use worldmesh_protocol::grpc::persistence::{
    Character, LoadOrCreateCharacterRequest, SaveCharactersRequest,
    persistence_client::PersistenceClient,
};
use worldmesh_testkit as testing;

/// One cluster at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The coordinator's default lease: a zone silent this long is failed over.
const LEASE: Duration = Duration::from_secs(2);

async fn bots(
    gateways: &[u16],
    n: usize,
    run: Duration,
    behaviour: worldmesh_load_test::bot::Behaviour,
) -> (
    tokio::task::JoinHandle<Result<worldmesh_load_test::Report, worldmesh_client::ClientError>>,
    Arc<worldmesh_load_test::Stats>,
) {
    let stats = Arc::new(worldmesh_load_test::Stats::default());
    let handle = tokio::spawn(worldmesh_load_test::run_with(
        worldmesh_load_test::Config {
            gateways: gateways
                .iter()
                .map(|p| ([127, 0, 0, 1], *p).into())
                .collect(),
            bots: n,
            ramp_per_s: 100.0,
            duration: Some(run),
            name_prefix: format!("f{}-", testing::unique_suffix()),
            behaviour,
            chat_every_s: 0.0,
            status_every: None,
            ..Default::default()
        },
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    (handle, stats)
}

/// Two zone processes and one gateway on real Redis and PostgreSQL, bots spawning at `spawn`
/// (`x,y`): (backend, core, gateway, the gateway's UDP port).
async fn cluster(spawn: &str) -> (Backend, Core, Proc, u16) {
    let (backend, persistence) = Backend::tiered().await;
    let core = Core::start(&persistence, 2, &["--spawn", spawn]).await;
    let gport = free_udp_port();
    let gateway = core.gateway("gateway-0", gport, &[]).await;
    (backend, core, gateway, gport)
}

/// The process of the zone that owns `(x, y)`, and its zone id.
async fn zone_at(core: &Core, x: f32, y: f32) -> (&Proc, u64) {
    let mut c = CoordinatorClient::connect(core.coordinator_url.clone())
        .await
        .unwrap();
    let z = c
        .locate_zone(LocateZoneRequest { x, y })
        .await
        .unwrap()
        .into_inner()
        .zone
        .expect("a zone owns the spawn point");
    let p = core
        .zones
        .iter()
        .find(|p| p.name == z.name)
        .expect("one of ours");
    (p, z.zone_id)
}

async fn zone_handoffs_in(core: &Core) -> f64 {
    let mut n = 0.0;
    for z in &core.zones {
        if let Some((_, body)) = z.admin_get("/metrics").await {
            n += metric(&body, "worldmesh_zone_handoffs_total{outcome=\"in\"}");
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_catches_up_after_redis_restarts_from_its_aof() {
    let _serial = serial().await;
    let mut redis = testing::RedisServer::start_new().await;
    let (backend, mut persistence) = Backend::tiered().await;
    persistence.redis_url = Some(redis.url());
    let db = persistence.database_url.clone();
    let mut core = Core::start(&persistence, 0, &[]).await;
    // A flusher slowed between SQL commit and stream ack keeps a backlog of a few batches at
    // this write rate, so the gauge has something to show at every moment.
    core.persistence.signal("-KILL");
    tokio::time::sleep(Duration::from_millis(200)).await;
    core.restart_persistence(&[("WORLDMESH_TEST_FLUSH_ACK_DELAY_MS", "300")]);

    let channel =
        worldmesh_runtime::grpc_channel_with_secret(&core.persistence_url, Some(&core.secret))
            .unwrap();
    let mut client = PersistenceClient::new(channel);
    let mut chars: Vec<Character> = Vec::new();
    let prefix = format!("aof{}-", testing::unique_suffix());
    let deadline = Instant::now() + Duration::from_secs(30);
    while chars.len() < 50 {
        match client
            .load_or_create_character(LoadOrCreateCharacterRequest {
                name: format!("{prefix}{}", chars.len()),
                spawn_x: 100.0,
                spawn_y: 100.0,
            })
            .await
        {
            Ok(r) => chars.push(r.into_inner().character.unwrap()),
            Err(e) => {
                assert!(Instant::now() < deadline, "persistence did not start: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Checkpoints flow: every 20 ms a new version of every character, retried until acked.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (mut client, stop, mut chars) = (client.clone(), stop.clone(), chars.clone());
        async move {
            let mut acked = 0u64;
            while !stop.is_cancelled() {
                let v = acked + 1;
                for c in &mut chars {
                    c.version = v;
                    c.x = v as f32;
                }
                let saved = client
                    .save_characters(SaveCharactersRequest {
                        characters: chars.clone(),
                    })
                    .await;
                if saved.is_ok_and(|r| r.into_inner().rejected.is_empty()) {
                    acked = v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }
    });
    let durable = |body: &str| metric(body, "worldmesh_persistence_checkpoints_durable_total");
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.start().await;
    let restarted = Instant::now();
    let durable_at_restart = durable(&core.persistence.admin_get("/metrics").await.unwrap().1);
    let mut backlog_seen = 0.0f64;
    while restarted.elapsed() < Duration::from_secs(5) {
        if let Some((_, body)) = core.persistence.admin_get("/metrics").await {
            backlog_seen = backlog_seen.max(metric(&body, "worldmesh_persistence_backlog_batches"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let acked = writer.await.unwrap();
    let stopped = Instant::now();

    // SQL reaches the last acknowledged version of every character.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let ids: Vec<i64> = chars.iter().map(|c| c.id as i64).collect();
    let caught_up = loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM characters WHERE id = ANY($1) AND version <> $2",
        )
        .bind(&ids)
        .bind(acked as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
        if behind == 0 {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{behind} characters never reached version {acked} in SQL after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body = core.persistence.admin_get("/metrics").await.unwrap().1;
    println!(
        "Redis SIGKILL + restart from AOF under load: version {acked} of 50 characters in SQL \
         {caught_up:?} after the last ack; backlog gauge peaked at {backlog_seen} batches after \
         the restart"
    );
    assert!(
        durable(&body) > durable_at_restart,
        "the flusher wrote to SQL again after the restart"
    );
    assert!(
        backlog_seen > 0.0,
        "the backlog gauge showed the batches waiting for SQL"
    );
    pool.close().await;
    drop(core);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_zones_players_are_rerouted_within_its_lease() {
    let _serial = serial().await;
    let (backend, core, _gateway, gport) = cluster("500,1000").await;
    let run = Duration::from_secs(22);
    let (bots, stats) = bots(&[gport], 30, run, worldmesh_load_test::bot::Behaviour::Idle).await;
    let (paused, paused_id) = zone_at(&core, 500.0, 1000.0).await;

    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("SIGSTOP {} for 6 s", paused.name);
    paused.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    paused.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Fenced: the woken zone owns none of the characters and has registered anew.
    let mut c = CoordinatorClient::connect(core.coordinator_url.clone())
        .await
        .unwrap();
    let map = c.get_world(GetWorldRequest {}).await.unwrap().into_inner();
    assert!(
        map.zones.iter().all(|z| z.zone_id != paused_id),
        "the paused zone's old registration is gone: {:?}",
        map.zones
    );
    for e in stats.entities() {
        let (zone, _) = owner(&core.coordinator_url, e).await;
        assert!(
            zone != 0 && zone != paused_id,
            "character {e} is owned by a live zone, not the fenced one: {zone}"
        );
    }
    let report = bots.await.unwrap().expect("bots ran");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.disconnects, 0, "{report:?}");
    assert_eq!(report.bots_connected, 30, "{report:?}");
    // Snapshots stop when the zone hangs and resume once it is failed over.
    let bound = (LEASE + Duration::from_secs(1)).as_secs_f64() * 1000.0;
    assert!(
        report.longest_snapshot_gap_ms <= bound,
        "players waited {} ms for snapshots (bound: lease expiry + 1 s = {bound} ms)",
        report.longest_snapshot_gap_ms
    );
    drop(core);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_keep_seeing_the_world_while_the_coordinator_is_down() {
    let _serial = serial().await;
    let (backend, mut core, _gateway, gport) = cluster("1000,1000").await;
    let (west, _) = zone_at(&core, 990.0, 1000.0).await;
    let (east, _) = zone_at(&core, 1010.0, 1000.0).await;
    assert_ne!(west.name, east.name, "the spawn point is on a zone border");
    let run = Duration::from_secs(30);
    let (bots, stats) = bots(
        &[gport],
        60,
        run,
        worldmesh_load_test::bot::Behaviour::Travel,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!("SIGKILL coordinator for 6 s");
    core.coordinator.signal("-KILL");
    tokio::time::sleep(Duration::from_secs(6)).await;
    core.restart_coordinator();
    let handoffs_at_return = zone_handoffs_in(&core).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let handoffs_after = zone_handoffs_in(&core).await;

    for e in stats.entities() {
        let (zone, _) = owner(&core.coordinator_url, e).await;
        assert_ne!(zone, 0, "character {e} is owned by a zone");
    }
    let report = bots.await.unwrap().expect("bots ran");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.disconnects, 0, "{report:?}");
    assert_eq!(report.bots_connected, 60, "{report:?}");
    assert!(
        report.longest_snapshot_gap_ms < 1000.0,
        "every player kept receiving snapshots through the outage: longest gap {} ms",
        report.longest_snapshot_gap_ms
    );
    assert!(
        handoffs_after > handoffs_at_return,
        "handoffs resumed after the coordinator came back ({handoffs_at_return} -> {handoffs_after})"
    );
    drop(core);
    backend.cleanup().await;
}
