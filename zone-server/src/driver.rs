//! The tick thread: owns the [`Sim`] and the zone's side of the handoff saga
//! ([`Participant`]), feeds them commands, steps the simulation at the tick rate, ships frames
//! to gateway links, checkpoints to the saver, and hands characters that cross into another
//! zone's cells over through the coordinator.
//!
//! It is an OS thread rather than a task so a slow tick never stalls the async runtime that
//! serves the links, and so the tick deadline is kept with a plain sleep.
//!
//! Ticks are numbered from the world's tick origin (announced by the coordinator), so every
//! zone calls the same moment by the same number and a client's snapshot ticks keep growing
//! when it is handed from zone to zone.
//!
//! Overrun policy: when a tick finishes after the next deadline the loop runs the next tick at
//! once, but it never runs more than [`MAX_CATCH_UP_TICKS`] late ticks back to back; beyond
//! that it skips the lost ticks (counted in `worldmesh_zone_tick_overruns_total`), so an
//! overloaded zone slows down instead of spiralling.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio_util::sync::CancellationToken;
use worldmesh_coordinator::handoff::{Event, Participant, ToCoordinator, ToZone};
use worldmesh_protocol::grpc::coordinator as coord_pb;
use worldmesh_protocol::grpc::persistence::{
    Character, LoadCharacterRequest, persistence_client::PersistenceClient,
};
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};
use worldmesh_runtime::Channel;

use crate::command::Command;
use crate::link::Links;
use crate::saver::SaveJob;
use crate::sim::{Carried, Sim, SimConfig};

/// Commands queued for the tick thread. 16k holds well over one tick of inputs for a zone's
/// capacity (1,000 players × a few inputs each); beyond it inputs are dropped and counted.
pub const COMMAND_QUEUE: usize = 16 * 1024;

/// Messages queued towards the coordinator. Handoff messages are resent until answered, so a
/// full queue only delays them.
pub const TO_COORDINATOR_QUEUE: usize = 8192;

/// At most this many late ticks run back to back before the schedule resets (see module doc).
pub const MAX_CATCH_UP_TICKS: u32 = 3;

/// A character must stand this far inside another zone's cell before it is handed over, so
/// one walking along a border does not bounce between zones. 5 m is under a second of
/// running: small enough to be invisible, large enough to absorb jitter.
pub const HANDOFF_HYSTERESIS: f32 = 5.0;

/// How long a character without a player stays in the world for its player to come back
/// (gateway failover, reconnect) before it is saved and released.
pub const DETACHED_GRACE: Duration = Duration::from_secs(30);

/// How often an unanswered `Holding` report is repeated after (re)connecting.
const RESYNC_EVERY: Duration = Duration::from_millis(500);

/// A batch of border characters for one neighbour zone, with its address.
pub struct GhostsOut {
    pub zone_id: u64,
    pub address: String,
    pub batch: pb::GhostBatch,
}

/// Ghosts not refreshed for this many ticks are dropped (their zone stopped sending).
pub const GHOST_TTL_TICKS: u32 = 10;

/// Numbers the heartbeat and the cluster report.
#[derive(Default)]
pub struct Stats {
    pub entities: AtomicU32,
    pub players: AtomicU32,
    /// Characters (with or without a player) simulated here.
    pub characters: AtomicU32,
    /// p99 tick duration over the last second, microseconds (reported in heartbeats).
    pub tick_p99_us: AtomicU32,
    pub handoffs_in: AtomicU64,
    pub handoffs_out: AtomicU64,
    pub handoffs_aborted: AtomicU64,
    /// Handoff latencies (freeze at the source → first snapshot from here), microseconds.
    pub handoff_latency_us: std::sync::Mutex<Vec<u64>>,
    /// Characters here, published every [`AUDIT_EVERY_TICKS`] at ticks divisible by it (the
    /// same ticks in every zone): (tick, simulated ids, frozen ids). For loss and duplicate
    /// audits.
    pub audit: std::sync::Mutex<(u32, Vec<u64>, Vec<u64>)>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("players", &self.players)
            .field("characters", &self.characters)
            .finish_non_exhaustive()
    }
}

/// Audit publication period in ticks (one second at 20 Hz).
pub const AUDIT_EVERY_TICKS: u32 = 20;

