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

/// How long a player whose zone was lost may take to find its new zone (lease expiry plus
/// failover) before it is disconnected.
pub const RELOCATE_TIMEOUT: Duration = Duration::from_secs(15);

impl ZoneLinks {
    /// The open link to a zone, if any.
    pub fn get(&self, zone_id: u64) -> Option<ZoneLink> {
        self.links
            .get(&zone_id)
            .filter(|l| !l.tx.is_closed())
            .map(|l| l.clone())
    }

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
        let channel = worldmesh_runtime::grpc_channel_with_secret(
            address,
            gateway.config.cluster_secret.as_deref(),
        )
        .map_err(tonic::Status::internal)?;
        let mut client = ZoneLinkClient::new(channel);
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

    /// Asks a zone to spawn (or attach) a player's character and waits for the answer.
    pub async fn join(
        &self,
        link: &ZoneLink,
        player_id: u64,
        character_id: u64,
        name: &str,
        within: Duration,
    ) -> Result<pb::Joined, String> {
        let reply = self.expect_join(player_id);
        let deadline = tokio::time::Instant::now() + within;
        // The send counts against the deadline too: the link's queue of a zone that stopped
        // reading (a hung process) fills with inputs, and waiting for room there would hold
        // a relocation until the zone wakes instead of trying the zone failover chose.
        let sent = tokio::time::timeout_at(
            deadline,
            link.send(gateway_to_zone::Msg::Join(pb::Join {
                player_id,
                character_id,
                name: name.to_owned(),
                // The zone's join continues the login's trace.
                trace_parent: worldmesh_runtime::telemetry::traceparent(&tracing::Span::current()),
            })),
        )
        .await;
        match sent {
            Ok(true) => {}
            Ok(false) => {
                self.forget_join(player_id);
                return Err("zone link closed".into());
            }
            Err(_) => {
                self.forget_join(player_id);
                return Err("zone link full: the zone is not reading".into());
            }
        }
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(JoinOutcome::Joined(j))) => Ok(j),
            Ok(Ok(JoinOutcome::Failed(why))) => Err(format!("zone refused: {why}")),
            Ok(Err(_)) | Err(_) => {
                self.forget_join(player_id);
                Err("zone did not answer the join".into())
            }
        }
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
            Some(Msg::Frames(frames)) => route_frames(&gateway, zone_id, frames),
            Some(Msg::Joined(j)) => {
                // Route before the zone's first snapshot (next on this stream) is forwarded.
                if let Some(s) = gateway.sessions.get(&j.player_id) {
                    s.reroute(zone_id);
                }
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
                } else if !l.saved
                    && gateway
                        .sessions
                        .get(&l.player_id)
                        .is_some_and(|s| s.zone_id() == zone_id)
                {
                    // The zone the player is routed to dropped its character (it no longer
                    // owns it): find where it went. A zone the player has already left (a
                    // paused zone that resumes and drops what was failed over meanwhile) says
                    // nothing about where the player is now, and relocating away from it would
                    // only chase the player's current zone.
                    relocate(gateway.clone(), l.player_id, Some(zone_id));
                }
            }
            Some(Msg::Evicted(e)) => {
                if let Some(s) = gateway.sessions.get(&e.player_id) {
                    s.kick(
                        worldmesh_protocol::ErrorCode::LoggedInElsewhere,
                        "logged in from another connection",
                    );
                }
            }
            Some(Msg::Attached(a)) => match gateway.sessions.get(&a.player_id) {
                Some(s) => s.reroute(a.zone_id),
                None => {
                    // The player left while its character moved: let the new zone save it.
                    let _ = link.tx.try_send(pb::GatewayToZone {
                        msg: Some(gateway_to_zone::Msg::Leave(pb::Leave {
                            player_id: a.player_id,
                        })),
                    });
                }
            },
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
    relocate_all(&gateway, zone_id, "its link closed");
}

/// Relocates every player routed to `zone_id`, which is lost: its link closed, or it left the
/// map (its lease lapsed and failover is giving its characters to others, or it deregistered).
fn relocate_all(gateway: &Arc<Gateway>, zone_id: u64, why: &str) {
    let lost: Vec<u64> = gateway
        .sessions
        .iter()
        .filter(|s| s.zone_id() == zone_id)
        .map(|s| *s.key())
        .collect();
    if !lost.is_empty() {
        tracing::warn!(
            zone = zone_id,
            players = lost.len(),
            why,
            "zone lost; re-routing its players"
        );
    }
    for player_id in lost {
        relocate(gateway.clone(), player_id, Some(zone_id));
    }
}

