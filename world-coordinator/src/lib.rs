//! The world coordinator: the one place that knows which zone server owns which part of the
//! world.
//!
//! The world is a rectangle cut into square cells. Zone servers register here and hold a lease
//! that they renew by heartbeat; a zone whose lease lapses is dropped from the map. Every cell
//! is owned by exactly one live zone: for now cells are spread over the registered zones as
//! contiguous stripes of columns, recomputed whenever the set of live zones changes. Gateways
//! ask [`LocateZone`](worldmesh_protocol::grpc::coordinator) where a character stands to learn
//! which zone should simulate it.
//!
//! # Layout
//!
//! - [`map`]: the sans-IO core: zones, leases and the cell → zone assignment, driven with an
//!   explicit `now` so tests control time.
//! - [`service`]: the tonic service, a thin shell that locks the map and translates messages.
//! - [`run`]: serves the gRPC API on a listener until the shutdown token fires.

mod convert;
pub mod handoff;
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

pub use convert::{to_coordinator_pb, to_zone_core};
pub use map::{Geometry, WorldMap};
pub use service::locate_in;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            geometry: Geometry::default(),
            lease_ttl: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(500),
            database_url: None,
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
    #[error("storage: {0}")]
    Storage(#[from] worldmesh_persistence::Error),
}

/// Serves the coordinator on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr: SocketAddr = listener.local_addr()?;
    let store = match &config.database_url {
        Some(url) => Some(store::Store::new(
            worldmesh_persistence::sql::Sql::connect(url).await?,
        )),
        None => {
            tracing::warn!("no database: authority and leases live in memory only");
            None
        }
    };
    let map = WorldMap::new(config.geometry.clone(), config.lease_ttl);
    let (published_tx, published_rx) = tokio::sync::watch::channel(Arc::new(state::Published {
        map: Default::default(),
    }));
    let state = state::State::load(map, store, published_tx).await?;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(state::REQUEST_QUEUE);
    let task = tokio::spawn(state.run(req_rx, shutdown.clone()));
    let svc = service::CoordinatorService::new(req_tx, published_rx, config);
    tracing::info!(%addr, "world coordinator listening");
    tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(svc))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await?;
    task.abort();
    tracing::info!("world coordinator stopped");
    Ok(())
}
