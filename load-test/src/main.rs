//! `load-test`: drives bots against running gateways (`run`), measures the transport's
//! ceiling (`echo`), or runs the whole cluster benchmark (`cluster-bench`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use worldmesh_client::conditioner::LinkConditions;
use worldmesh_load_test::bot::Behaviour;

#[derive(Parser, Debug)]
#[command(version, about = "worldmesh load-test bots")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The transport's ceiling: a bare quinn datagram echo server and N client connections in
    /// this process (no worldmesh code in the path). Prints one JSON line.
    Echo {
        #[arg(long, default_value_t = 500)]
        connections: usize,
        /// Datagrams per connection per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Bytes per datagram.
        #[arg(long, default_value_t = 160)]
        payload: usize,
        /// Seconds measured (after the ramp and one second of settling).
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Connections opened per second.
        #[arg(long, default_value_t = 200.0)]
        ramp: f64,
    },
    /// Run N bots against running gateway(s) and print (and optionally write) a JSON report.
    Run(RunArgs),
    /// Start the cluster as processes on loopback (Redis + PostgreSQL), run each bot count,
    /// measure the bare quinn echo at the same counts in the same run; JSON lines and a plot.
    ClusterBench(BenchArgs),
    /// Redraw a cluster-bench plot from its JSON lines (stdout of an earlier run).
    Plot {
        /// The JSON lines (step lines are used; the summary line is skipped).
        input: PathBuf,
        #[arg(long, default_value = "cluster-bench.png")]
        plot: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Gateway address(es), `host:port`, comma-separated; bots are spread across them.
    #[arg(
        long,
        env = "WORLDMESH_GATEWAY",
        default_value = "127.0.0.1:7000",
        value_delimiter = ','
    )]
    gateway: Vec<String>,
    #[arg(long, default_value_t = 50)]
    bots: usize,
    /// Bots started per second.
    #[arg(long, default_value_t = 50.0)]
    ramp: f64,
    /// Seconds to play after ramping up.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[arg(long, default_value = "bot")]
    name_prefix: String,
    /// Inputs each bot sends per second.
    #[arg(long, default_value_t = 20)]
    input_rate: u32,
    /// How bots move.
    #[arg(long, value_enum, default_value_t = Behaviour::Wander)]
    behaviour: Behaviour,
    /// Where `converge` bots go, `x,y` (default: the middle of the world).
    #[arg(long, value_parser = worldmesh_runtime::parse_point)]
    converge_at: Option<(f32, f32)>,
    #[arg(long)]
    report: Option<PathBuf>,
    /// Log in as guests instead of to accounts (gateways started with --allow-guests).
    #[arg(long)]
    guests: bool,
    /// Datagram loss on the bots' links, percent, each way.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// One-way latency added to the bots' datagrams, ms.
    #[arg(long, default_value_t = 0)]
    latency: u64,
    /// Up to this much more one-way latency, ms, random per datagram.
    #[arg(long, default_value_t = 0)]
    jitter: u64,
    /// Tokio worker threads for the bots (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// World coordinator, `http://host:port`. With it, every zone is audited against the
    /// bots while they play and the report counts lost and duplicated characters; this host
    /// must reach the coordinator and every zone at its advertised address.
    #[arg(long, env = "WORLDMESH_COORDINATOR_URL")]
    coordinator: Option<String>,
    /// Secret the zones require (their --cluster-secret), for the audit.
    #[arg(long, env = "WORLDMESH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Bot counts, comma-separated, one step each.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,1500")]
    bots: Vec<usize>,
    /// Seconds measured per step (after the ramp).
    #[arg(long, default_value_t = 30)]
    step: u64,
    /// Bots started per second.
    #[arg(long, default_value_t = 100.0)]
    ramp: f64,
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    #[arg(long, default_value_t = 4)]
    zones: usize,
    /// PostgreSQL server; a fresh database is created for the run and dropped after.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
    /// Where the plot goes.
    #[arg(long, default_value = "cluster-bench.png")]
    plot: PathBuf,
    /// Where the cluster processes' logs go.
    #[arg(long, default_value = "target/cluster-bench-logs")]
    logs: PathBuf,
    /// Tokio worker threads for the bots and the echo (1: a current-thread runtime). Two, as
    /// the echo's own runtime: every bot receives its snapshot in the same instant each tick,
    /// and one thread decoding 1,250 of them in turn put 107 ms on RTT p99 where two put 73
    /// (BENCHMARKS.md), at the same CPU per bot.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Tokio worker threads of each cluster process (1: current-thread, cheapest per bot
    /// here, see BENCHMARKS.md; 0: one per core).
    #[arg(long, default_value_t = 1)]
    service_threads: usize,
    /// The game the zones run (`worldmesh zone --game`): `none`, `arena`, `paint`.
    #[arg(long, default_value = "none")]
    game: String,
    /// What the bots do (`mixed`: the blend `--behaviour mixed` of `run` has; `fight` with
    /// `--game arena` for a fighting load).
    #[arg(long, value_enum, default_value_t = worldmesh_load_test::bot::Behaviour::Mixed)]
    behaviour: worldmesh_load_test::bot::Behaviour,
}

fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("load-test", "warn");
    let command = Args::parse().command;
    // The bots' runtime is chosen by measurement (BENCHMARKS.md): one current-thread runtime
    // carries thousands of bots more cheaply than a multi-thread one.
    // `echo` keeps the two-worker runtime its BENCHMARKS.md figures were measured with.
    let threads = match &command {
        Command::Run(r) => r.threads,
        Command::ClusterBench(b) => b.threads,
        Command::Echo { .. } => 2,
        Command::Plot { .. } => 1,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async_main(command))
}

async fn async_main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plot { input, plot } => {
            let steps: Vec<worldmesh_load_test::cluster_bench::Step> =
                std::fs::read_to_string(&input)?
                    .lines()
                    .filter(|l| l.starts_with("{\"bots\""))
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?;
            worldmesh_load_test::plot::cluster_bench(&plot, &steps).map_err(anyhow::Error::msg)?;
            println!("plot written to {}", plot.display());
        }
        Command::Echo {
            connections,
            rate,
            payload,
            duration,
            ramp,
        } => {
            let report = worldmesh_load_test::echo::run(worldmesh_load_test::echo::EchoConfig {
                connections,
                rate_hz: rate,
                payload,
                duration: Duration::from_secs(duration),
                ramp_per_s: ramp,
            })
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Run(args) => run(args).await?,
        Command::ClusterBench(args) => {
            worldmesh_load_test::cluster_bench::run(
                worldmesh_load_test::cluster_bench::BenchConfig {
                    bots: args.bots,
                    step: Duration::from_secs(args.step),
                    ramp_per_s: args.ramp,
                    gateways: args.gateways,
                    zones: args.zones,
                    database_url: args.database_url,
                    redis_url: args.redis_url,
                    plot: Some(args.plot),
                    log_dir: args.logs,
                    service_threads: args.service_threads,
                    game: args.game,
                    behaviour: args.behaviour,
                },
            )
            .await?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut gateways = Vec::new();
    for g in &args.gateway {
        let addr = tokio::net::lookup_host(g)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve gateway {g}"))?;
        gateways.push(addr);
    }
    let cluster_secret = args.cluster_secret;
    let audit = args.coordinator.map(|url| (url, cluster_secret));
    let config = worldmesh_load_test::Config {
        gateways,
        bots: args.bots,
        ramp_per_s: args.ramp,
        duration: Some(Duration::from_secs(args.duration)),
        name_prefix: args.name_prefix,
        input_rate_hz: args.input_rate,
        behaviour: args.behaviour,
        accounts: !args.guests,
        link: LinkConditions {
            loss: args.loss / 100.0,
            latency: Duration::from_millis(args.latency),
            jitter: Duration::from_millis(args.jitter),
        },
        audit,
        converge_at: args.converge_at,
        ..Default::default()
    };
    let result = worldmesh_load_test::run(config, worldmesh_runtime::shutdown_token()).await?;
    eprintln!("{}", result.table());
    let json = serde_json::to_string_pretty(&result)?;
    println!("{json}");
    if let Some(path) = args.report {
        std::fs::write(path, json)?;
    }
    Ok(())
}
