//! The zone core: everything a zone decides, as a state machine without I/O, the way
//! quinn-proto is to quinn.
//!
//! A [`Zone`] owns the [`Sim`], the zone's side of the handoff saga ([`Participant`]), the
//! joins waiting for the coordinator or for a checkpoint, the cell map and the neighbours near
//! each cell. The driver ([`crate::driver`]) feeds it [`Command`]s with [`Zone::handle`] and
//! steps it with [`Zone::tick`], both taking the time as an argument ([`Now`]); neither sends
//! anything. What must happen — frames to gateway links, messages to the coordinator, saves,
//! loads, ghost batches — is queued as [`Output`]s the driver takes with
//! [`Zone::poll_output`] and carries out. So every rule here runs in a unit test or a seeded
//! simulation with no socket, thread or clock.
//!
//! Ticks are numbered from the world's tick origin (the driver keeps the schedule), so every
//! zone calls the same moment by the same number and a client's snapshot ticks keep growing
//! when it is handed from zone to zone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use worldmesh_game::{ComponentValues, GameError};
use worldmesh_protocol::grpc::coordinator as coord_pb;
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};
use worldmesh_world::geometry;
use worldmesh_world::handoff::{Event, Participant, ToCoordinator, ToZone};

use crate::character::Character;
use crate::command::Command;
use crate::saver::SaveJob;
use crate::sim::effects;
use crate::sim::events::BorderEvent;
use crate::sim::npc::Wanderer;
use crate::sim::{
    AbsentPlayer, Carried, CharacterIds, GhostState, Player, Removed, Sim, SimConfig,
};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId, ZoneId};
use worldmesh_protocol::{ServerMessage, codec};

/// A character must stand this far inside another zone's cell before it is handed over, so
/// one walking along a border does not bounce between zones. 5 m is under a second of
/// running: small enough to be invisible, large enough to absorb jitter.
pub const HANDOFF_HYSTERESIS: f32 = 5.0;

/// How long a character without a player stays in the world for its player to come back
/// (gateway failover, reconnect) before it is saved and released.
pub const DETACHED_GRACE: Duration = Duration::from_secs(30);

/// How often an unanswered `Holding` report or `Acquire` is repeated: a message sent while
/// the coordinator session is down is lost.
pub const RESYNC_EVERY: Duration = Duration::from_millis(500);

/// Ghosts not refreshed for this many ticks are dropped (their zone stopped sending).
pub const GHOST_TTL_TICKS: u32 = 10;

/// Audit publication period in ticks (one second at 20 Hz).
pub const AUDIT_EVERY_TICKS: u32 = 20;

/// A batch of border characters for one neighbour zone, with its address.
#[derive(Debug)]
pub struct GhostsOut {
    pub zone_id: ZoneId,
    pub address: String,
    pub batch: pb::GhostBatch,
}

/// The moment a call happens, on both clocks the zone needs: the monotonic one for its own
/// timers, the wall clock for latencies measured across processes (freeze at the source →
/// first snapshot here).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix_us: u64,
}

impl Now {
    /// The current time on both clocks.
    pub fn system() -> Self {
        Self {
            at: Instant::now(),
            unix_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        }
    }

    /// `d` later on both clocks.
    pub fn after(self, d: Duration) -> Self {
        Self {
            at: self.at + d,
            unix_us: self.unix_us + d.as_micros() as u64,
        }
    }
}

/// What the zone asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// One tick's frames for one gateway link. Lossy: a link whose queue is full loses them
    /// (counted); snapshots are superseded next tick anyway.
    Frames { link: LinkId, frames: pb::Frames },
    /// A control message (joined, left, attached, …) that must arrive: when the link's queue
    /// is full it waits rather than being dropped.
    Control { link: LinkId, msg: Msg },
    /// A message on the coordinator session. Handoff messages are resent until answered, so
    /// the driver may drop one when its queue is full.
    ToCoordinator(ToCoordinator),
    /// Checkpoints (and players to answer `Left` once they are in). Never dropped.
    Save(SaveJob),
    /// Load this character's checkpoint (failover gave it to us) and answer with
    /// [`Command::Loaded`].
    Load { entity: EntityId, epoch: Epoch },
    /// Border characters for one neighbour. Lossy: superseded next tick.
    Ghosts(GhostsOut),
    /// Claim this character's inventory at this epoch from the ledger and answer with
    /// [`Command::InventoryClaimed`] (see [`crate::inventory`]).
    ClaimInventory { entity: EntityId, epoch: Epoch },
    /// Reserve ids from the ledger; answer with [`Command::IdsReserved`].
    ReserveIds { count: u64 },
    /// Record an inventory change (a game's grant) with the ledger, retried with the same id
    /// until answered; answer with [`Command::InventoryChanged`].
    ChangeInventory {
        id: worldmesh_economy::ChangeId,
        entity: EntityId,
        epoch: Epoch,
        changes: Vec<worldmesh_economy::Change>,
    },
    /// Ask the ledger to commit a trade hosted here, once; answer with
    /// [`Command::TradeDecided`]. The trade asks again until answered (see [`crate::trades`]).
    CommitTrade(worldmesh_economy::Commit),
    /// Ask the ledger to end a trade without moving anything, once; answered likewise.
    AbortTrade(worldmesh_economy::TradeId, worldmesh_economy::AbortReason),
    /// Read the ledger's items on the ground in `[x0, y0, x1, y1)`; answer with
    /// [`Command::GroundLoaded`] (see [`crate::ground`]).
    LoadGround { rect: [f32; 4] },
    /// Game events for the read models (scores, kills, trades). Lossy: views, not truth.
    Publish(Vec<worldmesh_protocol::grpc::persistence::event::Kind>),
}

/// Numbers the heartbeat and the cluster report.
#[derive(Default)]
pub struct Stats {
    pub entities: AtomicU32,
    pub players: AtomicU32,
    /// Characters (with or without a player) simulated here.
    pub characters: AtomicU32,
    /// p99 tick duration over the last second, microseconds (reported in heartbeats).
    pub tick_p99_us: AtomicU32,
    /// World time over wall time, in thousandths (1000: real time; see [`crate::pacer`]).
    pub time_dilation_milli: AtomicU32,
    /// Per cell simulated here, once a second: `(row-major cell, players, entities)`
    /// (reported in heartbeats, for the coordinator's balancer).
    pub cell_loads: std::sync::Mutex<Vec<(u32, u32, u32)>>,
    pub handoffs_in: AtomicU64,
    pub handoffs_out: AtomicU64,
    pub handoffs_aborted: AtomicU64,
    /// Game effects sent to another zone (actions across a border, mostly), each counted once.
    pub effects_forwarded: AtomicU64,
    /// Trades hosted here that committed with the other party simulated by another zone.
    pub trades_across: AtomicU64,
    /// Forwarded effects asked again and answered from the target's record, not applied again.
    pub effect_repeats: AtomicU64,
    /// Handoff latencies (freeze at the source → first snapshot from here), microseconds.
    pub handoff_latency_us: std::sync::Mutex<Vec<u64>>,
    /// The characters here, published every [`AUDIT_EVERY_TICKS`] at ticks divisible by it
    /// (the same ticks in every zone), for loss and duplicate audits.
    pub audit: std::sync::Mutex<Audit>,
}

/// The characters a zone held at one tick.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub tick: u32,
    /// Simulated and shown to players, and frozen for a handoff in flight.
    pub characters: CharacterIds,
    /// The world's NPCs held here, the same way.
    pub npcs: CharacterIds,
    /// NPCs held here waiting to come back (defeated).
    pub npcs_waiting: Vec<EntityId>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("players", &self.players)
            .field("characters", &self.characters)
            .finish_non_exhaustive()
    }
}

/// How a zone is set up.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub sim: SimConfig,
    pub zone_id: ZoneId,
    /// Ticks between two checkpoints.
    pub checkpoint_every: u32,
    /// Most characters simulated here: joins and handoffs beyond it are refused.
    pub capacity: u32,
    /// How far across a border a neighbour's characters are shown (the view radius plus its
    /// hysteresis: as far as any observer here can see).
    pub border_margin: f32,
}

/// A join waiting for the coordinator to grant authority.
struct PendingJoin {
    link: LinkId,
    player_id: PlayerId,
    character: Character,
    /// When the `Acquire` was (last) sent: repeated every [`RESYNC_EVERY`] until granted.
    sent: Instant,
}

/// A player waiting for its character's checkpoint to load (see [`Zone::handle`]).
#[derive(Debug, Clone, Copy)]
struct Waiting {
    link: LinkId,
    player_id: PlayerId,
}

/// The zone core (see the module doc).
pub struct Zone {
    sim: Sim,
    participant: Participant,
    zone_id: ZoneId,
    capacity: u32,
    border_margin: f32,
    checkpoint_every: u32,
    grace_ticks: u32,
    tick_rate_hz: u32,
    stats: Arc<Stats>,
    out: VecDeque<Output>,
    map: Option<Arc<coord_pb::WorldMap>>,
    /// Per cell (row-major): the other zones owning a cell within `border_margin` of it.
    near: Vec<Vec<(ZoneId, String)>>,
    link_gateway: HashMap<LinkId, String>,
    /// Joins waiting for the coordinator to grant authority, by character. Ordered, like
    /// every map whose iteration produces outputs: the same inputs give the same outputs in
    /// the same order (the deterministic simulation replays seeds).
    pending_acquire: BTreeMap<EntityId, PendingJoin>,
    /// Joins for characters failover gave us whose checkpoint is still loading, attached as
    /// soon as it arrives. Asking the coordinator again instead would cost a round trip while
    /// it is busiest (a failover).
    awaiting_restore: HashMap<EntityId, Waiting>,
    /// While re-syncing: when to repeat the `Holding` report.
    resync_at: Option<Instant>,
    /// Whether the coordinator session is open. While it is not, characters that cross a
    /// border stay here, simulated and seen as usual: freezing them for a handoff nobody can
    /// decide would stop them for the whole outage.
    coordinator_up: bool,
    /// Handed-in characters whose first snapshot has not gone out yet: freeze time (unix µs).
    first_snapshot_due: HashMap<PlayerId, u64>,
    /// Ticks of the last checkpoint and the last once-a-second housekeeping.
    last_checkpoint: Option<u32>,
    last_housekeeping: Option<u32>,
    /// The previous tick's number: a dilated zone skips numbers, so a schedule "every N
    /// ticks" fires when a multiple of N is reached or passed.
    last_tick: u32,
    positions: Vec<(EntityId, f32, f32)>,
    ghost_scratch: Vec<GhostState>,
    /// Zones sent a non-empty batch last tick (they get an empty one to clear it).
    ghosted: Vec<(ZoneId, String)>,
    /// The inventories of the player characters here, claimed from the ledger.
    inventories: crate::inventory::Inventories,
    present: Vec<crate::inventory::Present>,
    /// The trades hosted and watched here.
    trades: crate::trades::Trades,
    /// The items on the ground in this zone's cells.
    ground: crate::ground::Ground,
    /// Game events waiting for the next tick's [`Output::Publish`].
    events: Vec<worldmesh_protocol::grpc::persistence::event::Kind>,
}

/// The zone as its trades see it.
struct Around<'a> {
    sim: &'a Sim,
    inventories: &'a crate::inventory::Inventories,
}

impl crate::trades::Surroundings for Around<'_> {
    fn locate(&self, who: EntityId) -> Option<([f32; 2], bool)> {
        self.sim.locate(who)
    }

    fn inventory(&self, who: EntityId) -> Option<&worldmesh_economy::Inventory> {
        self.inventories.get(who)
    }
}

/// Ticks between two inventory reconciliations (a claim goes out within this of an arrival).
const INVENTORY_EVERY_TICKS: u32 = 4;

impl Zone {
    /// A zone running `config.sim.game`; fails only when the game's registrations conflict.
    pub fn new(config: &ZoneConfig, stats: Arc<Stats>) -> Result<Self, GameError> {
        // NPCs come from the coordinator (`Restore`), like characters restored by failover.
        let mut sim = Sim::new(&config.sim)?;
        sim.set_origin(config.zone_id);
        let hz = config.sim.tick_rate_hz.max(1);
        Ok(Self {
            sim,
            participant: Participant::default(),
            zone_id: config.zone_id,
            capacity: config.capacity,
            border_margin: config.border_margin,
            checkpoint_every: config.checkpoint_every.max(1),
            grace_ticks: (DETACHED_GRACE.as_secs_f64() * hz as f64) as u32,
            tick_rate_hz: hz,
            stats,
            out: VecDeque::new(),
            map: None,
            near: Vec::new(),
            link_gateway: HashMap::new(),
            pending_acquire: BTreeMap::new(),
            awaiting_restore: HashMap::new(),
            resync_at: None,
            coordinator_up: false,
            first_snapshot_due: HashMap::new(),
            last_checkpoint: None,
            last_housekeeping: None,
            last_tick: 0,
            positions: Vec::new(),
            ghost_scratch: Vec::new(),
            ghosted: Vec::new(),
            inventories: Default::default(),
            trades: Default::default(),
            ground: Default::default(),
            events: Vec::new(),
            present: Vec::new(),
        })
    }

