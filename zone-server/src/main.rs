//! `zone-server`: runs one zone server as its own process (flags: `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = worldmesh_zone::cli::Args::parse();
    let process = args.service().process.clone();
    worldmesh_runtime::service::block_on(
        "zone-server",
        "info",
        &process,
        // This binary runs no game: `worldmesh zone --game …` runs the repository's games.
        worldmesh_zone::cli::run(args, |name| {
            (name == "none").then(worldmesh_game::GameRef::default)
        }),
    )?
}
