//! `world-coordinator`: runs the world coordinator as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    worldmesh_runtime::init_logging("world-coordinator", "info");
    let result = worldmesh_coordinator::cli::run(worldmesh_coordinator::cli::Args::parse()).await;
    // Spans still buffered for the OTLP collector.
    worldmesh_runtime::telemetry::flush().await;
    worldmesh_coordinator::cli::exit_code(result)
}
