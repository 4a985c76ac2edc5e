//! `zone-server`: runs one zone server as its own process (flags: `--help`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("info");
    worldmesh_zone::cli::run(worldmesh_zone::cli::Args::parse()).await
}
