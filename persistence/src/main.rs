//! `persistence`: runs the persistence service as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("persistence", "info");
    let result = worldmesh_persistence::cli::run(worldmesh_persistence::cli::Args::parse()).await;
    // Spans still buffered for the OTLP collector.
    worldmesh_runtime::telemetry::flush().await;
    result
}
