//! Border visibility between zones: one client stream (`ZoneLink.Ghosts`) to each neighbour,
//! carrying per-tick batches of the characters this zone simulates near that neighbour's
//! cells (see `zone::Zone::tick`). Streams open on first use, carry the cluster secret, and
//! reopen after a failure (at most once per [`REOPEN_AFTER`]); batches for a neighbour that
//! cannot be reached are dropped (the next tick's batch supersedes them anyway).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::zone::{self as pb, zone_link_client::ZoneLinkClient};
use worldmesh_protocol::ids::ZoneId;

use crate::zone::GhostsOut;

/// Batches queued towards one neighbour: a few ticks.
const PEER_QUEUE: usize = 8;

/// Pause before reopening a stream to a neighbour that failed.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

struct Peer {
    address: String,
    tx: mpsc::Sender<pb::GhostBatch>,
}

pub async fn run(
    mut batches: mpsc::Receiver<GhostsOut>,
    secret: Option<String>,
    shutdown: CancellationToken,
) {
    let mut peers: HashMap<ZoneId, Peer> = HashMap::new();
    let mut failed: HashMap<ZoneId, Instant> = HashMap::new();
    loop {
        let out = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = batches.recv() => match b { Some(b) => b, None => return },
        };
        let alive = peers
            .get(&out.zone_id)
            .is_some_and(|p| p.address == out.address && !p.tx.is_closed());
        if !alive {
            if failed
                .get(&out.zone_id)
                .is_some_and(|t| t.elapsed() < REOPEN_AFTER)
            {
                continue;
            }
            match open(&out.address, secret.as_deref()) {
                Ok(tx) => {
                    peers.insert(
                        out.zone_id,
                        Peer {
                            address: out.address.clone(),
                            tx,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(zone = out.zone_id.0, error = %e, "cannot open ghost stream");
                    failed.insert(out.zone_id, Instant::now());
                    continue;
                }
            }
        }
        let peer = &peers[&out.zone_id];
        if let Err(mpsc::error::TrySendError::Closed(_)) = peer.tx.try_send(out.batch) {
            peers.remove(&out.zone_id);
            failed.insert(out.zone_id, Instant::now());
        }
    }
}

fn open(address: &str, secret: Option<&str>) -> Result<mpsc::Sender<pb::GhostBatch>, String> {
    let channel = worldmesh_runtime::grpc_channel_with_secret(address, secret)?;
    let mut client = ZoneLinkClient::new(channel);
    let (tx, rx) = mpsc::channel(PEER_QUEUE);
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(e) = client.ghosts(ReceiverStream::new(rx)).await {
            tracing::debug!(%address, error = %e, "ghost stream ended");
        }
    });
    Ok(tx)
}
