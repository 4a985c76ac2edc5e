//! `persistence`: runs the persistence service as its own process.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "worldmesh persistence service")]
struct Args {
    /// gRPC listen address.
    #[arg(
        long,
        env = "WORLDMESH_PERSISTENCE_LISTEN",
        default_value = "0.0.0.0:7200"
    )]
    listen: String,
    /// `postgres://…` or `sqlite://path`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://worldmesh.db?mode=rwc"
    )]
    database_url: String,
    /// `redis://…`; without it the hot tier is in-process.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "WORLDMESH_REDIS_PREFIX", default_value = "wm:")]
    redis_prefix: String,
    /// Checkpoint batches Redis may queue for SQL before refusing new ones.
    #[arg(long, env = "WORLDMESH_MAX_BACKLOG", default_value_t = worldmesh_persistence::DEFAULT_MAX_BACKLOG)]
    max_backlog: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("info");
    let args = Args::parse();
    let config = worldmesh_persistence::Config {
        database_url: args.database_url,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix,
        max_backlog: args.max_backlog,
        run_flusher: true,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let shutdown = worldmesh_runtime::shutdown_token();
    worldmesh_persistence::run(listener, config, shutdown).await?;
    Ok(())
}
