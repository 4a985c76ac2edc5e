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
        /// Log in as guests instead of to accounts (gateways started with --allow-guests).
        #[arg(long)]
        guests: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("warn");
    let command = Args::parse().command;
    if let Command::Echo {
        connections,
        rate,
        payload,
        duration,
        ramp,
    } = command
    {
        let report = worldmesh_load_test::echo::run(worldmesh_load_test::echo::EchoConfig {
            connections,
            rate_hz: rate,
            payload,
            duration: Duration::from_secs(duration),
            ramp_per_s: ramp,
        })
        .await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let Command::Run {
        gateway,
        bots,
        ramp,
        duration,
        name_prefix,
        input_rate,
        behaviour,
        report,
        guests,
    } = command
    else {
        unreachable!("echo handled above")
    };
    let config = worldmesh_load_test::Config {
        gateways: gateway,
        bots,
        ramp_per_s: ramp,
        duration: Some(Duration::from_secs(duration)),
        name_prefix,
        input_rate_hz: input_rate,
        behaviour,
        accounts: !guests,
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