/// How long a player in play may go without a snapshot before the gateway looks for its
/// character's zone again. Zones send every player a snapshot every tick (20 Hz), so a second
/// of silence is a lost route, not a slow tick; short enough that a player is back within
/// [`RELOCATE_BUDGET`] of its zone failing over.
pub const STARVED_AFTER: Duration = Duration::from_millis(1000);
/// How often the starvation watch looks.
const STARVED_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a relocation's join may wait for a zone before asking the coordinator again (a
/// hung zone never answers; its characters will be restored elsewhere).
const RELOCATE_JOIN_TIMEOUT: Duration = Duration::from_millis(1000);
/// The time this design aims to bring a player back within after its zone fails over.
pub const RELOCATE_BUDGET: Duration = Duration::from_secs(1);

/// Relocates every player in play that has had no snapshot for [`STARVED_AFTER`]: the one
/// check that catches every way a route can go wrong without a message saying so.
pub async fn watch_starved(gateway: Arc<Gateway>) {
    let mut every = tokio::time::interval(STARVED_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = gateway.clock_ms();
        let starved: Vec<u64> = gateway
            .sessions
            .iter()
            .filter(|s| {
                let last = s
                    .last_snapshot_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                last != 0
                    && now.saturating_sub(last) >= STARVED_AFTER.as_millis() as u64
                    && !s.relocating.load(std::sync::atomic::Ordering::Acquire)
            })
            .map(|s| *s.key())
            .collect();
        for player_id in starved {
            metrics::counter!("worldmesh_gateway_starved_players_total").increment(1);
            tracing::info!(
                player = player_id,
                "no snapshot for a second; looking for the character's zone"
            );
            relocate(gateway.clone(), player_id, None);
        }
    }
}

/// Finds the zone that now has authority over a player's character (after its zone died,
/// dropped it, or stopped sending) and joins it there, without the client noticing more than
/// a pause. Asks the coordinator until failover has given the character to a zone other than
/// `lost_zone`, up to [`RELOCATE_TIMEOUT`]; then gives up and disconnects the player. Without
/// a `lost_zone` (a starved player), whichever zone owns the character is joined, even the
/// routed one: a join attaches a character its zone holds without a player.
pub fn relocate(gateway: Arc<Gateway>, player_id: u64, lost_zone: Option<u64>) {
    let (character_id, name) = match gateway.sessions.get(&player_id) {
        Some(s) => {
            if s.relocating.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return;
            }
            (s.character_id, s.name.clone())
        }
        None => return,
    };
    metrics::counter!("worldmesh_gateway_relocations_total").increment(1);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + RELOCATE_TIMEOUT;
        let outcome = loop {
            if tokio::time::Instant::now() > deadline || gateway.shutdown.is_cancelled() {
                break None;
            }
            if !gateway.sessions.contains_key(&player_id) {
                return;
            }
            if let Some(zone) =
                try_relocate(&gateway, player_id, character_id, &name, lost_zone).await
            {
                break Some(zone);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(s) = gateway.sessions.get(&player_id) else {
            return;
        };
        s.fed_at(gateway.clock_ms());
        s.relocating
            .store(false, std::sync::atomic::Ordering::Release);
        match outcome {
            Some(zone) => {
                tracing::info!(
                    player = player_id,
                    zone,
                    "player re-routed after its zone was lost"
                );
                s.reroute(zone);
            }
            None => s.kick(
                worldmesh_protocol::ErrorCode::Unavailable,
                "zone server lost; reconnect",
            ),
        }
    });
}

async fn try_relocate(
    gateway: &Arc<Gateway>,
    player_id: u64,
    character_id: u64,
    name: &str,
    lost_zone: Option<u64>,
) -> Option<u64> {
    let located = gateway
        .coordinator
        .clone()
        .locate_entity(worldmesh_protocol::grpc::coordinator::LocateEntityRequest {
            entity_id: character_id,
        })
        .await
        .ok()?
        .into_inner();
    let zone = match located.zone {
        Some(z) if Some(z.zone_id) != lost_zone => z,
        Some(_) => return None,
        None => {
            // Nobody holds it (its zone saved and released it on the way down): it goes
            // wherever its last saved position is.
            let c = gateway
                .persistence
                .clone()
                .load_character(
                    worldmesh_protocol::grpc::persistence::LoadCharacterRequest {
                        id: character_id,
                    },
                )
                .await
                .ok()?
                .into_inner()
                .character?;
            gateway
                .coordinator
                .clone()
                .locate_zone(worldmesh_protocol::grpc::coordinator::LocateZoneRequest {
                    x: c.x,
                    y: c.y,
                })
                .await
                .ok()?
                .into_inner()
                .zone
                .filter(|z| Some(z.zone_id) != lost_zone)?
        }
    };
    let link = gateway
        .zones
        .get_or_connect(gateway, zone.zone_id, &zone.address)
        .await
        .ok()?;
    gateway
        .zones
        .join(&link, player_id, character_id, name, RELOCATE_JOIN_TIMEOUT)
        .await
        .ok()
        .map(|_| zone.zone_id)
}