    /// The next thing to do, in the order it was decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The simulation, to inspect.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// The zone's side of the handoff saga, to inspect.
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// The characters simulated here and those frozen for a handoff (the audit's view).
    pub fn characters(&mut self) -> CharacterIds {
        self.sim.character_ids_by_state()
    }

    /// The NPCs held here: simulated or frozen, and waiting to come back (the audit's view).
    pub fn npcs(&mut self) -> (CharacterIds, Vec<EntityId>) {
        self.sim.npc_ids_by_state()
    }

    /// The latest cell map, to inspect.
    pub fn map(&self) -> Option<&coord_pb::WorldMap> {
        self.map.as_deref()
    }

    /// The id this zone is registered under (it changes when a lost lease is re-registered).
    pub fn zone_id(&self) -> ZoneId {
        self.zone_id
    }

    /// How much world time the next ticks simulate, in periods (1 unless time dilation hit
    /// its floor; see [`crate::pacer`]).
    pub fn set_time_scale(&mut self, scale: f32) {
        self.sim.set_time_scale(scale);
    }

    /// One tick at `tick` (numbered from the world's tick origin): step the simulation, ship
    /// its frames, start handoffs for characters across a border, show border characters to
    /// neighbours, repeat what the coordinator has not answered, and — on their schedules —
    /// checkpoint, publish the audit and expire what timed out.
    pub fn tick(&mut self, now: Now, tick: u32) {
        // The schedules start at the first tick.
        let last_checkpoint = *self.last_checkpoint.get_or_insert(tick.saturating_sub(1));
        let last_housekeeping = *self.last_housekeeping.get_or_insert(tick.saturating_sub(1));
        self.sim.step_at(tick);
        let (gifts, dropped) = self.sim.take_loot();
        for gift in gifts {
            self.inventories.give(gift);
        }
        self.chronicle();
        if dropped > 0 {
            metrics::counter!("worldmesh_zone_loot_dropped_total", "reason" => "game_backlog")
                .increment(dropped);
        }
        self.read_mail(now);
        let prev_tick = std::mem::replace(&mut self.last_tick, tick);
        if tick / INVENTORY_EVERY_TICKS != prev_tick / INVENTORY_EVERY_TICKS {
            self.reconcile_inventories();
            let here = Around {
                sim: &self.sim,
                inventories: &self.inventories,
            };
            let actions = self.trades.poll(now.at, &here);
            self.trade_actions(actions);
            let rect = self
                .map
                .as_deref()
                .and_then(|m| geometry::owned_rect(m, self.zone_id));
            if let Some(load) = self.ground.poll(now.at, rect) {
                self.ground_actions(vec![load]);
            }
        }
        self.ship_frames(now);
        self.check_borders(now);
        self.send_ghosts(tick);
        for m in self.participant.on_tick(now.at) {
            self.tell_coordinator(m);
        }
        let mut repeat = Vec::new();
        for (&entity, p) in self.pending_acquire.iter_mut() {
            if now.at.duration_since(p.sent) >= RESYNC_EVERY {
                p.sent = now.at;
                repeat.push(ToCoordinator::Acquire {
                    entity,
                    min_epoch: p.character.epoch,
                });
            }
        }
        for m in repeat {
            self.tell_coordinator(m);
        }
        if let Some(at) = self.resync_at
            && now.at >= at
        {
            self.resync_at = Some(now.at + RESYNC_EVERY);
            let holding = self.participant.holding();
            self.tell_coordinator(holding);
        }
        if tick.wrapping_sub(last_checkpoint) >= self.checkpoint_every {
            self.last_checkpoint = Some(tick);
            let batch = self.sim.checkpoint();
            if !batch.is_empty() {
                self.save(SaveJob {
                    characters: batch,
                    leaving: Vec::new(),
                });
            }
        }
        if tick.is_multiple_of(AUDIT_EVERY_TICKS) {
            self.publish_audit(tick);
        }
        if tick.wrapping_sub(last_housekeeping) >= self.tick_rate_hz {
            self.last_housekeeping = Some(tick);
            self.sim.expire_ghosts(tick.saturating_sub(GHOST_TTL_TICKS));
            if let Some(map) = self.map.clone() {
                let loads = self.sim.cell_loads(|x, y| {
                    geometry::cell_in(&map, x, y).map(|(cx, cy)| cy * map.cells_x + cx)
                });
                if let Ok(mut l) = self.stats.cell_loads.lock() {
                    *l = loads;
                }
            }
            self.expire_detached(now, tick.saturating_sub(self.grace_ticks));
        }
        let s = &self.stats;
        s.players
            .store(self.sim.player_count() as u32, Ordering::Relaxed);
        s.entities
            .store(self.sim.entity_count() as u32, Ordering::Relaxed);
        s.characters
            .store(self.sim.player_character_count() as u32, Ordering::Relaxed);
        let e = self.sim.effect_stats();
        s.effects_forwarded.store(e.forwarded, Ordering::Relaxed);
        s.trades_across
            .store(self.trades.committed_across(), Ordering::Relaxed);
        s.effect_repeats.store(e.repeats, Ordering::Relaxed);
    }

    /// Handles one command from the tasks around the zone (gateway links, the coordinator
    /// session, the map watch, the saver, loads).
    pub fn handle(&mut self, now: Now, cmd: Command) {
        match cmd {
            Command::Spawn {
                link,
                player_id,
                character,
            } => self.join(now, link, player_id, character),
            Command::Leave { link, player_id } => match self.sim.despawn_player(player_id) {
                Some(c) => {
                    self.release(now, c.id);
                    self.save(SaveJob {
                        characters: vec![c],
                        leaving: vec![Player { player_id, link }],
                    });
                }
                None => self.control(
                    link,
                    Msg::Left(pb::Left {
                        player_id: player_id.0,
                        saved: true,
                    }),
                ),
            },
            Command::Input { player_id, input } => self.sim.push_input(player_id, input),
            Command::Action {
                link,
                player_id,
                request,
            } => self.sim.push_action(link, player_id, request),
            Command::Chat { player_id, text } => self.sim.chat(player_id, text),
            Command::LinkOpened { link, gateway } => {
                // Characters handed in for this gateway's players before its link existed: the
                // gateway still routes them elsewhere, so tell it (Attached, as on handoff).
                for (id, player_id) in self.sim.detached_for(&gateway) {
                    if self.sim.attach(id, link, player_id).is_some() {
                        self.attached(link, player_id, id);
                    }
                }
                self.link_gateway.insert(link, gateway);
            }
            Command::LinkClosed { link } => {
                let gateway = self.link_gateway.remove(&link).unwrap_or_default();
                let n = self.sim.detach_link(link, &gateway);
                if n > 0 {
                    tracing::info!(
                        link = link.0,
                        players = n,
                        "gateway link closed; its characters wait for their players"
                    );
                }
            }
            Command::Coordinator(msg) => self.on_coordinator(now, msg),
            Command::SessionUp => {
                self.coordinator_up = true;
                self.resync_at = Some(now.at);
            }
            Command::SessionDown => self.coordinator_up = false,
            Command::Map(map) => {
                self.near = geometry::near_zones(&map, self.zone_id, self.border_margin);
                let me = self.zone_id.0;
                let mine = |m: &coord_pb::WorldMap| -> Vec<bool> {
                    m.cell_owners.iter().map(|&o| o == me).collect()
                };
                if self
                    .map
                    .as_deref()
                    .is_none_or(|old| mine(old) != mine(&map))
                {
                    self.ground.cells_changed();
                }
                self.map = Some(map);
            }
            Command::Ghosts(batch) => {
                let ghosts: Vec<GhostState> = batch
                    .ghosts
                    .iter()
                    .map(|g| GhostState {
                        id: EntityId(g.id),
                        x: g.x,
                        y: g.y,
                        heading: g.heading,
                        speed: g.speed,
                        components: ComponentValues::decode_or_log(&g.components, "ghost"),
                    })
                    .collect();
                if !batch.ground.is_empty() {
                    let (map, me) = (self.map.clone(), self.zone_id);
                    let mine = |at: [f32; 2]| {
                        map.as_deref().and_then(|m| owner_at(m, at[0], at[1])) == Some(me)
                    };
                    self.ground.hinted(&mut self.sim, &batch.ground, mine);
                }
                let tick = self.sim.tick();
                let from = ZoneId(batch.from_zone);
                self.sim.set_ghosts(from, tick, &ghosts);
                let forwards = batch.effects.into_iter().map(forward_from_pb).collect();
                let replies = batch
                    .answers
                    .into_iter()
                    .filter_map(reply_from_pb)
                    .collect();
                self.sim.receive_border_traffic(from, forwards, replies);
                let events = batch
                    .events
                    .into_iter()
                    .filter_map(|e| {
                        Some(BorderEvent {
                            entity: EntityId(e.entity),
                            x: e.x,
                            y: e.y,
                            // A kind beyond u16 is no event any game registers: dropped.
                            kind: worldmesh_protocol::ids::EventKind(u16::try_from(e.kind).ok()?),
                            payload: e.payload,
                            reliable: e.reliable,
                        })
                    })
                    .collect();
                self.sim.receive_border_events(events);
            }
            Command::Loaded {
                entity,
                epoch,
                character,
            } => self.loaded(now, entity, epoch, character),
            Command::InventoryClaimed {
                entity,
                epoch,
                inventory,
            } => self.inventories.claimed(entity, epoch, inventory),
            Command::IdsReserved { first, count } => self.inventories.ids_reserved(first, count),
            Command::InventoryChanged {
                id,
                entity,
                epoch,
                outcome,
            } if self.ground.owns(id) => {
                let (map, me) = (self.map.clone(), self.zone_id);
                let owner_of = |at: [f32; 2]| {
                    let owner = map.as_deref().and_then(|m| owner_at(m, at[0], at[1]));
                    // A spot nobody owns yet stays here: the next read lets it go.
                    owner.filter(|&o| o != me)
                };
                let actions = self.ground.changed(&mut self.sim, id, outcome, owner_of);
                self.ground_actions(actions);
                self.inventories.reread(entity, epoch);
            }
            Command::InventoryChanged {
                entity,
                epoch,
                outcome,
                ..
            } => self.inventories.changed(entity, epoch, outcome),
            Command::Item {
                link,
                player_id,
                request,
            } => {
                let actions = self.ground.request(
                    &mut self.sim,
                    &mut self.inventories,
                    link,
                    player_id,
                    request,
                );
                self.ground_actions(actions);
            }
            Command::GroundLoaded { items } => {
                let (map, me) = (self.map.clone(), self.zone_id);
                let mine = |at: [f32; 2]| {
                    map.as_deref().and_then(|m| owner_at(m, at[0], at[1])) == Some(me)
                };
                self.ground.loaded(&mut self.sim, items, mine);
            }
            Command::Trade { player_id, request } => {
                let Some(who) = self.sim.character_of(player_id) else {
                    return;
                };
                let id = matches!(request, worldmesh_protocol::TradeRequest::Open { .. })
                    .then(|| self.inventories.take_id())
                    .flatten();
                let here = Around {
                    sim: &self.sim,
                    inventories: &self.inventories,
                };
                let actions = self.trades.request(now.at, &here, who, request, || id);
                self.trade_actions(actions);
            }
            Command::TradeDecided { trade, outcome } => {
                let actions = self.trades.decided(trade, outcome);
                self.trade_actions(actions);
            }
            Command::Fenced { ids } => {
                for (id, epoch) in ids {
                    // Only if the refused state was written at the epoch we still hold.
                    if self.participant.active_epoch(id) != Some(epoch) {
                        continue;
                    }
                    tracing::warn!(
                        entity = id.0,
                        "persistence holds a newer epoch; dropping our copy"
                    );
                    // Forgotten at the epoch held, not above it: a later handoff of this
                    // character into this zone must still be accepted.
                    self.participant.forget_fenced(now.at, id);
                    self.drop_character(id);
                }
            }
            Command::LeaseLost { zone_id } => {
                tracing::warn!(
                    old = self.zone_id.0,
                    new = zone_id.0,
                    "lease lost: dropping every character (others own them now)"
                );
                for id in self.sim.held_ids() {
                    self.drop_character(id);
                }
                self.participant.clear();
                self.pending_acquire.clear();
                // The ground went with the cells; the new registration reads its own.
                for (item, _, _) in self.sim.ground_items() {
                    self.sim.take_from_ground(item);
                }
                self.ground.cells_changed();
                for (_, w) in std::mem::take(&mut self.awaiting_restore) {
                    self.join_failed(w.link, w.player_id, "zone lost its lease; retry");
                }
                self.zone_id = zone_id;
                self.sim.set_origin(zone_id);
                if let Some(map) = &self.map {
                    self.near = geometry::near_zones(map, zone_id, self.border_margin);
                }
            }
        }
    }

