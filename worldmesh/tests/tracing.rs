//! Traces across services, caught by an in-memory OpenTelemetry exporter: one handoff is one
//! trace with spans from the source zone, the coordinator and the target zone; one login is
//! one trace through persistence, the coordinator and the zone. The cluster runs in this
//! process on real PostgreSQL and Redis, so every hop is real gRPC on loopback and the trace
//! context crosses it exactly as between processes (headers, or the messages' `trace_parent`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn traces(exporter: &InMemorySpanExporter) -> HashMap<TraceId, Vec<SpanData>> {
    let mut by_trace: HashMap<TraceId, Vec<SpanData>> = HashMap::new();
    for s in exporter.get_finished_spans().expect("spans") {
        by_trace
            .entry(s.span_context.trace_id())
            .or_default()
            .push(s);
    }
    by_trace
}

/// Waits until `found` holds over the exported traces (spans are exported as they end).
async fn wait_for<T>(
    exporter: &InMemorySpanExporter,
    what: &str,
    found: impl Fn(&HashMap<TraceId, Vec<SpanData>>) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = traces(exporter);
        if let Some(v) = found(&t) {
            return v;
        }
        if Instant::now() > deadline {
            let names: Vec<_> = t
                .values()
                .map(|spans| spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>())
                .collect();
            panic!("{what}: not found in {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handoff_is_one_trace_across_coordinator_and_both_zones() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    assert!(
        worldmesh_runtime::telemetry::install(
            "warn",
            worldmesh_runtime::LogFormat::Text,
            Some(provider)
        ),
        "this test binary installs the only subscriber"
    );

    let (backend, persistence) = Backend::tiered().await;
    let cluster = worldmesh::cluster::Cluster::start(small_world(persistence))
        .await
        .expect("cluster starts");
    let endpoint = endpoint();
    let mut s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "tracer")
        .await
        .expect("login");
    let me = s.welcome.entity_id.to_string();
    let (west, _) = owner(&cluster.coordinator_url, s.welcome.entity_id.into()).await;

    // The login: the gateway's span is the root; persistence's Login and the zone's join
    // (with its own call to persistence) are in its trace.
    let login = wait_for(&exporter, "the login trace", |t| {
        t.values()
            .find(|spans| {
                spans.iter().any(|s| {
                    s.name == "gateway.login" && attr(s, "name").as_deref() == Some("tracer")
                })
            })
            .filter(|spans| spans.iter().any(|s| s.name == "zone.join"))
            .cloned()
    })
    .await;
    let names: BTreeSet<String> = login.iter().map(|s| s.name.to_string()).collect();
    for want in [
        "gateway.login",
        "/worldmesh.persistence.v1.Persistence/Login",
        "/worldmesh.coordinator.v1.Coordinator/LocateZone",
        "zone.join",
        "/worldmesh.persistence.v1.Persistence/LoadCharacter",
    ] {
        assert!(names.contains(want), "login trace lacks {want}: {names:?}");
    }

    // The handoff: walk east over the border at x = 200.
    let mut seq = 0;
    walk_until(&mut s, &mut seq, 0.0, |x| x > 225.0).await;
    let (east, _) = owner(&cluster.coordinator_url, s.welcome.entity_id.into()).await;
    assert_ne!(east, west, "the character was handed off");

    let handoff = wait_for(&exporter, "the handoff trace", |t| {
        t.values()
            .find(|spans| {
                spans.iter().any(|s| {
                    s.name == "zone.handoff.begin" && attr(s, "entity").as_deref() == Some(&me)
                })
            })
            .filter(|spans| {
                // Both zones have heard the decision.
                spans
                    .iter()
                    .filter(|s| s.name == "zone.handoff.decided")
                    .count()
                    >= 2
            })
            .cloned()
    })
    .await;
    let zone_of = |name: &str| -> BTreeSet<String> {
        handoff
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| attr(s, "zone"))
            .collect()
    };
    let (west, east) = (west.to_string(), east.to_string());
    assert_eq!(
        zone_of("zone.handoff.begin"),
        BTreeSet::from([west.clone()])
    );
    assert_eq!(
        zone_of("zone.handoff.prepare"),
        BTreeSet::from([east.clone()])
    );
    assert_eq!(
        zone_of("zone.handoff.decided"),
        BTreeSet::from([west.clone(), east.clone()])
    );
    let coordinator: BTreeSet<String> = handoff
        .iter()
        .filter(|s| s.name.starts_with("coordinator.handoff"))
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        coordinator,
        BTreeSet::from([
            "coordinator.handoff.begin".to_owned(),
            "coordinator.handoff.prepared".to_owned()
        ]),
        "the coordinator's spans (begin, and the commit on prepared) are in the trace"
    );
    // Every span of this handoff names the same handoff id, and no span of it strayed into
    // another trace.
    let ids: BTreeSet<String> = handoff.iter().filter_map(|s| attr(s, "handoff")).collect();
    assert_eq!(ids.len(), 1, "one handoff id: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    let trace = handoff[0].span_context.trace_id();
    for (t, spans) in traces(&exporter) {
        for s in spans {
            if attr(&s, "handoff").as_deref() == Some(&id)
                && attr(&s, "entity").as_deref() == Some(&me)
            {
                assert_eq!(t, trace, "span {} of handoff {id} in another trace", s.name);
            }
        }
    }
    // One trace, one root: the source zone's begin.
    let roots: Vec<_> = handoff
        .iter()
        .filter(|s| {
            !handoff
                .iter()
                .any(|p| p.span_context.span_id() == s.parent_span_id)
        })
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(roots, vec!["zone.handoff.begin".to_owned()]);

    s.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}
