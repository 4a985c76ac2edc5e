//! The `ZoneLink` service: one bidirectional stream per gateway, multiplexing its players.
//!
//! Inbound messages become [`Command`]s for the tick thread. Joins first load the character
//! from persistence (in the link's task, so a join and a later leave of the same player stay
//! in order). Outbound, each link has a bounded queue ([`LINK_QUEUE`]) fed by the tick thread.
//!
//! `Audit` answers with the tick thread's latest published audit ([`crate::zone::Stats`]),
//! so load tests against a deployed cluster can count lost and duplicated characters.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use worldmesh_protocol::grpc::persistence::{
    LoadCharacterRequest, persistence_client::PersistenceClient,
};
use worldmesh_protocol::grpc::zone::{
    self as pb, gateway_to_zone, zone_link_server::ZoneLink, zone_to_gateway::Msg,
};
use worldmesh_protocol::ids::{ActionKind, EntityId, LinkId, PlayerId};
use worldmesh_protocol::{ActionRequest, Input, MAX_CHAT_LEN};
use worldmesh_runtime::Channel;

use crate::command::Command;
use crate::zone::Stats;

/// Messages queued towards one gateway. One per tick carries all its frames, so 64 is three
/// seconds of ticks: a gateway that far behind is better served by dropping.
pub const LINK_QUEUE: usize = 64;

pub type LinkSender = mpsc::Sender<Result<pb::ZoneToGateway, Status>>;

/// The open links, by id.
#[derive(Default)]
pub struct Links {
    map: DashMap<LinkId, LinkSender>,
    /// Cancelled by [`Links::close_all`]; every link open at that moment ends.
    closing: std::sync::Mutex<CancellationToken>,
}

impl Links {
    pub fn get(&self, id: LinkId) -> Option<LinkSender> {
        self.map.get(&id).map(|s| s.clone())
    }

    /// Ends every open gateway link. A zone that lost its lease registers as a new zone;
    /// gateways must reach it under its new id (they open new links from the map), or they
    /// would take its frames for the old zone's.
    pub fn close_all(&self) {
        let mut closing = self
            .closing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        closing.cancel();
        *closing = CancellationToken::new();
    }

