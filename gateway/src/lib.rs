//! The gateway: the QUIC edge between game clients and the zone servers.
//!
//! A client opens a QUIC connection (TLS 1.3, ALPN `worldmesh/1`), then a bidirectional
//! *control stream* carrying reliable frames (Hello/Login, Welcome, Session, Chat, Kick, Bye);
//! inputs and snapshots travel as datagrams. On Login the gateway checks the password (through
//! persistence, which keeps argon2id hashes) or the session token (locally, see [`token`]) and
//! loads the character; a guest Hello (development only) loads or creates it by name. Then it
//! asks the coordinator which zone owns its position, and joins it to that zone
//! over the gateway's one long-lived link to that zone. From then on it relays: inputs are
//! decoded (to validate them) and forwarded; snapshot frames from the zone are forwarded to the
//! client as they are, without decoding.
//!
//! A client that misbehaves (malformed, oversized or unexpected frames, wrong version) gets a
//! typed [`Kick`](worldmesh_protocol::Kick) and loses its connection; nobody else notices.
//!
//! Players follow their characters: a zone that receives one by handoff says so on its link
//! (`Attached`) and the session re-routes its inputs there; a zone that is lost (its link
//! breaks, it leaves the coordinator's map, or it drops a character it no longer owns) makes
//! the gateway relocate the player through the coordinator, without the client reconnecting.
//! Only the routed zone's snapshots reach a client, and any player left without snapshots for
//! [`zones::STARVED_AFTER`] is relocated too, whatever the cause: a route can be wrong for
//! reasons no message announces (a hung zone, a failover that restored a character elsewhere).
//!
//! # Layout
//!
//! - [`checks`]: what a client may send and when, as pure functions (fuzzed in `fuzz/`).
//! - [`token`]: session tokens (HMAC-SHA256 with the cluster secret), verified locally.
//! - [`tls`]: certificates (PEM files or a generated development certificate).
//! - [`chat`]: zone, world and whisper chat through a bus every gateway reads (Redis
//!   streams in a cluster, in-process otherwise); mutes and the chat rate limit.
//! - [`zones`]: the zone links (one per zone, opened for every zone in the map), routing of
//!   zone frames to sessions, re-routing and relocation.
//! - [`session`]: one task per client connection: login, relay, logout.
//! - [`run`]: the accept loop with its connection limit.

pub mod chat;
pub mod checks;
pub mod cli;
pub mod session;
pub mod tls;
pub mod token;
pub mod zones;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, WorldGeometry, coordinator_client::CoordinatorClient,
};
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_runtime::Channel;

pub use tls::TlsFiles;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub coordinator_url: String,
    pub persistence_url: String,
    /// Certificate and key; `None` generates a development certificate at start.
    pub tls: Option<TlsFiles>,
    /// Connections beyond this get `ServerFull`.
    pub max_connections: usize,
    /// A client silent this long is disconnected (QUIC idle timeout; clients keep alive).
    pub idle_timeout: Duration,
    /// Time a new connection has to complete its Hello.
    pub login_timeout: Duration,
    /// UDP socket receive and send buffers, bytes. At 20 Hz many clients send in the same
    /// millisecond; with the kernel's default receive buffer datagrams were dropped at 500
    /// clients on a 2-core machine.
    pub socket_buffer_bytes: usize,
    /// Make unvalidated sources prove their address with a QUIC Retry before any handshake
    /// work (costs honest clients one round trip; stops spoofed-source handshake floods).
    pub address_validation: bool,
    /// Inputs per second a client may send, sustained (token bucket rate).
    pub input_rate_hz: f64,
    /// Inputs a client may send in a burst above the rate.
    pub input_burst: f64,
    /// Inputs dropped by the rate limit within one second beyond which the client is kicked
    /// with `RateLimited`.
    pub flood_kick_after: u32,
    /// Secret presented to zones on every link (must match theirs); also the key of session
    /// tokens, so every gateway of a cluster accepts every other's tokens. Without one,
    /// tokens are signed with a random key and valid on this gateway only.
    pub cluster_secret: Option<String>,
    /// Accept guest logins (`Hello`: a name, no password). Development clusters and tests;
    /// off in production, where every player has an account.
    pub allow_guests: bool,
    /// How long a session token stays valid.
    pub token_ttl: Duration,
    /// On shutdown, how long clients get to leave (their characters saved) before the gateway
    /// exits anyway.
    pub drain_timeout: Duration,
    /// Where zone, world and whisper chat travels between gateways: Redis in a cluster; by
    /// default an in-process bus, which reaches this process's gateways only.
    pub chat_bus: chat::bus::ChatBus,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "gateway".into(),
            coordinator_url: "http://127.0.0.1:7100".into(),
            persistence_url: "http://127.0.0.1:7200".into(),
            tls: None,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            socket_buffer_bytes: 8 << 20,
            address_validation: true,
            // Three times the 20 Hz a client needs, so a client with a faster frame clock (60 Hz)
            // is never limited.
            input_rate_hz: 60.0,
            input_burst: 30.0,
            flood_kick_after: 120,
            cluster_secret: None,
            allow_guests: false,
            token_ttl: Duration::from_secs(24 * 3600),
            drain_timeout: Duration::from_secs(15),
            chat_bus: chat::bus::ChatBus::local(),
        }
    }
}