/// Keeps a link open to every zone in the map, so a zone that receives one of our players by
/// handoff can reach the gateway at once: on every new map, and every [`RELINK_EVERY`] for a
/// link that closed meanwhile (a zone that re-registered closes its old links).
pub async fn link_all_zones(gateway: Arc<Gateway>) {
    let mut coordinator = gateway.coordinator.clone();
    loop {
        let opened = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            o = coordinator.watch_map(worldmesh_protocol::grpc::coordinator::GetWorldRequest {}) => o,
        };
        if let Ok(resp) = opened {
            let mut maps = resp.into_inner();
            // Zones in the last map; a zone missing from the next one has been failed over
            // (or left), even if its links are still open (a hung process keeps its sockets).
            let mut known: Vec<(u64, String)> = Vec::new();
            let mut relink = tokio::time::interval(RELINK_EVERY);
            relink.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Opening links can take seconds (an unreachable zone): never in this loop's way,
            // which must see a zone leave the map at once.
            let mut linking: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                let next = tokio::select! {
                    _ = gateway.shutdown.cancelled() => return,
                    _ = relink.tick() => None,
                    m = maps.message() => Some(m),
                };
                let Some(next) = next else {
                    if linking
                        .as_ref()
                        .is_none_or(tokio::task::JoinHandle::is_finished)
                    {
                        linking = Some(tokio::spawn(link_missing(gateway.clone(), known.clone())));
                    }
                    continue;
                };
                let Ok(Some(map)) = next else { break };
                let now: Vec<(u64, String)> = map
                    .zones
                    .into_iter()
                    .map(|z| (z.zone_id, z.address))
                    .collect();
                for (gone, _) in known
                    .iter()
                    .filter(|(k, _)| !now.iter().any(|(n, _)| n == k))
                {
                    // Its link is useless now: inputs sent there would be lost.
                    gateway.zones.links.remove(gone);
                    relocate_all(&gateway, *gone, "it left the map");
                }
                known = now;
                if linking
                    .as_ref()
                    .is_none_or(tokio::task::JoinHandle::is_finished)
                {
                    linking = Some(tokio::spawn(link_missing(gateway.clone(), known.clone())));
                }
            }
        }
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How often the gateway checks that it has a link to every zone of the map.
const RELINK_EVERY: Duration = Duration::from_secs(1);

async fn link_missing(gateway: Arc<Gateway>, zones: Vec<(u64, String)>) {
    for (zone_id, address) in &zones {
        if gateway.zones.get(*zone_id).is_none()
            && let Err(e) = gateway
                .zones
                .get_or_connect(&gateway, *zone_id, address)
                .await
        {
            tracing::debug!(zone = zone_id, error = %e, "cannot open zone link yet");
        }
    }
}

/// Forwards one zone's frames of one tick: reliable ones to the session's control stream,
/// snapshot datagrams only if the player is routed to that zone.
fn route_frames(gateway: &Gateway, zone_id: u64, frames: pb::Frames) {
    let now_ms = gateway.clock_ms();
    for f in frames.frames {
        let Some(session) = gateway.sessions.get(&f.player_id) else {
            continue;
        };
        if f.reliable {
            session.send_reliable(f.frame);
        } else if !session.forward_snapshot(zone_id, frames.tick, f.frame, now_ms) {
            // Normal around a handoff (the source sends while frozen) and from a zombie zone;
            // not counted with the drops the datagram alert watches.
            metrics::counter!("worldmesh_gateway_snapshots_not_routed_total").increment(1);
        }
    }
}

pub(crate) fn send_datagram(conn: &quinn::Connection, frame: Bytes) {
    match conn.send_datagram(frame) {
        Ok(()) => metrics::counter!("worldmesh_gateway_datagrams_out_total").increment(1),
        Err(quinn::SendDatagramError::TooLarge) => {
            metrics::counter!("worldmesh_gateway_datagrams_dropped_total", "reason" => "too_large")
                .increment(1);
        }
        Err(_) => {
            metrics::counter!("worldmesh_gateway_datagrams_dropped_total", "reason" => "connection")
                .increment(1);
        }
    }
}
