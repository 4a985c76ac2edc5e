//! `zone-server`: runs one zone server as its own process (flags: `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = worldmesh_zone::cli::Args::parse();
    let process = args.service().process.clone();
    worldmesh_runtime::service::block_on(
        "zone-server",
        "info",
        &process,
        worldmesh_zone::cli::run(args),
    )?
}