    /// Shutdown: despawn and save everyone, releasing the characters to the coordinator (it
    /// moves the NPCs, whose persisted kinds are saved here too, to the zones that remain).
    pub fn stop(&mut self, now: Now) {
        let mut all = self.sim.checkpoint();
        all.extend(self.sim.despawn_all());
        for c in &all {
            if !c.id.is_npc() {
                self.release(now, c.id);
            }
        }
        if !all.is_empty() {
            self.save(SaveJob {
                characters: all,
                leaving: Vec::new(),
            });
        }
    }

    fn join(&mut self, now: Now, link: LinkId, player_id: PlayerId, character: Character) {
        let id = character.id;
        if self.sim.has_character(id) {
            if self.participant.active_epoch(id).is_some() {
                self.attach(id, link, player_id);
            } else {
                self.join_failed(link, player_id, "character is moving between zones; retry");
            }
            return;
        }
        if self.participant.active_epoch(id).is_some() {
            // Ours by failover, its checkpoint still loading (`Command::Loaded` attaches it).
            if let Some(old) = self
                .awaiting_restore
                .insert(id, Waiting { link, player_id })
                && old.player_id != player_id
            {
                self.join_failed(old.link, old.player_id, "superseded by a newer login");
            }
            return;
        }
        if self.sim.player_character_count() >= self.capacity as usize {
            self.join_failed(link, player_id, "zone full");
            return;
        }
        let min_epoch = character.epoch;
        if let Some(old) = self.pending_acquire.insert(
            id,
            PendingJoin {
                link,
                player_id,
                character,
                sent: now.at,
            },
        ) {
            self.join_failed(old.link, old.player_id, "superseded by a newer login");
        }
        self.tell_coordinator(ToCoordinator::Acquire {
            entity: id,
            min_epoch,
        });
    }

    /// Publishes what the game recorded this tick (and the trades that ended) for the read
    /// models.
    fn chronicle(&mut self) {
        use worldmesh_game::Record;
        use worldmesh_protocol::grpc::persistence::{Killed, Scored, event::Kind};
        let (records, dropped) = self.sim.take_chronicle();
        if dropped > 0 {
            metrics::counter!("worldmesh_events_dropped_total", "reason" => "game_backlog")
                .increment(dropped);
        }
        for r in records {
            match r {
                Record::Score { who, score, level } => {
                    if let Some(name) = self.sim.name_of(who) {
                        self.events.push(Kind::Scored(Scored {
                            character: who.0,
                            name,
                            score,
                            level,
                        }));
                    }
                }
                Record::Kill { killer, victim } => self.events.push(Kind::Killed(Killed {
                    killer: killer.0,
                    victim: victim.0,
                })),
            }
        }
        if !self.events.is_empty() {
            self.out
                .push_back(Output::Publish(std::mem::take(&mut self.events)));
        }
    }

    /// Hands the letters delivered this tick to the trades.
    fn read_mail(&mut self, now: Now) {
        for letter in self.sim.take_mail() {
            let body = match codec::decode_value::<crate::trades::Letter>(
                &letter.body,
                worldmesh_game::mail::MAX_LETTER,
            ) {
                Ok(b) => b,
                Err(e) => {
                    // Only zones mail; a letter we cannot read is a version mismatch.
                    tracing::warn!(error = %e, "unreadable engine mail; dropped");
                    metrics::counter!("worldmesh_zone_mail_dropped_total").increment(1);
                    continue;
                }
            };
            let actions = self.trades.letter(now.at, letter.to, letter.from, body);
            self.trade_actions(actions);
        }
    }

    /// Carries out what the trades decided.
    fn trade_actions(&mut self, actions: Vec<crate::trades::Action>) {
        use crate::trades::{Action, Letter};
        for action in actions {
            match action {
                Action::Tell { to, from, news } => match self.sim.locate(to) {
                    Some((_, true)) => {
                        if let Some((link, player_id)) = self.sim.player_of(to)
                            && let Ok(frame) = codec::encode_to_vec(&ServerMessage::Trade(news))
                        {
                            self.sim.send_reliable(link, player_id, frame);
                        }
                    }
                    _ => self.mail(from, to, &Letter::News(news)),
                },
                Action::Mail { from, to, letter } => self.mail(from, to, &letter),
                Action::Commit(c) => self.out.push_back(Output::CommitTrade(c)),
                Action::Abort(id, why) => self.out.push_back(Output::AbortTrade(id, why)),
                Action::Refresh(who) => self.inventories.refresh(who),
                Action::Ended {
                    trade,
                    a,
                    b,
                    outcome,
                } => self
                    .events
                    .push(worldmesh_protocol::grpc::persistence::event::Kind::Traded(
                        worldmesh_protocol::grpc::persistence::Traded {
                            trade: trade.0,
                            a: a.0,
                            b: b.0,
                            outcome: u32::from(outcome.code()),
                        },
                    )),
            }
        }
    }

    fn mail(&mut self, from: EntityId, to: EntityId, letter: &crate::trades::Letter) {
        match codec::encode_value(letter, worldmesh_game::mail::MAX_LETTER) {
            Ok(body) => self.sim.send_mail(from, to, body),
            Err(e) => {
                tracing::error!(error = %e, "engine mail too large; dropped");
                metrics::counter!("worldmesh_zone_mail_dropped_total").increment(1);
            }
        }
    }

    /// Claims the inventories of characters that arrived, shows them to their players.
    fn ground_actions(&mut self, actions: Vec<crate::ground::Action>) {
        for a in actions {
            match a {
                crate::ground::Action::Change {
                    id,
                    entity,
                    epoch,
                    changes,
                } => self.out.push_back(Output::ChangeInventory {
                    id,
                    entity,
                    epoch,
                    changes,
                }),
                crate::ground::Action::Refuse {
                    link,
                    player_id,
                    refusal,
                } => {
                    if let Ok(frame) = codec::encode_to_vec(
                        &worldmesh_protocol::ServerMessage::ItemRefused(refusal),
                    ) {
                        self.sim.send_reliable(link, player_id, frame);
                    }
                }
                crate::ground::Action::Load { rect } => {
                    self.out.push_back(Output::LoadGround { rect });
                }
            }
        }
    }

    fn reconcile_inventories(&mut self) {
        self.sim.player_characters(&mut self.present);
        for step in self.inventories.reconcile(&self.present) {
            match step {
                crate::inventory::Step::Claim { entity, epoch } => {
                    self.out.push_back(Output::ClaimInventory { entity, epoch });
                }
                crate::inventory::Step::Show {
                    link,
                    player_id,
                    frame,
                } => self.sim.send_reliable(link, player_id, frame),
                crate::inventory::Step::ReserveIds { count } => {
                    self.out.push_back(Output::ReserveIds { count });
                }
                crate::inventory::Step::Change {
                    id,
                    entity,
                    epoch,
                    changes,
                } => self.out.push_back(Output::ChangeInventory {
                    id,
                    entity,
                    epoch,
                    changes,
                }),
            }
        }
    }

    /// A checkpoint asked for by [`Output::Load`] arrived (or could not be read).
    fn loaded(&mut self, now: Now, entity: EntityId, epoch: Epoch, character: Option<Character>) {
        let overtaken = character.as_ref().is_some_and(|c| c.epoch > epoch);
        if overtaken && self.participant.active_epoch(entity) == Some(epoch) {
            // Persistence holds a newer epoch than the one we were restored at: the restore
            // was overtaken (a late message) and another zone owns the character now.
            tracing::warn!(
                entity = entity.0,
                epoch = epoch.0,
                "restore overtaken by a newer epoch; not simulating it"
            );
            self.participant.forget_fenced(now.at, entity);
            self.drop_character(entity);
        }
        if self.participant.active_epoch(entity) != Some(epoch) {
            // No longer ours at that epoch: a player waiting for it looks elsewhere.
            if let Some(w) = self.awaiting_restore.remove(&entity) {
                self.join_failed(w.link, w.player_id, "character moved on; retry");
            }
            return;
        }
        if self.sim.has_character(entity) {
            // We still hold a copy (a handoff out of here that the failed zone committed but
            // never took up, or a join that raced the load): it is at least as new as the
            // checkpoint, so it becomes the live one, with its player if it has one.
            self.sim.set_epoch(entity, epoch);
            self.sim.unfreeze(entity);
            tracing::info!(
                entity = entity.0,
                epoch = epoch.0,
                "character restored from the copy held here"
            );
            metrics::counter!("worldmesh_zone_restores_total").increment(1);
        } else if entity.is_npc() {
            let home = self.npc_home(entity);
            match character {
                Some(mut c) => {
                    c.epoch = epoch;
                    self.sim.restore_npc(&c, home);
                }
                // Never checkpointed yet (or the checkpoint is unreadable): a fresh one.
                None => self.sim.spawn_npc_at(entity, home.0, home.1, epoch, 0),
            }
            metrics::counter!("worldmesh_zone_restores_total").increment(1);
        } else if let Some(mut c) = character {
            c.epoch = epoch;
            self.sim.spawn_arrival(&c, &Carried::default());
            tracing::info!(
                entity = entity.0,
                epoch = epoch.0,
                "character restored from its checkpoint"
            );
            metrics::counter!("worldmesh_zone_restores_total").increment(1);
        } else {
            tracing::error!(entity = entity.0, "restored character could not be loaded");
        }
        if let Some(w) = self.awaiting_restore.remove(&entity) {
            if self.sim.has_character(entity) {
                self.attach(entity, w.link, w.player_id);
            } else {
                self.join_failed(
                    w.link,
                    w.player_id,
                    "character could not be restored; retry",
                );
            }
        }
        self.serve_pending_join(entity);
    }

    /// The world's NPC `entity` is ours at `epoch` (placed by the coordinator, or failed over
    /// to us): a copy still held here goes on; one waiting to come back keeps waiting; a
    /// persisted kind loads its checkpoint; any other NPC starts fresh at its spawn point.
    fn restore_npc(&mut self, now: Now, entity: EntityId, epoch: Epoch) {
        if self.sim.set_waiting_epoch(entity, epoch) {
            return;
        }
        if self.sim.has_character(entity) {
            // A copy still here (a handoff out that never took) is at least as new as any
            // checkpoint: it goes on, as a character's would.
            self.loaded(now, entity, epoch, None);
            return;
        }
        if self.sim.npc_kind_persisted(entity) {
            self.out.push_back(Output::Load { entity, epoch });
            return;
        }
        let (x, y) = self.npc_home(entity);
        self.sim.spawn_npc_at(entity, x, y, epoch, 0);
    }

    /// Where the world's NPC `entity` is spawned (the coordinator computes the same).
    fn npc_home(&self, entity: EntityId) -> (f32, f32) {
        let b = self.sim.bounds();
        geometry::npc_home(
            b.min_x,
            b.min_y,
            b.max_x,
            b.max_y,
            entity.npc_index().unwrap_or(0),
        )
    }

    /// A join still asking the coordinator for a character that became ours another way (a
    /// handoff, a restore) is served by it: asking on would take it from ourselves.
    fn serve_pending_join(&mut self, entity: EntityId) {
        if self.sim.has_character(entity)
            && let Some(p) = self.pending_acquire.remove(&entity)
        {
            self.attach(entity, p.link, p.player_id);
        }
    }

    fn attach(&mut self, id: EntityId, link: LinkId, player_id: PlayerId) {
        if let Some((s, previous)) = self.sim.attach(id, link, player_id) {
            if let Some(Player {
                link: old_link,
                player_id: old_player,
            }) = previous
            {
                tracing::info!(
                    entity = id.0,
                    old_player = old_player.0,
                    player_id = player_id.0,
                    "character taken over by a newer login"
                );
                self.control(
                    old_link,
                    Msg::Evicted(pb::Evicted {
                        player_id: old_player.0,
                    }),
                );
            }
            self.joined(link, player_id, s);
        }
    }

    fn joined(&mut self, link: LinkId, player_id: PlayerId, s: crate::sim::Spawned) {
        self.control(
            link,
            Msg::Joined(pb::Joined {
                player_id: player_id.0,
                entity_id: s.entity_id.0,
                x: s.x,
                y: s.y,
                heading: s.heading,
            }),
        );
    }

    fn attached(&mut self, link: LinkId, player_id: PlayerId, entity_id: EntityId) {
        let zone_id = self.zone_id;
        self.control(
            link,
            Msg::Attached(pb::Attached {
                player_id: player_id.0,
                entity_id: entity_id.0,
                zone_id: zone_id.0,
            }),
        );
    }

