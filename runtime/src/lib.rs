//! What every worldmesh process shares at runtime, kept out of the service crates so each
//! binary stays a few lines: logging set-up and the shutdown signal.
//!
//! Every service exposes `run(listener, config, shutdown)` taking a [`CancellationToken`]; a
//! binary wires that token to SIGINT/SIGTERM with [`cancel_on_signal`], and `worldmesh local`
//! wires one token to all services so that Ctrl-C stops the whole cluster in order.

use tokio_util::sync::CancellationToken;

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `info`), human format.
/// Safe to call more than once (later calls do nothing), which tests rely on.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
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
