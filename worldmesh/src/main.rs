//! `worldmesh`: one binary for the whole cluster. `worldmesh local` runs coordinator,
//! persistence (SQLite + in-process hot tier), zone servers, a gateway and bots in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use worldmesh::cluster::{Cluster, ClusterConfig};

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
    /// Wandering NPCs per zone.
    #[arg(long, default_value_t = 0)]
    npcs: usize,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("warn");
    let Command::Local(args) = Args::parse().command;
    local(args).await
}

async fn local(args: Local) -> anyhow::Result<()> {
    let shutdown = worldmesh_runtime::shutdown_token();
    let mut config = ClusterConfig::new(worldmesh_persistence::Config::embedded(&args.data));
    config.zones = args.zones;
    config.zone.npcs = args.npcs;
    config.gateways = args.gateways;
    config.gateway_listen = args.listen;
    let started = Instant::now();
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
            ..Default::default()
        };
        Some(worldmesh_load_test::run(bots, shutdown.clone()).await?)
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