    /// Removes a character we no longer own; its player is told to look elsewhere.
    fn drop_character(&mut self, id: EntityId) {
        if let Some(Removed {
            player: Some(Player { link, player_id }),
        }) = self.sim.remove_character(id)
        {
            self.control(
                link,
                Msg::Left(pb::Left {
                    player_id: player_id.0,
                    saved: false,
                }),
            );
        }
    }

    /// Saves and releases characters whose player has been gone since `before` (a tick).
    fn expire_detached(&mut self, now: Now, before: u32) {
        let expired = self.sim.expire_detached(before);
        if expired.is_empty() {
            return;
        }
        tracing::info!(
            characters = expired.len(),
            "detached characters' grace period over; saving and releasing them"
        );
        for c in &expired {
            self.release(now, c.id);
        }
        self.save(SaveJob {
            characters: expired,
            leaving: Vec::new(),
        });
    }

    fn publish_audit(&mut self, tick: u32) {
        let characters = self.sim.character_ids_by_state();
        let (npcs, npcs_waiting) = self.sim.npc_ids_by_state();
        if let Ok(mut a) = self.stats.audit.lock() {
            *a = Audit {
                tick,
                characters,
                npcs,
                npcs_waiting,
            };
        }
    }

    fn on_coordinator(&mut self, now: Now, msg: ToZone) {
        // Handoff messages continue the handoff's trace (started by the source zone).
        let span = match &msg {
            ToZone::Prepare {
                id,
                entity,
                from,
                trace,
                ..
            } => {
                let span = tracing::info_span!(
                    "zone.handoff",
                    otel.name = "zone.handoff.prepare",
                    zone = self.zone_id.0,
                    entity = entity.0,
                    from = from.0,
                    handoff = %id,
                );
                worldmesh_runtime::telemetry::follow(&span, trace);
                span
            }
            ToZone::Decided {
                id,
                entity,
                outcome,
                trace,
            } => {
                let span = tracing::info_span!(
                    "zone.handoff",
                    otel.name = "zone.handoff.decided",
                    zone = self.zone_id.0,
                    entity = entity.0,
                    outcome = ?outcome,
                    handoff = %id,
                );
                worldmesh_runtime::telemetry::follow(&span, trace);
                span
            }
            _ => tracing::Span::none(),
        };
        let _entered = span.enter();
        let map = self.map.clone();
        let me = self.zone_id;
        let room = self.sim.player_character_count() < self.capacity as usize;
        let (events, replies) = self.participant.on_message(now.at, msg, |entity, state| {
            // Take an entity only if it stands in a cell we own, and (a character) we have
            // room: capacity counts players' characters, and an NPC refused would walk on
            // regardless, into a cell nobody takes it in.
            let Ok(s) = pb::HandoffState::decode(state.as_ref()) else {
                return false;
            };
            let Some(c) = s.character else { return false };
            (room || entity.is_npc())
                && map
                    .as_ref()
                    .is_none_or(|m| owner_at(m, c.x, c.y) == Some(me))
        });
        for r in replies {
            self.tell_coordinator(r);
        }
        for ev in events {
            match ev {
                Event::Activate {
                    entity,
                    epoch,
                    state: Some(state),
                } => self.activate(entity, epoch, &state),
                // An NPC placed here by the coordinator, or failed over.
                Event::Activate {
                    entity,
                    epoch,
                    state: None,
                } if entity.is_npc() => self.restore_npc(now, entity, epoch),
                // Failover: restore from the last checkpoint.
                Event::Activate {
                    entity,
                    epoch,
                    state: None,
                } => self.out.push_back(Output::Load { entity, epoch }),
                Event::HandedOff { entity, to } => {
                    self.sim.ghostify(entity, to);
                    self.stats.handoffs_out.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("worldmesh_zone_handoffs_total", "outcome" => "out")
                        .increment(1);
                    tracing::debug!(entity = entity.0, to = to.0, "handed off");
                }
                Event::Unfreeze { entity } => {
                    self.sim.unfreeze(entity);
                    self.stats.handoffs_aborted.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("worldmesh_zone_handoffs_total", "outcome" => "aborted")
                        .increment(1);
                }
                Event::Dropped { entity } => self.drop_character(entity),
                Event::Granted { entity, epoch } => {
                    let Some(mut p) = self.pending_acquire.remove(&entity) else {
                        if self.sim.has_character(entity) {
                            // It came here meanwhile (a handoff or a restore served the join):
                            // simulated here, now at the granted epoch.
                            self.sim.set_epoch(entity, epoch);
                        } else {
                            // Nobody waits for it any more: give it straight back.
                            self.release(now, entity);
                        }
                        continue;
                    };
                    p.character.epoch = epoch;
                    let s = self.sim.spawn_player(p.link, p.player_id, &p.character);
                    self.sim.set_epoch(entity, epoch);
                    tracing::debug!(
                        player = p.player_id.0,
                        entity = entity.0,
                        epoch = epoch.0,
                        "player spawned"
                    );
                    self.joined(p.link, p.player_id, s);
                }
            }
        }
    }

    /// A handed-in character goes live here: spawn it, and route its player to us.
    fn activate(&mut self, entity: EntityId, epoch: Epoch, state: &Bytes) {
        let Ok(s) = pb::HandoffState::decode(state.as_ref()) else {
            tracing::error!(entity = entity.0, "undecodable handoff state");
            return;
        };
        let Some(character) = s.character else {
            return;
        };
        let character = Character {
            epoch,
            ..character.into()
        };
        let player_id = PlayerId(s.player_id);
        let link = self
            .link_gateway
            .iter()
            .find(|(_, g)| **g == s.gateway)
            .map(|(l, _)| *l);
        // Player 0 is none: a character handed off while detached with nobody to wait for.
        let has_player = player_id != PlayerId(0);
        let carried = Carried {
            player: link
                .filter(|_| has_player)
                .map(|link| Player { player_id, link }),
            detached: (has_player && link.is_none()).then(|| AbsentPlayer {
                player_id,
                gateway: s.gateway.clone(),
            }),
            speed: s.speed,
            intent_heading: s.intent_heading,
            intent_speed: s.intent_speed,
            last_input_seq: s.last_input_seq,
            last_tick_sent: s.last_tick_sent,
            components: ComponentValues::decode_or_log(&s.components, "handoff state"),
            npc: s.npc.map(|n| Wanderer {
                kind: worldmesh_game::NpcKindId(n.kind as u16),
                rng: n.rng,
                next_turn: n.next_turn,
                home: worldmesh_game::Position {
                    x: n.home_x,
                    y: n.home_y,
                },
            }),
        };
        self.sim.spawn_arrival(&character, &carried);
        self.stats.handoffs_in.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("worldmesh_zone_handoffs_total", "outcome" => "in").increment(1);
        if let Some(Player { link, player_id }) = carried.player {
            self.first_snapshot_due
                .insert(player_id, s.frozen_at_unix_us);
            self.attached(link, player_id, entity);
        }
        self.serve_pending_join(entity);
    }

    /// Groups this tick's frames by link into one [`Output::Frames`] per link.
    fn ship_frames(&mut self, now: Now) {
        let tick = self.sim.tick();
        let mut by_link: BTreeMap<LinkId, Vec<pb::PlayerFrame>> = BTreeMap::new();
        for f in self.sim.take_outbox() {
            if !f.reliable
                && let Some(frozen_at) = self.first_snapshot_due.remove(&f.player_id)
            {
                let us = now.unix_us.saturating_sub(frozen_at);
                metrics::histogram!("worldmesh_zone_handoff_latency_seconds")
                    .record(us as f64 / 1e6);
                if let Ok(mut l) = self.stats.handoff_latency_us.lock() {
                    l.push(us);
                }
            }
            by_link.entry(f.link).or_default().push(pb::PlayerFrame {
                player_id: f.player_id.0,
                frame: f.frame.into(),
                reliable: f.reliable,
            });
        }
        for (link, frames) in by_link {
            self.out.push_back(Output::Frames {
                link,
                frames: pb::Frames { tick, frames },
            });
        }
    }

    /// Starts a handoff for every character standing [`HANDOFF_HYSTERESIS`] inside a cell
    /// another zone owns.
    fn check_borders(&mut self, now: Now) {
        if !self.coordinator_up {
            return;
        }
        let Some(map) = self.map.clone() else { return };
        self.sim.character_positions(&mut self.positions);
        let me = Some(self.zone_id);
        let mut moves = Vec::new();
        for &(id, x, y) in &self.positions {
            let Some(to) = owner_at(&map, x, y).filter(|&z| Some(z) != me) else {
                continue;
            };
            let h = HANDOFF_HYSTERESIS;
            if [(x + h, y), (x - h, y), (x, y + h), (x, y - h)]
                .iter()
                .any(|&(px, py)| owner_at(&map, px, py) == me)
            {
                continue;
            }
            if self.participant.active_epoch(id).is_some() {
                moves.push((id, to));
            }
        }
        for (id, to) in moves {
            self.hand_over(now, id, to);
        }
    }

    /// Freezes a character and asks the coordinator to move it to `to`.
    fn hand_over(&mut self, now: Now, id: EntityId, to: ZoneId) {
        let Some((character, carried)) = self.sim.freeze(id) else {
            return;
        };
        let gateway = carried
            .player
            .and_then(|p| self.link_gateway.get(&p.link).cloned())
            .or_else(|| carried.detached.as_ref().map(|d| d.gateway.clone()))
            .unwrap_or_default();
        let player_id = carried
            .player
            .map(|p| p.player_id)
            .or(carried.detached.as_ref().map(|d| d.player_id))
            .unwrap_or(PlayerId(0));
        let state = pb::HandoffState {
            character: Some(character.into()),
            player_id: player_id.0,
            gateway,
            speed: carried.speed,
            intent_heading: carried.intent_heading,
            intent_speed: carried.intent_speed,
            last_tick_sent: carried.last_tick_sent,
            frozen_at_unix_us: now.unix_us,
            last_input_seq: carried.last_input_seq,
            components: carried.components.encode(),
            npc: carried.npc.map(|w| pb::NpcState {
                kind: u32::from(w.kind.0),
                rng: w.rng,
                next_turn: w.next_turn,
                home_x: w.home.x,
                home_y: w.home.y,
            }),
        };
        let bytes = Bytes::from(state.encode_to_vec());
        // The root of the handoff's trace: the coordinator and the target zone continue it
        // from the traceparent every message of this handoff carries.
        let span = tracing::info_span!(
            "zone.handoff",
            otel.name = "zone.handoff.begin",
            zone = self.zone_id.0,
            entity = id.0,
            to = to.0,
            player = player_id.0,
            handoff = tracing::field::Empty,
        );
        let _entered = span.enter();
        let trace = worldmesh_runtime::telemetry::traceparent(&span);
        match self.participant.begin(now.at, id, to, bytes, trace) {
            Some(m) => {
                if let ToCoordinator::Begin { id: h, .. } = &m {
                    span.record("handoff", tracing::field::display(h));
                }
                tracing::debug!("handoff started");
                self.tell_coordinator(m);
            }
            None => self.sim.unfreeze(id),
        }
    }

