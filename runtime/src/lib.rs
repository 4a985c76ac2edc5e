//! What every worldmesh process shares at runtime, kept out of the service crates so each
//! binary stays a few lines: the common flags, runtime and gRPC server ([`service`]), logs
//! and traces ([`telemetry`]), the shutdown signal, internal gRPC channels and their
//! authentication, the [`admin`] port (`/metrics`, `/healthz`, `/readyz`, and JSON views
//! such as the read models), and the [`events`] sink game events are published through.
//!
//! Every service exposes `run(listener, config, shutdown)` taking a [`CancellationToken`]; a
//! binary wires that token to SIGINT/SIGTERM with [`cancel_on_signal`], and `worldmesh local`
//! wires one token to all services so that Ctrl-C stops the whole cluster in order.

pub mod admin;
pub mod events;
pub mod service;
pub mod telemetry;

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

/// Installs the global tracing subscriber for one service: `RUST_LOG` filter (default
/// `default_filter`), format from `WORLDMESH_LOG_FORMAT` (`text` or `json`, default text), and
/// OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see [`telemetry`]). Safe to
/// call more than once (later calls do nothing), which tests rely on.
pub fn init_logging(service: &str, default_filter: &str) {
    let format = match std::env::var("WORLDMESH_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    init_logging_with(service, default_filter, format);
}

/// [`init_logging`] with an explicit format (the `--log-format` flag).
pub fn init_logging_with(service: &str, default_filter: &str, format: LogFormat) {
    telemetry::init(service, default_filter, format);
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

/// The channel every internal gRPC client uses: tonic's, with [`Outgoing`] on every request.
pub type Channel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Outgoing>;

/// A lazily connecting gRPC channel with the settings every internal link uses: a 2 s connect
/// timeout, TCP_NODELAY (per-tick messages must not wait for Nagle and delayed ACKs), and the
/// caller's trace context on every request. Returns the URL back when it is not a valid URI.
pub fn grpc_channel(url: &str) -> Result<Channel, String> {
    grpc_channel_with_secret(url, None)
}

/// [`grpc_channel`] that also sends the cluster secret (links whose servers check it). Fails
/// on an invalid URL or a secret that is not a valid header value (visible ASCII).
pub fn grpc_channel_with_secret(url: &str, secret: Option<&str>) -> Result<Channel, String> {
    let outgoing = Outgoing::new(secret)?;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(Channel::new(channel, outgoing))
}

/// gRPC metadata key carrying the cluster secret on internal links.
pub const CLUSTER_SECRET_HEADER: &str = "x-worldmesh-cluster-secret";

/// Client side of every internal request: the caller's trace context (`traceparent`) and,
/// where the link requires it, the cluster secret.
#[derive(Clone, Default)]
pub struct Outgoing {
    secret: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Outgoing {
    /// `None` sends no secret (development clusters, or servers that do not check it).
    pub fn new(secret: Option<&str>) -> Result<Self, String> {
        let secret = secret
            .map(|s| {
                s.parse::<tonic::metadata::AsciiMetadataValue>()
                    .map_err(|_| "the cluster secret must be visible ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self { secret })
    }
}

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        telemetry::inject_current(req.metadata_mut());
        if let Some(v) = &self.secret {
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

/// A point given on a command line as `x,y` (`--spawn 1000,1000`).
///
/// # Errors
/// Anything else, with what was wrong.
pub fn parse_point(s: &str) -> Result<(f32, f32), String> {
    let (x, y) = s.split_once(',').ok_or("expected x,y")?;
    Ok((
        x.trim().parse().map_err(|e| format!("x: {e}"))?,
        y.trim().parse().map_err(|e| format!("y: {e}"))?,
    ))
}