    fn closing(&self) -> CancellationToken {
        self.closing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Sends a message that must not be dropped: at once when there is room, otherwise from a task
/// that waits for room (bounded by the link's own lifetime).
pub fn send_control(links: &Links, runtime: &tokio::runtime::Handle, link: LinkId, msg: Msg) {
    let Some(tx) = links.get(link) else { return };
    if let Err(mpsc::error::TrySendError::Full(m)) =
        tx.try_send(Ok(pb::ZoneToGateway { msg: Some(msg) }))
    {
        runtime.spawn(async move {
            let _ = tx.send(m).await;
        });
    }
}

pub struct LinkService {
    commands: mpsc::Sender<Command>,
    links: Arc<Links>,
    next_link: AtomicU32,
    persistence: PersistenceClient<Channel>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl LinkService {
    pub fn new(
        commands: mpsc::Sender<Command>,
        links: Arc<Links>,
        persistence: PersistenceClient<Channel>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            commands,
            links,
            next_link: AtomicU32::new(1),
            persistence,
            stats,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl ZoneLink for LinkService {
    type LinkStream =
        Pin<Box<dyn Stream<Item = Result<pb::ZoneToGateway, Status>> + Send + 'static>>;

    async fn link(
        &self,
        req: Request<Streaming<pb::GatewayToZone>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let peer = req.remote_addr();
        let inbound = req.into_inner();
        let id = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        self.links.map.insert(id, tx.clone());
        tracing::info!(link = id.0, ?peer, "gateway link opened");
        metrics::gauge!("worldmesh_zone_links").increment(1.0);
        tokio::spawn(serve_link(
            id,
            inbound,
            self.links.closing(),
            tx,
            self.commands.clone(),
            self.links.clone(),
            self.persistence.clone(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ghosts(
        &self,
        req: Request<Streaming<pb::GhostBatch>>,
    ) -> Result<Response<pb::GhostsClosed>, Status> {
        let mut inbound = req.into_inner();
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                m = inbound.message() => m,
            };
            let Ok(Some(batch)) = next else { break };
            // Superseded next tick: drop rather than wait when the tick thread is busy.
            if self.commands.try_send(Command::Ghosts(batch)).is_err() {
                metrics::counter!("worldmesh_zone_ghost_batches_dropped_total").increment(1);
            }
        }
        Ok(Response::new(pb::GhostsClosed {}))
    }

    async fn audit(
        &self,
        _req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        // Cloned under the lock, which the tick thread takes once per audit period.
        let a = match self.stats.audit.lock() {
            Ok(a) => a.clone(),
            // Poisoned only by a tick thread that panicked while publishing: what it left
            // half-written is no audit.
            Err(_) => return Err(Status::unavailable("this zone's audit is not published")),
        };
        Ok(Response::new(pb::AuditReply {
            tick: a.tick,
            simulated: a.characters.active.into_iter().map(|e| e.0).collect(),
            frozen: a.characters.frozen.into_iter().map(|e| e.0).collect(),
            npcs: a.npcs.active.into_iter().map(|e| e.0).collect(),
            npcs_frozen: a.npcs.frozen.into_iter().map(|e| e.0).collect(),
            npcs_waiting: a.npcs_waiting.into_iter().map(|e| e.0).collect(),
        }))
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_link(
    link: LinkId,
    mut inbound: Streaming<pb::GatewayToZone>,
    closing: CancellationToken,
    tx: LinkSender,
    commands: mpsc::Sender<Command>,
    links: Arc<Links>,
    mut persistence: PersistenceClient<Channel>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            // Ending the stream at shutdown lets the server's graceful stop complete.
            _ = shutdown.cancelled() => break,
            _ = closing.cancelled() => break,
            m = inbound.message() => m,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(link = link.0, error = %e, "gateway link failed");
                break;
            }
        };
        let Some(msg) = msg.msg else { continue };
        let cmd = match msg {
            gateway_to_zone::Msg::Hello(h) => {
                tracing::info!(link = link.0, gateway = %h.gateway_name, "gateway identified");
                Command::LinkOpened {
                    link,
                    gateway: h.gateway_name,
                }
            }
            gateway_to_zone::Msg::Join(j) => match persistence
                .load_character(LoadCharacterRequest { id: j.character_id })
                .instrument(join_span(&j))
                .await
            {
                Ok(reply) => match reply.into_inner().character {
                    Some(character) => Command::Spawn {
                        link,
                        player_id: PlayerId(j.player_id),
                        character: character.into(),
                    },
                    None => {
                        join_failed(&tx, j.player_id, "persistence returned no character").await;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(link = link.0, player = j.player_id, character = j.character_id, error = %e, "cannot load character");
                    join_failed(&tx, j.player_id, "cannot load character").await;
                    continue;
                }
            },
            gateway_to_zone::Msg::Leave(l) => Command::Leave {
                link,
                player_id: PlayerId(l.player_id),
            },
            gateway_to_zone::Msg::Input(i) => {
                let input = Input {
                    seq: i.seq,
                    ack_tick: i.ack_tick,
                    heading: i.heading,
                    speed: i.speed,
                    actions: i.actions,
                };
                if input.validate().is_err() {
                    metrics::counter!("worldmesh_zone_inputs_rejected_total", "reason" => "invalid").increment(1);
                    continue;
                }
                // Inputs are the one command that may be dropped under overload: the client
                // repeats its intent every tick.
                if commands
                    .try_send(Command::Input {
                        player_id: PlayerId(i.player_id),
                        input,
                    })
                    .is_err()
                {
                    metrics::counter!("worldmesh_zone_inputs_rejected_total", "reason" => "queue_full").increment(1);
                }
                continue;
            }
            gateway_to_zone::Msg::Action(a) => {
                // The gateway decoded it from a 16-bit kind; anything wider is not from one.
                let Ok(kind) = u16::try_from(a.kind) else {
                    continue;
                };
                Command::Action {
                    link,
                    player_id: PlayerId(a.player_id),
                    request: ActionRequest {
                        seq: a.seq,
                        kind: ActionKind(kind),
                        target: (a.target != 0).then_some(EntityId(a.target)),
                        payload: a.payload,
                    },
                }
            }
            gateway_to_zone::Msg::Trade(t) => {
                // The gateway decoded it once; a request we cannot read is not from one.
                let Ok(request) = worldmesh_protocol::codec::decode_value(
                    &t.request,
                    worldmesh_protocol::MAX_TRADE_REQUEST,
                ) else {
                    metrics::counter!("worldmesh_zone_trade_refusals_total", "why" => "malformed")
                        .increment(1);
                    continue;
                };
                Command::Trade {
                    player_id: PlayerId(t.player_id),
                    request,
                }
            }
            gateway_to_zone::Msg::Item(i) => Command::Item {
                link,
                player_id: PlayerId(i.player_id),
                request: if i.pick_up {
                    worldmesh_protocol::ItemRequest::PickUp { item: i.item }
                } else {
                    worldmesh_protocol::ItemRequest::Drop { item: i.item }
                },
            },
            gateway_to_zone::Msg::Chat(c) => {
                if c.text.is_empty() || c.text.len() > MAX_CHAT_LEN {
                    continue;
                }
                Command::Chat {
                    player_id: PlayerId(c.player_id),
                    text: c.text,
                }
            }
        };
        if commands.send(cmd).await.is_err() {
            break;
        }
    }
    links.map.remove(&link);
    metrics::gauge!("worldmesh_zone_links").decrement(1.0);
    tracing::info!(link = link.0, "gateway link closed");
    let _ = commands.send(Command::LinkClosed { link }).await;
}

async fn join_failed(tx: &LinkSender, player_id: u64, reason: &str) {
    let _ = tx
        .send(Ok(pb::ZoneToGateway {
            msg: Some(Msg::JoinFailed(pb::JoinFailed {
                player_id,
                reason: reason.into(),
            })),
        }))
        .await;
}

/// The zone's part of a login's trace (the gateway's span, carried on `Join`).
fn join_span(j: &pb::Join) -> tracing::Span {
    let span = tracing::info_span!("zone.join", player = j.player_id, entity = j.character_id,);
    worldmesh_runtime::telemetry::follow(&span, &j.trace_parent);
    span
}
