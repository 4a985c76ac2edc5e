//! The zone's two streams from the coordinator, each reconnecting on its own:
//!
//! - the **session** (`ZoneSession`): handoff saga and authority messages both ways, between
//!   the coordinator and the tick thread's [`Participant`](worldmesh_world::handoff::Participant).
//!   Every (re)connect makes the zone report what it holds, which is how a restarted
//!   coordinator re-syncs;
//! - the **map watch** (`WatchMap`): the cell → zone map, which decides when a character
//!   stands in another zone's cell.
//!
//! Messages that fail to go out while the stream is down are dropped: the saga repeats
//! itself until it hears an answer (see [`worldmesh_world::handoff`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::coordinator::{
    self as pb, GetWorldRequest, coordinator_client::CoordinatorClient,
};
use worldmesh_runtime::Channel;
use worldmesh_world::handoff::ToCoordinator;

use crate::Registration;
use crate::command::Command;

/// Pause between reconnection attempts.
const RECONNECT: Duration = Duration::from_millis(200);

pub async fn run_session(
    mut client: CoordinatorClient<Channel>,
    mut reg: watch::Receiver<Registration>,
    mut outbound: mpsc::Receiver<ToCoordinator>,
    commands: mpsc::Sender<Command>,
    to_tick_thread: std::sync::mpsc::SyncSender<worldmesh_world::handoff::ToZone>,
    shutdown: CancellationToken,
) {
    loop {
        let r = reg.borrow_and_update().clone();
        let (tx, rx) = mpsc::channel::<pb::ZoneEvent>(crate::driver::TO_COORDINATOR_QUEUE);
        let stamp = |msg| pb::ZoneEvent {
            zone_id: r.zone_id,
            lease_generation: r.lease_generation,
            msg,
        };
        let _ = tx.try_send(stamp(None));
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = client.zone_session(ReceiverStream::new(rx)) => o,
        };
        match opened {
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                tracing::info!(zone = r.zone_id, "coordinator session open");
                let _ = commands.send(Command::SessionUp).await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = reg.changed() => break,
                        m = outbound.recv() => {
                            let Some(m) = m else { return };
                            let msg = Some(worldmesh_world::convert::to_coordinator_pb(m));
                            if tx.try_send(stamp(msg)).is_err() {
                                metrics::counter!("worldmesh_zone_coordinator_dropped_total").increment(1);
                            }
                        }
                        m = inbound.message() => match m {
                            Ok(Some(ev)) => {
                                let Some(core) = ev.msg.and_then(worldmesh_world::convert::to_zone_core) else {
                                    continue;
                                };
                                match to_tick_thread.try_send(core) {
                                    Ok(()) => {}
                                    // Dropped messages are repeated by the saga's resends.
                                    Err(std::sync::mpsc::TrySendError::Full(_)) => {
                                        metrics::counter!("worldmesh_zone_coordinator_dropped_total").increment(1);
                                    }
                                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "coordinator session failed");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot open the coordinator session"),
        }
        let _ = commands.send(Command::SessionDown).await;
        // While disconnected, what the tick thread sends is dropped (it is all repeated).
        let deadline = tokio::time::sleep(RECONNECT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut deadline => break,
                m = outbound.recv() => if m.is_none() { return },
            }
        }
    }
}

pub async fn watch_map(
    mut client: CoordinatorClient<Channel>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = client.watch_map(GetWorldRequest {}) => o,
        };
        if let Ok(resp) = opened {
            let mut maps = resp.into_inner();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = maps.message() => m,
                };
                match next {
                    Ok(Some(map)) => {
                        if commands.send(Command::Map(Arc::new(map))).await.is_err() {
                            return;
                        }
                    }
                    _ => break,
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}
