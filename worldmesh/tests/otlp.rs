//! OTLP export end to end: `worldmesh local` with `OTEL_EXPORTER_OTLP_ENDPOINT` set sends its
//! spans over OTLP/gRPC to a collector (here a real OTLP `TraceService` on loopback, standing
//! in for Jaeger or an OpenTelemetry Collector), named by service, and flushes them on exit.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::free_udp_port;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_named_by_service() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let dir = std::env::temp_dir().join(format!(
        "worldmesh-otlp-{}",
        worldmesh_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_worldmesh"))
            .args(["local", "--zones", "2", "--bots", "3", "--duration", "3"])
            .args(["--listen", &format!("127.0.0.1:{}", free_udp_port())])
            .args(["--admin-listen", "127.0.0.1:0", "--status-every", "60"])
            .arg("--data")
            .arg(dir.join("world.db"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("WORLDMESH_TRACE_FILTER")
            .stdout(std::process::Stdio::null())
            .status(),
    )
    .await
    .expect("worldmesh local finishes")
    .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
    server.abort();

    let requests = collector.0.lock().unwrap();
    let mut services = Vec::new();
    let mut names = Vec::new();
    for r in requests.iter().flat_map(|r| &r.resource_spans) {
        for kv in r.resource.iter().flat_map(|res| &res.attributes) {
            if kv.key == "service.name"
                && let Some(Value::StringValue(s)) = kv.value.as_ref().and_then(|v| v.value.clone())
            {
                services.push(s);
            }
        }
        for s in r.scope_spans.iter().flat_map(|s| &s.spans) {
            names.push(s.name.clone());
        }
    }
    assert!(
        services.iter().all(|s| s == "worldmesh-local") && !services.is_empty(),
        "{services:?}"
    );
    // Three bots logged in: three login traces, with the persistence call inside.
    assert_eq!(
        names.iter().filter(|n| *n == "gateway.login").count(),
        3,
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n == "/worldmesh.persistence.v1.Persistence/Login"),
        "{names:?}"
    );
}
