//! `worldmesh`: one binary for the whole cluster. `worldmesh local` runs coordinator,
//! persistence (SQLite + in-process hot tier), zone servers, a gateway and bots in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use worldmesh::cluster::{Cluster, ClusterConfig};
use worldmesh_load_test::audit::{AuditCounter, Audited, ZoneAudit};
use worldmesh_load_test::bot::Behaviour;
use worldmesh_load_test::stats::Percentiles;

#[derive(Parser, Debug)]
#[command(version, about = "worldmesh: an authoritative MMO server cluster")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole cluster with bots in this process, on embedded storage.
    Local(Local),
    /// Run the world coordinator (same flags as the `world-coordinator` binary).
    Coordinator(worldmesh_coordinator::cli::Args),
    /// Run a zone server (same flags as `zone-server`).
    Zone(worldmesh_zone::cli::Args),
    /// Run a gateway (same flags as `gateway`).
    Gateway(worldmesh_gateway::cli::Args),
    /// Run the persistence service (same flags as `persistence`).
    Persistence(worldmesh_persistence::cli::Args),
    /// Operators' chat tools: `silence NAME --minutes N`, `unsilence NAME` (cluster: REDIS_URL).
    Chat(worldmesh_gateway::cli::ChatArgs),
}

#[derive(clap::Args, Debug)]
struct Local {
    /// Zone servers to run.
    #[arg(long, default_value_t = 4)]
    zones: usize,
    /// Gateways to run (on consecutive ports from --listen); bots are spread across them.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// Bots to run against the gateway (0 for none; connect your own client).
    #[arg(long, default_value_t = 50)]
    bots: usize,
    /// NPCs in the whole world (not per zone): each belongs to the zone whose cell it stands
    /// in, and is handed on at borders like a character.
    #[arg(long, default_value_t = 0)]
    npcs: u64,
    /// The game the zones run: `arena` (the example game: health, attacks, monsters, XP),
    /// `paint` (the smallest: splash colours on each other) or
    /// `none` (bare movement and chat).
    #[arg(long, env = "WORLDMESH_GAME", default_value = "arena")]
    game: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Write a JSON report of the bots' measurements here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// UDP address of the gateway.
    #[arg(
        long,
        env = "WORLDMESH_GATEWAY_LISTEN",
        default_value = "127.0.0.1:7000"
    )]
    listen: SocketAddr,
    /// SQLite file holding characters.
    #[arg(long, env = "WORLDMESH_DATA", default_value = "worldmesh-local.db")]
    data: PathBuf,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5)]
    status_every: u64,
    /// How bots move. `travel`: new characters spawn on zone borders and run back and forth
    /// across them, so handoffs happen all the time. `fight`: new characters spawn on zone
    /// borders (a skirmish line either side of each), and fight whatever is nearest.
    #[arg(long, value_enum, default_value_t = Behaviour::Wander)]
    behaviour: Behaviour,
    /// Spawn every new character here, `x,y` (repeat for several points), instead of where
    /// the behaviour puts them; the bots are then new characters, so they all start there
    /// (a crowd at one spot: `--behaviour crowd --spawn 1000,1000`).
    #[arg(long = "spawn", value_parser = worldmesh_runtime::parse_point)]
    spawn: Vec<(f32, f32)>,
    /// Assign cells to zones by load instead of fixed column stripes (`travel`, `fight` and
    /// `trade` always use stripes: they spawn on the stripes' borders). Experimental: see
    /// BENCHMARKS.md, "Crowds degrade gracefully".
    #[arg(long)]
    balance: bool,
    /// Where `converge` bots go, `x,y` (default: the middle of the world).
    #[arg(long, value_parser = worldmesh_runtime::parse_point)]
    converge_at: Option<(f32, f32)>,
    /// Admin HTTP address of the whole local cluster (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WORLDMESH_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    admin_listen: String,
    #[command(flatten)]
    process: worldmesh_runtime::service::ProcessArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (service, filter, process) = match &args.command {
        Command::Local(l) => ("worldmesh-local", "warn", &l.process),
        Command::Coordinator(a) => ("world-coordinator", "info", &a.service().process),
        Command::Zone(a) => ("zone-server", "info", &a.service().process),
        Command::Gateway(a) => ("gateway", "info", &a.service().process),
        Command::Persistence(a) => ("persistence", "info", &a.service().process),
        Command::Chat(a) => ("worldmesh-chat", "info", &a.process),
    };
    let process = process.clone();
    let result = worldmesh_runtime::service::block_on(service, filter, &process, run(args.command));
    // A coordinator that stopped to resume from SQL exits 70 (restart me), like its own binary.
    worldmesh_coordinator::cli::exit_code(result.unwrap_or_else(|e| Err(e.into())))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Local(args) => local(args).await,
        Command::Coordinator(args) => worldmesh_coordinator::cli::run(args).await,
        Command::Zone(args) => worldmesh_zone::cli::run(args, worldmesh::games::by_name).await,
        Command::Gateway(args) => worldmesh_gateway::cli::run(args).await,
        Command::Persistence(args) => worldmesh_persistence::cli::run(args).await,
        Command::Chat(args) => worldmesh_gateway::cli::chat(args).await,
    }
}