pub struct DriverConfig {
    pub sim: SimConfig,
    pub checkpoint_interval: Duration,
    pub zone_id: Arc<AtomicU64>,
    pub npcs: usize,
    pub tick_origin_unix_ms: u64,
    pub capacity: u32,
    /// How far across a border a neighbour's characters are shown (the view radius plus its
    /// hysteresis: as far as any observer here can see).
    pub border_margin: f32,
}

pub struct Channels {
    pub commands: mpsc::Receiver<Command>,
    /// Coordinator messages, handled as they arrive, also between ticks: each step of the
    /// handoff saga that waited for the next tick would add up to a tick of latency.
    pub from_coordinator: std::sync::mpsc::Receiver<ToZone>,
    /// For posting back results of work done off the tick thread (loads).
    pub commands_tx: mpsc::Sender<Command>,
    pub saves: mpsc::Sender<SaveJob>,
    pub to_coordinator: mpsc::Sender<ToCoordinator>,
    pub persistence: PersistenceClient<Channel>,
    /// Border characters for neighbour zones (see [`crate::peers`]).
    pub ghosts: mpsc::Sender<GhostsOut>,
}

pub fn spawn(
    config: DriverConfig,
    channels: Channels,
    links: Arc<Links>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    let zone_id = config.zone_id.load(Ordering::Relaxed);
    std::thread::Builder::new()
        .name(format!("zone-{zone_id}-tick"))
        .spawn(move || {
            let mut sim = Sim::new(&config.sim);
            let b = config.sim.bounds;
            for i in 0..config.npcs {
                // Spread evenly by a low-discrepancy sequence: deterministic, no clumps.
                let (fx, fy) = (
                    (i as f32 * 0.618_034).fract(),
                    (i as f32 * 0.754_877_7).fract(),
                );
                let id = crate::sim::NPC_ID_BASE + (zone_id << 24) + i as u64;
                sim.spawn_npc(
                    id,
                    b.min_x + fx * (b.max_x - b.min_x),
                    b.min_y + fy * (b.max_y - b.min_y),
                );
            }
            let mut driver = Driver {
                sim,
                ch: channels,
                backlog: VecDeque::new(),
                links,
                stats,
                runtime,
                zone_id,
                participant: Participant::default(),
                map: None,
                link_gateway: HashMap::new(),
                pending_acquire: HashMap::new(),
                awaiting_restore: HashMap::new(),
                resync_at: None,
                coordinator_up: false,
                positions: Vec::new(),
                first_snapshot_due: HashMap::new(),
                capacity: config.capacity,
                border_margin: config.border_margin,
                near: Vec::new(),
                ghost_scratch: Vec::new(),
                ghosted: Vec::new(),
                tick_us: Vec::with_capacity(64),
            };
            driver.run(&config, &shutdown);
        })
}

struct PendingJoin {
    link: u32,
    player_id: u64,
    character: Character,
    /// When the Acquire was (last) sent: repeated every [`RESYNC_EVERY`] until granted,
    /// since a message sent while the coordinator session is down is lost.
    sent: Instant,
}

