//! The zone server: the authoritative simulation of the cells the coordinator assigns it.
//!
//! A zone registers with the world coordinator and keeps its lease by heartbeat. Gateways open
//! one long-lived gRPC link each (`ZoneLink.Link`) and multiplex their players over it: joins,
//! leaves, inputs and chat in; per-tick batches of already-encoded client frames out, which the
//! gateway forwards to clients without decoding. Characters are loaded from persistence when
//! they join and saved at every checkpoint interval and when they leave.
//!
//! # Layout
//!
//! - [`zone`]: the sans-IO zone core, [`zone::Zone`]: the simulation, the zone's side of the
//!   handoff saga, joins, the cell map and border rules. Takes commands and the time, returns
//!   what must be sent, saved or loaded; no I/O, unit-tested without sockets.
//! - [`sim`]: the bevy_ecs world and its systems, stepped by the zone core.
//! - [`inventory`]: the inventories of the characters here, claimed from the economy's
//!   ledger when they arrive (sans-IO, reconciled by the zone core).
//! - [`trades`]: trades between players, hosted by the opener's zone, relayed to the
//!   other party's zone by engine mail, committed by the ledger (sans-IO).
//! - [`ground`]: items lying on the ground in this zone's cells: drops, pick-ups (once,
//!   by the ledger), reads of the ledger's ground when cells change hands (sans-IO).
//! - [`character`]: a character as the core knows it (typed ids), converted to and from
//!   protobuf only where it is loaded, saved or handed off.
//! - [`command`]: what the tasks around the tick thread ask of it, one enum on one channel.
//! - [`driver`]: the tick thread: keeps the tick schedule, feeds the zone core its commands
//!   and carries out its outputs (gateway links, coordinator session, saver, loads, ghosts).
//! - [`pacer`]: the tick schedule under load (sans-IO): time dilation instead of late ticks
//!   run back to back.
//! - [`coordinator`]: the zone's session with the coordinator (handoff messages both ways)
//!   and its map watch.
//! - [`link`]: the tonic `ZoneLink` service, one task per gateway link, and the audits load
//!   tests read.
//! - [`saver`]: the checkpoint writer: batches to persistence with bounded retries.
//! - [`run`]: wires them together and registers with the coordinator.
//! - [`testing`]: for a game's tests: a [`sim::Sim`] watched through one player's client.

pub mod character;
pub mod cli;
pub mod command;
pub mod coordinator;
pub mod driver;
pub mod ground;
pub mod inventory;
pub mod link;
pub mod pacer;
pub mod peers;
pub mod saver;
pub mod sim;
pub mod testing;
pub mod trades;
pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::WorldBounds;
use worldmesh_protocol::grpc::coordinator::{
    self as coord_pb, coordinator_client::CoordinatorClient,
};
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::grpc::zone::zone_link_server::ZoneLinkServer;
use worldmesh_runtime::Channel;

/// How long a stopping zone waits for its last checkpoints to be acknowledged: well inside
/// the termination grace period a Kubernetes pod gets.
pub const SHUTDOWN_SAVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a draining zone waits for its characters to leave by handoff before it stops
/// anyway (saving what is left). With the save timeout this fits a 60 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Zone server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Stable name; a zone re-registering under the same name replaces its old entry.
    pub name: String,
    /// Address other processes reach this zone at; defaults to `http://<listener address>`.
    pub advertise: Option<String>,
    pub coordinator_url: String,
    pub persistence_url: String,
    pub view_radius: f32,
    pub chat_radius: f32,
    /// Largest snapshot frame, bytes: one QUIC datagram. quinn allows ~1,150 bytes of datagram
    /// payload at its default 1,200-byte initial MTU; 1,100 leaves room for path variations.
    pub snapshot_budget_bytes: usize,
    pub checkpoint_interval: Duration,
    pub capacity: u32,
    /// Cells nobody may walk into.
    pub collision: sim::movement::CollisionMap,
    /// Gateways must present this secret to open a link (`None`: anyone may; development only).
    pub cluster_secret: Option<String>,
    /// On shutdown, hand every character to other zones first (live, no rollback) instead of
    /// saving and dropping them. Off when the whole cluster stops at once.
    pub drain_on_shutdown: bool,
    /// Counters and audits the tick thread publishes (shared with an in-process caller).
    pub stats: Arc<zone::Stats>,
    /// The game every world of this zone runs (`NoGame`: bare movement and chat).
    pub game: worldmesh_game::GameRef,
    /// Observers' snapshots: the cap on what each replicates, level of detail, threads.
    pub snapshots: sim::snapshot::SnapshotConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "zone".into(),
            advertise: None,
            coordinator_url: "http://127.0.0.1:7100".into(),
            persistence_url: "http://127.0.0.1:7200".into(),
            view_radius: 100.0,
            chat_radius: 50.0,
            snapshot_budget_bytes: 1100,
            checkpoint_interval: Duration::from_secs(1),
            capacity: 1000,
            collision: sim::movement::CollisionMap::default(),
            cluster_secret: None,
            drain_on_shutdown: true,
            stats: Arc::default(),
            game: worldmesh_game::GameRef::default(),
            snapshots: Default::default(),
        }
    }
}