async fn local(args: Local) -> anyhow::Result<()> {
    let shutdown = worldmesh_runtime::shutdown_token();
    let mut config = ClusterConfig::new(worldmesh_persistence::Config::embedded(&args.data));
    config.zones = args.zones;
    config.coordinator.npcs = args.npcs;
    config.zone.game = worldmesh::games::by_name(&args.game).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown game {:?}: one of {}",
            args.game,
            worldmesh::games::NAMES.join(", ")
        )
    })?;
    config.gateways = args.gateways;
    config.gateway_listen = args.listen;
    config.coordinator.balance.enabled = args.balance
        && !matches!(
            args.behaviour,
            Behaviour::Travel | Behaviour::Fight | Behaviour::Trade
        );
    if matches!(
        args.behaviour,
        Behaviour::Travel | Behaviour::Fight | Behaviour::Trade
    ) {
        // Spawn on the borders between the zones' stripes of columns: travellers cross them
        // all the time. Fighters spawn in a skirmish line along each border, a point per
        // fighter, zigzagging 1.5 m either side of it every 3 m (and within 1 m of their point,
        // not the usual 20), so the nearest foe usually stands in the other zone: their blows
        // across it are effects forwarded to the zone that simulates the target.
        let g = &mut config.coordinator.geometry;
        let (cells, n) = (g.cells_x() as usize, args.zones.max(1));
        let mid_y = (g.min_y + g.max_y) / 2.0;
        let line: Vec<(f32, f32)> = if args.behaviour == Behaviour::Fight {
            g.spawn_spread = 1.0;
            let per_border = args.bots.div_ceil(n.saturating_sub(1).max(1)).max(2);
            (0..per_border)
                .map(|k| {
                    let side = if k % 2 == 0 { -1.5 } else { 1.5 };
                    (side, (k as f32 - per_border as f32 / 2.0) * 3.0)
                })
                .collect()
        } else {
            vec![(0.0, 0.0)]
        };
        g.spawn_points = (1..n)
            .filter_map(|k| (0..cells).find(|c| c * n / cells >= k))
            .flat_map(|c| {
                let x = g.min_x + c as f32 * g.cell_size;
                line.iter().map(move |(dx, dy)| (x + dx, mid_y + dy))
            })
            .collect();
        if args.behaviour == Behaviour::Trade {
            // Pairs meet on one border (the middle one), so the two of a pair are near each
            // other from the start and half of them stand in different zones.
            let middle = g.spawn_points.get(g.spawn_points.len() / 2).copied();
            g.spawn_points = middle.into_iter().collect();
        }
        if g.spawn_points.is_empty() {
            g.spawn_points = vec![((g.min_x + g.max_x) / 2.0, mid_y)];
        }
    }
    if !args.spawn.is_empty() {
        config.coordinator.geometry.spawn_points = args.spawn.clone();
    }
    let started = Instant::now();
    let admin = worldmesh_runtime::admin::start(
        &worldmesh_runtime::admin::AdminArgs {
            admin_listen: args.admin_listen.clone(),
        },
        shutdown.clone(),
    )
    .await?;
    let cluster = Cluster::start(config).await?;
    println!(
        "worldmesh local cluster is up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (i, g) in cluster.gateway_addrs.iter().enumerate() {
        println!(
            "  gateway-{i} (QUIC, ALPN {}): {g}",
            String::from_utf8_lossy(worldmesh_protocol::ALPN)
        );
    }
    println!("  coordinator (gRPC):      {}", cluster.coordinator_url);
    println!("  persistence (gRPC):      {}", cluster.persistence_url);
    for (i, z) in cluster.zone_urls.iter().enumerate() {
        println!("  zone-{i} (gRPC):           {z}");
    }
    if let Some(a) = admin {
        println!(
            "  admin (HTTP):            http://{a}/metrics  http://{a}/healthz  http://{a}/readyz"
        );
    }
    println!("  data file (SQLite):      {}", args.data.display());
    println!(
        "  bots: {}   stop: {}",
        args.bots,
        args.duration
            .map_or("Ctrl-C".to_owned(), |d| format!("after {d} s or Ctrl-C"))
    );

    let report = if args.bots > 0 {
        let bots = worldmesh_load_test::Config {
            gateways: cluster.gateway_addrs.clone(),
            bots: args.bots,
            ramp_per_s: 50.0,
            duration: args.duration.map(Duration::from_secs),
            status_every: Some(Duration::from_secs(args.status_every.max(1))),
            behaviour: args.behaviour,
            // Travellers are new characters every run, so they start on the borders.
            name_prefix: if args.behaviour == Behaviour::Travel {
                format!("travel{:x}-", rand_suffix())
            } else if args.behaviour == Behaviour::Trade {
                // New characters: they spawn on the border with a starter kit to trade.
                format!("trade{:x}-", rand_suffix())
            } else if !args.spawn.is_empty() {
                // New characters, so they start at the spawn points given.
                format!("spawn{:x}-", rand_suffix())
            } else {
                "bot".into()
            },
            status_extra: Some(zone_loads(cluster.zone_stats.clone())),
            converge_at: args.converge_at,
            ..Default::default()
        };
        let stats = Arc::new(worldmesh_load_test::Stats::default());
        let audit_stop = CancellationToken::new();
        let auditor = tokio::spawn(audit(
            cluster.zone_stats.clone(),
            stats.clone(),
            audit_stop.clone(),
        ));
        let sampler = tokio::spawn(sample_imbalance(
            cluster.zone_stats.clone(),
            audit_stop.clone(),
        ));
        let mut report = worldmesh_load_test::run_with(bots, stats, shutdown.clone()).await?;
        audit_stop.cancel();
        report.load_imbalance = sampler.await.ok().flatten();
        let audited = auditor.await?;
        let mut latencies: Vec<u64> = Vec::new();
        let (mut handoffs, mut forwarded, mut across) = (0, 0, 0);
        for z in &cluster.zone_stats {
            handoffs += z.handoffs_in.load(std::sync::atomic::Ordering::Relaxed);
            forwarded += z
                .effects_forwarded
                .load(std::sync::atomic::Ordering::Relaxed);
            across += z.trades_across.load(std::sync::atomic::Ordering::Relaxed);
            latencies.extend(
                z.handoff_latency_us
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default(),
            );
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |&us| us as f64 / 1000.0)
        };
        report.handoffs = handoffs;
        report.cross_zone_actions = Some(forwarded);
        if args.behaviour == Behaviour::Trade {
            report.cross_zone_trades = Some(across);
        }
        report.handoff_ms = Some(Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: latencies.last().map_or(0.0, |&us| us as f64 / 1000.0),
        });
        report.set_audit(audited);
        Some(report)
    } else {
        match args.duration {
            Some(d) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(d)) => {}
                }
            }
            None => shutdown.cancelled().await,
        }
        None
    };
    println!("stopping: saving every character...");
    cluster.stop().await;
    if let Some(report) = report {
        let json = serde_json::to_string_pretty(&report)?;
        println!("{json}");
        if let Some(path) = &args.report {
            std::fs::write(path, &json)?;
            println!("report written to {}", path.display());
        }
    }
    Ok(())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
}

