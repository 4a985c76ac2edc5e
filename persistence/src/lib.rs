//! The persistence service: where characters live between sessions.
//!
//! Writes go through a hot tier into SQL. The hot tier is Redis when `REDIS_URL` is set, or an
//! in-process map otherwise; SQL is PostgreSQL when `DATABASE_URL` names one, or an SQLite file
//! (the embedded default, used by `worldmesh local`). Every stored character carries an
//! authority `(epoch, version)` stamp and a write is applied only if its stamp is not older
//! than the stored one — in Redis atomically by a Lua script, in SQL by the `WHERE` of the
//! update — so a retried or late write can never roll a character back.
//!
//! What an acknowledged checkpoint (`SaveCharacters`) promises:
//! - **with Redis**: the state is in Redis and queued, in the same atomic script, on the
//!   checkpoint stream; the [`flusher`] upserts it into SQL (write-behind) and only then
//!   acknowledges the stream entry. It survives a crash of this service at any point (the
//!   stream keeps it until SQL has it) and a Redis restart as far as Redis's own durability
//!   (AOF) goes. SQL may lag: `worldmesh_persistence_flush_lag_seconds` measures by how much.
//!   When SQL is down the stream grows up to `max_backlog` batches; then checkpoints are
//!   refused with `RESOURCE_EXHAUSTED` and zones retry — never dropped silently.
//! - **embedded** (in-process hot tier): committed in SQLite before the ack (write-through).
//!
//! Loads read the hot tier first and SQL second, and the newer stamp wins, so SQL is the truth
//! when Redis has lost data.
//!
//! # Layout
//!
//! - [`accounts`]: accounts and logins: argon2id hashes, registration, token revocation.
//! - [`store`]: the storage core shared by every front end: [`Store`] over [`hot`] and [`sql`].
//! - [`flusher`]: the consumer-group reader moving checkpoints from the Redis stream into SQL.
//! - [`events`]: the event stream gateways and zones publish game events to (Redis stream, or
//!   in-process), and [`read_models`]: the leaderboard and who's-online projected from it,
//!   checkpointed in SQL, served as JSON on the admin port.
//! - [`ledger`]: the economy's ledger in SQL (items, gold, inventory claims, trades), written
//!   through: the rules of `worldmesh_economy::Ledger`, each as one transaction.
//! - [`service`]: the tonic service, translating gRPC to [`Store`] calls.
//! - [`run`]: serves the gRPC API on a listener until the shutdown token fires.

pub mod accounts;
pub mod cli;
pub mod events;
pub mod flusher;
pub mod hot;
pub mod ledger;
pub mod read_models;
pub mod service;
pub mod sql;
pub mod store;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::persistence::persistence_server::PersistenceServer;

pub use store::{Character, Store};

/// Default bound of the checkpoint stream, in batches.
pub const DEFAULT_MAX_BACKLOG: usize = 10_000;

/// Where the tiers live.
#[derive(Debug, Clone)]
pub struct Config {
    /// `postgres://…` or `sqlite://path` (created if missing).
    pub database_url: String,
    /// `redis://…`, or `None` for the in-process hot tier.
    pub redis_url: Option<String>,
    /// Prepended to every Redis key, so clusters (and tests) can share one Redis.
    pub redis_prefix: String,
    /// Checkpoint batches the Redis stream may hold before new checkpoints are refused
    /// (`RESOURCE_EXHAUSTED`): the bound on how far SQL may fall behind. 10,000 batches of a
    /// zone's 1 s checkpoint is hours of a small cluster, minutes of a large one.
    pub max_backlog: usize,
    /// Run the flusher in this process (tests turn it off to hold checkpoints in Redis).
    pub run_flusher: bool,
    /// argon2id cost of new password hashes: memory in KiB and passes. Existing hashes keep
    /// the parameters they were made with.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

impl Config {
    /// The embedded defaults: an SQLite file and the in-process hot tier.
    pub fn embedded(sqlite_path: &std::path::Path) -> Self {
        Self {
            database_url: format!("sqlite://{}?mode=rwc", sqlite_path.display()),
            redis_url: None,
            redis_prefix: "wm:".into(),
            max_backlog: DEFAULT_MAX_BACKLOG,
            run_flusher: true,
            argon2_memory_kib: accounts::DEFAULT_MEMORY_KIB,
            argon2_iterations: accounts::DEFAULT_ITERATIONS,
        }
    }
}

/// Errors of the persistence library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("SQL migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("checkpoint backlog full: {0}")]
    Backlog(String),
    #[error("corrupt hot-tier record for character {id}: {why}")]
    CorruptHotRecord { id: u64, why: String },
    #[error("unsupported database URL {0:?}: expected postgres:// or sqlite://")]
    UnsupportedDatabase(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("password hashing: {0}")]
    PasswordHash(String),
    #[error("inconsistent data: {0}")]
    Inconsistent(String),
}

/// Connects the tiers, runs migrations, and serves the persistence API on `listener` until
/// `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = Store::connect(&config).await?;
    serve(listener, store, shutdown).await
}

/// Serves an already connected [`Store`].
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr()?;
    // Connected to both tiers (`Store::connect` ran the migrations): ready.
    worldmesh_runtime::admin::Readiness::new("persistence connected").set(true);
    tracing::info!(%addr, sql = store.sql_backend(), hot = store.hot_backend(), "persistence listening");
    let models = read_models::Shared::default();
    read_models::serve_views(&models);
    let projecting = CancellationToken::new();
    let projector = tokio::spawn(read_models::project(
        store.sql().clone(),
        store.events().clone(),
        models,
        projecting.clone(),
    ));
    let router = worldmesh_runtime::service::grpc_router().add_service(PersistenceServer::new(
        service::PersistenceService::new(store.clone()),
    ));
    let served =
        worldmesh_runtime::service::serve_grpc(router, listener, shutdown.cancelled_owned()).await;
    // The projector's last checkpoint goes in before SQL closes.
    projecting.cancel();
    let _ = projector.await;
    served?;
    store.close().await;
    tracing::info!("persistence stopped");
    Ok(())
}
