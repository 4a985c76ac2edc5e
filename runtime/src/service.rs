//! What every service process is made of, written once: its common flags, its Tokio runtime,
//! and its gRPC server.
//!
//! A service binary is `Args::parse()` and [`block_on`]; its `cli::Args` flattens
//! [`ServiceArgs`] (and [`ClusterArgs`] when it talks to the rest of the cluster), so every
//! binary and every `worldmesh <service>` honours the same flags and environment variables.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};

use crate::LogFormat;
use crate::admin::AdminArgs;

/// Flags of the process itself: its runtime and its logs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProcessArgs {
    /// Tokio worker threads: 0 = one per core; 1 = a single current-thread runtime, the
    /// cheapest per player on small machines (BENCHMARKS.md).
    #[arg(long, env = "WORLDMESH_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Log format: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, env = "WORLDMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags every service binary has: [`ProcessArgs`] and the admin port.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Where a gateway or a zone finds the rest of the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The world coordinator's gRPC URL.
    #[arg(
        long,
        env = "WORLDMESH_COORDINATOR_URL",
        default_value = "http://127.0.0.1:7100"
    )]
    pub coordinator: String,
    /// The persistence service's gRPC URL.
    #[arg(
        long,
        env = "WORLDMESH_PERSISTENCE_URL",
        default_value = "http://127.0.0.1:7200"
    )]
    pub persistence: String,
    /// Shared secret of the gateway–zone links: gateways present it, zones require it.
    #[arg(long, env = "WORLDMESH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// A Tokio runtime with `threads` workers: 1 is one current-thread runtime (no cross-thread
/// wake-ups: the cheapest per packet for a relay), 0 one worker per core.
///
/// # Errors
/// The runtime cannot be built (threads or an I/O driver refused by the OS).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

/// Runs a service binary's body on the runtime `process` asks for: installs logging for
/// `service` (default filter `default_filter`, overridden by `RUST_LOG`), runs `body`, then
/// flushes spans still buffered for the OTLP collector.
///
/// # Errors
/// The runtime cannot be built; `body`'s own result is returned inside.
pub fn block_on<T>(
    service: &str,
    default_filter: &str,
    process: &ProcessArgs,
    body: impl Future<Output = T>,
) -> std::io::Result<T> {
    let runtime = runtime(process.threads)?;
    Ok(runtime.block_on(async {
        crate::init_logging_with(service, default_filter, process.log_format);
        let result = body.await;
        crate::telemetry::flush().await;
        result
    }))
}

/// A gRPC router with what every worldmesh gRPC server carries: each request's span continues
/// the caller's trace (the `traceparent` header), and the standard health service
/// (`grpc.health.v1.Health`, SERVING while the server runs) answers Kubernetes gRPC probes and
/// load balancers. Add the service's own with `.add_service(…)`, then [`serve_grpc`].
pub fn grpc_router() -> Router {
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::grpc_server_span)
        .add_service(health)
}

/// Serves `router` on `listener` until `shutdown` completes. `TCP_NODELAY` on every
/// connection: handoff, link and checkpoint messages are small and latency-bound.
///
/// # Errors
/// The server failed (tonic's transport error).
pub async fn serve_grpc(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