/// Errors of the gateway library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn channel(url: &str) -> Result<Channel, Error> {
    worldmesh_runtime::grpc_channel(url).map_err(Error::InvalidUrl)
}

/// State shared by every session of this gateway.
pub struct Gateway {
    pub config: Config,
    pub coordinator: CoordinatorClient<Channel>,
    pub persistence: PersistenceClient<Channel>,
    pub zones: zones::ZoneLinks,
    /// Live sessions by player id, for routing zone frames.
    pub sessions: DashMap<u64, session::SessionHandle>,
    /// Character name → the session holding it, so one character is never played twice.
    pub names: DashMap<String, session::NameClaim>,
    pub next_player: AtomicU64,
    /// Signs and verifies session tokens.
    pub tokens: token::TokenKey,
    /// World geometry, fetched from the coordinator at start.
    pub world: tokio::sync::OnceCell<WorldGeometry>,
    pub shutdown: CancellationToken,
    /// Origin of [`Gateway::clock_ms`].
    pub started: std::time::Instant,
    /// Chat lines on their way to the bus ([`chat::publish`]).
    pub chat_out: tokio::sync::mpsc::Sender<chat::Outgoing>,
    /// The bus, for what is not a line (silences).
    pub chat: Arc<chat::bus::Publisher>,
    /// Logins, logouts and zone changes, for the read models.
    pub events: worldmesh_runtime::events::EventSink,
}

impl Gateway {
    /// Milliseconds since the gateway started: a cheap clock sessions stamp snapshots with.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The world geometry, asked of the coordinator once and kept.
    pub async fn world(&self) -> Result<&WorldGeometry, tonic::Status> {
        self.world
            .get_or_try_init(|| async {
                let reply = self
                    .coordinator
                    .clone()
                    .get_world(GetWorldRequest {})
                    .await?
                    .into_inner();
                reply
                    .world
                    .ok_or_else(|| tonic::Status::internal("coordinator sent no geometry"))
            })
            .await
    }
}

/// Binds the gateway's UDP socket with enlarged kernel buffers (see
/// [`Config::socket_buffer_bytes`]); logs what the kernel granted (it caps at `rmem_max`).
pub fn bind_udp(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
        tracing::warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    tracing::info!(
        %addr,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "gateway UDP socket bound"
    );
    Ok(socket.into())
}

/// Player ids are unique across gateways, because zones key players by id and one zone serves
/// many gateways: each gateway numbers its players from a random 32-bit prefix (a collision
/// needs two of a cluster's gateways to draw the same of 4 billion prefixes).
fn player_id_base(name: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(name.as_bytes());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    ((h.finish() as u32 as u64) << 32) | 1
}

/// Bytes of datagrams (snapshots, events) one connection holds while its congestion window
/// is full: about three full snapshots (1,100 bytes each, PROTOCOL.md § 7). Beyond, the
/// oldest are dropped (`quinn::Connection::send_datagram`).
pub const DATAGRAM_SEND_BUFFER: usize = 4 * 1024;

/// Bytes of input datagrams one connection holds until the gateway reads them: about a
/// second of inputs at 20 Hz (each ~30 bytes plus quinn's per-datagram overhead). Beyond,
/// the oldest are dropped.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 2 * 1024;

