//! `load-test`: drives bots against running gateways.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "worldmesh load-test bots")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run N bots against a gateway and write a JSON report.
    Run {
        /// Gateway address(es), comma-separated; bots are spread across them.
        #[arg(
            long,
            env = "WORLDMESH_GATEWAY",
            default_value = "127.0.0.1:7000",
            value_delimiter = ','
        )]
        gateway: Vec<SocketAddr>,
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
        #[arg(long, value_enum, default_value_t = worldmesh_load_test::bot::Behaviour::Wander)]
        behaviour: worldmesh_load_test::bot::Behaviour,
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("warn");
    let Command::Run {
        gateway,
        bots,
        ramp,
        duration,
        name_prefix,
        input_rate,
        behaviour,
        report,
    } = Args::parse().command;
    let config = worldmesh_load_test::Config {
        gateways: gateway,
        bots,
        ramp_per_s: ramp,
        duration: Some(Duration::from_secs(duration)),
        name_prefix,
        input_rate_hz: input_rate,
        behaviour,
        ..Default::default()
    };
    let result = worldmesh_load_test::run(config, worldmesh_runtime::shutdown_token()).await?;
    let json = serde_json::to_string_pretty(&result)?;
    println!("{json}");
    if let Some(path) = report {
        std::fs::write(path, json)?;
    }
    Ok(())
}
