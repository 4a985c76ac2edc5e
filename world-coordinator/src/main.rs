//! `world-coordinator`: runs the world coordinator as its own process (flags: `--help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = worldmesh_coordinator::cli::Args::parse();
    let process = args.service().process.clone();
    let result = worldmesh_runtime::service::block_on(
        "world-coordinator",
        "info",
        &process,
        worldmesh_coordinator::cli::run(args),
    );
    worldmesh_coordinator::cli::exit_code(result.unwrap_or_else(|e| Err(e.into())))
}