struct Driver {
    sim: Sim,
    ch: Channels,
    /// Save jobs the saver had no room for yet; retried every tick, never dropped.
    backlog: VecDeque<SaveJob>,
    links: Arc<Links>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
    zone_id: u64,
    participant: Participant,
    map: Option<Arc<coord_pb::WorldMap>>,
    link_gateway: HashMap<u32, String>,
    /// Joins waiting for the coordinator to grant authority, by character.
    pending_acquire: HashMap<u64, PendingJoin>,
    /// Joins for characters failover gave us whose checkpoint is still loading: (link,
    /// player), attached as soon as it arrives. Asking the coordinator again instead would
    /// cost a round trip while it is busiest (a failover).
    awaiting_restore: HashMap<u64, (u32, u64)>,
    /// While re-syncing: when to repeat the `Holding` report.
    resync_at: Option<Instant>,
    /// Whether the coordinator session is open. While it is not, characters that cross a
    /// border stay here, simulated and seen as usual: freezing them for a handoff nobody can
    /// decide would stop them for the whole outage.
    coordinator_up: bool,
    positions: Vec<(u64, f32, f32)>,
    /// Handed-in characters whose first snapshot has not gone out yet: freeze time (unix µs).
    first_snapshot_due: HashMap<u64, u64>,
    capacity: u32,
    border_margin: f32,
    /// Per cell (row-major): the other zones owning a cell within `border_margin` of it.
    near: Vec<Vec<(u64, String)>>,
    ghost_scratch: Vec<crate::sim::GhostState>,
    /// Zones sent a non-empty batch last tick (they get an empty one to clear it).
    ghosted: Vec<(u64, String)>,
    /// Tick durations since the last housekeeping, microseconds.
    tick_us: Vec<u32>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Driver {
    fn run(&mut self, config: &DriverConfig, shutdown: &CancellationToken) {
        let period = Duration::from_secs_f64(1.0 / config.sim.tick_rate_hz as f64);
        let checkpoint_every = (config.checkpoint_interval.as_secs_f64() / period.as_secs_f64())
            .round()
            .max(1.0) as u32;
        // The Instant of tick 0, from the world's tick origin in wall-clock time.
        let since_origin =
            Duration::from_millis((unix_us() / 1000).saturating_sub(config.tick_origin_unix_ms));
        let origin = Instant::now()
            .checked_sub(since_origin)
            .unwrap_or_else(Instant::now);
        let ticks_at =
            |t: Instant| (t.duration_since(origin).as_secs_f64() / period.as_secs_f64()) as u32;
        let mut tick = ticks_at(Instant::now());
        let mut last_checkpoint = tick;
        let mut last_housekeeping = tick;
        let grace_ticks = (DETACHED_GRACE.as_secs_f64() / period.as_secs_f64()) as u32;
        while !shutdown.is_cancelled() {
            tick += 1;
            let deadline = origin + period * tick;
            let now = Instant::now();
            if now < deadline {
                self.wait_until(deadline);
            } else if now - deadline > period * MAX_CATCH_UP_TICKS {
                let skip_to = ticks_at(now);
                metrics::counter!("worldmesh_zone_tick_overruns_total")
                    .increment(skip_to.saturating_sub(tick) as u64);
                tick = skip_to.max(tick);
            }
            let started = Instant::now();
            self.drain_commands();
            self.sim.step_at(tick);
            self.ship_frames();
            self.check_borders();
            self.send_ghosts(tick);
            for m in self.participant.on_tick(started) {
                self.to_coordinator(m);
            }
            let mut repeat = Vec::new();
            for (&entity, p) in self.pending_acquire.iter_mut() {
                if started.duration_since(p.sent) >= RESYNC_EVERY {
                    p.sent = started;
                    repeat.push(ToCoordinator::Acquire {
                        entity,
                        min_epoch: p.character.epoch,
                    });
                }
            }
            for m in repeat {
                self.to_coordinator(m);
            }
            if let Some(at) = self.resync_at
                && started >= at
            {
                self.resync_at = Some(started + RESYNC_EVERY);
                let holding = self.participant.holding();
                self.to_coordinator(holding);
            }
            if tick - last_checkpoint >= checkpoint_every {
                last_checkpoint = tick;
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
            if tick - last_housekeeping >= config.sim.tick_rate_hz {
                last_housekeeping = tick;
                self.sim.expire_ghosts(tick.saturating_sub(GHOST_TTL_TICKS));
                self.housekeeping(tick.saturating_sub(grace_ticks));
            }
            self.flush_backlog();
            self.stats
                .players
                .store(self.sim.player_count() as u32, Ordering::Relaxed);
            self.stats
                .entities
                .store(self.sim.entity_count() as u32, Ordering::Relaxed);
            self.stats
                .characters
                .store(self.sim.character_ids().len() as u32, Ordering::Relaxed);
            let took = started.elapsed();
            metrics::histogram!("worldmesh_zone_tick_duration_seconds").record(took.as_secs_f64());
            self.tick_us
                .push(took.as_micros().min(u32::MAX as u128) as u32);
        }
        self.drain_commands();
        self.stop();
    }

    /// Sleeps until `deadline`, handling coordinator messages as they come.
    fn wait_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.ch.from_coordinator.recv_timeout(deadline - now) {
                Ok(msg) => self.on_coordinator(msg),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(deadline - now);
                    return;
                }
            }
        }
    }

    /// Once a second: release characters whose player never came back; publish the tick p99.
    fn housekeeping(&mut self, detached_before: u32) {
        if !self.tick_us.is_empty() {
            self.tick_us.sort_unstable();
            let i = (self.tick_us.len() * 99 / 100).min(self.tick_us.len() - 1);
            self.stats
                .tick_p99_us
                .store(self.tick_us[i], Ordering::Relaxed);
            self.tick_us.clear();
        }
        let expired = self.sim.expire_detached(detached_before);
        if !expired.is_empty() {
            tracing::info!(
                characters = expired.len(),
                "detached characters' grace period over; saving and releasing them"
            );
            for c in &expired {
                if let Some(m) = self.participant.release(c.id) {
                    self.to_coordinator(m);
                }
            }
            self.save(SaveJob {
                characters: expired,
                leaving: Vec::new(),
            });
        }
    }

    fn publish_audit(&mut self, tick: u32) {
        let (active, frozen) = self.sim.character_ids_split();
        if let Ok(mut a) = self.stats.audit.lock() {
            *a = (tick, active, frozen);
        }
    }

    fn to_coordinator(&self, m: ToCoordinator) {
        if self.ch.to_coordinator.try_send(m).is_err() {
            metrics::counter!("worldmesh_zone_coordinator_dropped_total").increment(1);
        }
    }

    fn drain_commands(&mut self) {
        while let Ok(msg) = self.ch.from_coordinator.try_recv() {
            self.on_coordinator(msg);
        }
        loop {
            match self.ch.commands.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Streams the characters near each neighbour's cells to that neighbour (border
    /// visibility): one batch per neighbour per tick, an empty one when there is nothing
    /// left to show it.
    fn send_ghosts(&mut self, tick: u32) {
        let Some(map) = self.map.clone() else { return };
        let Some(g) = map.world.as_ref() else { return };
        if self.near.is_empty() || map.cells_x == 0 || map.cells_y == 0 {
            return;
        }
        self.sim.visible_characters(&mut self.ghost_scratch);
        let mut batches: HashMap<u64, (String, Vec<pb::Ghost>)> = HashMap::new();
        for &(id, x, y, heading, speed) in &self.ghost_scratch {
            let cx = (((x - g.min_x) / g.cell_size).floor().max(0.0) as u32).min(map.cells_x - 1);
            let cy = (((y - g.min_y) / g.cell_size).floor().max(0.0) as u32).min(map.cells_y - 1);
            let Some(zones) = self.near.get((cy * map.cells_x + cx) as usize) else {
                continue;
            };
            for (zone, address) in zones {
                batches
                    .entry(*zone)
                    .or_insert_with(|| (address.clone(), Vec::new()))
                    .1
                    .push(pb::Ghost {
                        id,
                        x,
                        y,
                        heading,
                        speed,
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
            let out = GhostsOut {
                zone_id,
                address,
                batch: pb::GhostBatch {
                    from_zone: self.zone_id,
                    tick,
                    ghosts,
                },
            };
            if self.ch.ghosts.try_send(out).is_err() {
                metrics::counter!("worldmesh_zone_ghost_batches_dropped_total").increment(1);
            }
        }
    }

    /// The zone owning the cell at a position, per the latest map.
    fn owner_at(map: &coord_pb::WorldMap, x: f32, y: f32) -> Option<u64> {
        worldmesh_coordinator::owner_in(map, x, y).map(|(z, _)| z)
    }

    /// Starts a handoff for every character standing [`HANDOFF_HYSTERESIS`] inside a cell
    /// another zone owns.
    fn check_borders(&mut self) {
        if !self.coordinator_up {
            return;
        }
        let Some(map) = self.map.clone() else { return };
        self.sim.character_positions(&mut self.positions);
        let h = HANDOFF_HYSTERESIS;
        let mut moves = Vec::new();
        for &(id, x, y) in &self.positions {
            let Some(to) = Self::owner_at(&map, x, y).filter(|&z| z != self.zone_id) else {
                continue;
            };
            let me = Some(self.zone_id);
            if [(x + h, y), (x - h, y), (x, y + h), (x, y - h)]
                .iter()
                .any(|&(px, py)| Self::owner_at(&map, px, py) == me)
            {
                continue;
            }
            if self.participant.active_epoch(id).is_some() {
                moves.push((id, to));
            }
        }
        for (id, to) in moves {
            let Some((character, carried)) = self.sim.freeze(id) else {
                continue;
            };
            let gateway = carried
                .player
                .and_then(|(link, _)| self.link_gateway.get(&link).cloned())
                .or_else(|| carried.detached.as_ref().map(|d| d.1.clone()))
                .unwrap_or_default();
            let player_id = carried
                .player
                .map(|p| p.1)
                .or(carried.detached.as_ref().map(|d| d.0))
                .unwrap_or(0);
            let state = pb::HandoffState {
                character: Some(character),
                player_id,
                gateway,
                speed: carried.speed,
                intent_heading: carried.intent_heading,
                intent_speed: carried.intent_speed,
                last_tick_sent: carried.last_tick_sent,
                frozen_at_unix_us: unix_us(),
                last_input_seq: carried.last_input_seq,
            };
            let bytes = Bytes::from(state.encode_to_vec());
            // The root of the handoff's trace: the coordinator and the target zone continue
            // it from the traceparent every message of this handoff carries.
            let span = tracing::info_span!(
                "zone.handoff",
                otel.name = "zone.handoff.begin",
                zone = self.zone_id,
                entity = id,
                to,
                player = player_id,
                handoff = tracing::field::Empty,
            );
            let _entered = span.enter();
            let trace = worldmesh_runtime::telemetry::traceparent(&span);
            match self.participant.begin(Instant::now(), id, to, bytes, trace) {
                Some(m) => {
                    if let ToCoordinator::Begin { id: h, .. } = &m {
                        span.record("handoff", tracing::field::display(h));
                    }
                    tracing::debug!("handoff started");
                    self.to_coordinator(m);
                }
                None => self.sim.unfreeze(id),
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Spawn {
                link,
                player_id,
                character,
            } => self.join(link, player_id, character),
            Command::Leave { link, player_id } => {
                let left = self.sim.despawn_player(player_id);
                match left {
                    Some(c) => {
                        if let Some(m) = self.participant.release(c.id) {
                            self.to_coordinator(m);
                        }
                        self.save(SaveJob {
                            characters: vec![c],
                            leaving: vec![(link, player_id)],
                        })
                    }
                    None => self.send_control(
                        link,
                        Msg::Left(pb::Left {
                            player_id,
                            saved: true,
                        }),
                    ),
                }
            }
            Command::Input { player_id, input } => self.sim.push_input(player_id, input),
            Command::Chat { player_id, text } => self.sim.chat(player_id, text),
            Command::LinkOpened { link, gateway } => {
                // Characters handed in for this gateway's players before its link existed: the
                // gateway still routes them elsewhere, so tell it (Attached, as on handoff).
                for (id, player_id) in self.sim.detached_for(&gateway) {
                    if self.sim.attach(id, link, player_id).is_some() {
                        self.send_control(
                            link,
                            Msg::Attached(pb::Attached {
                                player_id,
                                entity_id: id,
                                zone_id: self.zone_id,
                            }),
                        );
                    }
                }
                self.link_gateway.insert(link, gateway);
            }
            Command::LinkClosed { link } => {
                let gateway = self.link_gateway.remove(&link).unwrap_or_default();
                let n = self.sim.detach_link(link, &gateway);
                if n > 0 {
                    tracing::info!(
                        link,
                        players = n,
                        "gateway link closed; its characters wait for their players"
                    );
                }
            }
            Command::Coordinator(msg) => self.on_coordinator(msg),
            Command::SessionUp => {
                self.coordinator_up = true;
                self.resync_at = Some(Instant::now());
            }
            Command::SessionDown => {
                self.coordinator_up = false;
            }
            Command::Map(map) => {
                self.near = near_zones(&map, self.zone_id, self.border_margin);
                self.map = Some(map);
            }
            Command::Ghosts(batch) => {
                let ghosts: Vec<crate::sim::GhostState> = batch
                    .ghosts
                    .iter()
                    .map(|g| (g.id, g.x, g.y, g.heading, g.speed))
                    .collect();
                let tick = self.sim.tick();
                self.sim.set_ghosts(batch.from_zone, tick, &ghosts);
            }
            Command::Loaded {
                entity,
                epoch,
                character,
            } => {
                if self.participant.active_epoch(entity) != Some(epoch) {
                    // No longer ours at that epoch: a player waiting for it looks elsewhere.
                    if let Some((link, player_id)) = self.awaiting_restore.remove(&entity) {
                        self.join_failed(link, player_id, "character moved on; retry");
                    }
                    return;
                }
                if self.sim.has_character(entity) {
                    // We still hold a copy (a handoff out of here that the failed zone
                    // committed but never took up, or a join that raced the load): it is at
                    // least as new as the checkpoint, so it becomes the live one, with its
                    // player if it has one.
                    self.sim.set_epoch(entity, epoch);
                    self.sim.unfreeze(entity);
                    tracing::info!(entity, epoch, "character restored from the copy held here");
                    metrics::counter!("worldmesh_zone_restores_total").increment(1);
                } else {
                    match character {
                        Some(mut c) => {
                            c.epoch = epoch;
                            self.sim.spawn_arrival(&c, &Carried::default());
                            tracing::info!(entity, epoch, "character restored from its checkpoint");
                            metrics::counter!("worldmesh_zone_restores_total").increment(1);
                        }
                        None => {
                            tracing::error!(entity, "restored character could not be loaded");
                        }
                    }
                }
                if let Some((link, player_id)) = self.awaiting_restore.remove(&entity) {
                    if self.sim.has_character(entity) {
                        self.attach(entity, link, player_id);
                    } else {
                        self.join_failed(link, player_id, "character could not be restored; retry");
                    }
                }
            }
            Command::Fenced { ids } => {
                for (id, epoch) in ids {
                    // Only if the refused state was written at the epoch we still hold.
                    if self.participant.active_epoch(id) != Some(epoch) {
                        continue;
                    }
                    tracing::warn!(
                        entity = id,
                        "persistence holds a newer epoch; dropping our copy"
                    );
                    let (_, _) = self.participant.on_message(
                        Instant::now(),
                        ToZone::Revoke {
                            entity: id,
                            epoch: u64::MAX,
                        },
                        |_, _| false,
                    );
                    self.drop_character(id);
                }
            }
            Command::LeaseLost { zone_id } => {
                tracing::warn!(
                    old = self.zone_id,
                    new = zone_id,
                    "lease lost: dropping every character (others own them now)"
                );
                for id in self.sim.character_ids() {
                    self.drop_character(id);
                }
                self.participant.clear();
                self.pending_acquire.clear();
                for (_, (link, player_id)) in std::mem::take(&mut self.awaiting_restore) {
                    self.join_failed(link, player_id, "zone lost its lease; retry");
                }
                self.zone_id = zone_id;
                if let Some(map) = &self.map {
                    self.near = near_zones(map, zone_id, self.border_margin);
                }
            }
        }
    }

    fn join(&mut self, link: u32, player_id: u64, character: Character) {
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
            if let Some((old_link, old_player)) =
                self.awaiting_restore.insert(id, (link, player_id))
                && old_player != player_id
            {
                self.join_failed(old_link, old_player, "superseded by a newer login");
            }
            return;
        }
        if self.sim.character_count() >= self.capacity as usize {
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
                sent: Instant::now(),
            },
        ) {
            self.join_failed(old.link, old.player_id, "superseded by a newer login");
        }
        self.to_coordinator(ToCoordinator::Acquire {
            entity: id,
            min_epoch,
        });
    }

    fn attach(&mut self, id: u64, link: u32, player_id: u64) {
        if let Some((s, previous)) = self.sim.attach(id, link, player_id) {
            if let Some((old_link, old_player)) = previous {
                tracing::info!(
                    entity = id,
                    old_player,
                    player_id,
                    "character taken over by a newer login"
                );
                self.send_control(
                    old_link,
                    Msg::Evicted(pb::Evicted {
                        player_id: old_player,
                    }),
                );
            }
            self.joined(link, player_id, s);
        }
    }

    fn joined(&self, link: u32, player_id: u64, s: crate::sim::Spawned) {
        self.send_control(
            link,
            Msg::Joined(pb::Joined {
                player_id,
                entity_id: s.entity_id,
                x: s.x,
                y: s.y,
                heading: s.heading,
            }),
        );
    }

    /// Removes a character we no longer own; its player is told to look elsewhere.
    fn drop_character(&mut self, id: u64) {
        if let Some(Some((link, player_id))) = self.sim.remove_character(id) {
            self.send_control(
                link,
                Msg::Left(pb::Left {
                    player_id,
                    saved: false,
                }),
            );
        }
    }

    fn on_coordinator(&mut self, msg: ToZone) {
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
                    zone = self.zone_id,
                    entity,
                    from,
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
                    zone = self.zone_id,
                    entity,
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
        let room = self.sim.character_count() < self.capacity as usize;
        let (events, replies) = self
            .participant
            .on_message(Instant::now(), msg, |_, state| {
                // Take an entity only if it stands in a cell we own, and we have room.
                let Ok(s) = pb::HandoffState::decode(state.as_ref()) else {
                    return false;
                };
                let Some(c) = s.character else { return false };
                room && map
                    .as_ref()
                    .is_none_or(|m| Self::owner_at(m, c.x, c.y) == Some(me))
            });
        for r in replies {
            self.to_coordinator(r);
        }
        for ev in events {
            match ev {
                Event::Activate {
                    entity,
                    epoch,
                    state: Some(state),
                } => self.activate(entity, epoch, &state),
                Event::Activate {
                    entity,
                    epoch,
                    state: None,
                } => {
                    // Failover: restore from the last checkpoint, off the tick thread.
                    let mut persistence = self.ch.persistence.clone();
                    let tx = self.ch.commands_tx.clone();
                    self.runtime.spawn(async move {
                        let character = persistence
                            .load_character(LoadCharacterRequest { id: entity })
                            .await
                            .ok()
                            .and_then(|r| r.into_inner().character);
                        let _ = tx
                            .send(Command::Loaded {
                                entity,
                                epoch,
                                character,
                            })
                            .await;
                    });
                }
                Event::HandedOff { entity, to } => {
                    self.sim.ghostify(entity, to);
                    self.stats.handoffs_out.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("worldmesh_zone_handoffs_total", "outcome" => "out")
                        .increment(1);
                    tracing::debug!(entity, to, "handed off");
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
                        // Nobody waits for it any more: give it straight back.
                        if let Some(m) = self.participant.release(entity) {
                            self.to_coordinator(m);
                        }
                        continue;
                    };
                    p.character.epoch = epoch;
                    let s = self.sim.spawn_player(p.link, p.player_id, &p.character);
                    self.sim.set_epoch(entity, epoch);
                    tracing::debug!(player = p.player_id, entity, epoch, "player spawned");
                    self.joined(p.link, p.player_id, s);
                }
            }
        }
    }

    /// A handed-in character goes live here: spawn it, and route its player to us.
    fn activate(&mut self, entity: u64, epoch: u64, state: &Bytes) {
        let Ok(s) = pb::HandoffState::decode(state.as_ref()) else {
            tracing::error!(entity, "undecodable handoff state");
            return;
        };
        let Some(mut character) = s.character else {
            return;
        };
        character.epoch = epoch;
        let link = self
            .link_gateway
            .iter()
            .find(|(_, g)| **g == s.gateway)
            .map(|(l, _)| *l);
        let carried = Carried {
            player: (s.player_id != 0)
                .then_some(())
                .and(link)
                .map(|l| (l, s.player_id)),
            detached: (s.player_id != 0 && link.is_none())
                .then(|| (s.player_id, s.gateway.clone())),
            speed: s.speed,
            intent_heading: s.intent_heading,
            intent_speed: s.intent_speed,
            last_input_seq: s.last_input_seq,
            last_tick_sent: s.last_tick_sent,
        };
        self.sim.spawn_arrival(&character, &carried);
        self.stats.handoffs_in.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("worldmesh_zone_handoffs_total", "outcome" => "in").increment(1);
        if let Some((link, player_id)) = carried.player {
            self.first_snapshot_due
                .insert(player_id, s.frozen_at_unix_us);
            self.send_control(
                link,
                Msg::Attached(pb::Attached {
                    player_id,
                    entity_id: entity,
                    zone_id: self.zone_id,
                }),
            );
        }
    }

    /// Groups this tick's frames by link into one message per link. A link whose queue is full
    /// loses this tick's batch (counted): snapshots are superseded next tick anyway.
    fn ship_frames(&mut self) {
        let tick = self.sim.tick();
        let mut by_link: HashMap<u32, Vec<pb::PlayerFrame>> = HashMap::new();
        let now_us = if self.first_snapshot_due.is_empty() {
            0
        } else {
            unix_us()
        };
        for f in self.sim.take_outbox() {
            if !f.reliable
                && let Some(frozen_at) = self.first_snapshot_due.remove(&f.player_id)
            {
                let us = now_us.saturating_sub(frozen_at);
                metrics::histogram!("worldmesh_zone_handoff_latency_seconds")
                    .record(us as f64 / 1e6);
                if let Ok(mut l) = self.stats.handoff_latency_us.lock() {
                    l.push(us);
                }
            }
            by_link.entry(f.link).or_default().push(pb::PlayerFrame {
                player_id: f.player_id,
                frame: f.frame.into(),
                reliable: f.reliable,
            });
        }
        for (link, frames) in by_link {
            let Some(tx) = self.links.get(link) else {
                continue;
            };
            let n = frames.len() as u64;
            match tx.try_send(Ok(pb::ZoneToGateway { msg: Some(Msg::Frames(pb::Frames { tick, frames })) })) {
                Ok(()) => metrics::counter!("worldmesh_zone_frames_sent_total").increment(n),
                Err(TrySendError::Full(_)) => metrics::counter!("worldmesh_zone_frames_dropped_total", "reason" => "link_full").increment(n),
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Control messages (joined, left) must arrive: when the link's queue is full they wait
    /// on the runtime instead of being dropped.
    fn send_control(&self, link: u32, msg: Msg) {
        crate::link::send_control(&self.links, &self.runtime, link, msg);
    }

    fn join_failed(&self, link: u32, player_id: u64, reason: &str) {
        self.send_control(
            link,
            Msg::JoinFailed(pb::JoinFailed {
                player_id,
                reason: reason.into(),
            }),
        );
    }

    fn save(&mut self, job: SaveJob) {
        self.backlog.push_back(job);
        self.flush_backlog();
    }

    fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        while let Some(job) = self.backlog.pop_front() {
            match self.ch.saves.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    metrics::gauge!("worldmesh_zone_save_backlog").set(self.backlog.len() as f64);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    tracing::error!("saver stopped; checkpoint lost");
                    return;
                }
            }
        }
        // Drained: the gauge (and its alert) must come back down.
        metrics::gauge!("worldmesh_zone_save_backlog").set(0.0);
    }

    /// Shutdown: despawn and save everyone, waiting for room in the saver's queue.
    fn stop(&mut self) {
        let mut all = self.sim.checkpoint();
        all.extend(self.sim.despawn_all());
        for c in &all {
            if let Some(m) = self.participant.release(c.id) {
                self.to_coordinator(m);
            }
        }
        if !all.is_empty() {
            self.backlog.push_back(SaveJob {
                characters: all,
                leaving: Vec::new(),
            });
        }
        for job in self.backlog.drain(..) {
            if self.ch.saves.blocking_send(job).is_err() {
                tracing::error!("saver stopped before the final save");
            }
        }
    }
}

/// For every cell, the other zones owning a cell within `margin` of it, with their addresses.
fn near_zones(map: &coord_pb::WorldMap, me: u64, margin: f32) -> Vec<Vec<(u64, String)>> {
    let Some(g) = map.world.as_ref() else {
        return Vec::new();
    };
    let (w, h) = (map.cells_x as i64, map.cells_y as i64);
    if map.cell_owners.len() != (w * h) as usize {
        return Vec::new();
    }
    let reach = (margin / g.cell_size).ceil() as i64;
    let address = |z: u64| {
        map.zones
            .iter()
            .find(|i| i.zone_id == z)
            .map(|i| i.address.clone())
    };
    let mut out = vec![Vec::new(); (w * h) as usize];
    for cy in 0..h {
        for cx in 0..w {
            let mut zones: Vec<(u64, String)> = Vec::new();
            for dy in -reach..=reach {
                for dx in -reach..=reach {
                    let (nx, ny) = (cx + dx, cy + dy);
                    if nx < 0 || ny < 0 || nx >= w || ny >= h {
                        continue;
                    }
                    // Distance between the two cells' rectangles.
                    let gap = |d: i64| (d.abs() - 1).max(0) as f32 * g.cell_size;
                    if gap(dx).hypot(gap(dy)) > margin {
                        continue;
                    }
                    let owner = map.cell_owners[(ny * w + nx) as usize];
                    if owner != 0
                        && owner != me
                        && !zones.iter().any(|(z, _)| *z == owner)
                        && let Some(a) = address(owner)
                    {
                        zones.push((owner, a));
                    }
                }
            }
            out[(cy * w + cx) as usize] = zones;
        }
    }
    out
}
