//! `persistence`: runs the persistence service as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("info");
    worldmesh_persistence::cli::run(worldmesh_persistence::cli::Args::parse()).await
}
