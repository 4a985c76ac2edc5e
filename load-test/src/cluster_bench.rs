//! `load-test cluster-bench`: how many players one machine holds, against the physical
//! ceiling of the transport measured in the same run.
//!
//! Starts the cluster as separate processes on loopback (`worldmesh coordinator`,
//! `persistence` on real Redis and PostgreSQL, four `zone`s, the gateway(s)), then for each
//! bot count: ramps the bots up (the `mixed` blend of behaviours, spawned on a 4 × 4 grid of
//! spawn points so they spread like a live game's players), measures a fixed window
//! (RTT, snapshots, bytes, the cluster's CPU from `/proc`), logs them out, and runs the bare
//! quinn datagram echo ([`crate::echo`]) with the same connection count, 20 Hz each way and
//! the bots' mean datagram size. One JSON line per step, then a summary line, then a PNG plot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use worldmesh_testkit::procs::{Launch, Proc, Stop, free_tcp_port, free_udp_port};

use crate::stats::Percentiles;

/// Snapshots per bot per second must be within 10 % of the tick rate to count as sustained.
const TICK_RATE_HZ: f64 = 20.0;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub bots: Vec<usize>,
    /// Measured window per step (after the ramp).
    pub step: Duration,
    pub ramp_per_s: f64,
    pub gateways: usize,
    pub zones: usize,
    /// `postgres://…` of a server where a fresh database is created for the run.
    pub database_url: String,
    pub redis_url: String,
    pub plot: Option<PathBuf>,
    /// Where the processes' logs go.
    pub log_dir: PathBuf,
    /// Tokio worker threads of every cluster process (`WORLDMESH_THREADS`; 1 = current-thread).
    pub service_threads: usize,
    /// The game the zones run (`--game`).
    pub game: String,
    pub behaviour: crate::bot::Behaviour,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RttSummary {
    pub p50: f64,
    pub p99: f64,
}

/// One step, as printed (field names are the contract).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Step {
    pub bots: usize,
    pub connected: u64,
    pub disconnects: u64,
    pub rtt_ms: RttSummary,
    pub snapshots_per_bot_per_s: f64,
    pub bytes_down_per_bot_per_s: f64,
    pub cpu_s_per_bot_per_s: f64,
    pub echo_rtt_ms_p99: f64,
    pub echo_delivered: f64,
    /// Extra: the echo's CPU per connection per second (server and clients together).
    pub echo_cpu_s_per_conn_per_s: f64,
    /// Extra: the bots' own CPU (this process) per bot per second: they share the machine.
    pub bots_cpu_s_per_bot_per_s: f64,
    pub correction_error_m_p99: f64,
    pub snapshot_jitter_ms_p99: f64,
    pub sustained: bool,
    pub echo_sustained: bool,
    /// World chat over the whole step (ramp included): lines sent, delivery, repeats, and the
    /// send → heard p99 across the gateways (through Redis).
    #[serde(default)]
    pub chat_sent: u64,
    #[serde(default)]
    pub chat_delivered_ratio: f64,
    #[serde(default)]
    pub chat_duplicates: u64,
    #[serde(default)]
    pub chat_latency_ms_p99: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub max_bots_sustained: usize,
    pub echo_max_sustained: usize,
    pub ratio: f64,
}

/// The `worldmesh` binary beside this one, built (same profile) if it is not there yet.
fn worldmesh_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("worldmesh");
    if !bin.exists() {
        let release = me.components().any(|c| c.as_os_str() == "release");
        eprintln!(
            "building the worldmesh binary ({})",
            if release { "release" } else { "debug" }
        );
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--bin", "worldmesh"]);
        if release {
            cargo.arg("--release");
        }
        anyhow::ensure!(
            cargo.status()?.success(),
            "cargo build --bin worldmesh failed"
        );
    }
    anyhow::ensure!(bin.exists(), "no worldmesh binary at {}", bin.display());
    Ok(bin)
}

/// Starts one cluster process; it logs into `log_dir` and drains on SIGTERM when dropped.
fn start(
    log_dir: &Path,
    name: &str,
    args: &[String],
    secret: &str,
    threads: usize,
) -> anyhow::Result<Proc> {
    let threads = threads.to_string();
    Ok(Launch {
        env: &[("WORLDMESH_THREADS", &threads)],
        log_dir,
        log_level: "warn",
        stop: Stop::Term(Duration::from_secs(10)),
        ..Launch::new(name, args, secret)
    }
    .start()?)
}

fn percentile_or_zero(p: Percentiles) -> RttSummary {
    RttSummary {
        p50: p.p50,
        p99: p.p99,
    }
}

