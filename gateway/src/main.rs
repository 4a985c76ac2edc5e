//! `gateway`: runs a gateway as its own process (flags: `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = worldmesh_gateway::cli::Args::parse();
    let process = args.service().process.clone();
    worldmesh_runtime::service::block_on(
        "gateway",
        "info",
        &process,
        worldmesh_gateway::cli::run(args),
    )?
}
