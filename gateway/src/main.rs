//! `gateway`: runs a gateway as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("gateway", "info");
    let result = worldmesh_gateway::cli::run(worldmesh_gateway::cli::Args::parse()).await;
    // Spans still buffered for the OTLP collector.
    worldmesh_runtime::telemetry::flush().await;
    result
}
