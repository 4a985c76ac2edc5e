//! `zone-server`: runs one zone server as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("zone-server", "info");
    let result = worldmesh_zone::cli::run(worldmesh_zone::cli::Args::parse()).await;
    // Spans still buffered for the OTLP collector.
    worldmesh_runtime::telemetry::flush().await;
    result
}