    /// Streams the characters near each neighbour's cells to that neighbour (border
    /// visibility): one batch per neighbour per tick, an empty one when there is nothing
    /// left to show it.
    fn send_ghosts(&mut self, tick: u32) {
        let Some(map) = self.map.clone() else { return };
        let Some(g) = map.world.as_ref() else { return };
        let mut batches: BTreeMap<ZoneId, (String, Vec<pb::Ghost>)> = BTreeMap::new();
        // Effects for entities the neighbours simulate, and answers to theirs, ride in the
        // same batches (a zone that left the map gets nothing: the effect is retried to
        // wherever its target shows up next).
        let (forwards, replies) = self.sim.take_border_traffic();
        let address = |zone: ZoneId| {
            map.zones
                .iter()
                .find(|z| z.zone_id == zone.0)
                .map(|z| z.address.clone())
        };
        let mut traffic: BTreeMap<ZoneId, (Vec<pb::ForwardedEffect>, Vec<pb::EffectAnswer>)> =
            BTreeMap::new();
        for (zone, f) in forwards {
            traffic.entry(zone).or_default().0.push(forward_to_pb(f));
        }
        for (zone, r) in replies {
            traffic.entry(zone).or_default().1.push(reply_to_pb(r));
        }
        let mut hints: BTreeMap<ZoneId, Vec<pb::GroundHint>> = self
            .ground
            .hinted_zones()
            .into_iter()
            .map(|zone| (zone, self.ground.hints_for(zone)))
            .collect();
        for &zone in traffic.keys().chain(hints.keys()) {
            if let Some(a) = address(zone) {
                batches.entry(zone).or_insert_with(|| (a, Vec::new()));
            }
        }
        let cell_of = |x: f32, y: f32| {
            (
                geometry::axis_cell(x, g.min_x, g.cell_size, map.cells_x),
                geometry::axis_cell(y, g.min_y, g.cell_size, map.cells_y),
            )
        };
        // Events about what the neighbours show as ghosts, for their players near it.
        let mut events: BTreeMap<ZoneId, Vec<pb::BorderEvent>> = BTreeMap::new();
        let raised = self.sim.take_border_events();
        if !self.near.is_empty() && map.cells_x > 0 && map.cells_y > 0 {
            for e in raised {
                let (cx, cy) = cell_of(e.x, e.y);
                let Some(zones) = self.near.get((cy * map.cells_x + cx) as usize) else {
                    continue;
                };
                for (zone, address) in zones {
                    batches
                        .entry(*zone)
                        .or_insert_with(|| (address.clone(), Vec::new()));
                    events.entry(*zone).or_default().push(pb::BorderEvent {
                        entity: e.entity.0,
                        x: e.x,
                        y: e.y,
                        kind: u32::from(e.kind.0),
                        payload: e.payload.clone(),
                        reliable: e.reliable,
                    });
                }
            }
        }
        if self.near.is_empty() || map.cells_x == 0 || map.cells_y == 0 {
            self.ghost_scratch.clear();
        } else {
            self.sim.visible_characters(&mut self.ghost_scratch);
        }
        for ghost in &self.ghost_scratch {
            let &GhostState {
                id,
                x,
                y,
                heading,
                speed,
                ..
            } = ghost;
            let (cx, cy) = cell_of(x, y);
            let Some(zones) = self.near.get((cy * map.cells_x + cx) as usize) else {
                continue;
            };
            for (zone, address) in zones {
                batches
                    .entry(*zone)
                    .or_insert_with(|| (address.clone(), Vec::new()))
                    .1
                    .push(pb::Ghost {
                        id: id.0,
                        x,
                        y,
                        heading,
                        speed,
                        components: ghost.components.encode(),
                    });
            }
        }
        for (zone, address) in std::mem::take(&mut self.ghosted) {
            batches.entry(zone).or_insert_with(|| (address, Vec::new()));
        }
        for (zone_id, (address, ghosts)) in batches {
            if !ghosts.is_empty() {
                self.ghosted.push((zone_id, address.clone()));
            }
            let (effects, answers) = traffic.remove(&zone_id).unwrap_or_default();
            self.out.push_back(Output::Ghosts(GhostsOut {
                zone_id,
                address,
                batch: pb::GhostBatch {
                    from_zone: self.zone_id.0,
                    tick,
                    ghosts,
                    effects,
                    answers,
                    events: events.remove(&zone_id).unwrap_or_default(),
                    ground: hints.remove(&zone_id).unwrap_or_default(),
                },
            }));
        }
    }

    fn release(&mut self, now: Now, id: EntityId) {
        if let Some(m) = self.participant.release(now.at, id) {
            self.tell_coordinator(m);
        }
    }

    fn tell_coordinator(&mut self, m: ToCoordinator) {
        self.out.push_back(Output::ToCoordinator(m));
    }

    fn control(&mut self, link: LinkId, msg: Msg) {
        self.out.push_back(Output::Control { link, msg });
    }

    fn join_failed(&mut self, link: LinkId, player_id: PlayerId, reason: &str) {
        self.control(
            link,
            Msg::JoinFailed(pb::JoinFailed {
                player_id: player_id.0,
                reason: reason.into(),
            }),
        );
    }

    fn save(&mut self, job: SaveJob) {
        self.out.push_back(Output::Save(job));
    }
}

fn forward_to_pb(f: effects::Forward) -> pb::ForwardedEffect {
    pb::ForwardedEffect {
        origin_zone: f.key.zone.0,
        seq: f.key.seq,
        source: f.source.0,
        target: f.target.0,
        kind: u32::from(f.kind.0),
        payload: f.payload,
    }
}

fn forward_from_pb(f: pb::ForwardedEffect) -> effects::Forward {
    effects::Forward {
        key: effects::EffectKey {
            zone: ZoneId(f.origin_zone),
            seq: f.seq,
        },
        source: EntityId(f.source),
        target: EntityId(f.target),
        // A kind beyond u16 is no kind: refused as unknown where it is applied.
        kind: worldmesh_protocol::ids::EffectKind(u16::try_from(f.kind).unwrap_or(u16::MAX)),
        payload: f.payload,
    }
}

/// Largest encoded `ActionRefusal` (a tag and a u16).
const MAX_REFUSAL_BYTES: usize = 8;

fn reply_to_pb(r: effects::Reply) -> pb::EffectAnswer {
    let (outcome, refusal) = match r.answered {
        effects::Answered::Applied => (0, Vec::new()),
        effects::Answered::Refused(why) => (
            1,
            worldmesh_protocol::codec::encode_value(&why, MAX_REFUSAL_BYTES).unwrap_or_default(),
        ),
        effects::Answered::NotHere => (2, Vec::new()),
    };
    pb::EffectAnswer {
        origin_zone: r.key.zone.0,
        seq: r.key.seq,
        outcome,
        refusal,
    }
}

/// `None` for an answer that makes no sense (logged): the effect is asked about again.
fn reply_from_pb(a: pb::EffectAnswer) -> Option<effects::Reply> {
    let answered = match a.outcome {
        0 => effects::Answered::Applied,
        1 => match worldmesh_protocol::codec::decode_value(&a.refusal, MAX_REFUSAL_BYTES) {
            Ok(why) => effects::Answered::Refused(why),
            Err(_) => {
                tracing::warn!("undecodable effect refusal from a neighbour");
                return None;
            }
        },
        2 => effects::Answered::NotHere,
        other => {
            tracing::warn!(outcome = other, "unknown effect answer from a neighbour");
            return None;
        }
    };
    Some(effects::Reply {
        key: effects::EffectKey {
            zone: ZoneId(a.origin_zone),
            seq: a.seq,
        },
        answered,
    })
}

/// The zone owning the cell at a position, per the latest map.
fn owner_at(map: &coord_pb::WorldMap, x: f32, y: f32) -> Option<ZoneId> {
    geometry::owner_in(map, x, y).map(|(z, _)| z)
}

#[cfg(test)]
mod tests {
    //! Every transition of the zone core, with no socket, thread or clock: two zones side by
    //! side on 50 m cells (zone 1 owns x < 100, zone 2 owns x ≥ 100), messages passed by
    //! hand.

    use super::*;
    use worldmesh_game::GameRef;
    use worldmesh_protocol::WorldBounds;
    use worldmesh_world::handoff::{HandoffId, Outcome};

    const GATEWAY: &str = "gateway-0";

    fn config(zone_id: u64) -> ZoneConfig {
        ZoneConfig {
            sim: SimConfig {
                tick_rate_hz: 20,
                bounds: WorldBounds {
                    min_x: 0.0,
                    min_y: 0.0,
                    max_x: 200.0,
                    max_y: 100.0,
                },
                view_radius: 30.0,
                snapshot_budget_bytes: 1100,
                chat_radius: 50.0,
                collision: Default::default(),
                game: GameRef::default(),
                snapshots: Default::default(),
            },
            zone_id: ZoneId(zone_id),
            checkpoint_every: 20,
            capacity: 10,
            border_margin: 30.0,
        }
    }

    fn map() -> Arc<coord_pb::WorldMap> {
        let zone = |id: u64| coord_pb::ZoneInfo {
            zone_id: id,
            name: format!("zone-{id}"),
            address: format!("http://zone-{id}"),
            capacity: 10,
            draining: false,
        };
        Arc::new(coord_pb::WorldMap {
            world: Some(coord_pb::WorldGeometry {
                min_x: 0.0,
                min_y: 0.0,
                max_x: 200.0,
                max_y: 100.0,
                cell_size: 50.0,
                tick_rate_hz: 20,
                spawn_points: Vec::new(),
                tick_origin_unix_ms: 0,
                spawn_spread: 0.0,
            }),
            zones: vec![zone(1), zone(2)],
            cell_owners: vec![1, 1, 2, 2, 1, 1, 2, 2],
            cells_x: 4,
            cells_y: 2,
            version: 1,
        })
    }

    fn character(id: u64, x: f32, epoch: u64) -> Character {
        Character {
            id: EntityId(id),
            name: format!("c{id}"),
            x,
            y: 50.0,
            heading: 0.0,
            epoch: Epoch(epoch),
            version: 1,
            game: Default::default(),
        }
    }

    /// A test's clock: starts at an arbitrary instant, moves only when told.
    struct Clock(Now);

    impl Clock {
        fn new() -> Self {
            Self(Now::system())
        }
        fn advance(&mut self, d: Duration) -> Now {
            self.0 = self.0.after(d);
            self.0
        }
    }

    /// Zone `id` with the map, its coordinator session up and gateway link 1 open.
    fn zone(id: u64) -> (Zone, Clock) {
        zone_running(id, GameRef::default())
    }

    /// [`zone`], running `game`.
    fn zone_running(id: u64, game: GameRef) -> (Zone, Clock) {
        let clock = Clock::new();
        let mut config = config(id);
        config.sim.game = game;
        let mut z = Zone::new(&config, Arc::default()).unwrap();
        z.handle(clock.0, Command::Map(map()));
        z.handle(clock.0, Command::SessionUp);
        z.handle(
            clock.0,
            Command::LinkOpened {
                link: LinkId(1),
                gateway: GATEWAY.into(),
            },
        );
        drain(&mut z);
        (z, clock)
    }

    fn drain(z: &mut Zone) -> Vec<Output> {
        std::iter::from_fn(|| z.poll_output()).collect()
    }

    fn to_coordinator(out: &[Output]) -> Vec<&ToCoordinator> {
        out.iter()
            .filter_map(|o| match o {
                Output::ToCoordinator(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn control(out: &[Output]) -> Vec<(u32, &Msg)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Control { link, msg } => Some((link.0, msg)),
                _ => None,
            })
            .collect()
    }

    fn saved(out: &[Output]) -> Vec<&SaveJob> {
        out.iter()
            .filter_map(|o| match o {
                Output::Save(j) => Some(j),
                _ => None,
            })
            .collect()
    }

    /// Player `player` joins with character `id` at `x` and is granted it at `epoch`.
    fn join(z: &mut Zone, now: Now, player: u64, id: u64, x: f32, epoch: u64) -> Vec<Output> {
        z.handle(
            now,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(player),
                character: character(id, x, epoch - 1),
            },
        );
        z.handle(
            now,
            Command::Coordinator(ToZone::Granted {
                entity: EntityId(id),
                epoch: Epoch(epoch),
            }),
        );
        drain(z)
    }

    fn handoff_state(id: u64, x: f32, player: u64) -> Bytes {
        Bytes::from(
            pb::HandoffState {
                character: Some(character(id, x, 1).into()),
                player_id: player,
                gateway: GATEWAY.into(),
                speed: 0.0,
                intent_heading: 0.0,
                intent_speed: 0.0,
                last_tick_sent: 0,
                frozen_at_unix_us: 0,
                last_input_seq: 0,
                components: Vec::new(),
                npc: None,
            }
            .encode_to_vec(),
        )
    }

    fn prepare(id: u64, x: f32, player: u64) -> ToZone {
        ToZone::Prepare {
            id: HandoffId {
                epoch: Epoch(1),
                attempt: 1,
            },
            entity: EntityId(id),
            epoch: Epoch(2),
            from: ZoneId(1),
            state: handoff_state(id, x, player),
            trace: String::new(),
        }
    }

    fn decided(id: u64, outcome: Outcome) -> ToZone {
        ToZone::Decided {
            id: HandoffId {
                epoch: Epoch(1),
                attempt: 1,
            },
            entity: EntityId(id),
            outcome,
            trace: String::new(),
        }
    }

