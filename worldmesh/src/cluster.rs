//! An in-process cluster: every service on loopback, started in dependency order and stopped
//! in reverse, so that every character is saved before persistence goes away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, coordinator_client::CoordinatorClient,
};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub zones: usize,
    pub persistence: worldmesh_persistence::Config,
    pub coordinator: worldmesh_coordinator::Config,
    pub zone: worldmesh_zone::Config,
    pub gateway: worldmesh_gateway::Config,
    /// Gateways in front of the zones.
    pub gateways: usize,
    /// UDP address of the first gateway (the others take the following ports); port 0 picks
    /// free ones.
    pub gateway_listen: SocketAddr,
}

impl ClusterConfig {
    pub fn new(persistence: worldmesh_persistence::Config) -> Self {
        // One random secret for the whole in-process cluster: its links are authenticated
        // exactly as in production.
        let secret = Some(worldmesh_runtime::random_secret());
        // The coordinator keeps its state in the same database as the characters.
        let coordinator = worldmesh_coordinator::Config {
            database_url: Some(persistence.database_url.clone()),
            ..Default::default()
        };
        Self {
            zones: 4,
            persistence,
            coordinator,
            zone: worldmesh_zone::Config {
                cluster_secret: secret.clone(),
                // The whole cluster stops at once: nobody to drain to.
                drain_on_shutdown: false,
                ..Default::default()
            },
            gateway: worldmesh_gateway::Config {
                cluster_secret: secret,
                // A development cluster: clients may play without an account.
                allow_guests: true,
                ..Default::default()
            },
            gateways: 1,
            gateway_listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("persistence: {0}")]
    Persistence(#[from] worldmesh_persistence::Error),
    #[error("zones did not register within {0:?}")]
    ZonesNotReady(Duration),
}

type Task<E> = JoinHandle<Result<(), E>>;

/// A running cluster.
pub struct Cluster {
    /// The first gateway (all of them: [`Cluster::gateway_addrs`]).
    pub gateway_addr: SocketAddr,
    pub gateway_addrs: Vec<SocketAddr>,
    pub coordinator_url: String,
    pub persistence_url: String,
    pub zone_urls: Vec<String>,
    /// Each zone's published counters and audits.
    pub zone_stats: Vec<std::sync::Arc<worldmesh_zone::zone::Stats>>,
    backend: CancellationToken,
    coordinator_token: CancellationToken,
    coordinator_config: worldmesh_coordinator::Config,
    coordinator_addr: SocketAddr,
    zones_token: CancellationToken,
    gateway_token: CancellationToken,
    gateways: Vec<Task<worldmesh_gateway::Error>>,
    zones: Vec<Task<worldmesh_zone::Error>>,
    coordinator: Task<worldmesh_coordinator::Error>,
    persistence: Task<worldmesh_persistence::Error>,
}

async fn loopback_listener() -> std::io::Result<(TcpListener, String)> {
    let l = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((l, url))
}

impl Cluster {
    /// Starts everything and waits until every zone has registered.
    pub async fn start(config: ClusterConfig) -> Result<Self, ClusterError> {
        let backend = CancellationToken::new();
        let zones_token = CancellationToken::new();
        let gateway_token = CancellationToken::new();

        // Persistence connects (and migrates) before it listens, so errors surface here.
        let store = worldmesh_persistence::Store::connect(&config.persistence).await?;
        let (pl, persistence_url) = loopback_listener().await?;
        let persistence = tokio::spawn(worldmesh_persistence::serve(pl, store, backend.clone()));

        let (cl, coordinator_url) = loopback_listener().await?;
        let coordinator_addr = cl.local_addr()?;
        let coordinator_token = CancellationToken::new();
        let coordinator = tokio::spawn(worldmesh_coordinator::run(
            cl,
            config.coordinator.clone(),
            coordinator_token.clone(),
        ));

        let mut zones = Vec::new();
        let mut zone_urls = Vec::new();
        let mut zone_stats = Vec::new();
        for i in 0..config.zones {
            let (zl, url) = loopback_listener().await?;
            let zc = worldmesh_zone::Config {
                name: format!("zone-{i}"),
                coordinator_url: coordinator_url.clone(),
                persistence_url: persistence_url.clone(),
                stats: Default::default(),
                ..config.zone.clone()
            };
            zone_stats.push(zc.stats.clone());
            zones.push(tokio::spawn(worldmesh_zone::run(
                zl,
                zc,
                zones_token.clone(),
            )));
            zone_urls.push(url);
        }
        wait_for_zones(&coordinator_url, config.zones, Duration::from_secs(20)).await?;

        let mut gateways = Vec::new();
        let mut gateway_addrs = Vec::new();
        for i in 0..config.gateways.max(1) {
            let mut listen = config.gateway_listen;
            if listen.port() != 0 {
                listen.set_port(listen.port() + i as u16);
            }
            let socket = worldmesh_gateway::bind_udp(listen, config.gateway.socket_buffer_bytes)?;
            gateway_addrs.push(socket.local_addr()?);
            let gc = worldmesh_gateway::Config {
                name: format!("gateway-{i}"),
                coordinator_url: coordinator_url.clone(),
                persistence_url: persistence_url.clone(),
                ..config.gateway.clone()
            };
            gateways.push(tokio::spawn(worldmesh_gateway::run(
                socket,
                gc,
                gateway_token.clone(),
            )));
        }
        Ok(Self {
            gateway_addr: gateway_addrs[0],
            gateway_addrs,
            coordinator_url,
            persistence_url,
            zone_urls,
            zone_stats,
            backend,
            coordinator_token,
            coordinator_config: config.coordinator.clone(),
            coordinator_addr,
            zones_token,
            gateway_token,
            gateways,
            zones,
            coordinator,
            persistence,
        })
    }

    /// Stops the coordinator, keeps it down for `down`, and starts a new one on the same
    /// address from the same database (zones and gateways keep running and reconnect).
    pub async fn restart_coordinator(&mut self, down: Duration) -> Result<(), ClusterError> {
        self.coordinator_token.cancel();
        let old = std::mem::replace(&mut self.coordinator, tokio::spawn(async { Ok(()) }));
        log_exit("coordinator", old.await);
        tokio::time::sleep(down).await;
        let listener = TcpListener::bind(self.coordinator_addr).await?;
        self.coordinator_token = CancellationToken::new();
        self.coordinator = tokio::spawn(worldmesh_coordinator::run(
            listener,
            self.coordinator_config.clone(),
            self.coordinator_token.clone(),
        ));
        Ok(())
    }

    /// Stops the gateway (clients are kicked, characters saved), then the zones (everything
    /// left is saved), then the coordinator and persistence.
    pub async fn stop(self) {
        self.gateway_token.cancel();
        for g in self.gateways {
            log_exit("gateway", g.await);
        }
        self.zones_token.cancel();
        for z in self.zones {
            log_exit("zone", z.await);
        }
        self.coordinator_token.cancel();
        self.backend.cancel();
        log_exit("coordinator", self.coordinator.await);
        log_exit("persistence", self.persistence.await);
    }
}

fn log_exit<E: std::fmt::Display>(what: &str, r: Result<Result<(), E>, tokio::task::JoinError>) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(service = what, error = %e, "service failed"),
        Err(e) => tracing::error!(service = what, error = %e, "service task panicked"),
    }
}

async fn wait_for_zones(
    coordinator_url: &str,
    n: usize,
    within: Duration,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut c) = CoordinatorClient::connect(coordinator_url.to_owned()).await
            && let Ok(w) = c.get_world(GetWorldRequest {}).await
            && w.get_ref().zones.len() >= n
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ClusterError::ZonesNotReady(within))
}