/// Side of the benchmark's square world, metres: 8 × 8 cells of 250 m, two columns per zone.
const WORLD_SIZE: f32 = 2000.0;

/// 4 × 4 spawn points, 500 m apart (five view radii): each zone's stripe holds one column of
/// four, and new players spread over sixteen places as in a live world, instead of crowding
/// into the two default spawn points where everyone would see everyone.
fn spawn_grid() -> impl Iterator<Item = (f32, f32)> {
    let step = WORLD_SIZE / 4.0;
    (0..16).map(move |i| {
        (
            step * (i % 4) as f32 + step / 2.0,
            step * (i / 4) as f32 + step / 2.0,
        )
    })
}

/// Runs the benchmark; prints the JSON lines to stdout as it goes.
pub async fn run(config: BenchConfig) -> anyhow::Result<(Vec<Step>, Summary)> {
    std::fs::create_dir_all(&config.log_dir)?;
    worldmesh_testkit::procs::use_binary(worldmesh_binary()?);
    let suffix = format!(
        "{}{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let db = worldmesh_testkit::db::fresh_postgres_database(&config.database_url).await?;
    let secret = worldmesh_runtime::random_secret();
    let (cport, pport) = (free_tcp_port(), free_tcp_port());
    let coordinator = format!("http://127.0.0.1:{cport}");
    let persistence = format!("http://127.0.0.1:{pport}");
    let mut procs = vec![start(
        &config.log_dir,
        "coordinator",
        &[
            "coordinator".into(),
            "--listen".into(),
            format!("127.0.0.1:{cport}"),
            "--database-url".into(),
            db.clone(),
            "--world-size".into(),
            WORLD_SIZE.to_string(),
        ]
        .into_iter()
        .chain(spawn_grid().flat_map(|(x, y)| ["--spawn".into(), format!("{x},{y}")]))
        .collect::<Vec<String>>(),
        &secret,
        config.service_threads,
    )?];
    procs.push(start(
        &config.log_dir,
        "persistence",
        &[
            "persistence".into(),
            "--listen".into(),
            format!("127.0.0.1:{pport}"),
            "--database-url".into(),
            db.clone(),
            "--redis-url".into(),
            config.redis_url.clone(),
            "--redis-prefix".into(),
            format!("wmbench{suffix}:"),
            // Thousands of bots register per step: the benchmark measures play, not hashing
            // (argon2's cost is a login-time cost, measured apart).
            "--argon2-memory-kib".into(),
            "1024".into(),
            "--argon2-iterations".into(),
            "1".into(),
        ],
        &secret,
        config.service_threads,
    )?);
    for i in 0..config.zones {
        let port = free_tcp_port();
        procs.push(start(
            &config.log_dir,
            &format!("zone-{i}"),
            &[
                "zone".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--name".into(),
                format!("zone-{i}"),
                "--coordinator".into(),
                coordinator.clone(),
                "--persistence".into(),
                persistence.clone(),
                "--game".into(),
                config.game.clone(),
            ],
            &secret,
            config.service_threads,
        )?);
    }
    let mut gateways = Vec::new();
    for i in 0..config.gateways.max(1) {
        let port = free_udp_port();
        gateways.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        procs.push(start(
            &config.log_dir,
            &format!("gateway-{i}"),
            &[
                "gateway".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--name".into(),
                format!("gateway-{i}"),
                "--coordinator".into(),
                coordinator.clone(),
                "--persistence".into(),
                persistence.clone(),
                // Chat between the gateways, on the run's Redis prefix.
                "--redis-url".into(),
                config.redis_url.clone(),
                "--redis-prefix".into(),
                format!("wmbench{suffix}:"),
            ],
            &secret,
            config.service_threads,
        )?);
    }
    // Let the zones register and the gateways learn the world.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut steps = Vec::new();
    for &n in &config.bots {
        let stats = Arc::new(crate::Stats::default());
        let ramp_s = n as f64 / config.ramp_per_s;
        let fleet = tokio::spawn(crate::run_with(
            crate::Config {
                gateways: gateways.clone(),
                bots: n,
                ramp_per_s: config.ramp_per_s,
                duration: Some(config.step + Duration::from_secs(4)),
                name_prefix: format!("cb{n}x{suffix}-"),
                chat_every_s: 30.0,
                status_every: None,
                behaviour: config.behaviour,
                ..Default::default()
            },
            stats.clone(),
            tokio_util::sync::CancellationToken::new(),
        ));
        // Measure from 3 s after the ramp, for `step`.
        tokio::time::sleep(Duration::from_secs_f64(ramp_s + 3.0)).await;
        stats.reset_histograms();
        let cpu = |procs: &[Proc]| procs.iter().map(Proc::cpu_s).sum::<f64>();
        let (cpu0, t0) = (cpu(&procs), Instant::now());
        let bots_cpu0 = crate::echo::process_cpu();
        let snaps0 = stats.snapshots.load(Ordering::Relaxed);
        let down0 = stats.bytes_down.load(Ordering::Relaxed);
        let up0 = stats.bytes_up.load(Ordering::Relaxed);
        tokio::time::sleep(config.step).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu_s = cpu(&procs) - cpu0;
        let bots_cpu_s = crate::echo::process_cpu()
            .saturating_sub(bots_cpu0)
            .as_secs_f64();
        let connected = stats.connected.load(Ordering::Relaxed);
        let bot_s = (connected.max(1) as f64) * secs;
        let snapshots = (stats.snapshots.load(Ordering::Relaxed) - snaps0) as f64 / bot_s;
        let down = (stats.bytes_down.load(Ordering::Relaxed) - down0) as f64 / bot_s;
        let up = (stats.bytes_up.load(Ordering::Relaxed) - up0) as f64 / bot_s;
        let (rtt, correction, jitter) = (stats.rtt_ms(), stats.correction_m(), stats.jitter_ms());
        let report = fleet.await??;
        // The ceiling at the same connection count, rate and mean datagram size.
        let payload = ((down + up) / (2.0 * TICK_RATE_HZ)).round().max(16.0) as usize;
        // The echo gets its best layout whatever the bots run on: its own two-worker
        // runtime (server and clients in one process, as its BENCHMARKS.md figures).
        let echo_config = crate::echo::EchoConfig {
            connections: n,
            rate_hz: TICK_RATE_HZ as u32,
            payload,
            duration: config.step,
            ramp_per_s: 500.0,
        };
        let echo = tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(worldmesh_client::ClientError::from)?
                .block_on(crate::echo::run(echo_config))
        })
        .await??;
        let step = Step {
            bots: n,
            connected,
            disconnects: report.disconnects,
            rtt_ms: percentile_or_zero(rtt),
            snapshots_per_bot_per_s: round(snapshots, 2),
            bytes_down_per_bot_per_s: round(down, 0),
            cpu_s_per_bot_per_s: round(cpu_s / bot_s, 6),
            echo_rtt_ms_p99: echo.echo_rtt_ms.p99,
            echo_delivered: round(echo.delivered_ratio, 4),
            echo_cpu_s_per_conn_per_s: round(
                echo.cpu_us_per_datagram * echo.echoed_per_s / 1e6 / n.max(1) as f64,
                6,
            ),
            bots_cpu_s_per_bot_per_s: round(bots_cpu_s / bot_s, 6),
            correction_error_m_p99: correction.p99,
            snapshot_jitter_ms_p99: jitter.p99,
            sustained: connected as f64 >= 0.99 * n as f64
                && rtt.p99 <= 100.0
                && snapshots >= 0.9 * TICK_RATE_HZ,
            echo_sustained: echo.delivered_ratio >= 0.99 && echo.echo_rtt_ms.p99 <= 100.0,
            chat_sent: report.chat_sent,
            chat_delivered_ratio: round(report.chat_delivered_ratio, 5),
            chat_duplicates: report.chat_duplicates,
            chat_latency_ms_p99: report.chat_latency_ms.p99,
        };
        println!("{}", serde_json::to_string(&step)?);
        steps.push(step);
    }
    // Stop in reverse start order: gateways, zones (they save), persistence, coordinator.
    procs.reverse();
    drop(procs);
    worldmesh_testkit::db::drop_postgres_database(&config.database_url, &db).await;

    let max_of = |f: fn(&Step) -> bool| {
        steps
            .iter()
            .filter(|s| f(s))
            .map(|s| s.bots)
            .max()
            .unwrap_or(0)
    };
    let (max_bots, echo_max) = (max_of(|s| s.sustained), max_of(|s| s.echo_sustained));
    let summary = Summary {
        max_bots_sustained: max_bots,
        echo_max_sustained: echo_max,
        ratio: if echo_max > 0 {
            round(max_bots as f64 / echo_max as f64, 3)
        } else {
            0.0
        },
    };
    println!("{}", serde_json::to_string(&summary)?);
    if let Some(path) = &config.plot {
        match crate::plot::cluster_bench(path, &steps) {
            Ok(()) => eprintln!("plot written to {}", path.display()),
            Err(e) => eprintln!("no plot: {e}"),
        }
    }
    Ok((steps, summary))
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
