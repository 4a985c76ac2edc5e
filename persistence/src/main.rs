//! `persistence`: runs the persistence service as its own process (flags: `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = worldmesh_persistence::cli::Args::parse();
    let process = args.service().process.clone();
    worldmesh_runtime::service::block_on(
        "persistence",
        "info",
        &process,
        worldmesh_persistence::cli::run(args),
    )?
}
