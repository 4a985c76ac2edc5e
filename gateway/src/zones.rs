//! Zone links: one long-lived gRPC stream per zone this gateway talks to, shared by all of the
//! gateway's players in that zone, and the routing of what comes back.
//!
//! Frames from a zone are forwarded to sessions as they are: datagram frames straight to the
//! client's QUIC connection, reliable ones to the session's control-stream queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use worldmesh_protocol::grpc::zone::{
    self as pb, gateway_to_zone, zone_link_client::ZoneLinkClient, zone_to_gateway::Msg,
};

use crate::Gateway;

/// Messages queued towards one zone. Inputs dominate: 4k is a tick of inputs for thousands of
/// players; when full, inputs are dropped (the client repeats its intent next tick).
pub const TO_ZONE_QUEUE: usize = 4096;

/// How a join ended.
#[derive(Debug)]
pub enum JoinOutcome {
    Joined(pb::Joined),
    Failed(String),
}

/// A live link to one zone.
#[derive(Clone)]
pub struct ZoneLink {
    pub zone_id: u64,
    pub address: String,
    pub tx: mpsc::Sender<pb::GatewayToZone>,
}

impl ZoneLink {
    /// Sends a message that must arrive (join, leave, chat), waiting for room.
    pub async fn send(&self, msg: gateway_to_zone::Msg) -> bool {
        self.tx
            .send(pb::GatewayToZone { msg: Some(msg) })
            .await
            .is_ok()
    }

    /// Sends an input if there is room; false if dropped.
    pub fn try_send_input(&self, input: pb::PlayerInput) -> bool {
        self.tx
            .try_send(pb::GatewayToZone {
                msg: Some(gateway_to_zone::Msg::Input(input)),
            })
            .is_ok()
    }
}

#[derive(Default)]
pub struct ZoneLinks {
    links: DashMap<u64, ZoneLink>,
    /// Serialises link creation so two logins never open two links to one zone.
    connecting: tokio::sync::Mutex<()>,
    pending_joins: DashMap<u64, oneshot::Sender<JoinOutcome>>,
    pending_leaves: DashMap<u64, oneshot::Sender<bool>>,
}

impl ZoneLinks {
    /// The link to a zone, opened on first use.
    pub async fn get_or_connect(
        &self,
        gateway: &Arc<Gateway>,
        zone_id: u64,
        address: &str,
    ) -> Result<ZoneLink, tonic::Status> {
        if let Some(link) = self
            .links
            .get(&zone_id)
            .filter(|l| l.address == address && !l.tx.is_closed())
        {
            return Ok(link.clone());
        }
        let _guard = self.connecting.lock().await;
        if let Some(link) = self
            .links
            .get(&zone_id)
            .filter(|l| l.address == address && !l.tx.is_closed())
        {
            return Ok(link.clone());
        }
        let channel =
            crate::channel(address).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let secret = worldmesh_runtime::AddSecret::new(gateway.config.cluster_secret.as_deref())
            .map_err(tonic::Status::internal)?;
        let mut client = ZoneLinkClient::with_interceptor(channel, secret);
        let (tx, rx) = mpsc::channel(TO_ZONE_QUEUE);
        tx.send(pb::GatewayToZone {
            msg: Some(gateway_to_zone::Msg::Hello(pb::LinkHello {
                gateway_name: gateway.config.name.clone(),
            })),
        })
        .await
        .map_err(|_| tonic::Status::internal("link queue closed"))?;
        let inbound =
            tokio::time::timeout(Duration::from_secs(5), client.link(ReceiverStream::new(rx)))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("zone link open timed out"))??
                .into_inner();
        let link = ZoneLink {
            zone_id,
            address: address.to_owned(),
            tx,
        };
        self.links.insert(zone_id, link.clone());
        tracing::info!(zone = zone_id, %address, "zone link opened");
        tokio::spawn(read_link(gateway.clone(), link.clone(), inbound));
        Ok(link)
    }

    /// Drops every link (their request streams end), at shutdown.
    pub fn close_all(&self) {
        self.links.clear();
    }

    pub fn expect_join(&self, player_id: u64) -> oneshot::Receiver<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        self.pending_joins.insert(player_id, tx);
        rx
    }

    pub fn forget_join(&self, player_id: u64) {
        self.pending_joins.remove(&player_id);
    }

    pub fn expect_leave(&self, player_id: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.pending_leaves.insert(player_id, tx);
        rx
    }
}

async fn read_link(
    gateway: Arc<Gateway>,
    link: ZoneLink,
    mut inbound: tonic::Streaming<pb::ZoneToGateway>,
) {
    let zones = &gateway.zones;
    let zone_id = link.zone_id;
    loop {
        // Ends when the zone closes the stream, which it does when we drop our side of the
        // link (`close_all` at shutdown) or when it shuts down itself.
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(zone = zone_id, error = %e, "zone link failed");
                break;
            }
        };
        match msg.msg {
            Some(Msg::Frames(frames)) => route_frames(&gateway, frames.frames),
            Some(Msg::Joined(j)) => {
                if let Some((_, tx)) = zones.pending_joins.remove(&j.player_id) {
                    let _ = tx.send(JoinOutcome::Joined(j));
                }
            }
            Some(Msg::JoinFailed(f)) => {
                if let Some((_, tx)) = zones.pending_joins.remove(&f.player_id) {
                    let _ = tx.send(JoinOutcome::Failed(f.reason));
                }
            }
            Some(Msg::Left(l)) => {
                if let Some((_, tx)) = zones.pending_leaves.remove(&l.player_id) {
                    let _ = tx.send(l.saved);
                }
            }
            None => {}
        }
    }
    // Only forget the link if it is still this one (a newer link may have replaced it).
    zones
        .links
        .remove_if(&zone_id, |_, l| l.tx.same_channel(&link.tx));
    if gateway.shutdown.is_cancelled() {
        return;
    }
    tracing::warn!(
        zone = zone_id,
        "zone link closed; its players are disconnected"
    );
    // Until failover exists, players of a lost zone are told to come back; their characters
    // are where the zone last checkpointed them.
    for s in gateway.sessions.iter().filter(|s| s.zone_id == zone_id) {
        s.kick(
            worldmesh_protocol::ErrorCode::Unavailable,
            "zone server lost",
        );
    }
}

fn route_frames(gateway: &Gateway, frames: Vec<pb::PlayerFrame>) {
    for f in frames {
        let Some(session) = gateway.sessions.get(&f.player_id) else {
            continue;
        };
        if f.reliable {
            session.send_reliable(f.frame);
        } else {
            send_datagram(&session.connection, f.frame);
        }
    }
}

fn send_datagram(conn: &quinn::Connection, frame: Bytes) {
    match conn.send_datagram(frame) {
        Ok(()) => metrics::counter!("worldmesh_gateway_datagrams_out_total").increment(1),
        Err(quinn::SendDatagramError::TooLarge) => {
            metrics::counter!("worldmesh_gateway_datagrams_dropped_total", "reason" => "too_large")
                .increment(1)
        }
        Err(_) => {
            metrics::counter!("worldmesh_gateway_datagrams_dropped_total", "reason" => "connection")
                .increment(1)
        }
    }
}
