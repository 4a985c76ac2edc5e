//! The admin HTTP port every service has, for Prometheus and Kubernetes:
//!
//! - `GET /metrics`: every `metrics` series of the process, in Prometheus text format.
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 when every part of the process that declared itself with
//!   [`Readiness::new`] is ready (a zone: registered with the coordinator; a gateway: knows the
//!   world; …), else 503 with the parts that are not, one per line.
//! - `GET /<view>`: the JSON views a part of the process registered with [`view`] (the read
//!   models: `/leaderboard`, `/online`); 404 for any other path.
//!
//! One recorder per process: `worldmesh local` runs the whole cluster in one process and
//! serves one admin port for all of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PARTS: OnceLock<Mutex<BTreeMap<String, Arc<AtomicBool>>>> = OnceLock::new();

/// Renders one JSON view.
type Render = Arc<dyn Fn() -> String + Send + Sync>;
static VIEWS: OnceLock<Mutex<BTreeMap<String, Render>>> = OnceLock::new();

/// Serves `render()` (a JSON document) at `GET path` on the admin port; registering a path
/// again replaces its view (a restarted part of the process).
pub fn view(path: &str, render: impl Fn() -> String + Send + Sync + 'static) {
    VIEWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(path.to_owned(), Arc::new(render));
}

fn render_view(path: &str) -> Option<String> {
    let render = VIEWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(path)
        .cloned()?;
    Some(render())
}

/// Command-line settings of the admin port, flattened into every service's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`); port 0 picks a free port
    /// (logged). Empty: no admin port.
    #[arg(long, env = "WORLDMESH_ADMIN_LISTEN", default_value = "0.0.0.0:9100")]
    pub admin_listen: String,
}

/// Installs the process's Prometheus recorder (once; later calls return the same handle).
/// Histograms are exported as histograms with buckets suited to each unit.
pub fn install_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&seconds)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// One part of the process that must be ready for `/readyz` to say so.
#[derive(Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Declares a part (not ready yet); `name` is shown by `/readyz` while it is not.
    pub fn new(name: impl Into<String>) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        PARTS
            .get_or_init(Default::default)
            .lock()
            .expect("readiness registry")
            .insert(name.into(), flag.clone());
        Self(flag)
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// A part that is ready until `shutdown` fires: a draining service (a zone handing its
    /// characters away, a gateway kicking its players to others) must get no new work, so
    /// `/readyz` turns 503 while `/healthz` stays 200 until the process exits.
    pub fn until_shutdown(name: impl Into<String>, shutdown: CancellationToken) -> Self {
        let part = Self::new(name);
        part.set(true);
        let flag = part.0.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            flag.store(false, Ordering::Relaxed);
        });
        part
    }
}

/// The parts that are not ready; a process that has declared no part yet is not ready
/// either (its services have not started).
fn not_ready() -> Vec<String> {
    let parts = PARTS
        .get_or_init(Default::default)
        .lock()
        .expect("readiness registry");
    if parts.is_empty() {
        return vec!["nothing started yet".into()];
    }
    parts
        .iter()
        .filter(|(_, f)| !f.load(Ordering::Relaxed))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Binds the admin port (unless `args.admin_listen` is empty) and serves it until `shutdown`.
/// Returns the bound address. Failing to bind is an error: ops asked for this port.
pub async fn start(
    args: &AdminArgs,
    shutdown: CancellationToken,
) -> std::io::Result<Option<std::net::SocketAddr>> {
    if args.admin_listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&args.admin_listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, shutdown));
    tracing::info!(%addr, "admin port: /metrics /healthz /readyz");
    Ok(Some(addr))
}

/// Serves the admin routes on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let handle = install_recorder();
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(|| {
                let missing = not_ready();
                std::future::ready(if missing.is_empty() {
                    (StatusCode::OK, "ready\n".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n", missing.join("\n")),
                    )
                })
            }),
        )
        .fallback(|uri: axum::http::Uri| {
            std::future::ready(match render_view(uri.path()) {
                Some(json) => (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    [(axum::http::header::CONTENT_TYPE, "text/plain")],
                    "not found\n".to_owned(),
                ),
            })
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "admin port stopped");
    }
}
