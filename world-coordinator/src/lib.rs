//! The world coordinator: the one place that knows which zone server owns which part of the
//! world, and which zone has authority over each entity.
//!
//! The world is a rectangle cut into square cells. Zone servers register here and hold a lease
//! that they renew by heartbeat. Cells are spread over the live zones that are not draining:
//! by load ([`balance`]: contiguous ranges of a Hilbert curve whose cuts move a few cells at a
//! time towards even load, from what zones report in their heartbeats; pins by operators), or
//! as fixed stripes of columns; zones and gateways follow the map on a watch stream. A zone that finds a character standing in another zone's
//! cell hands it over through the **handoff saga** ([`worldmesh_world::handoff`]): freeze at the source, prepare
//! at the target, durable commit of the new authority epoch here, activate at the target. A
//! zone whose lease lapses is failed over: its entities go to survivors at a new epoch, which
//! restore them from their last checkpoint. Zones that register get cells (and the characters
//! in them follow by handoff); zones that drain give theirs away the same way.
//!
//! Durability: zones (ids, lease generations, draining), authority rows and the world's tick
//! origin live in SQL, in tables the coordinator migrates itself ([`store`]). A restarted coordinator resumes
//! from them; zones re-sync by reporting what they hold on their session stream.
//!
//! # Layout
//!
//! - The saga's core ([`worldmesh_world::handoff::Coordinator`]) and the geometry live in the
//!   `worldmesh-world` crate, shared with the zones; the simulation in
//!   `zone-server/tests/simulation.rs` drives that core together with the real zone core.
//! - [`map`]: the sans-IO registry: zones, leases and the cell → zone assignment.
//! - [`balance`]: the sans-IO assignment of cells by load: ranges of a Hilbert curve whose
//!   cuts move a few cells at a time towards even load, with pins; the map holds one when
//!   balancing, the state task rebalances it every few seconds and stores it in SQL.
//! - [`state`]: the one task owning both cores: batches requests, writes authority rows in one
//!   transaction, then sends.
//! - [`store`]: the SQL tables.
//! - [`service`]: the tonic service, a thin shell over the state task and the published map.
//! - [`run`]: serves the gRPC API on a listener until the shutdown token fires.

pub mod balance;
pub mod cli;
pub mod map;
pub mod service;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::coordinator::coordinator_server::CoordinatorServer;

pub use map::WorldMap;
pub use worldmesh_world::Geometry;

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub geometry: Geometry,
    /// How long a zone stays in the map without a heartbeat.
    pub lease_ttl: Duration,
    /// How often zones are told to heartbeat; well under `lease_ttl` so one lost beat is harmless.
    pub heartbeat_interval: Duration,
    /// Where the map, leases and authority epochs are kept (`postgres://…` or `sqlite:…`).
    /// `None` keeps them in memory only: a restart then forgets every authority (development).
    pub database_url: Option<String>,
    /// NPCs in the world (not per zone): the coordinator places each in the zone owning its
    /// spawn point and keeps it in play through failovers and shutdowns.
    pub npcs: u64,
    /// How cells are assigned: by load, or in fixed stripes.
    pub balance: BalanceSettings,
}

/// How the coordinator assigns cells to zones (see [`balance`]).
#[derive(Debug, Clone)]
pub struct BalanceSettings {
    /// By load (ranges of a Hilbert curve, rebalanced from the zones' heartbeats); `false`:
    /// fixed column stripes, one per zone.
    pub enabled: bool,
    pub config: balance::BalanceConfig,
    /// How often the cuts may move (with `config.max_step`, the rate limit).
    pub every: Duration,
    /// Cells pinned to zones by name from the start (`(cell_x, cell_y)`, zone name).
    pub pins: Vec<((u32, u32), String)>,
}

impl Default for BalanceSettings {
    /// Stripes, until balancing stops moving crowds back and forth (BENCHMARKS.md); the
    /// coordinator and `worldmesh local` balance with `--balance`.
    fn default() -> Self {
        Self {
            enabled: false,
            config: balance::BalanceConfig::default(),
            every: Duration::from_secs(5),
            pins: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            geometry: Geometry::default(),
            lease_ttl: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(500),
            database_url: None,
            npcs: 0,
            balance: BalanceSettings::default(),
        }
    }
}

/// Errors of the coordinator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("SQL migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (want postgres://… or sqlite:…): {0}")]
    UnsupportedDatabase(String),
    /// SQL refused an authority write and then could not be read back: memory may hold what
    /// SQL does not, so the coordinator stops; a restart resumes from SQL, which is safe.
    #[error("authority cannot be read back from SQL: {0}")]
    AuthorityUnreadable(#[source] sqlx::Error),
}

impl Error {
    /// The process exit code for this error: 70 (`EX_SOFTWARE`, "restart me") when the
    /// coordinator stopped to resume from SQL, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::AuthorityUnreadable(_) => 70,
            _ => 1,
        }
    }
}

/// Serves the coordinator on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr: SocketAddr = listener.local_addr()?;
    let store = match &config.database_url {
        Some(url) => Some(store::Store::connect(url).await?),
        None => {
            tracing::warn!("no database: authority and leases live in memory only");
            None
        }
    };
    let mut map = WorldMap::new(config.geometry.clone(), config.lease_ttl);
    if config.balance.enabled {
        map = map.with_balancing();
        for (cell, zone) in &config.balance.pins {
            if !map.pin(*cell, Some(zone)) {
                tracing::warn!(cell_x = cell.0, cell_y = cell.1, %zone, "pin off the grid; ignored");
            }
        }
    }
    let (published_tx, published_rx) = tokio::sync::watch::channel(Arc::new(state::Published {
        map: Default::default(),
    }));
    let state = state::State::load(
        map,
        store,
        config.npcs,
        config.balance.clone(),
        published_tx,
    )
    .await?;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(state::REQUEST_QUEUE);
    // Stops the server on shutdown, or when the state task gives up (its error is returned).
    let stop = shutdown.child_token();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let result = state.run(req_rx, stop.clone()).await;
            stop.cancel();
            result
        }
    });
    let svc = service::CoordinatorService::new(req_tx, published_rx, config);
    tracing::info!(%addr, "world coordinator listening");
    // State loaded from SQL (or fresh): ready to serve.
    worldmesh_runtime::admin::Readiness::new("coordinator serving").set(true);
    let router = worldmesh_runtime::service::grpc_router().add_service(CoordinatorServer::new(svc));
    let served =
        worldmesh_runtime::service::serve_grpc(router, listener, stop.clone().cancelled_owned())
            .await;
    stop.cancel();
    if let Ok(Err(e)) = task.await {
        return Err(e);
    }
    served?;
    tracing::info!("world coordinator stopped");
    Ok(())
}
