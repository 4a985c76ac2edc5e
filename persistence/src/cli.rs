//! Command-line settings of the persistence service (flags with environment fallbacks), shared by the
//! `persistence` binary and `worldmesh persistence`.

#[derive(clap::Parser, Debug)]
#[command(version, about = "worldmesh persistence service")]
pub struct Args {
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
    #[arg(long, env = "WORLDMESH_MAX_BACKLOG", default_value_t = crate::DEFAULT_MAX_BACKLOG)]
    max_backlog: usize,
    /// argon2id memory cost of new password hashes, KiB (OWASP: 19456).
    #[arg(long, env = "WORLDMESH_ARGON2_MEMORY_KIB", default_value_t = crate::accounts::DEFAULT_MEMORY_KIB)]
    argon2_memory_kib: u32,
    /// argon2id passes of new password hashes (OWASP: 2).
    #[arg(long, env = "WORLDMESH_ARGON2_ITERATIONS", default_value_t = crate::accounts::DEFAULT_ITERATIONS)]
    argon2_iterations: u32,
    #[command(flatten)]
    service: worldmesh_runtime::service::ServiceArgs,
}

impl Args {
    /// The flags every service has (threads, log format, admin port).
    pub fn service(&self) -> &worldmesh_runtime::service::ServiceArgs {
        &self.service
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = crate::Config {
        database_url: args.database_url,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix,
        max_backlog: args.max_backlog,
        run_flusher: true,
        argon2_memory_kib: args.argon2_memory_kib,
        argon2_iterations: args.argon2_iterations,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let shutdown = worldmesh_runtime::shutdown_token();
    // The admin port lives until the process exits, not until the shutdown signal: while
    // draining, /readyz answers 503 and /healthz 200.
    worldmesh_runtime::admin::start(
        &args.service.admin,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    crate::run(listener, config, shutdown).await?;
    Ok(())
}