    #[test]
    fn a_join_is_spawned_once_the_coordinator_grants_it() {
        let (mut z, mut clock) = zone(1);
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(7),
                character: character(100, 50.0, 4),
            },
        );
        let out = drain(&mut z);
        assert_eq!(
            to_coordinator(&out),
            [&ToCoordinator::Acquire {
                entity: EntityId(100),
                min_epoch: Epoch(4)
            }]
        );
        assert!(control(&out).is_empty(), "nothing to tell the player yet");

        // Unanswered (the session may have been down): asked again.
        z.tick(clock.advance(RESYNC_EVERY), 1);
        let out = drain(&mut z);
        assert!(to_coordinator(&out).iter().any(|m| matches!(
            m,
            ToCoordinator::Acquire {
                entity: EntityId(100),
                ..
            }
        )));

        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Granted {
                entity: EntityId(100),
                epoch: Epoch(5),
            }),
        );
        let out = drain(&mut z);
        assert!(matches!(
            control(&out)[..],
            [(
                1,
                Msg::Joined(pb::Joined {
                    player_id: 7,
                    entity_id: 100,
                    ..
                })
            )]
        ));
        assert_eq!(z.participant().active_epoch(EntityId(100)), Some(Epoch(5)));
        assert!(z.sim().has_character(EntityId(100)));
    }

    #[test]
    fn actions_are_answered_on_their_link_with_the_next_frames() {
        let (mut z, mut clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        for player in [7, 8] {
            z.handle(
                clock.0,
                Command::Action {
                    link: LinkId(1),
                    player_id: PlayerId(player),
                    request: worldmesh_protocol::ActionRequest {
                        seq: 1,
                        kind: worldmesh_protocol::ActionKind(1),
                        target: None,
                        payload: Vec::new(),
                    },
                },
            );
        }
        z.tick(clock.advance(Duration::from_millis(50)), 1);
        let answers: Vec<(u64, worldmesh_protocol::ActionOutcome)> = drain(&mut z)
            .iter()
            .filter_map(|o| match o {
                Output::Frames { link, frames } if *link == LinkId(1) => Some(frames),
                _ => None,
            })
            .flat_map(|f| f.frames.iter())
            .filter(|f| f.reliable)
            .filter_map(
                |f| match worldmesh_protocol::codec::decode_frame(&f.frame) {
                    Ok(worldmesh_protocol::ServerMessage::ActionDone(o)) => Some((f.player_id, o)),
                    _ => None,
                },
            )
            .collect();
        // No game here: player 7's kind does not exist; player 8 has no character.
        let refused: Vec<(u64, Option<worldmesh_protocol::ActionRefusal>)> =
            answers.iter().map(|(p, o)| (*p, o.refused)).collect();
        assert_eq!(
            refused,
            [
                (8, Some(worldmesh_protocol::ActionRefusal::NotInPlay)),
                (7, Some(worldmesh_protocol::ActionRefusal::UnknownKind)),
            ]
        );
    }

    #[test]
    fn a_full_zone_refuses_joins() {
        let (mut z, clock) = zone(1);
        for i in 0..10 {
            join(&mut z, clock.0, 10 + i, 100 + i, 50.0, 2);
        }
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(99),
                character: character(999, 50.0, 1),
            },
        );
        let out = drain(&mut z);
        assert!(matches!(
            control(&out)[..],
            [(1, Msg::JoinFailed(pb::JoinFailed { player_id: 99, .. }))]
        ));
        assert!(to_coordinator(&out).is_empty());
    }

    #[test]
    fn a_second_login_takes_the_character_over() {
        let (mut z, clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(8),
                character: character(100, 50.0, 1),
            },
        );
        let out = drain(&mut z);
        let c = control(&out);
        assert!(matches!(
            c[..],
            [
                (1, Msg::Evicted(pb::Evicted { player_id: 7 })),
                (
                    1,
                    Msg::Joined(pb::Joined {
                        player_id: 8,
                        entity_id: 100,
                        ..
                    })
                )
            ]
        ));
    }

    #[test]
    fn a_character_across_a_border_is_frozen_and_handed_over() {
        let (mut z, mut clock) = zone(1);
        // Spawned in zone 2's cell, 50 m inside it.
        join(&mut z, clock.0, 7, 100, 150.0, 2);
        z.tick(clock.advance(Duration::from_millis(50)), 1);
        let out = drain(&mut z);
        let begin = to_coordinator(&out)
            .into_iter()
            .find_map(|m| match m {
                ToCoordinator::Begin { id, to, state, .. } => Some((*id, *to, state.clone())),
                _ => None,
            })
            .expect("a handoff begins");
        assert_eq!(begin.1, ZoneId(2));
        let state = pb::HandoffState::decode(begin.2.as_ref()).unwrap();
        assert_eq!((state.player_id, state.gateway.as_str()), (7, GATEWAY));
        assert_eq!(state.frozen_at_unix_us, clock.0.unix_us);
        assert_eq!(
            z.sim.character_ids_by_state().frozen,
            [EntityId(100)],
            "frozen"
        );

        // Committed: the copy here becomes a ghost of zone 2's character.
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Decided {
                id: begin.0,
                entity: EntityId(100),
                outcome: Outcome::Committed,
                trace: String::new(),
            }),
        );
        drain(&mut z);
        assert_eq!(z.participant().held(EntityId(100)), None);
        assert!(!z.sim().has_character(EntityId(100)));
        assert_eq!(z.stats.handoffs_out.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_aborted_handoff_unfreezes_the_character() {
        let (mut z, mut clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 150.0, 2);
        z.tick(clock.advance(Duration::from_millis(50)), 1);
        let id = to_coordinator(&drain(&mut z))
            .into_iter()
            .find_map(|m| match m {
                ToCoordinator::Begin { id, .. } => Some(*id),
                _ => None,
            })
            .unwrap();
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Decided {
                id,
                entity: EntityId(100),
                outcome: Outcome::Aborted,
                trace: String::new(),
            }),
        );
        assert_eq!(
            z.sim.character_ids_by_state(),
            CharacterIds {
                active: vec![EntityId(100)],
                frozen: vec![]
            }
        );
        assert_eq!(z.participant().active_epoch(EntityId(100)), Some(Epoch(2)));
    }

    #[test]
    fn borders_have_hysteresis_and_wait_for_the_coordinator() {
        let (mut z, mut clock) = zone(1);
        // 2 m inside zone 2's cell: within the hysteresis, stays here.
        join(&mut z, clock.0, 7, 100, 102.0, 2);
        // 50 m inside, but the coordinator session is down: stays here, simulated.
        z.handle(clock.0, Command::SessionDown);
        join(&mut z, clock.0, 8, 101, 150.0, 2);
        for t in 1..=5 {
            z.tick(clock.advance(Duration::from_millis(50)), t);
        }
        let out = drain(&mut z);
        assert!(
            !to_coordinator(&out)
                .iter()
                .any(|m| matches!(m, ToCoordinator::Begin { .. })),
            "no handoff"
        );
        assert!(z.sim.character_ids_by_state().frozen.is_empty());

        // The session is back: the one deep inside goes, the one on the border stays.
        z.handle(clock.0, Command::SessionUp);
        z.tick(clock.advance(Duration::from_millis(50)), 6);
        let begun: Vec<EntityId> = to_coordinator(&drain(&mut z))
            .into_iter()
            .filter_map(|m| match m {
                ToCoordinator::Begin { entity, .. } => Some(*entity),
                _ => None,
            })
            .collect();
        assert_eq!(begun, [EntityId(101)]);
    }

    #[test]
    fn an_arrival_goes_live_with_its_player_routed_here() {
        let (mut z, mut clock) = zone(2);
        z.handle(clock.0, Command::Coordinator(prepare(100, 150.0, 7)));
        let out = drain(&mut z);
        assert!(matches!(
            to_coordinator(&out)[..],
            [ToCoordinator::Prepared {
                ok: true,
                entity: EntityId(100),
                ..
            }]
        ));
        assert!(
            !z.sim().has_character(EntityId(100)),
            "inactive until committed"
        );

        z.handle(
            clock.0,
            Command::Coordinator(decided(100, Outcome::Committed)),
        );
        let out = drain(&mut z);
        assert!(matches!(
            control(&out)[..],
            [(
                1,
                Msg::Attached(pb::Attached {
                    player_id: 7,
                    entity_id: 100,
                    zone_id: 2
                })
            )]
        ));
        assert_eq!(z.participant().active_epoch(EntityId(100)), Some(Epoch(2)));

        // Its first snapshot goes out on the next tick, and the handoff's latency is taken.
        z.tick(clock.advance(Duration::from_millis(50)), 1);
        let out = drain(&mut z);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Frames { link: LinkId(1), frames } if frames.frames.iter().any(|f| f.player_id == 7 && !f.reliable)
        )));
        assert_eq!(z.stats.handoff_latency_us.lock().unwrap().len(), 1);
        assert_eq!(z.stats.handoffs_in.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_arrival_outside_our_cells_or_beyond_capacity_is_refused() {
        let (mut z, clock) = zone(2);
        // x = 50 is zone 1's.
        z.handle(clock.0, Command::Coordinator(prepare(100, 50.0, 7)));
        assert!(matches!(
            to_coordinator(&drain(&mut z))[..],
            [ToCoordinator::Prepared { ok: false, .. }]
        ));
        for i in 0..10 {
            join(&mut z, clock.0, 10 + i, 200 + i, 150.0, 2);
        }
        z.handle(clock.0, Command::Coordinator(prepare(100, 150.0, 7)));
        assert!(matches!(
            to_coordinator(&drain(&mut z))[..],
            [ToCoordinator::Prepared { ok: false, .. }]
        ));
    }

    #[test]
    fn an_arrival_for_a_gateway_without_a_link_waits_detached_until_it_links() {
        let clock = Clock::new();
        let mut z = Zone::new(&config(2), Arc::default()).unwrap();
        z.handle(clock.0, Command::Map(map()));
        z.handle(clock.0, Command::Coordinator(prepare(100, 150.0, 7)));
        z.handle(
            clock.0,
            Command::Coordinator(decided(100, Outcome::Committed)),
        );
        let out = drain(&mut z);
        assert!(control(&out).is_empty(), "no link to tell the player on");
        assert!(z.sim().has_character(EntityId(100)));

        z.handle(
            clock.0,
            Command::LinkOpened {
                link: LinkId(4),
                gateway: GATEWAY.into(),
            },
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                4,
                Msg::Attached(pb::Attached {
                    player_id: 7,
                    entity_id: 100,
                    ..
                })
            )]
        ));
    }

    #[test]
    fn a_detached_character_waits_for_its_player_then_is_saved_and_released() {
        let (mut z, mut clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        join(&mut z, clock.0, 8, 101, 50.0, 2);
        z.tick(clock.advance(Duration::from_millis(50)), 1);
        z.handle(clock.0, Command::LinkClosed { link: LinkId(1) });
        drain(&mut z);
        assert_eq!(z.sim().player_count(), 0, "both detached");

        // Player 7 comes back through another link within the grace period.
        z.handle(
            clock.0,
            Command::LinkOpened {
                link: LinkId(2),
                gateway: "gateway-1".into(),
            },
        );
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(2),
                player_id: PlayerId(7),
                character: character(100, 50.0, 1),
            },
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                2,
                Msg::Joined(pb::Joined {
                    player_id: 7,
                    entity_id: 100,
                    ..
                })
            )]
        ));

        // Player 8 does not: after the grace period its character is saved and released.
        let grace = (DETACHED_GRACE.as_secs() * 20) as u32;
        z.tick(clock.advance(Duration::from_millis(50)), grace);
        let out = drain(&mut z);
        assert!(
            saved(&out)
                .iter()
                .all(|j| j.characters.iter().all(|c| c.id != EntityId(101)))
        );
        z.tick(clock.advance(DETACHED_GRACE), grace + 25);
        let out = drain(&mut z);
        assert!(
            saved(&out)
                .iter()
                .any(|j| j.characters.iter().any(|c| c.id == EntityId(101)))
        );
        assert!(to_coordinator(&out).contains(&&ToCoordinator::Release {
            entity: EntityId(101),
            epoch: Epoch(2)
        }));
        assert!(!z.sim().has_character(EntityId(101)));
        assert!(z.sim().has_character(EntityId(100)));
    }

    #[test]
    fn leaving_saves_the_character_and_answers_once_saved() {
        let (mut z, clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        z.handle(
            clock.0,
            Command::Leave {
                link: LinkId(1),
                player_id: PlayerId(7),
            },
        );
        let out = drain(&mut z);
        let jobs = saved(&out);
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            jobs[0].leaving,
            [Player {
                link: LinkId(1),
                player_id: PlayerId(7)
            }]
        );
        assert_eq!(jobs[0].characters[0].id, EntityId(100));
        assert_eq!(
            to_coordinator(&out),
            [&ToCoordinator::Release {
                entity: EntityId(100),
                epoch: Epoch(2)
            }]
        );
        // A player unknown here is answered at once.
        z.handle(
            clock.0,
            Command::Leave {
                link: LinkId(1),
                player_id: PlayerId(7),
            },
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                1,
                Msg::Left(pb::Left {
                    player_id: 7,
                    saved: true
                })
            )]
        ));
    }

    #[test]
    fn changed_characters_are_checkpointed_on_schedule() {
        let (mut z, mut clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        z.handle(
            clock.0,
            Command::Input {
                player_id: PlayerId(7),
                input: worldmesh_protocol::Input {
                    seq: 1,
                    ack_tick: 0,
                    heading: 0.0,
                    speed: 5.0,
                    actions: 0,
                },
            },
        );
        let mut jobs = 0;
        for t in 1..=40 {
            z.tick(clock.advance(Duration::from_millis(50)), t);
            jobs += saved(&drain(&mut z)).len();
        }
        assert!(jobs >= 1, "a moving character is checkpointed");
    }

    #[test]
    fn border_characters_are_shown_to_the_neighbour_and_ghosts_expire() {
        let (mut z1, mut clock) = zone(1);
        // In the cell next to zone 2's (within its observers' sight), and two cells away.
        join(&mut z1, clock.0, 7, 100, 90.0, 2);
        join(&mut z1, clock.0, 8, 101, 20.0, 2);
        z1.tick(clock.advance(Duration::from_millis(50)), 1);
        let batch = drain(&mut z1)
            .into_iter()
            .find_map(|o| match o {
                Output::Ghosts(g) => Some(g),
                _ => None,
            })
            .expect("a ghost batch for zone 2");
        assert_eq!(batch.zone_id, ZoneId(2));
        assert_eq!(batch.address, "http://zone-2");
        let ids: Vec<u64> = batch.batch.ghosts.iter().map(|g| g.id).collect();
        assert_eq!(ids, [100], "only the one in a cell near the border");

        let (mut z2, _) = zone(2);
        z2.handle(clock.0, Command::Ghosts(batch.batch));
        assert_eq!(z2.sim().ghost_count(), 1);
        // Zone 1 stops sending: the ghost goes at the next housekeeping after its TTL.
        for t in 1..=(GHOST_TTL_TICKS + 25) {
            z2.tick(clock.advance(Duration::from_millis(50)), t);
        }
        assert_eq!(z2.sim().ghost_count(), 0);
    }

    #[test]
    fn a_failover_restore_loads_the_checkpoint_and_a_waiting_player_attaches() {
        let (mut z, clock) = zone(1);
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Restore {
                entity: EntityId(100),
                epoch: Epoch(3),
                committed: None,
            }),
        );
        let out = drain(&mut z);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Load {
                entity: EntityId(100),
                epoch: Epoch(3)
            }
        )));
        assert!(to_coordinator(&out).contains(&&ToCoordinator::Restored {
            entity: EntityId(100),
            epoch: Epoch(3)
        }));
        // The player logs in again before the checkpoint arrives: it waits, no Acquire.
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(7),
                character: character(100, 50.0, 2),
            },
        );
        assert!(drain(&mut z).is_empty());
        z.handle(
            clock.0,
            Command::Loaded {
                entity: EntityId(100),
                epoch: Epoch(3),
                character: Some(character(100, 50.0, 2)),
            },
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                1,
                Msg::Joined(pb::Joined {
                    player_id: 7,
                    entity_id: 100,
                    ..
                })
            )]
        ));
        assert_eq!(z.participant().active_epoch(EntityId(100)), Some(Epoch(3)));
    }

    #[test]
    fn a_fenced_character_is_dropped_and_its_player_sent_elsewhere() {
        let (mut z, clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        // A refusal for an older epoch than ours changes nothing.
        z.handle(
            clock.0,
            Command::Fenced {
                ids: vec![(EntityId(100), Epoch(1))],
            },
        );
        assert!(drain(&mut z).is_empty());
        z.handle(
            clock.0,
            Command::Fenced {
                ids: vec![(EntityId(100), Epoch(2))],
            },
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                1,
                Msg::Left(pb::Left {
                    player_id: 7,
                    saved: false
                })
            )]
        ));
        assert!(!z.sim().has_character(EntityId(100)));
        assert_eq!(z.participant().held(EntityId(100)), None);
    }

    #[test]
    fn a_lost_lease_drops_everything_and_takes_the_new_id() {
        let (mut z, clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        z.handle(clock.0, Command::LeaseLost { zone_id: ZoneId(9) });
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                1,
                Msg::Left(pb::Left {
                    player_id: 7,
                    saved: false
                })
            )]
        ));
        assert!(z.participant().is_empty());
        assert_eq!(z.zone_id(), ZoneId(9));
    }

    #[test]
    fn a_restore_overtaken_by_a_newer_epoch_is_not_simulated() {
        let (mut z, clock) = zone(1);
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Restore {
                entity: EntityId(100),
                epoch: Epoch(3),
                committed: None,
            }),
        );
        drain(&mut z);
        // Persistence already holds epoch 5: another zone owns the character now.
        z.handle(
            clock.0,
            Command::Loaded {
                entity: EntityId(100),
                epoch: Epoch(3),
                character: Some(character(100, 50.0, 5)),
            },
        );
        assert!(!z.sim().has_character(EntityId(100)));
        assert_eq!(z.participant().held(EntityId(100)), None);
    }

    #[test]
    fn a_join_waiting_for_a_grant_is_served_by_an_arrival() {
        let (mut z, clock) = zone(2);
        z.handle(
            clock.0,
            Command::Spawn {
                link: LinkId(1),
                player_id: PlayerId(7),
                character: character(100, 150.0, 1),
            },
        );
        drain(&mut z);
        // The character arrives by handoff (without a player) before the grant.
        z.handle(clock.0, Command::Coordinator(prepare(100, 150.0, 0)));
        z.handle(
            clock.0,
            Command::Coordinator(decided(100, Outcome::Committed)),
        );
        assert!(matches!(
            control(&drain(&mut z))[..],
            [(
                1,
                Msg::Joined(pb::Joined {
                    player_id: 7,
                    entity_id: 100,
                    ..
                })
            )]
        ));
        // The late grant keeps it here instead of giving it back.
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Granted {
                entity: EntityId(100),
                epoch: Epoch(3),
            }),
        );
        assert!(to_coordinator(&drain(&mut z)).is_empty());
        assert_eq!(z.participant().active_epoch(EntityId(100)), Some(Epoch(3)));
    }

    /// The first of the world's NPCs whose spawn point is in zone 2's cells (x ≥ 110).
    fn npc_homed_in_zone_2() -> (EntityId, (f32, f32)) {
        (0..)
            .map(|i| {
                (
                    EntityId::npc(i),
                    geometry::npc_home(0.0, 0.0, 200.0, 100.0, i),
                )
            })
            .find(|(_, (x, _))| *x >= 110.0)
            .unwrap()
    }

    #[test]
    fn an_npc_placed_by_the_coordinator_starts_at_its_spawn_point_and_walks_on_across_borders() {
        let (mut z1, mut clock) = zone(1);
        let (npc, home) = npc_homed_in_zone_2();
        // Placed in zone 1 (zone 2's cells were zone 1's when it was placed, say).
        z1.handle(
            clock.0,
            Command::Coordinator(ToZone::Restore {
                entity: npc,
                epoch: Epoch(1),
                committed: None,
            }),
        );
        let out = drain(&mut z1);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Load { .. })),
            "an NPC of a kind nobody persists starts fresh: no load"
        );
        assert_eq!(z1.npcs().0.active, [npc]);
        assert_eq!(z1.characters().active, [], "NPCs are not characters");
        // It stands in zone 2's cell: handed over at the next tick, its walk going along.
        z1.tick(clock.advance(Duration::from_millis(50)), 1);
        let state = to_coordinator(&drain(&mut z1))
            .into_iter()
            .find_map(|m| match m {
                ToCoordinator::Begin { entity, state, .. } if *entity == npc => Some(state.clone()),
                _ => None,
            })
            .expect("a handoff of the NPC");
        let carried = pb::HandoffState::decode(state.as_ref()).unwrap();
        let walk = carried.npc.expect("an NPC's walk travels");
        assert_eq!((walk.home_x, walk.home_y), home);
        assert_eq!(carried.player_id, 0);
        assert_eq!(z1.npcs().0.frozen, [npc]);

        let (mut z2, _) = zone(2);
        z2.handle(
            clock.0,
            Command::Coordinator(ToZone::Prepare {
                id: HandoffId {
                    epoch: Epoch(1),
                    attempt: 1,
                },
                entity: npc,
                epoch: Epoch(2),
                from: ZoneId(1),
                state: state.clone(),
                trace: String::new(),
            }),
        );
        assert!(matches!(
            to_coordinator(&drain(&mut z2))[..],
            [ToCoordinator::Prepared { ok: true, .. }]
        ));
        for (z, outcome) in [(&mut z2, Outcome::Committed), (&mut z1, Outcome::Committed)] {
            z.handle(
                clock.0,
                Command::Coordinator(ToZone::Decided {
                    id: HandoffId {
                        epoch: Epoch(1),
                        attempt: 1,
                    },
                    entity: npc,
                    outcome,
                    trace: String::new(),
                }),
            );
        }
        assert_eq!(z2.npcs().0.active, [npc]);
        assert_eq!(z2.participant().active_epoch(npc), Some(Epoch(2)));
        assert!(z1.npcs().0.active.is_empty() && z1.npcs().0.frozen.is_empty());
        assert_eq!(
            z1.sim().ghost_count(),
            1,
            "zone 1 still shows it, as a ghost"
        );
        // Zone 2 shows it back to zone 1 (it stands near the border).
        z2.tick(clock.advance(Duration::from_millis(50)), 2);
        let shown = drain(&mut z2).into_iter().any(
            |o| matches!(o, Output::Ghosts(g) if g.batch.ghosts.iter().any(|g| g.id == npc.0)),
        );
        assert!(
            shown || home.0 >= 150.0,
            "a border NPC is ghosted to the neighbour"
        );
    }

    #[test]
    fn a_lost_lease_drops_the_npcs_too() {
        let (mut z, clock) = zone(1);
        let npc = EntityId::npc(0);
        z.handle(
            clock.0,
            Command::Coordinator(ToZone::Restore {
                entity: npc,
                epoch: Epoch(1),
                committed: None,
            }),
        );
        assert_eq!(z.npcs().0.active, [npc]);
        z.handle(clock.0, Command::LeaseLost { zone_id: ZoneId(9) });
        assert!(z.npcs().0.active.is_empty());
        assert!(z.participant().is_empty());
    }

    /// A game of poking across borders: `Poke` (reach 20 m) sends `Poked`, which counts and
    /// tells the target's observers `Ouch`.
    mod poking {
        use bevy_ecs::prelude::*;
        use worldmesh_game::prelude::*;

        #[derive(Component, Debug, Clone, Copy, Default, bincode::Encode, bincode::Decode)]
        pub struct Pokes(pub u32);

        impl GameComponent for Pokes {
            const KIND: ComponentKind = ComponentKind(1);
            const NAME: &'static str = "pokes";
        }

        #[derive(bincode::Encode, bincode::Decode)]
        pub struct Poke;

        impl Action for Poke {
            const KIND: ActionKind = ActionKind(1);
            const NAME: &'static str = "poke";
            const REACH: Option<f32> = Some(20.0);

            fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
                ctx.affect(&Poked);
                Ok(())
            }
        }

        #[derive(bincode::Encode, bincode::Decode)]
        pub struct Poked;

        impl Effect for Poked {
            const KIND: EffectKind = EffectKind(1);
            const NAME: &'static str = "poked";

            fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
                let mut e = ctx.world.entity_mut(ctx.target);
                let n = e.get::<Pokes>().map_or(0, |p| p.0);
                e.insert(Pokes(n + 1));
                let target = ctx.target;
                ctx.to_observers(target, &Ouch);
                Ok(())
            }
        }

        #[derive(bincode::Encode, bincode::Decode)]
        pub struct Ouch;

        impl ServerEvent for Ouch {
            const KIND: EventKind = EventKind(1);
            const NAME: &'static str = "ouch";
            const DELIVERY: Delivery = Delivery::Reliable;
        }

        pub struct Poking;

        impl Game for Poking {
            fn name(&self) -> &'static str {
                "poking"
            }

            fn register(&self, game: &mut GameRegistry) {
                game.component::<Pokes>(Replicated::Yes, Persisted::Yes)
                    .action::<Poke>()
                    .effect::<Poked>()
                    .event::<Ouch>();
            }
        }
    }

    /// The ActionDone answers player `player` got in `out`.
    fn answers(out: &[Output], player: u64) -> Vec<worldmesh_protocol::ActionOutcome> {
        out.iter()
            .filter_map(|o| match o {
                Output::Frames { frames, .. } => Some(frames),
                _ => None,
            })
            .flat_map(|f| f.frames.iter())
            .filter(|f| f.player_id == player && f.reliable)
            .filter_map(
                |f| match worldmesh_protocol::codec::decode_frame(&f.frame) {
                    Ok(worldmesh_protocol::ServerMessage::ActionDone(o)) => Some(o),
                    _ => None,
                },
            )
            .collect()
    }

    /// The border batch a zone sent to `to` in `out`.
    fn batch_to(out: Vec<Output>, to: u64) -> pb::GhostBatch {
        out.into_iter()
            .find_map(|o| match o {
                Output::Ghosts(g) if g.zone_id == ZoneId(to) => Some(g.batch),
                _ => None,
            })
            .expect("a border batch")
    }

    #[test]
    fn an_action_on_a_ghost_lands_in_the_zone_that_simulates_it_once_and_is_answered_once() {
        let game = || GameRef::new(poking::Poking);
        let (mut z1, mut clock) = zone_running(1, game());
        let (mut z2, _) = zone_running(2, game());
        // Player 7 at x 95 in zone 1; character 200 (player 8) at x 105 in zone 2.
        join(&mut z1, clock.0, 7, 100, 95.0, 2);
        join(&mut z2, clock.0, 8, 200, 105.0, 2);
        let mut tick = 1;
        let mut step = |z1: &mut Zone, z2: &mut Zone, clock: &mut Clock| {
            let now = clock.advance(Duration::from_millis(50));
            z1.tick(now, tick);
            z2.tick(now, tick);
            tick += 1;
            (drain(z1), drain(z2))
        };
        // Zone 2 shows 200 to zone 1.
        let (_, out2) = step(&mut z1, &mut z2, &mut clock);
        z1.handle(clock.0, Command::Ghosts(batch_to(out2, 1)));
        z1.handle(
            clock.0,
            Command::Action {
                link: LinkId(1),
                player_id: PlayerId(7),
                request: worldmesh_game::action::request(1, Some(EntityId(200)), &poking::Poke)
                    .unwrap(),
            },
        );
        let (out1, out2) = step(&mut z1, &mut z2, &mut clock);
        assert!(answers(&out1, 7).is_empty(), "answered once zone 2 has");
        let to_z2 = batch_to(out1, 2);
        assert_eq!(to_z2.effects.len(), 1, "forwarded to the target's zone");
        assert_eq!(z1.stats.effects_forwarded.load(Ordering::Relaxed), 1);
        // The batch arrives twice (a retry racing the first answer): applied once.
        z2.handle(clock.0, Command::Ghosts(batch_to(out2, 1)));
        z2.handle(clock.0, Command::Ghosts(to_z2.clone()));
        z2.handle(clock.0, Command::Ghosts(to_z2));
        let (_, out2) = step(&mut z1, &mut z2, &mut clock);
        let back = batch_to(out2, 1);
        assert_eq!(back.answers.len(), 2);
        assert!(back.answers.iter().all(|a| a.outcome == 0), "{back:?}");
        assert_eq!(
            back.events.iter().map(|e| e.entity).collect::<Vec<_>>(),
            [200],
            "the Ouch of 200's observers, for zone 1's players near its ghost"
        );
        // The pokes show on the ghost zone 1 keeps of 200 (replicated), and zone 1 answers
        // its player: applied, once.
        z1.handle(clock.0, Command::Ghosts(back.clone()));
        let ghost = back.ghosts.iter().find(|g| g.id == 200).unwrap();
        let values = ComponentValues::decode_or_log(&ghost.components, "test");
        let pokes = values
            .0
            .iter()
            .find(|(k, _)| *k == worldmesh_protocol::ids::ComponentKind(1))
            .map(|(_, v)| v.clone());
        assert_eq!(pokes, Some(vec![1]), "poked once, not twice");
        assert_eq!(z2.stats.effect_repeats.load(Ordering::Relaxed), 1);
        let (out1, _) = step(&mut z1, &mut z2, &mut clock);
        assert_eq!(
            answers(&out1, 7),
            [worldmesh_protocol::ActionOutcome {
                seq: 1,
                refused: None
            }]
        );
        let told: Vec<u64> = out1
            .iter()
            .filter_map(|o| match o {
                Output::Frames { frames, .. } => Some(frames),
                _ => None,
            })
            .flat_map(|f| f.frames.iter())
            .filter(|f| f.player_id == 7)
            .filter_map(
                |f| match worldmesh_protocol::codec::decode_frame(&f.frame) {
                    Ok(worldmesh_protocol::ServerMessage::Event(e)) => Some(e.entity.0),
                    _ => None,
                },
            )
            .collect();
        assert_eq!(told, [200], "player 7 is told across the border");
        assert_eq!(z1.sim().effects_in_flight(), 0);
    }

    /// The economy's ledger for zone tests: answers what zones ask of it, in order.
    struct TestLedger {
        ledger: worldmesh_economy::Ledger,
        next_id: u64,
    }

    impl TestLedger {
        fn new() -> Self {
            Self {
                ledger: Default::default(),
                next_id: 1000,
            }
        }

        /// Answers the ledger's outputs in `out` (one round), returns the rest.
        fn serve(&mut self, z: &mut Zone, now: Now, out: Vec<Output>) -> Vec<Output> {
            let mut rest = Vec::new();
            for o in out {
                match o {
                    Output::ClaimInventory { entity, epoch } => {
                        let inventory = self.ledger.claim(entity, epoch.0).ok();
                        z.handle(
                            now,
                            Command::InventoryClaimed {
                                entity,
                                epoch,
                                inventory,
                            },
                        );
                    }
                    Output::ReserveIds { count } => {
                        let first = self.next_id;
                        self.next_id += count;
                        z.handle(now, Command::IdsReserved { first, count });
                    }
                    Output::ChangeInventory {
                        id,
                        entity,
                        epoch,
                        changes,
                    } => {
                        let outcome = self.ledger.change(id, entity, epoch.0, &changes);
                        z.handle(
                            now,
                            Command::InventoryChanged {
                                id,
                                entity,
                                epoch,
                                outcome,
                            },
                        );
                    }
                    Output::LoadGround {
                        rect: [x0, y0, x1, y1],
                    } => {
                        let items = self
                            .ledger
                            .all_items()
                            .filter_map(|(place, item)| match place {
                                worldmesh_economy::Place::Ground([x, y])
                                    if x >= x0 && x < x1 && y >= y0 && y < y1 =>
                                {
                                    Some((item, [x, y]))
                                }
                                _ => None,
                            })
                            .collect();
                        z.handle(now, Command::GroundLoaded { items: Some(items) });
                    }
                    other => rest.push(other),
                }
            }
            rest
        }
    }

    fn item_refusals(out: &[Output], player: u64) -> Vec<worldmesh_protocol::ItemRefusal> {
        out.iter()
            .filter_map(|o| match o {
                Output::Frames { frames, .. } => Some(frames),
                _ => None,
            })
            .flat_map(|f| f.frames.iter())
            .filter(|f| f.player_id == player && f.reliable)
            .filter_map(
                |f| match worldmesh_protocol::codec::decode_frame(&f.frame) {
                    Ok(worldmesh_protocol::ServerMessage::ItemRefused(r)) => Some(r),
                    _ => None,
                },
            )
            .collect()
    }

    #[test]
    fn a_dropped_item_is_ghosted_across_the_border_picked_up_once_and_loaded_by_a_new_owner() {
        use worldmesh_economy::{Item, ItemId, ItemKind, Place};
        use worldmesh_protocol::ItemRequest;
        let mut ledger = TestLedger::new();
        let gem = Item {
            id: ItemId(500),
            kind: ItemKind(2),
            count: 3,
            version: 1,
        };
        ledger.ledger.grant(EntityId(100), gem);
        let (mut z1, mut clock) = zone(1);
        let (mut z2, _) = zone(2);
        // Player 7 (character 100) at x 98 and player 9 (300) at x 96 in zone 1 (x < 100);
        // player 8 (200) at x 103 in zone 2.
        join(&mut z1, clock.0, 7, 100, 98.0, 2);
        join(&mut z1, clock.0, 9, 300, 96.0, 2);
        join(&mut z2, clock.0, 8, 200, 103.0, 2);
        let mut tick = 1;
        // One tick of both zones, the ledger serving both; zone 1's and zone 2's other outputs.
        let mut step =
            |z1: &mut Zone, z2: &mut Zone, clock: &mut Clock, ledger: &mut TestLedger| {
                let now = clock.advance(Duration::from_millis(50));
                z1.tick(now, tick);
                z2.tick(now, tick);
                tick += 1;
                let (mut out1, mut out2) = (drain(z1), drain(z2));
                for _ in 0..3 {
                    out1 = ledger.serve(z1, now, out1);
                    out1.extend(drain(z1));
                    out2 = ledger.serve(z2, now, out2);
                    out2.extend(drain(z2));
                }
                (out1, out2)
            };
        for _ in 0..8 {
            step(&mut z1, &mut z2, &mut clock, &mut ledger);
        }
        assert!(
            z1.inventories.get(EntityId(100)).is_some(),
            "inventory read"
        );

        // Player 7 drops the gem at its feet: zone 1 owns the spot and shows it.
        z1.handle(
            clock.0,
            Command::Item {
                link: LinkId(1),
                player_id: PlayerId(7),
                request: ItemRequest::Drop { item: 500 },
            },
        );
        step(&mut z1, &mut z2, &mut clock, &mut ledger);
        assert_eq!(
            ledger.ledger.item(ItemId(500)).unwrap().0,
            Place::Ground([98.0, 50.0])
        );
        let seen = z1.sim().seen_item(500).expect("on the ground in zone 1");
        assert_eq!(
            (seen.from, seen.view.count, seen.view.version),
            (None, 3, 2)
        );

        // Zone 1 shows it to zone 2 (within its border margin) as a ghost.
        let (out1, _) = step(&mut z1, &mut z2, &mut clock, &mut ledger);
        z2.handle(clock.0, Command::Ghosts(batch_to(out1, 2)));
        assert_eq!(z2.sim().seen_item(500).unwrap().from, Some(ZoneId(1)));

        // Players 8 (zone 2, through the ghost) and 9 (zone 1) both pick it up; zone 2's
        // change reaches the ledger first.
        for (z, player) in [(&mut z2, 8), (&mut z1, 9)] {
            z.handle(
                clock.0,
                Command::Item {
                    link: LinkId(1),
                    player_id: PlayerId(player),
                    request: ItemRequest::PickUp { item: 500 },
                },
            );
            let out = drain(z);
            assert!(ledger.serve(z, clock.0, out).is_empty());
        }
        let (out1, out2) = step(&mut z1, &mut z2, &mut clock, &mut ledger);
        assert_eq!(
            ledger.ledger.item(ItemId(500)).unwrap().0,
            Place::Carried(EntityId(200)),
            "player 8 has it"
        );
        assert_eq!(
            item_refusals(&out1, 9)
                .iter()
                .map(|r| r.why)
                .collect::<Vec<_>>(),
            [worldmesh_protocol::ItemRefusalReason::Gone]
        );
        assert!(item_refusals(&out2, 8).is_empty());
        assert!(z2.sim().seen_item(500).is_none(), "the ghost went with it");
        // Zone 2's next batch tells zone 1, which takes it off its ground.
        z1.handle(clock.0, Command::Ghosts(batch_to(out2, 1)));
        assert!(z1.sim().seen_item(500).is_none(), "gone from zone 1 too");

        // Player 8 (once its inventory shows the gem) drops it again; then zone 2's cells
        // pass to a new zone (a failover), which reads the ground in its cells.
        for _ in 0..8 {
            step(&mut z1, &mut z2, &mut clock, &mut ledger);
        }
        assert!(
            z2.inventories
                .get(EntityId(200))
                .is_some_and(|i| i.items.iter().any(|i| i.id == ItemId(500)))
        );
        z2.handle(
            clock.0,
            Command::Item {
                link: LinkId(1),
                player_id: PlayerId(8),
                request: ItemRequest::Drop { item: 500 },
            },
        );
        for _ in 0..8 {
            step(&mut z1, &mut z2, &mut clock, &mut ledger);
        }
        assert_eq!(
            ledger.ledger.item(ItemId(500)).unwrap().0,
            Place::Ground([103.0, 50.0])
        );
        assert_eq!(z2.sim().seen_item(500).unwrap().view.version, 4);
        let (mut z3, _) = zone(2);
        let now = clock.advance(Duration::from_millis(50));
        for t in 0..8 {
            z3.tick(now, 1000 + t);
            let out = drain(&mut z3);
            ledger.serve(&mut z3, now, out);
        }
        let seen = z3.sim().seen_item(500).expect("loaded from the ledger");
        assert_eq!((seen.at, seen.view.version), ([103.0, 50.0], 4));
        assert_eq!(z3.sim().ground_count(), 1);
    }

    #[test]
    fn stopping_saves_and_releases_everyone() {
        let (mut z, clock) = zone(1);
        join(&mut z, clock.0, 7, 100, 50.0, 2);
        join(&mut z, clock.0, 8, 101, 60.0, 2);
        z.stop(clock.0);
        let out = drain(&mut z);
        let mut ids: Vec<u64> = saved(&out)
            .iter()
            .flat_map(|j| j.characters.iter().map(|c| c.id.0))
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, [100, 101]);
        assert_eq!(to_coordinator(&out).len(), 2, "two releases");
    }
}