/// Builds the QUIC server endpoint on an already bound UDP socket.
pub fn endpoint(socket: std::net::UdpSocket, config: &Config) -> Result<quinn::Endpoint, Error> {
    let identity = match &config.tls {
        Some(files) => tls::Identity::load(files)?,
        None => tls::Identity::self_signed()?,
    };
    let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(identity)?);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            config
                .idle_timeout
                .try_into()
                .map_err(|_| Error::Tls("idle timeout out of range".into()))?,
        ))
        // Clients open exactly one stream (the control stream); no reason to allow more.
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Inputs waiting to be read: the newest wins and the rest only carry acks, so a
        // second's worth is plenty (64 KiB held 40 s of them: a gateway short of CPU then
        // relayed old inputs first, and every ack was seconds late).
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        // Snapshots waiting for the congestion window: a newer one makes the older useless,
        // so hold a few and drop the oldest (quinn's default, 1 MiB, is a minute of them:
        // under overload the queue, not the server, set the latency).
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    server.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Serves clients on `socket` until `shutdown` is cancelled, then kicks every client with
/// `ShuttingDown` and waits (bounded) for their characters to be saved.
pub async fn run(
    socket: std::net::UdpSocket,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    socket.set_nonblocking(true)?;
    let addr = socket.local_addr()?;
    let endpoint = endpoint(socket, &config)?;
    let (chat_out, chat_queue) = tokio::sync::mpsc::channel(chat::PUBLISH_QUEUE);
    let chat_lines = chat::bus::subscribe(&config.chat_bus, shutdown.clone());
    let publisher = Arc::new(chat::bus::Publisher::new(&config.chat_bus));
    let gateway = Arc::new(Gateway {
        coordinator: CoordinatorClient::new(channel(&config.coordinator_url)?),
        persistence: PersistenceClient::new(channel(&config.persistence_url)?),
        zones: zones::ZoneLinks::default(),
        sessions: DashMap::new(),
        names: DashMap::new(),
        next_player: AtomicU64::new(player_id_base(&config.name)),
        tokens: match &config.cluster_secret {
            Some(s) => token::TokenKey::from_secret(s.as_bytes()),
            None => {
                tracing::warn!("no cluster secret: session tokens are valid on this gateway only");
                token::TokenKey::random()
            }
        },
        world: tokio::sync::OnceCell::new(),
        shutdown: shutdown.clone(),
        started: std::time::Instant::now(),
        chat_out,
        chat: publisher.clone(),
        events: worldmesh_runtime::events::EventSink::start(
            channel(&config.persistence_url)?,
            shutdown.clone(),
        ),
        config,
    });
    tokio::spawn(chat::publish(gateway.clone(), publisher, chat_queue));
    tokio::spawn(chat::deliver(gateway.clone(), chat_lines));
    tokio::spawn(zones::link_all_zones(gateway.clone()));
    tokio::spawn(zones::watch_starved(gateway.clone()));
    // Ready once the coordinator has answered: before that no login can succeed.
    let ready = worldmesh_runtime::admin::Readiness::new(format!(
        "gateway {} knows the world",
        gateway.config.name
    ));
    tokio::spawn({
        let gateway = gateway.clone();
        async move {
            while gateway.world().await.is_err() {
                tokio::select! {
                    _ = gateway.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            ready.set(true);
        }
    });
    let _not_draining = worldmesh_runtime::admin::Readiness::until_shutdown(
        format!("gateway {} not draining", gateway.config.name),
        shutdown.clone(),
    );
    let limit = Arc::new(Semaphore::new(gateway.config.max_connections));
    let tasks = tokio_util::task::TaskTracker::new();
    tracing::info!(%addr, name = %gateway.config.name, "gateway listening (QUIC)");
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        if gateway.config.address_validation && !incoming.remote_address_validated() {
            // Stateless: the client must echo the Retry token before we keep any state.
            metrics::counter!("worldmesh_gateway_retries_sent_total").increment(1);
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "retry not possible");
            }
            continue;
        }
        let permit = limit.clone().try_acquire_owned().ok();
        tasks.spawn(session::handle(gateway.clone(), incoming, permit));
    }
    // Drain: refuse new connections at the QUIC level (the load balancer sends clients
    // elsewhere); sessions see the cancelled token, kick their clients with `ShuttingDown`
    // (clients reconnect with their session token, to another gateway) and save their
    // characters.
    endpoint.set_server_config(None);
    tasks.close();
    let draining = tasks.len();
    tracing::info!(sessions = draining, "gateway draining");
    if tokio::time::timeout(gateway.config.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            timeout_s = gateway.config.drain_timeout.as_secs(),
            "sessions did not finish draining in time"
        );
    }
    gateway.zones.close_all();
    endpoint.close(0u32.into(), b"gateway shutting down");
    endpoint.wait_idle().await;
    tracing::info!("gateway stopped");
    Ok(())
}