/// Errors of the zone server library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("coordinator refused: {0}")]
    Coordinator(#[from] tonic::Status),
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    #[error("the coordinator sent no world geometry")]
    NoGeometry,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the tick thread panicked")]
    TickThreadPanicked,
    #[error("the game cannot be installed: {0}")]
    Game(#[from] worldmesh_game::GameError),
}

pub(crate) fn channel(url: &str) -> Result<Channel, Error> {
    worldmesh_runtime::grpc_channel(url).map_err(Error::InvalidUrl)
}

/// The lease this zone holds, as granted by the coordinator.
#[derive(Debug, Clone)]
pub struct Registration {
    pub zone_id: u64,
    pub lease_generation: u64,
    pub heartbeat_interval: Duration,
    pub world: coord_pb::WorldGeometry,
}

async fn register(
    coordinator: &mut CoordinatorClient<Channel>,
    config: &Config,
    advertise: &str,
) -> Result<Registration, Error> {
    let reply = coordinator
        .register_zone(coord_pb::RegisterZoneRequest {
            name: config.name.clone(),
            address: advertise.to_owned(),
            capacity: config.capacity,
        })
        .await?
        .into_inner();
    Ok(Registration {
        zone_id: reply.zone_id,
        lease_generation: reply.lease_generation,
        heartbeat_interval: Duration::from_millis(reply.heartbeat_interval_ms.max(50) as u64),
        world: reply.world.ok_or(Error::NoGeometry)?,
    })
}

/// Registers with the coordinator, retrying until it answers or `shutdown` fires.
async fn register_with_retry(
    coordinator: &mut CoordinatorClient<Channel>,
    config: &Config,
    advertise: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Registration>, Error> {
    let mut delay = Duration::from_millis(100);
    loop {
        match register(coordinator, config, advertise).await {
            Ok(r) => return Ok(Some(r)),
            Err(Error::NoGeometry) => return Err(Error::NoGeometry),
            Err(e) => tracing::warn!(error = %e, "cannot register with the coordinator; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Runs a zone server on `listener` until `shutdown` is cancelled. On shutdown it first
/// drains (if configured): its cells go to other zones and its characters follow by live
/// handoff; whatever is left is saved before this returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr: SocketAddr = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        let ip = if addr.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            addr.ip()
        };
        format!("http://{}", SocketAddr::new(ip, addr.port()))
    });
    let mut coordinator = CoordinatorClient::new(channel(&config.coordinator_url)?);
    let persistence = PersistenceClient::new(channel(&config.persistence_url)?);
    let ready =
        worldmesh_runtime::admin::Readiness::new(format!("zone {} registered", config.name));
    let Some(reg) = register_with_retry(&mut coordinator, &config, &advertise, &shutdown).await?
    else {
        return Ok(());
    };
    tracing::info!(zone = reg.zone_id, name = %config.name, %advertise, "zone registered");
    ready.set(true);
    let _not_draining = worldmesh_runtime::admin::Readiness::until_shutdown(
        format!("zone {} not draining", config.name),
        shutdown.clone(),
    );
    // Everything inside stops on `stop`, which fires after the drain.
    let stop = CancellationToken::new();
    let w = &reg.world;
    let sim_config = sim::SimConfig {
        tick_rate_hz: w.tick_rate_hz.max(1),
        bounds: WorldBounds {
            min_x: w.min_x,
            min_y: w.min_y,
            max_x: w.max_x,
            max_y: w.max_y,
        },
        view_radius: config.view_radius,
        snapshot_budget_bytes: config.snapshot_budget_bytes,
        chat_radius: config.chat_radius,
        collision: config.collision.clone(),
        game: config.game.clone(),
        snapshots: config.snapshots,
    };
    let zone_id = Arc::new(AtomicU64::new(reg.zone_id));
    let (reg_tx, reg_rx) = watch::channel(reg.clone());

    let links = Arc::new(link::Links::default());
    let stats = config.stats.clone();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(driver::COMMAND_QUEUE);
    let (save_tx, save_rx) = tokio::sync::mpsc::channel(saver::SAVE_QUEUE);
    let (coord_tx, coord_rx) = tokio::sync::mpsc::channel(driver::TO_COORDINATOR_QUEUE);
    let (urgent_tx, urgent_rx) = std::sync::mpsc::sync_channel(driver::TO_COORDINATOR_QUEUE);
    let (ghost_tx, ghost_rx) = tokio::sync::mpsc::channel(256);
    let peers = tokio::spawn(peers::run(
        ghost_rx,
        config.cluster_secret.clone(),
        stop.clone(),
    ));
    let saver = tokio::spawn(saver::run(
        persistence.clone(),
        save_rx,
        links.clone(),
        cmd_tx.clone(),
    ));
    let tick_thread = driver::spawn(
        driver::DriverConfig {
            sim: sim_config,
            checkpoint_interval: config.checkpoint_interval,
            zone_id: zone_id.clone(),
            tick_origin_unix_ms: w.tick_origin_unix_ms,
            capacity: config.capacity,
            border_margin: config.view_radius * (1.0 + sim::snapshot::HYSTERESIS),
        },
        driver::Channels {
            commands: cmd_rx,
            from_coordinator: urgent_rx,
            commands_tx: cmd_tx.clone(),
            saves: save_tx,
            to_coordinator: coord_tx,
            persistence: persistence.clone(),
            ghosts: ghost_tx,
            events: worldmesh_runtime::events::EventSink::start(
                channel(&config.persistence_url)?,
                stop.clone(),
            ),
        },
        links.clone(),
        stats.clone(),
        stop.clone(),
    )?;
    let session = tokio::spawn(coordinator::run_session(
        coordinator.clone(),
        reg_rx,
        coord_rx,
        cmd_tx.clone(),
        urgent_tx,
        stop.clone(),
    ));
    let map_watch = tokio::spawn(coordinator::watch_map(
        coordinator.clone(),
        cmd_tx.clone(),
        stop.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat_loop(
        coordinator.clone(),
        config.clone(),
        advertise.clone(),
        reg_tx.clone(),
        stats.clone(),
        cmd_tx.clone(),
        links.clone(),
        zone_id.clone(),
        stop.clone(),
    ));
    let mut deregister = coordinator.clone();
    let final_reg = reg_tx.subscribe();
    let drain = tokio::spawn(drain_then_stop(
        coordinator,
        config.drain_on_shutdown,
        reg_tx,
        stats.clone(),
        shutdown.clone(),
        stop.clone(),
    ));

    if config.cluster_secret.is_none() {
        tracing::warn!(
            "no cluster secret: any process that can reach this zone may open a gateway link"
        );
    }
    let service = link::LinkService::new(
        cmd_tx,
        links.clone(),
        persistence,
        stats.clone(),
        stop.clone(),
    );
    tracing::info!(%addr, zone = reg.zone_id, "zone link listening");
    let router =
        worldmesh_runtime::service::grpc_router().add_service(ZoneLinkServer::with_interceptor(
            service,
            worldmesh_runtime::CheckSecret::new(config.cluster_secret.as_deref()),
        ));
    let served =
        worldmesh_runtime::service::serve_grpc(router, listener, stop.clone().cancelled_owned())
            .await;
    stop.cancel();
    heartbeat.abort();
    drain.abort();
    // The tick thread saves every character as it stops; wait for it, then for the saver to
    // drain what it was handed, then for the last releases to reach the coordinator.
    let joined = tokio::task::spawn_blocking(move || tick_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        return Err(Error::TickThreadPanicked);
    }
    // The saver retries until persistence acknowledges; at shutdown that wait is bounded so
    // a zone whose persistence is gone still exits (what it could not save is logged).
    if tokio::time::timeout(SHUTDOWN_SAVE_TIMEOUT, saver)
        .await
        .is_err()
    {
        tracing::error!(
            "persistence did not acknowledge the final checkpoint within {SHUTDOWN_SAVE_TIMEOUT:?}; exiting without it"
        );
    }
    session.abort();
    map_watch.abort();
    peers.abort();
    // Everything is saved and released: leave the map now rather than when the lease lapses.
    let r = final_reg.borrow().clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        deregister.deregister(coord_pb::DrainRequest {
            zone_id: r.zone_id,
            lease_generation: r.lease_generation,
        }),
    )
    .await;
    served?;
    tracing::info!(zone = zone_id.load(Ordering::Relaxed), "zone stopped");
    Ok(())
}

/// Waits for `shutdown`; then, if asked to, drains the zone (see [`DRAIN_TIMEOUT`]) and
/// fires `stop`.
async fn drain_then_stop(
    mut coordinator: CoordinatorClient<Channel>,
    drain: bool,
    reg: watch::Sender<Registration>,
    stats: Arc<zone::Stats>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    shutdown.cancelled().await;
    if drain {
        let r = reg.borrow().clone();
        match coordinator
            .drain(coord_pb::DrainRequest {
                zone_id: r.zone_id,
                lease_generation: r.lease_generation,
            })
            .await
        {
            Ok(_) => {
                let started = tokio::time::Instant::now();
                tracing::info!(
                    zone = r.zone_id,
                    "draining: handing every character to other zones"
                );
                loop {
                    let left = stats.characters.load(Ordering::Relaxed);
                    if left == 0 {
                        tracing::info!(zone = r.zone_id, took = ?started.elapsed(), "drained");
                        break;
                    }
                    if started.elapsed() > DRAIN_TIMEOUT {
                        tracing::warn!(zone = r.zone_id, left, "drain timed out; saving the rest");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot drain; saving every character instead"),
        }
    }
    stop.cancel();
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    mut coordinator: CoordinatorClient<Channel>,
    config: Config,
    advertise: String,
    reg_tx: watch::Sender<Registration>,
    stats: Arc<zone::Stats>,
    commands: tokio::sync::mpsc::Sender<command::Command>,
    links: Arc<link::Links>,
    zone_id: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut reg = reg_tx.borrow().clone();
    let mut tick = tokio::time::interval(reg.heartbeat_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = coord_pb::HeartbeatRequest {
            zone_id: reg.zone_id,
            lease_generation: reg.lease_generation,
            entities: stats.entities.load(Ordering::Relaxed),
            players: stats.players.load(Ordering::Relaxed),
            tick_p99_ms: stats.tick_p99_us.load(Ordering::Relaxed) as f32 / 1000.0,
            time_dilation: stats.time_dilation_milli.load(Ordering::Relaxed) as f32 / 1000.0,
            cells: stats
                .cell_loads
                .lock()
                .map(|l| {
                    l.iter()
                        .map(|&(cell, players, entities)| coord_pb::CellLoad {
                            cell,
                            players,
                            entities,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        // Per zone name, so one process running several zones (`worldmesh local`) exports
        // each; the HPA scales zones on the players gauge.
        metrics::gauge!("worldmesh_zone_players", "zone" => config.name.clone())
            .set(req.players as f64);
        metrics::gauge!("worldmesh_zone_entities", "zone" => config.name.clone())
            .set(req.entities as f64);
        match coordinator.heartbeat(req).await {
            Ok(r) if r.get_ref().lease_valid => {}
            Ok(_) => {
                tracing::warn!(zone = reg.zone_id, "lease lost; registering again");
                // Before registering: a gateway that sees the new registration opens a new
                // link, which must not be among those closed.
                links.close_all();
                if let Ok(Some(new)) =
                    register_with_retry(&mut coordinator, &config, &advertise, &shutdown).await
                {
                    zone_id.store(new.zone_id, Ordering::Relaxed);
                    let _ = commands
                        .send(command::Command::LeaseLost {
                            zone_id: worldmesh_protocol::ids::ZoneId(new.zone_id),
                        })
                        .await;
                    reg = new.clone();
                    reg_tx.send_replace(new);
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
