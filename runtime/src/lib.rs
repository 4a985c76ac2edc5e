//! What every worldmesh process shares at runtime, kept out of the service crates so each
//! binary stays a few lines: logging set-up, the shutdown signal, and the [`admin`] port
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every service exposes `run(listener, config, shutdown)` taking a [`CancellationToken`]; a
//! binary wires that token to SIGINT/SIGTERM with [`cancel_on_signal`], and `worldmesh local`
//! wires one token to all services so that Ctrl-C stops the whole cluster in order.

pub mod admin;

use tokio_util::sync::CancellationToken;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one coloured line per event.
    #[default]
    Text,
    /// For log shippers: one JSON object per line, span fields included.
    Json,
}

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `default_filter`),
/// format from `WORLDMESH_LOG_FORMAT` (`text` or `json`, default text). Safe to call more
/// than once (later calls do nothing), which tests rely on.
pub fn init_logging(default_filter: &str) {
    let format = match std::env::var("WORLDMESH_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    init_logging_with(default_filter, format);
}

/// [`init_logging`] with an explicit format (the `--log-format` flag).
pub fn init_logging_with(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    // Logs go to stderr: stdout belongs to a program's output (JSON reports, status lines).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Cancels `token` on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// A token cancelled by SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(cancel_on_signal(token.clone()));
    token
}

/// A lazily connecting gRPC channel with the settings every internal link uses: a 2 s connect
/// timeout and TCP_NODELAY (per-tick messages must not wait for Nagle and delayed ACKs).
/// Returns the URL back when it is not a valid URI.
pub fn grpc_channel(url: &str) -> Result<tonic::transport::Channel, String> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// gRPC metadata key carrying the cluster secret on internal links.
pub const CLUSTER_SECRET_HEADER: &str = "x-worldmesh-cluster-secret";

/// Client side of internal-link authentication: adds the cluster secret to every request.
#[derive(Clone)]
pub struct AddSecret(Option<tonic::metadata::AsciiMetadataValue>);

impl AddSecret {
    /// `None` sends no secret (development clusters). Fails on a secret that is not a valid
    /// header value (visible ASCII).
    pub fn new(secret: Option<&str>) -> Result<Self, String> {
        secret
            .map(|s| {
                s.parse::<tonic::metadata::AsciiMetadataValue>()
                    .map_err(|_| "the cluster secret must be visible ASCII".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for AddSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(CLUSTER_SECRET_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// Server side: refuses requests without the right cluster secret (`UNAUTHENTICATED`), in
/// constant time. `None` accepts everyone (development clusters; logged at start).
#[derive(Clone)]
pub struct CheckSecret(Option<std::sync::Arc<[u8]>>);

impl CheckSecret {
    pub fn new(secret: Option<&str>) -> Self {
        Self(secret.map(|s| s.as_bytes().into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for CheckSecret {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.0 else {
            return Ok(req);
        };
        match req.metadata().get(CLUSTER_SECRET_HEADER) {
            Some(v) if constant_time_eq(v.as_bytes(), expected) => Ok(req),
            _ => {
                tracing::warn!(peer = ?req.remote_addr(), "internal link refused: wrong or missing cluster secret");
                Err(tonic::Status::unauthenticated("cluster secret required"))
            }
        }
    }
}

/// A fresh random secret (for in-process clusters, whose services share it in memory).
pub fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}
