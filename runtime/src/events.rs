//! Publishing game events to the cluster's event stream (persistence's `PublishEvents`; the
//! read models are projected from it, docs/read-models.md). An [`EventSink`] is cheap to
//! clone and never blocks its caller: events queue (bounded) and one task sends them in
//! batches a few times a second, retrying a failed batch a few times. The read models are
//! views, not truth: an event dropped under overload or a long outage (counted in
//! `worldmesh_events_dropped_total`) costs a stale view, never data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::persistence::{
    Event, PublishEventsRequest, event::Kind, persistence_client::PersistenceClient,
};

use crate::Channel;

/// Events waiting to be sent; beyond, new ones are dropped (counted).
const QUEUE: usize = 20_000;
/// Most events in one call (persistence's limit).
pub const MAX_BATCH: usize = 1_000;
/// How often the queue is sent.
const EVERY: Duration = Duration::from_millis(200);
/// Attempts per batch before it is dropped (counted).
const ATTEMPTS: usize = 5;

/// Where a process publishes its game events.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Event>>,
}

impl EventSink {
    /// A sink that drops everything (tests and tools that publish nothing).
    #[must_use]
    pub fn none() -> Self {
        Self { tx: None }
    }

    /// A sink sending to persistence over `channel` until `shutdown` (then what is queued
    /// is sent once more).
    #[must_use]
    pub fn start(channel: Channel, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send(PersistenceClient::new(channel), rx, shutdown));
        Self { tx: Some(tx) }
    }

    /// Publishes one event, stamped now.
    pub fn publish(&self, kind: Kind) {
        let Some(tx) = &self.tx else { return };
        let event = Event {
            at_ms: now_ms(),
            kind: Some(kind),
        };
        if tx.try_send(event).is_err() {
            metrics::counter!("worldmesh_events_dropped_total", "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn send(
    mut client: PersistenceClient<Channel>,
    mut rx: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH
            && let Ok(e) = rx.try_recv()
        {
            batch.push(e);
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let mut sent = false;
            for attempt in 0..ATTEMPTS {
                let request = PublishEventsRequest {
                    events: batch.clone(),
                };
                match client.publish_events(request).await {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "publishing events failed");
                        if stopping {
                            break;
                        }
                        tokio::time::sleep(EVERY * (attempt as u32 + 1)).await;
                    }
                }
            }
            if sent {
                metrics::counter!("worldmesh_events_published_total").increment(n);
            } else {
                metrics::counter!("worldmesh_events_dropped_total", "reason" => "unreachable")
                    .increment(n);
            }
        }
        if stopping {
            return;
        }
    }
}
