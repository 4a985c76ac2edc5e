//! Command-line settings of the world coordinator (flags with environment fallbacks), shared by the
//! `world-coordinator` binary and `worldmesh coordinator`.

use std::time::Duration;

use crate::{Config, Geometry};

#[derive(clap::Parser, Debug)]
#[command(version, about = "worldmesh world coordinator")]
pub struct Args {
    /// gRPC listen address.
    #[arg(
        long,
        env = "WORLDMESH_COORDINATOR_LISTEN",
        default_value = "0.0.0.0:7100"
    )]
    listen: String,
    /// Simulation ticks per second, announced to zones.
    #[arg(long, env = "WORLDMESH_TICK_RATE", default_value_t = 20)]
    tick_rate: u32,
    /// Side of the square world in metres.
    #[arg(long, env = "WORLDMESH_WORLD_SIZE", default_value_t = 2000.0)]
    world_size: f32,
    /// Side of a cell in metres.
    #[arg(long, env = "WORLDMESH_CELL_SIZE", default_value_t = 250.0)]
    cell_size: f32,
    /// Zone lease time-to-live in milliseconds.
    #[arg(long, env = "WORLDMESH_LEASE_TTL_MS", default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// Zone heartbeat interval in milliseconds.
    #[arg(long, env = "WORLDMESH_HEARTBEAT_MS", default_value_t = 500)]
    heartbeat_ms: u64,
    /// Where leases and authority epochs are kept: postgres://… or sqlite:… (empty: memory
    /// only, development).
    #[arg(long, env = "DATABASE_URL", default_value = "")]
    database_url: String,
    /// Spawn points for new characters, `x,y` (repeat the flag for several); default: two,
    /// at 31 % and 69 % of the width, half way up.
    #[arg(long = "spawn", value_parser = worldmesh_runtime::parse_point)]
    spawn_points: Vec<(f32, f32)>,
    /// A new character appears within this many metres of its spawn point, in x and in y.
    #[arg(long, env = "WORLDMESH_SPAWN_SPREAD", default_value_t = worldmesh_world::geometry::DEFAULT_SPAWN_SPREAD)]
    spawn_spread: f32,
    /// NPCs in the whole world (not per zone), spread evenly over it; each belongs to the
    /// zone whose cell it stands in, like a character.
    #[arg(long, env = "WORLDMESH_NPCS", default_value_t = 0)]
    npcs: u64,
    /// Assign cells to zones by load (ranges of a Hilbert curve, rebalanced from the zones'
    /// heartbeats) instead of fixed column stripes, one per zone.
    #[arg(long, env = "WORLDMESH_BALANCE")]
    balance: bool,
    /// Seconds between two rebalancing steps (each moves a cut by at most 4 cells).
    #[arg(long, env = "WORLDMESH_REBALANCE_SECS", default_value_t = 5)]
    rebalance_secs: u64,
    /// Pins a cell to a zone by name: `CX,CY=zone-name` (repeat the flag for several).
    #[arg(long = "pin", value_parser = parse_pin)]
    pins: Vec<((u32, u32), String)>,
    #[command(flatten)]
    service: worldmesh_runtime::service::ServiceArgs,
}

impl Args {
    /// The flags every service has (threads, log format, admin port).
    pub fn service(&self) -> &worldmesh_runtime::service::ServiceArgs {
        &self.service
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let size = args.world_size;
    let config = Config {
        geometry: Geometry {
            max_x: size,
            max_y: size,
            cell_size: args.cell_size,
            tick_rate_hz: args.tick_rate,
            spawn_points: if args.spawn_points.is_empty() {
                vec![(size * 0.3125, size * 0.5), (size * 0.6875, size * 0.5)]
            } else {
                args.spawn_points
            },
            spawn_spread: args.spawn_spread,
            ..Geometry::default()
        },
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        database_url: (!args.database_url.is_empty()).then_some(args.database_url),
        npcs: args.npcs,
        balance: crate::BalanceSettings {
            enabled: args.balance,
            every: Duration::from_secs(args.rebalance_secs.max(1)),
            pins: args.pins,
            ..Default::default()
        },
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let shutdown = worldmesh_runtime::shutdown_token();
    // The admin port lives until the process exits, not until the shutdown signal: while
    // draining, /readyz answers 503 and /healthz 200.
    worldmesh_runtime::admin::start(
        &args.service.admin,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    crate::run(listener, config, shutdown).await?;
    Ok(())
}

/// `CX,CY=zone-name`: a cell pinned to a zone.
pub fn parse_pin(s: &str) -> Result<((u32, u32), String), String> {
    let (cell, zone) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want CX,CY=zone-name"))?;
    let (x, y) = cell
        .split_once(',')
        .ok_or_else(|| format!("{cell:?}: want CX,CY"))?;
    let n = |v: &str| v.trim().parse::<u32>().map_err(|e| format!("{v:?}: {e}"));
    if zone.trim().is_empty() {
        return Err(format!("{s:?}: no zone name"));
    }
    Ok(((n(x)?, n(y)?), zone.trim().to_owned()))
}

/// The process exit code for a service's result: 0, a coordinator error's own code (70: stopped
/// to resume from SQL; restart it), or 1; the error is logged.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(
                e.downcast_ref::<crate::Error>()
                    .map_or(1, crate::Error::exit_code),
            )
        }
    }
}
