//! Load-test bots: real QUIC clients that log in, walk, chat and measure, thousands per
//! process (one task each, one shared QUIC endpoint). The client itself (login, inputs,
//! snapshots, prediction, the link conditioner) is the `worldmesh-client` crate; this crate
//! is what drives and measures it.
//!
//! # Layout
//!
//! - [`audit`]: lost and duplicated characters, judged from the zones' audits against the
//!   bots' characters (in process for `worldmesh local`, over gRPC for a deployed cluster).
//! - [`cluster_bench`]: the whole cluster as processes, bots at rising counts, against the
//!   bare quinn echo measured in the same run; [`plot`] draws it.
//! - [`bot`]: one bot's behaviour and measurements.
//! - [`hostile`]: hostile clients (garbage, floods, half-open connections, wrong versions)
//!   that record how the gateway cut them off.
//! - [`stats`]: shared counters, the RTT histogram and the JSON [`Report`].
//! - [`run`]: ramps up a fleet of bots against a gateway and reports.

pub mod audit;
pub mod bot;
pub mod chat_audit;
pub mod cluster_bench;
pub mod echo;
pub mod fight;
pub mod hostile;
pub mod plot;
pub mod stats;
pub mod trade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use stats::{Report, Stats};
use worldmesh_client::conditioner;
pub use worldmesh_client::{ClientEndpoint, ClientError, Session};

/// A fleet of bots.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateways; bot `i` uses `gateways[i % len]`.
    pub gateways: Vec<SocketAddr>,
    pub bots: usize,
    /// Bots started per second.
    pub ramp_per_s: f64,
    /// How long the fleet plays once fully ramped; `None` until `shutdown`.
    pub duration: Option<Duration>,
    /// Bot names are `{name_prefix}{index}`; the same names log in as the same characters.
    pub name_prefix: String,
    pub input_rate_hz: u32,
    pub chat_every_s: f64,
    /// Print a status line this often (`None`: silent).
    pub status_every: Option<Duration>,
    pub behaviour: bot::Behaviour,
    /// Bots log in to accounts (registering on first use, password `{name}-password`);
    /// `false`: guest logins, for gateways that allow them.
    pub accounts: bool,
    /// Loss, latency and jitter on every bot's datagrams.
    pub link: conditioner::LinkConditions,
    /// (coordinator URL, cluster secret): audit the zones in the coordinator's map while the
    /// bots play, for the report's lost and duplicated characters (see [`audit`]). `None`: no
    /// audit (the bots alone cannot see the zones).
    pub audit: Option<(String, Option<String>)>,
    /// Where `converge` bots go (`None`: the middle of the world).
    pub converge_at: Option<(f32, f32)>,
    /// More for the status line: what the caller knows of the cluster (load per zone).
    pub status_extra: Option<StatusExtra>,
}

/// A source of more status-line text, asked once per line.
#[derive(Clone)]
pub struct StatusExtra(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for StatusExtra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusExtra")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateways: vec![(std::net::Ipv4Addr::LOCALHOST, 7000).into()],
            bots: 50,
            ramp_per_s: 50.0,
            duration: Some(Duration::from_secs(30)),
            name_prefix: "bot".into(),
            input_rate_hz: 20,
            chat_every_s: 30.0,
            status_every: Some(Duration::from_secs(5)),
            behaviour: bot::Behaviour::Wander,
            accounts: true,
            link: conditioner::LinkConditions::default(),
            audit: None,
            converge_at: None,
            status_extra: None,
        }
    }
}

/// Runs the fleet, then logs every bot out and returns the report.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Report, ClientError> {
    run_with(config, Arc::new(Stats::default()), shutdown).await
}

/// [`run`], with the caller holding the stats (to audit the cluster against the bots while
/// they play).
pub async fn run_with(
    config: Config,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<Report, ClientError> {
    if config.gateways.is_empty() {
        return Err(ClientError::Protocol("no gateway to connect to".into()));
    }
    // Before any bot starts: an invalid URL or secret fails the run at once, not after it.
    let auditor = match &config.audit {
        Some((coordinator_url, cluster_secret)) => Some(
            audit::RemoteAuditor::new(coordinator_url, cluster_secret.clone())
                .map_err(|e| ClientError::Protocol(format!("audit: {e}")))?,
        ),
        None => None,
    };
    let endpoint = ClientEndpoint::new(worldmesh_protocol::ALPN)?;
    let stop = shutdown.child_token();
    let started = Instant::now();
    // Stops with the bots' play (a child of `stop`), before their logouts.
    let auditing = auditor.map(|a| tokio::spawn(a.run(stats.clone(), stop.child_token())));
    let mut bots = tokio::task::JoinSet::new();
    let status = config.status_every.map(|every| {
        let (stats, stop, target) = (stats.clone(), stop.clone(), config.bots);
        let extra = config.status_extra.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last = 0;
            // On a terminal: one live line (indicatif, on stderr). Otherwise (logs, CI): a
            // plain line per interval on stdout.
            let live = std::io::IsTerminal::is_terminal(&std::io::stderr())
                .then(indicatif::ProgressBar::new_spinner);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        if let Some(bar) = &live {
                            bar.finish_and_clear();
                        }
                        return;
                    }
                    _ = tick.tick() => {
                        let mut line = stats.status_line(started.elapsed().as_secs_f64(), target, &mut last, every.as_secs_f64());
                        if let Some(extra) = &extra {
                            line.push_str(" | ");
                            line.push_str(&(extra.0)());
                        }
                        match &live {
                            Some(bar) => bar.set_message(line),
                            None => println!("{line}"),
                        }
                    }
                }
            }
        })
    });
    let gap = Duration::from_secs_f64(1.0 / config.ramp_per_s.max(0.001));
    for i in 0..config.bots {
        if stop.is_cancelled() {
            break;
        }
        let bot = bot::BotConfig {
            behaviour: config.behaviour,
            name: format!("{}{i}", config.name_prefix),
            gateway: config.gateways[i % config.gateways.len().max(1)],
            input_rate_hz: config.input_rate_hz,
            speed: 3.0,
            chat_every_s: config.chat_every_s,
            seed: i as u64,
            accounts: config.accounts,
            link: config.link,
            partner: ((i ^ 1) < config.bots).then(|| format!("{}{}", config.name_prefix, i ^ 1)),
            converge_at: config.converge_at,
        };
        bots.spawn(bot::run(endpoint.clone(), bot, stats.clone(), stop.clone()));
        tokio::time::sleep(gap).await;
    }
    match config.duration {
        Some(d) => {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(d) => {}
            }
        }
        None => stop.cancelled().await,
    }
    let connected = stats.connected.load(std::sync::atomic::Ordering::Relaxed);
    let duration_s = started.elapsed().as_secs_f64();
    stats.chat.end(Instant::now());
    stop.cancel();
    while bots.join_next().await.is_some() {}
    if let Some(s) = status {
        s.abort();
    }
    let mut report = stats.report(config.bots, connected, duration_s);
    if let Some(auditing) = auditing {
        match auditing.await {
            Ok(Some(audited)) => report.set_audit(audited),
            // Nothing could be audited (logged by the auditor): the fields stay absent.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the audit task failed; no audit in the report"),
        }
    }
    Ok(report)
}