/// Audits the in-process zones against the bots while they play (the rules are
/// [`AuditCounter`]'s). Every 100 ms, so that each once-a-second publication is seen soon
/// after it.
async fn audit(
    zones: Vec<Arc<worldmesh_zone::zone::Stats>>,
    bots: Arc<worldmesh_load_test::Stats>,
    stop: CancellationToken,
) -> Audited {
    let mut counter = AuditCounter::default();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let snaps: Vec<ZoneAudit> = zones
            .iter()
            .filter_map(|z| {
                z.audit.lock().ok().map(|a| {
                    let ids = |v: &[worldmesh_protocol::ids::EntityId]| -> Vec<u64> {
                        v.iter().map(|e| e.0).collect()
                    };
                    let mut npcs_held = ids(&a.npcs.frozen);
                    npcs_held.extend(ids(&a.npcs_waiting));
                    ZoneAudit {
                        tick: a.tick,
                        simulated: ids(&a.characters.active),
                        frozen: ids(&a.characters.frozen),
                        npcs: ids(&a.npcs.active),
                        npcs_held,
                    }
                })
            })
            .collect();
        counter.observe(&snaps, &bots.entities());
    }
    counter.audited()
}

/// The status line's load per zone: players, tick p99 and time dilation of each in-process
/// zone, e.g. `zone-0 212p 7.9ms x1.00`.
fn zone_loads(zones: Vec<Arc<worldmesh_zone::zone::Stats>>) -> worldmesh_load_test::StatusExtra {
    use std::sync::atomic::Ordering::Relaxed;
    worldmesh_load_test::StatusExtra(Arc::new(move || {
        let parts: Vec<String> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let dilation = match z.time_dilation_milli.load(Relaxed) {
                    0 => 1.0,
                    m => m as f32 / 1000.0,
                };
                format!(
                    "zone-{i} {}p {:.1}ms x{dilation:.2}",
                    z.players.load(Relaxed),
                    z.tick_p99_us.load(Relaxed) as f32 / 1000.0
                )
            })
            .collect();
        parts.join("  ")
    }))
}

/// Max over mean of players per zone, once a second until `stop`; the average of the last
/// 30 samples (`None` before the first sample with players).
async fn sample_imbalance(
    zones: Vec<Arc<worldmesh_zone::zone::Stats>>,
    stop: CancellationToken,
) -> Option<f64> {
    let mut samples = std::collections::VecDeque::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let players: Vec<f64> = zones
            .iter()
            .map(|z| f64::from(z.players.load(std::sync::atomic::Ordering::Relaxed)))
            .collect();
        let total: f64 = players.iter().sum();
        if total > 0.0 {
            let mean = total / players.len() as f64;
            samples.push_back(players.iter().copied().fold(0.0, f64::max) / mean);
            if samples.len() > 30 {
                samples.pop_front();
            }
        }
    }
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}
