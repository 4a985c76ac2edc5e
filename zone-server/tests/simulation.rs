//! Deterministic simulation of the cluster's authority rules: the real sans-IO cores of the
//! coordinator ([`Coordinator`]) and of zones ([`Zone`]: the bevy simulation, the handoff
//! participant, joins, borders, checkpoints), players who walk across borders and log in
//! again when sent away, a persistence tier that checks stamps like the real one, and a seeded
//! scheduler that loses, delays and reorders messages and injects faults:
//!
//! - zones crash (memory gone; failover when the lease lapses), start, and stop cleanly
//!   (drain: their cells go to others, their characters follow by handoff, the rest is saved
//!   and released);
//! - zones are cut off (partition) or *paused* (no message in or out, no tick) for longer
//!   than their lease, then resume believing they still own their characters, with the
//!   coordinator's messages queued meanwhile delivered late;
//! - the coordinator crashes, also halfway through performing its actions (some rows written,
//!   some messages sent), and restarts from its durable rows;
//! - players log in again elsewhere (a takeover by `Acquire`), and every `Acquire` may be
//!   repeated (by the zone's own resend, or by network duplication of the login).
//!
//! The world also has NPCs, which nobody logs in: the coordinator places them, they wander
//! across borders (handed off like characters), and a zone's crash, drain or lapsed lease
//! sends them to survivors, which start them again at their spawn points.
//!
//! And the zones run a small game: players poke entities near them — characters and NPCs,
//! simulated by their own zone or shown there as ghosts of a neighbour's — and each poke is an
//! effect the engine applies where its target is simulated, forwarded in the border batches
//! (lost, delayed, reordered with everything else), retried to the target's new zone when it
//! was handed on or failed over. Each poke carries a unique nonce that its target records.
//!
//! Invariants, after every step:
//! - an entity (character or NPC) is *active* (simulated and shown to players) in at most one
//!   zone at any moment, whatever its epoch, except in a zone whose lease has lapsed, until
//!   that zone's next contact with the coordinator (its heartbeat, which makes it drop
//!   everything);
//! - a character or NPC active in a zone is `Active` in that zone's handoff participant;
//! - durable authority epochs only grow; persistence refuses every state older than the one it
//!   holds and fences its writer;
//! - no entity ever holds the same poke twice (an effect is applied at most once), and no
//!   action is answered twice.
//!
//! At the end of each run the faults stop and the world settles: every entity is then active
//! in exactly one live zone, the one the durable record names, at the durable epoch, with its
//! player attached (a character). None lost, none duplicated: every NPC of the world too.
//!
//! Mutations this suite must catch, each tried by hand (change the code, run the suite, see a
//! seed fail; 2026-12-03, at the default 4,000 seeds):
//! - `already_decided` recognising only the exact handoff id (a late resent `Begin` of an
//!   earlier attempt then starts a new saga after a later one was aborted, and the source,
//!   active again, ignores its commit): caught (seeds 3518, 3523). The saga-only simulation
//!   this one replaced never generated the case: its messages were never late by more than
//!   30 ms, so no `Begin` outlived two decided attempts. Late copies (3 % of messages, up to
//!   3 s) and a lagging map watch (refused handoffs, so several aborted attempts in a row)
//!   generate it now;
//! - the coordinator announcing a commit before writing it (`commit` pushing its `Decided`s
//!   before its `Write`): caught (seed 132);
//! - a zone accepting a `Prepare` for an epoch it already left (the tombstone check removed):
//!   caught (seed 29);
//! - skipping the durable write of an abort: caught under an earlier fault mix (seed 449 with
//!   1 % late copies of zone messages only), not by the current 4,000 seeds (it needs a
//!   coordinator restart between an abort and a late copy of that attempt's `Begin`): the
//!   scripted case `an_abort_is_written_before_it_is_told_and_survives_a_restart` in
//!   `world/src/handoff.rs` builds exactly that sequence and catches it, as it catches writing
//!   the abort after telling the zones.
//!
//! Two bugs of the authority rules themselves it found on 2026-12-03, when NPCs joined the
//! world (and with them, new interleavings), both fixed in `world/src/handoff.rs`:
//! - a zone released a character (nobody waited for its grant) and then accepted the
//!   `Restore` the coordinator had sent just before it heard the release: two zones simulated
//!   it (seed 2416). A release now leaves a tombstone at the released epoch;
//! - a login elsewhere revoked a character at epoch e + 1, its owner let go (forgetting
//!   everything at e and below), and the coordinator restarted before writing the takeover: it
//!   restored the character to that owner at e, which ignored it as stale, so the character
//!   was simulated nowhere (seed 3863). A takeover now writes the revoke's epoch before it
//!   sends the revoke.
//!
//! - applying a forwarded effect without consulting the target's record of applied keys
//!   (`effects::apply_here` ignoring `Applied`): caught at once (seeds 0, 1, 4 of the first
//!   400: a poke recorded twice). The 4,000 seeds forward about 30,000 effects and answer
//!   about 2,700 repeats from the record.
//!
//! The scripted cases in `world/src/handoff.rs` also catch the first two mutations above
//! directly (`a_late_begin_of_an_earlier_attempt_is_aborted`,
//! `a_commit_is_written_before_anyone_hears_it`).
//!
//! `WORLDMESH_SIM_SEED=n` replays one seed with a step log; `WORLDMESH_SIM_SEEDS=n` runs n
//! (default 4,000, spread over the cores: about a minute on two). A seed replays exactly, on
//! any thread: the zone core iterates ordered maps wherever its iteration order reaches its
//! outputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use worldmesh_protocol::grpc::coordinator as coord_pb;
use worldmesh_protocol::grpc::zone::zone_to_gateway::Msg as Control;
use worldmesh_protocol::ids::{LinkId, PlayerId};
use worldmesh_protocol::{Input, MAX_SPEED, WorldBounds};
use worldmesh_world::handoff::{
    Action, Authority, Coordinator, EntityId, Epoch, Held, ToCoordinator, ZoneId,
};
use worldmesh_zone::character::Character;
use worldmesh_zone::command::Command;
use worldmesh_zone::sim::SimConfig;
use worldmesh_zone::zone::{Now, Output, Zone, ZoneConfig};

const CELLS: u32 = 12;
const CELL_SIZE: f32 = 20.0;
const WIDTH: f32 = CELLS as f32 * CELL_SIZE;
const ENTITIES: u64 = 16;
/// The world's NPCs (`EntityId::npc(0 .. NPCS)`).
const NPCS: u64 = 6;
/// One scheduler step; zones tick every [`TICK_EVERY`] steps (20 Hz).
const STEP: Duration = Duration::from_millis(10);
const TICK_EVERY: u32 = 5;
const STEPS: u32 = 1500;
const SETTLE_STEPS: u32 = 3000;
const LEASE_TTL: Duration = Duration::from_millis(300);
const MAX_ZONES: usize = 5;
/// How long a stopping zone drains before it stops (its characters leave by handoff).
const DRAIN_FOR: Duration = Duration::from_millis(600);
/// The gateway every player is on: link 1 in every zone.
const GATEWAY: &str = "gateway-0";
const LINK: LinkId = LinkId(1);
const PLAYER_BASE: u64 = 1000;
/// How likely a player is to poke something on a given tick.
const POKE_CHANCE: f64 = 0.05;

/// Forwarded effects and repeats answered from a target's record, over every seed: the run
/// must have exercised both.
static FORWARDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REPEATS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The game the zones run: pokes, carried across borders as effects.
mod poking {
    use bevy_ecs::prelude::*;
    use worldmesh_game::prelude::*;

    /// The nonces of the pokes an entity received lately (persisted, so they travel with it
    /// in handoffs and survive in checkpoints).
    #[derive(Component, Debug, Clone, Default, bincode::Encode, bincode::Decode)]
    pub struct PokedBy(pub Vec<u64>);

    impl GameComponent for PokedBy {
        const KIND: ComponentKind = ComponentKind(1);
        const NAME: &'static str = "poked_by";
    }

    #[derive(bincode::Encode, bincode::Decode)]
    pub struct Poke {
        pub nonce: u64,
    }

    impl Action for Poke {
        const KIND: ActionKind = ActionKind(1);
        const NAME: &'static str = "poke";
        const REACH: Option<f32> = Some(1000.0);

        fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
            ctx.affect(&Poked { nonce: self.nonce });
            Ok(())
        }
    }

    #[derive(bincode::Encode, bincode::Decode)]
    pub struct Poked {
        pub nonce: u64,
    }

    impl Effect for Poked {
        const KIND: EffectKind = EffectKind(1);
        const NAME: &'static str = "poked";

        fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
            let mut e = ctx.world.entity_mut(ctx.target);
            let mut by = e.get::<PokedBy>().cloned().unwrap_or_default();
            // The last 60: a persisted component stays under a kilobyte.
            if by.0.len() >= 60 {
                by.0.remove(0);
            }
            by.0.push(self.nonce);
            e.insert(by);
            Ok(())
        }
    }

    pub struct Poking;

    impl Game for Poking {
        fn name(&self) -> &'static str {
            "poking"
        }

        fn register(&self, game: &mut GameRegistry) {
            game.component::<PokedBy>(Replicated::No, Persisted::Yes)
                .action::<Poke>()
                .effect::<Poked>();
        }
    }
}

/// One zone process: the real core, and what the scheduler knows about it.
struct Node {
    core: Zone,
    /// The id it is registered under (a new one after it lost its lease).
    id: ZoneId,
    partitioned_until: Option<Instant>,
    /// Paused (SIGSTOP): nothing in or out, no tick, until then.
    paused_until: Option<Instant>,
    /// Messages that reached it while paused, handled when it resumes.
    held: Vec<Command>,
    /// Its lease lapsed and it has not heard of it yet: it may still simulate characters others
    /// own now (the invariant exempts it until its next contact with the coordinator).
    lapsed: bool,
    /// Draining since then: it owns no cells and stops after [`DRAIN_FOR`].
    draining: Option<Instant>,
    /// The map version it last got.
    map_version: u64,
    /// Checkpoints its saver could not deliver yet (cut off from persistence): retried, as
    /// the real saver does, once it can.
    unsaved: Vec<Character>,
    /// Checkpoint loads waiting for persistence to be reachable (the driver retries them).
    unloaded: Vec<(EntityId, Epoch)>,
}

#[derive(Debug)]
struct Player {
    entity: EntityId,
    /// The zone it is joined or attached to, as the gateway believes.
    zone: Option<ZoneId>,
    seq: u32,
    heading: f32,
    /// Logs in again at this time (after being sent away or refused).
    relogin_at: Option<Instant>,
    /// Last time its zone had it attached (stands for "last snapshot"): a player starved for
    /// a second is relocated, as the gateway does.
    fed_at: Instant,
}

enum Msg {
    ToCoord(ZoneId, ToCoordinator),
    ToZone(ZoneId, Command),
}

struct Sim {
    seed: u64,
    verbose: bool,
    rng: StdRng,
    start: Instant,
    now: Instant,
    step: u32,
    coord: Option<Coordinator>,
    coord_down_until: Option<Instant>,
    durable: BTreeMap<EntityId, Authority>,
    /// The durable lease table: zone → last heartbeat the coordinator saw.
    leases: BTreeMap<ZoneId, Instant>,
    nodes: BTreeMap<u32, Node>,
    next_slot: u32,
    next_zone: ZoneId,
    map_version: u64,
    /// Persistence: entity → the newest accepted state.
    store: BTreeMap<EntityId, Character>,
    players: BTreeMap<u64, Player>,
    /// Answers each (player, action seq) got.
    answered: BTreeMap<(u64, u32), u32>,
    net: Vec<(Instant, u64, Msg)>,
    net_seq: u64,
    faults: bool,
    loss: f64,
}

type Check = Result<(), String>;

fn zone_config(id: ZoneId) -> ZoneConfig {
    ZoneConfig {
        sim: SimConfig {
            tick_rate_hz: 20,
            bounds: WorldBounds {
                min_x: 0.0,
                min_y: 0.0,
                max_x: WIDTH,
                max_y: CELL_SIZE,
            },
            view_radius: 10.0,
            snapshot_budget_bytes: 1100,
            chat_radius: 10.0,
            collision: Default::default(),
            game: worldmesh_game::GameRef::new(poking::Poking),
            snapshots: Default::default(),
        },
        zone_id: id,
        checkpoint_every: 10,
        capacity: 1000,
        border_margin: 10.0,
    }
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let loss = [0.0, 0.02, 0.1, 0.3][rng.random_range(0..4)];
        let mut sim = Sim {
            seed,
            verbose,
            rng,
            start,
            now: start,
            step: 0,
            coord: Some(Coordinator::new([], []).with_npcs(NPCS)),
            coord_down_until: None,
            durable: BTreeMap::new(),
            leases: BTreeMap::new(),
            nodes: BTreeMap::new(),
            next_slot: 1,
            next_zone: ZoneId(1),
            map_version: 0,
            store: BTreeMap::new(),
            players: BTreeMap::new(),
            answered: BTreeMap::new(),
            net: Vec::new(),
            net_seq: 0,
            faults: false,
            loss,
        };
        for _ in 0..3 {
            sim.add_zone();
        }
        for entity in 1..=ENTITIES {
            let x = sim.rng.random_range(1.0..WIDTH - 1.0);
            sim.store.insert(
                EntityId(entity),
                Character {
                    id: EntityId(entity),
                    name: format!("c{entity}"),
                    x,
                    y: CELL_SIZE / 2.0,
                    heading: 0.0,
                    epoch: Epoch(0),
                    version: 0,
                    game: Default::default(),
                },
            );
            let heading = if sim.rng.random_bool(0.5) {
                0.0
            } else {
                std::f32::consts::PI
            };
            sim.players.insert(
                PLAYER_BASE + entity,
                Player {
                    entity: EntityId(entity),
                    zone: None,
                    seq: 0,
                    heading,
                    relogin_at: Some(start),
                    fed_at: start,
                },
            );
        }
        // Logins complete before the faults begin.
        for _ in 0..50 {
            sim.step().expect("logins");
        }
        assert!(
            sim.settled().unwrap(),
            "seed {seed}: logins did not complete"
        );
        sim.faults = true;
        sim
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            println!(
                "[{:4} {:5}ms] {}",
                self.step,
                (self.now - self.start).as_millis(),
                what()
            );
        }
    }

    fn clock(&self) -> Now {
        Now {
            at: self.now,
            unix_us: 1_000_000_000 + (self.now - self.start).as_micros() as u64,
        }
    }

    fn tick_number(&self) -> u32 {
        self.step / TICK_EVERY
    }

    fn slot_of(&self, zone: ZoneId) -> Option<u32> {
        self.nodes
            .iter()
            .find(|(_, n)| n.id == zone)
            .map(|(s, _)| *s)
    }

    /// Zones that own cells: live leases, not draining, in id order.
    fn cell_owners(&self) -> Vec<ZoneId> {
        self.leases
            .keys()
            .copied()
            .filter(|z| {
                self.slot_of(*z)
                    .is_none_or(|s| self.nodes[&s].draining.is_none())
            })
            .collect()
    }

    /// The cell map: columns striped over the owning zones in id order (like `WorldMap`).
    fn owner_at(&self, x: f32) -> Option<ZoneId> {
        let owners = self.cell_owners();
        if owners.is_empty() {
            return None;
        }
        let cell = ((x / CELL_SIZE).floor().clamp(0.0, (CELLS - 1) as f32)) as usize;
        Some(owners[(cell * owners.len() / CELLS as usize).min(owners.len() - 1)])
    }

    fn map(&self) -> Arc<coord_pb::WorldMap> {
        let cell_owners = (0..CELLS)
            .map(|c| {
                self.owner_at((c as f32 + 0.5) * CELL_SIZE)
                    .map_or(0, |z| z.0)
            })
            .collect();
        let zones = self
            .leases
            .keys()
            .map(|&z| coord_pb::ZoneInfo {
                zone_id: z.into(),
                name: format!("zone-{z}"),
                address: format!("http://zone-{z}"),
                capacity: 1000,
                draining: false,
            })
            .collect();
        Arc::new(coord_pb::WorldMap {
            world: Some(coord_pb::WorldGeometry {
                min_x: 0.0,
                min_y: 0.0,
                max_x: WIDTH,
                max_y: CELL_SIZE,
                cell_size: CELL_SIZE,
                tick_rate_hz: 20,
                spawn_points: Vec::new(),
                tick_origin_unix_ms: 0,
                spawn_spread: 0.0,
            }),
            zones,
            cell_owners,
            cells_x: CELLS,
            cells_y: 1,
            version: self.map_version,
        })
    }

    fn survivor_fn(&self) -> impl Fn(EntityId) -> Option<ZoneId> + use<> {
        let mut heirs = self.cell_owners();
        if heirs.is_empty() {
            heirs = self.leases.keys().copied().collect();
        }
        move |e| (!heirs.is_empty()).then(|| heirs[e.0 as usize % heirs.len()])
    }

    fn add_zone(&mut self) {
        let id = self.next_zone;
        self.next_zone = ZoneId(id.0 + 1);
        let slot = self.next_slot;
        self.next_slot += 1;
        let mut core = Zone::new(&zone_config(id), Arc::default()).expect("no game to conflict");
        let now = self.clock();
        core.handle(
            now,
            Command::LinkOpened {
                link: LINK,
                gateway: GATEWAY.into(),
            },
        );
        self.nodes.insert(
            slot,
            Node {
                core,
                id,
                partitioned_until: None,
                paused_until: None,
                held: Vec::new(),
                lapsed: false,
                draining: None,
                map_version: 0,
                unsaved: Vec::new(),
                unloaded: Vec::new(),
            },
        );
        self.register(slot);
    }

    /// `slot` registers under its current id: a lease, the coordinator's `zone_up`, a session.
    fn register(&mut self, slot: u32) {
        let id = self.nodes[&slot].id;
        self.leases.insert(id, self.now);
        self.map_version += 1;
        self.log(|| format!("zone {id} registers"));
        let survivor = self.survivor_fn();
        let now = self.now;
        let actions = match self.coord.as_mut() {
            Some(c) => c.zone_up(id, now, survivor),
            None => Vec::new(),
        };
        self.perform(actions);
        if self.coord.is_some() {
            self.send_reliable(Msg::ToZone(id, Command::SessionUp));
        }
    }

    fn send(&mut self, msg: Msg) {
        if self.faults && self.rng.random_bool(self.loss) {
            return;
        }
        let delay = if !self.faults {
            Duration::from_millis(1)
        } else if self.rng.random_bool(0.01) {
            // Now and then a message is held up far longer (a stalled stream, an old session's
            // last message): it arrives after later attempts were decided.
            Duration::from_millis(self.rng.random_range(100..3000))
        } else {
            Duration::from_millis(self.rng.random_range(0..30))
        };
        if self.faults && self.rng.random_bool(0.03) {
            // And now and then one arrives twice, the copy much later (a resend racing a
            // reconnect): a zone's old `Begin` after that attempt was decided, an old
            // `Prepare` at a zone the entity has left since.
            let copy = match &msg {
                Msg::ToCoord(z, m) => Some(Msg::ToCoord(*z, m.clone())),
                Msg::ToZone(z, Command::Coordinator(m)) => {
                    Some(Msg::ToZone(*z, Command::Coordinator(m.clone())))
                }
                Msg::ToZone(..) => None,
            };
            if let Some(copy) = copy {
                let late = Duration::from_millis(self.rng.random_range(100..3000));
                self.net_seq += 1;
                self.net.push((self.now + late, self.net_seq, copy));
            }
        }
        self.net_seq += 1;
        self.net.push((self.now + delay, self.net_seq, msg));
    }

    /// A message on a path that does not lose it (in-process channels, retried RPCs), but
    /// may still be late.
    fn send_reliable(&mut self, msg: Msg) {
        let delay = Duration::from_millis(if self.faults {
            self.rng.random_range(0..30)
        } else {
            1
        });
        self.net_seq += 1;
        self.net.push((self.now + delay, self.net_seq, msg));
    }

    fn reachable(&self, slot: u32) -> bool {
        self.nodes
            .get(&slot)
            .is_some_and(|n| n.partitioned_until.is_none_or(|t| t <= self.now))
    }

    fn paused(&self, slot: u32) -> bool {
        self.nodes
            .get(&slot)
            .is_some_and(|n| n.paused_until.is_some_and(|t| t > self.now))
    }

    /// Performs coordinator actions in order: writes first become durable, then sends go out.
    fn perform(&mut self, actions: Vec<Action>) {
        // A crash may cut the list anywhere: what came before happened, the rest did not.
        let cut = if self.faults && self.rng.random_bool(0.002) {
            Some(self.rng.random_range(0..=actions.len()))
        } else {
            None
        };
        for (i, a) in actions.into_iter().enumerate() {
            if cut == Some(i) {
                self.log(|| "coordinator crashes while performing actions".into());
                self.crash_coordinator();
                return;
            }
            match a {
                Action::Write { entity, row } => {
                    if let Some(old) = self.durable.get(&entity) {
                        assert!(
                            row.epoch >= old.epoch,
                            "seed {}: durable epoch of {entity} went back: {old:?} -> {row:?}",
                            self.seed
                        );
                    }
                    self.log(|| format!("write {entity} -> {row:?}"));
                    self.durable.insert(entity, row);
                }
                Action::Send(zone, msg) => {
                    self.log(|| format!("coord -> {zone}: {msg:?}"));
                    self.send(Msg::ToZone(zone, Command::Coordinator(msg)));
                }
            }
        }
        if cut.is_some() {
            self.crash_coordinator();
        }
    }

    fn crash_coordinator(&mut self) {
        if self.coord.is_none() {
            return;
        }
        self.coord = None;
        let down = Duration::from_millis(self.rng.random_range(20..300));
        self.coord_down_until = Some(self.now + down);
        self.log(|| format!("coordinator down for {down:?}"));
        // Every session stream breaks.
        let ids: Vec<ZoneId> = self.nodes.values().map(|n| n.id).collect();
        for id in ids {
            self.send_reliable(Msg::ToZone(id, Command::SessionDown));
        }
    }

    fn restart_coordinator(&mut self) {
        // Leases are durable; a restarted coordinator gives every zone a fresh TTL rather than
        // expiring zones for its own absence.
        for t in self.leases.values_mut() {
            *t = self.now;
        }
        self.coord = Some(
            Coordinator::new(self.durable.clone(), self.leases.keys().copied()).with_npcs(NPCS),
        );
        self.coord_down_until = None;
        self.log(|| "coordinator restarted; zones re-sync".into());
        let survivor = self.survivor_fn();
        let now = self.now;
        let actions = self.coord.as_mut().unwrap().reassign_orphans(now, survivor);
        self.perform(actions);
        let ids: Vec<ZoneId> = self.nodes.values().map(|n| n.id).collect();
        for id in ids {
            self.send_reliable(Msg::ToZone(id, Command::SessionUp));
        }
    }

    fn random_fault(&mut self) {
        let r: f64 = self.rng.random();
        let slots: Vec<u32> = self.nodes.keys().copied().collect();
        let pick = |rng: &mut StdRng| slots[rng.random_range(0..slots.len())];
        if slots.is_empty() {
            return;
        }
        if r < 0.003 && slots.len() >= 2 {
            // Crash a zone: its memory is gone; the coordinator notices when the lease lapses.
            let s = pick(&mut self.rng);
            let id = self.nodes[&s].id;
            self.log(|| format!("zone {id} crashes"));
            self.nodes.remove(&s);
            self.players_sent_away(id);
        } else if r < 0.006 && self.nodes.len() < MAX_ZONES && self.coord.is_some() {
            self.add_zone();
        } else if r < 0.010 {
            let s = pick(&mut self.rng);
            let len = Duration::from_millis(self.rng.random_range(50..800));
            let id = self.nodes[&s].id;
            self.log(|| format!("zone {id} partitioned for {len:?}"));
            self.nodes.get_mut(&s).unwrap().partitioned_until = Some(self.now + len);
            self.deliver_to(s, Command::SessionDown);
        } else if r < 0.012 && self.nodes.values().all(|n| n.paused_until.is_none()) {
            // Paused past its lease: it resumes believing it still owns its characters.
            let s = pick(&mut self.rng);
            let len = LEASE_TTL + Duration::from_millis(self.rng.random_range(100..600));
            let id = self.nodes[&s].id;
            self.log(|| format!("zone {id} paused for {len:?}"));
            self.nodes.get_mut(&s).unwrap().paused_until = Some(self.now + len);
        } else if r < 0.014 && slots.len() >= 2 && self.coord.is_some() {
            let s = pick(&mut self.rng);
            if self.nodes[&s].draining.is_none() {
                let id = self.nodes[&s].id;
                self.log(|| format!("zone {id} drains, then stops"));
                self.nodes.get_mut(&s).unwrap().draining = Some(self.now);
                self.map_version += 1;
            }
        } else if r < 0.016 {
            // A player logs in again through another gateway, at another zone: a takeover.
            let p = PLAYER_BASE + self.rng.random_range(1..=ENTITIES);
            let s = pick(&mut self.rng);
            let id = self.nodes[&s].id;
            self.log(|| format!("player {p} logs in again at zone {id}"));
            self.login(p, Some(id));
        } else if r < 0.019 {
            self.crash_coordinator();
        }
    }

    /// Players of a zone that went away look for their character again.
    fn players_sent_away(&mut self, zone: ZoneId) {
        let at = self.now + Duration::from_millis(200);
        for p in self.players.values_mut() {
            if p.zone == Some(zone) {
                p.zone = None;
                p.relogin_at = Some(at);
            }
        }
    }

    /// Logs a player in (as a gateway does): at `zone`, or at the zone that owns its
    /// character, or the zone owning the cell where it was last saved.
    fn login(&mut self, player: u64, zone: Option<ZoneId>) {
        let entity = self.players[&player].entity;
        let character = self.store[&entity].clone();
        let owner = self
            .durable
            .get(&entity)
            .map(|r| r.zone)
            .filter(|z| self.leases.contains_key(z));
        let Some(zone) = zone.or(owner).or_else(|| self.owner_at(character.x)) else {
            self.players.get_mut(&player).unwrap().relogin_at =
                Some(self.now + Duration::from_millis(200));
            return;
        };
        self.log(|| format!("player {player} logs in at zone {zone}"));
        // Unanswered (the join was lost, or the zone went away), the gateway tries again.
        let retry = self.now + Duration::from_secs(1);
        let p = self.players.get_mut(&player).unwrap();
        p.relogin_at = Some(retry);
        let spawn = || Command::Spawn {
            link: LINK,
            player_id: PlayerId(player),
            character: character.clone(),
        };
        self.send(Msg::ToZone(zone, spawn()));
        // Logins are repeated now and then (a client retrying through a slow gateway).
        if self.faults && self.rng.random_bool(0.1) {
            self.send(Msg::ToZone(zone, spawn()));
        }
    }

    fn step(&mut self) -> Check {
        self.step += 1;
        self.now += STEP;
        if self.faults {
            self.random_fault();
        } else if self.leases.is_empty() && self.coord.is_some() {
            // Ops start a zone when none is left.
            self.add_zone();
        }
        if let Some(t) = self.coord_down_until
            && t <= self.now
        {
            self.restart_coordinator();
        }
        self.resume_paused();
        self.partitions_end();
        self.heartbeats();
        self.stop_drained()?;
        self.publish_map();
        let due: Vec<u64> = self
            .players
            .iter()
            .filter(|(_, p)| p.relogin_at.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for p in due {
            self.login(p, None);
        }
        if self.step.is_multiple_of(TICK_EVERY) {
            self.tick_zones()?;
        }
        self.deliver()?;
        if let Some(c) = self.coord.as_mut() {
            let actions = c.on_tick(self.now);
            self.perform(actions);
        }
        self.check()
    }

    fn resume_paused(&mut self) {
        let now = self.now;
        let resumed: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.paused_until.is_some_and(|t| t <= now))
            .map(|(s, _)| *s)
            .collect();
        for s in resumed {
            let n = self.nodes.get_mut(&s).unwrap();
            n.paused_until = None;
            let held = std::mem::take(&mut n.held);
            let id = n.id;
            self.log(|| format!("zone {id} resumes with {} queued messages", held.len()));
            for cmd in held {
                self.deliver_to(s, cmd);
            }
        }
    }

    fn partitions_end(&mut self) {
        let now = self.now;
        let healed: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.partitioned_until.is_some_and(|t| t <= now))
            .map(|(s, _)| *s)
            .collect();
        for s in healed {
            let n = self.nodes.get_mut(&s).unwrap();
            n.partitioned_until = None;
            let id = n.id;
            let unsaved = std::mem::take(&mut n.unsaved);
            let unloaded = std::mem::take(&mut n.unloaded);
            self.save(id, unsaved);
            for (entity, epoch) in unloaded {
                self.load(id, entity, epoch);
            }
            if self.coord.is_some() {
                self.deliver_to(s, Command::SessionUp);
            }
        }
    }

    fn heartbeats(&mut self) {
        if self.coord.is_none() {
            return;
        }
        let slots: Vec<u32> = self.nodes.keys().copied().collect();
        for s in slots {
            // Every 100 ms, zones out of phase: a zone that resumes ticks a little before its
            // next heartbeat tells it the lease is gone.
            if !self.reachable(s) || self.paused(s) || !(self.step + s).is_multiple_of(10) {
                continue;
            }
            let id = self.nodes[&s].id;
            if self.leases.contains_key(&id) {
                self.leases.insert(id, self.now);
            } else {
                // Lease lost (it lapsed while the zone was cut off or paused): everything it
                // held is someone else's now. It drops it all and registers anew.
                let new = self.next_zone;
                self.next_zone = ZoneId(new.0 + 1);
                self.log(|| format!("zone {id} learns its lease is gone; re-registers as {new}"));
                let now = self.clock();
                let n = self.nodes.get_mut(&s).unwrap();
                n.core.handle(now, Command::LeaseLost { zone_id: new });
                n.id = new;
                n.lapsed = false;
                self.dispatch(s);
                self.players_sent_away(id);
                self.register(s);
            }
        }
        let expired: Vec<ZoneId> = self
            .leases
            .iter()
            .filter(|(_, t)| self.now.duration_since(**t) > LEASE_TTL)
            .map(|(z, _)| *z)
            .collect();
        for z in expired {
            if self.coord.is_none() {
                break;
            }
            self.leases.remove(&z);
            self.map_version += 1;
            if let Some(s) = self.slot_of(z) {
                self.nodes.get_mut(&s).unwrap().lapsed = true;
            }
            self.log(|| format!("lease of zone {z} expires"));
            let survivor = self.survivor_fn();
            let now = self.now;
            let actions = self.coord.as_mut().unwrap().zone_down(z, now, survivor);
            self.perform(actions);
        }
    }

    /// Zones drained for [`DRAIN_FOR`] stop: everything left is saved and released, then the
    /// coordinator hears the zone stopped (as the real zone's deregistration does).
    fn stop_drained(&mut self) -> Check {
        let now = self.now;
        let done: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.draining.is_some_and(|t| now - t >= DRAIN_FOR))
            .map(|(s, _)| *s)
            .collect();
        for s in done {
            // It waits for its final saves to be acknowledged: not while cut off.
            if self.paused(s) || !self.reachable(s) {
                continue;
            }
            let id = self.nodes[&s].id;
            self.log(|| format!("zone {id} stops"));
            let clock = self.clock();
            self.nodes.get_mut(&s).unwrap().core.stop(clock);
            self.dispatch(s);
            self.nodes.remove(&s);
            self.players_sent_away(id);
            if self.leases.remove(&id).is_some() {
                self.map_version += 1;
                let survivor = self.survivor_fn();
                if let Some(c) = self.coord.as_mut() {
                    let actions = c.zone_stopped(id, now, survivor);
                    self.perform(actions);
                }
                // With the coordinator down the deregistration fails: the lease lapses later
                // and the entities fail over from persistence. Put the lease back to expire.
                if self.coord.is_none() {
                    self.leases.insert(id, self.now);
                }
            }
        }
        Ok(())
    }

    /// Every zone that can hear the map watch gets the latest map.
    fn publish_map(&mut self) {
        let slots: Vec<u32> = self.nodes.keys().copied().collect();
        let map = self.map();
        for s in slots {
            if !self.reachable(s) || self.paused(s) {
                continue;
            }
            // The map watch lags, by a different amount in every zone (about 100 ms on
            // average under faults): for a while neighbours disagree on who owns a cell, and
            // handoffs into a zone that does not know it owns the cell yet are refused.
            if self.faults && self.rng.random_bool(0.9) {
                continue;
            }
            if self.nodes[&s].map_version != self.map_version {
                self.nodes.get_mut(&s).unwrap().map_version = self.map_version;
                self.deliver_to(s, Command::Map(map.clone()));
            }
        }
    }

    fn tick_zones(&mut self) -> Check {
        let tick = self.tick_number();
        // Players steer: now and then they turn around, and at the world's edges.
        let players: Vec<u64> = self.players.keys().copied().collect();
        for pid in players {
            let flip = self.rng.random_bool(0.03);
            let p = self.players.get_mut(&pid).unwrap();
            let x = self.store[&p.entity].x;
            if flip || !(2.0..=WIDTH - 2.0).contains(&x) {
                p.heading = if x < 2.0 {
                    0.0
                } else if x > WIDTH - 2.0 {
                    std::f32::consts::PI
                } else {
                    std::f32::consts::PI - p.heading
                };
            }
            let Some(zone) = p.zone else { continue };
            let slot = self
                .nodes
                .iter()
                .find(|(_, n)| n.id == zone)
                .map(|(s, _)| *s);
            let fed = slot.is_some_and(|s| {
                self.nodes[&s].paused_until.is_none_or(|t| t <= self.now)
                    && self.nodes[&s]
                        .core
                        .sim()
                        .input_rejections(PlayerId(pid))
                        .is_some()
            });
            let p = self.players.get_mut(&pid).unwrap();
            if fed {
                p.fed_at = self.now;
            } else if self.now - p.fed_at > Duration::from_secs(1) {
                p.zone = None;
                p.relogin_at = Some(self.now);
                continue;
            }
            p.seq += 1;
            let input = Input {
                seq: p.seq,
                ack_tick: 0,
                heading: p.heading,
                speed: MAX_SPEED * 0.8,
                actions: 0,
            };
            if let Some(s) = self.slot_of(zone) {
                self.deliver_to(
                    s,
                    Command::Input {
                        player_id: PlayerId(pid),
                        input,
                    },
                );
                if self.rng.random_bool(POKE_CHANCE) {
                    // Any entity: near ones land (here or across the border), far ones are
                    // refused as no target.
                    let target = if self.rng.random_bool(0.5) {
                        EntityId(self.rng.random_range(1..=ENTITIES))
                    } else {
                        EntityId::npc(self.rng.random_range(0..NPCS))
                    };
                    let seq = self.players[&pid].seq;
                    let nonce = pid * 1_000_000 + u64::from(seq);
                    let request =
                        worldmesh_game::action::request(seq, Some(target), &poking::Poke { nonce })
                            .expect("a poke encodes");
                    self.deliver_to(
                        s,
                        Command::Action {
                            link: LINK,
                            player_id: PlayerId(pid),
                            request,
                        },
                    );
                }
            }
        }
        let now = self.clock();
        let slots: Vec<u32> = self.nodes.keys().copied().collect();
        for s in slots {
            if self.paused(s) {
                continue;
            }
            self.nodes.get_mut(&s).unwrap().core.tick(now, tick);
            self.dispatch(s);
        }
        Ok(())
    }

    /// Hands a command to a zone now (paused: when it resumes).
    fn deliver_to(&mut self, slot: u32, cmd: Command) {
        if self.paused(slot) {
            self.nodes.get_mut(&slot).unwrap().held.push(cmd);
            return;
        }
        let now = self.clock();
        let Some(n) = self.nodes.get_mut(&slot) else {
            return;
        };
        n.core.handle(now, cmd);
        self.dispatch(slot);
    }

    /// Carries out what a zone decided.
    fn dispatch(&mut self, slot: u32) {
        let Some(n) = self.nodes.get_mut(&slot) else {
            return;
        };
        let id = n.id;
        let outputs: Vec<Output> = std::iter::from_fn(|| n.core.poll_output()).collect();
        let reachable = self.reachable(slot);
        for out in outputs {
            match out {
                Output::ToCoordinator(m) => {
                    if self.verbose
                        && let ToCoordinator::Prepared {
                            ok: false, entity, ..
                        } = &m
                        && let Some(n) = self.nodes.get(&slot)
                    {
                        let held = n.core.participant().held(*entity).cloned();
                        self.log(|| format!("zone {id} refuses {entity}; holds {held:?}"));
                    }
                    self.log(|| format!("zone {id} -> coord: {m:?}"));
                    if reachable {
                        self.send(Msg::ToCoord(id, m));
                    }
                }
                Output::Save(job) => {
                    if reachable {
                        self.save(id, job.characters);
                    } else if let Some(n) = self.nodes.get_mut(&slot) {
                        n.unsaved.extend(job.characters);
                    }
                }
                Output::Load { entity, epoch } => {
                    if reachable {
                        self.load(id, entity, epoch);
                    } else if let Some(n) = self.nodes.get_mut(&slot) {
                        n.unloaded.push((entity, epoch));
                    }
                }
                Output::Control { msg, .. } => self.control(id, msg),
                // Inventory claims go to the economy's ledger, whose rules and fencing are
                // tested apart (economy/, persistence/tests/ledger.rs); left unanswered here,
                // so the seeds replay as before.
                Output::ClaimInventory { .. }
                | Output::ReserveIds { .. }
                | Output::ChangeInventory { .. }
                | Output::LoadGround { .. }
                | Output::CommitTrade(_)
                | Output::AbortTrade(..)
                | Output::Publish(_) => {}
                Output::Ghosts(g) => {
                    if reachable {
                        self.send(Msg::ToZone(g.zone_id, Command::Ghosts(g.batch)));
                    }
                }
                Output::Frames { frames, .. } => {
                    for f in frames.frames.iter().filter(|f| f.reliable) {
                        if let Ok(worldmesh_protocol::ServerMessage::ActionDone(o)) =
                            worldmesh_protocol::codec::decode_frame(&f.frame)
                        {
                            *self.answered.entry((f.player_id, o.seq)).or_default() += 1;
                        }
                    }
                }
            }
        }
    }

    /// A checkpoint load reaches persistence; the answer comes back late.
    fn load(&mut self, zone: ZoneId, entity: EntityId, epoch: Epoch) {
        let character = self.store.get(&entity).cloned();
        self.send_reliable(Msg::ToZone(
            zone,
            Command::Loaded {
                entity,
                epoch,
                character,
            },
        ));
    }

    /// A saver's batch reaches persistence; what it refuses goes back as `Fenced`.
    fn save(&mut self, zone: ZoneId, characters: Vec<Character>) {
        let mut fenced = Vec::new();
        for c in characters {
            if let Err(e) = self.persist(zone, &c, &mut fenced) {
                panic!("seed {}: {e}", self.seed);
            }
        }
        if !fenced.is_empty() {
            self.send_reliable(Msg::ToZone(zone, Command::Fenced { ids: fenced }));
        }
    }

    /// Persistence's stamp check (as the checkpoint script): a state older than the stored
    /// one is refused; one at an older epoch fences its writer.
    fn persist(
        &mut self,
        zone: ZoneId,
        c: &Character,
        fenced: &mut Vec<(EntityId, Epoch)>,
    ) -> Result<(), String> {
        let stored = self.store.get(&c.id).expect("stored");
        if c.epoch < stored.epoch || (c.epoch == stored.epoch && c.version < stored.version) {
            self.log(|| {
                format!(
                    "persistence refuses {} e{} v{} from zone {zone} (holds e{} v{})",
                    c.id, c.epoch, c.version, stored.epoch, stored.version
                )
            });
            fenced.push((c.id, c.epoch));
            return Ok(());
        }
        self.store.insert(c.id, c.clone());
        Ok(())
    }

    /// What the gateway does with a zone's control messages for its players.
    fn control(&mut self, zone: ZoneId, msg: Control) {
        let later = self.now + Duration::from_millis(200);
        let (player, to) = match msg {
            Control::Joined(j) => (j.player_id, Some(Some(zone))),
            Control::Attached(a) => (a.player_id, Some(Some(ZoneId(a.zone_id)))),
            // Sent away (character dropped or moved on) or refused: log in again later.
            Control::Left(l) if !l.saved => (l.player_id, Some(None)),
            Control::JoinFailed(f) => (f.player_id, Some(None)),
            _ => return,
        };
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        match to {
            Some(Some(z)) => {
                p.zone = Some(z);
                p.relogin_at = None;
            }
            // Only if it is the zone the gateway routes the player to (a late refusal from a
            // zone it already left must not unroute it).
            Some(None) if p.zone.is_none_or(|z| z == zone) => {
                p.zone = None;
                p.relogin_at.get_or_insert(later);
            }
            _ => {}
        }
    }

    fn deliver(&mut self) -> Check {
        let now = self.now;
        let mut due: Vec<(Instant, u64, Msg)> = Vec::new();
        let mut keep = Vec::new();
        for m in self.net.drain(..) {
            if m.0 <= now {
                due.push(m);
            } else {
                keep.push(m);
            }
        }
        self.net = keep;
        due.sort_by_key(|(t, s, _)| (*t, *s));
        for (_, _, msg) in due {
            match msg {
                Msg::ToCoord(from, m) => {
                    let Some(s) = self.slot_of(from) else {
                        continue;
                    };
                    if !self.reachable(s) || self.coord.is_none() {
                        continue;
                    }
                    self.log(|| format!("coord <- {from}: {m:?}"));
                    let actions = self.coord.as_mut().unwrap().on_message(now, from, m);
                    self.perform(actions);
                }
                Msg::ToZone(to, cmd) => {
                    let Some(s) = self.slot_of(to) else {
                        continue;
                    };
                    if !self.reachable(s) {
                        // Persistence's answers are retried by the zone's driver until they
                        // get through; everything else on a cut link is lost.
                        if matches!(cmd, Command::Loaded { .. } | Command::Fenced { .. }) {
                            self.net_seq += 1;
                            let at = now + STEP;
                            self.net.push((at, self.net_seq, Msg::ToZone(to, cmd)));
                        }
                        continue;
                    }
                    if let Command::Coordinator(m) = &cmd {
                        self.log(|| format!("zone {to} <- {m:?}"));
                    }
                    self.deliver_to(s, cmd);
                }
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Check {
        if let Some(((player, seq), n)) = self.answered.iter().find(|(_, n)| **n > 1) {
            return Err(format!(
                "action {seq} of player {player} answered {n} times"
            ));
        }
        let mut active_in: BTreeMap<EntityId, Vec<ZoneId>> = BTreeMap::new();
        for n in self.nodes.values_mut() {
            let mut active = n.core.characters().active;
            active.extend(n.core.npcs().0.active);
            for e in active {
                if let Some(by) = n.core.sim().get::<poking::PokedBy>(e) {
                    let mut nonces = by.0.clone();
                    nonces.sort_unstable();
                    if let Some(w) = nonces.windows(2).find(|w| w[0] == w[1]) {
                        return Err(format!(
                            "entity {e} in zone {} was poked twice by poke {}",
                            n.id, w[0]
                        ));
                    }
                }
                if n.core.participant().active_epoch(e).is_none() {
                    return Err(format!(
                        "zone {} simulates {e} without holding it active ({:?})",
                        n.id,
                        n.core.participant().held(e)
                    ));
                }
                if !n.lapsed {
                    active_in.entry(e).or_default().push(n.id);
                }
            }
        }
        for (e, zones) in active_in {
            if zones.len() > 1 {
                return Err(format!(
                    "entity {e} active in zones {zones:?} at once (durable: {:?})",
                    self.durable.get(&e)
                ));
            }
        }
        Ok(())
    }

    /// After the faults stop: every entity active in exactly one live zone, the owner, at
    /// the durable epoch, with its player attached there.
    fn settled(&mut self) -> Result<bool, String> {
        if self.coord.is_none() || self.nodes.values().any(|n| n.draining.is_some()) {
            return Ok(false);
        }
        for entity in 1..=ENTITIES {
            let Some(row) = self.durable.get(&EntityId(entity)).cloned() else {
                return Ok(false);
            };
            let copies: Vec<(ZoneId, Held)> = self
                .nodes
                .values()
                .filter_map(|n| {
                    n.core
                        .participant()
                        .held(EntityId(entity))
                        .map(|h| (n.id, h.clone()))
                })
                .collect();
            let settled = copies.len() == 1
                && copies[0].0 == row.zone
                && matches!(copies[0].1, Held::Active { epoch, .. } if epoch == row.epoch);
            if !settled {
                return Ok(false);
            }
            let Some(s) = self.slot_of(row.zone) else {
                return Ok(false);
            };
            if !self
                .nodes
                .get_mut(&s)
                .unwrap()
                .core
                .characters()
                .active
                .contains(&EntityId(entity))
            {
                return Ok(false);
            }
            if self.players[&(PLAYER_BASE + entity)].zone != Some(row.zone) {
                return Ok(false);
            }
        }
        for npc in (0..NPCS).map(EntityId::npc) {
            let Some(row) = self.durable.get(&npc).cloned() else {
                return Ok(false);
            };
            let copies: Vec<(ZoneId, Held)> = self
                .nodes
                .values()
                .filter_map(|n| n.core.participant().held(npc).map(|h| (n.id, h.clone())))
                .collect();
            let settled = copies.len() == 1
                && copies[0].0 == row.zone
                && matches!(copies[0].1, Held::Active { epoch, .. } if epoch == row.epoch);
            let Some(s) = self.slot_of(row.zone).filter(|_| settled) else {
                return Ok(false);
            };
            let (npcs, waiting) = self.nodes.get_mut(&s).unwrap().core.npcs();
            if !npcs.active.contains(&npc) && !waiting.contains(&npc) {
                return Ok(false);
            }
        }
        let attached: usize = self
            .nodes
            .values()
            .map(|n| n.core.sim().player_count())
            .sum();
        Ok(attached == ENTITIES as usize)
    }
}

fn run_seed(seed: u64, verbose: bool) -> Result<u32, String> {
    let mut sim = Sim::new(seed, verbose);
    for _ in 0..STEPS {
        sim.step().map_err(|e| format!("step {}: {e}", sim.step))?;
    }
    // Heal: no more faults, partitions and pauses end, the coordinator comes back.
    sim.faults = false;
    for n in sim.nodes.values_mut() {
        n.partitioned_until = n.partitioned_until.map(|_| sim.now);
        n.paused_until = n.paused_until.map(|_| sim.now);
    }
    if sim.coord.is_none() {
        sim.restart_coordinator();
    }
    for _ in 0..SETTLE_STEPS {
        sim.step().map_err(|e| format!("step {}: {e}", sim.step))?;
        if sim.settled()? {
            for n in sim.nodes.values() {
                let e = n.core.sim().effect_stats();
                FORWARDED.fetch_add(e.forwarded, std::sync::atomic::Ordering::Relaxed);
                REPEATS.fetch_add(e.repeats, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(sim.step);
        }
    }
    let mut why = String::new();
    for entity in 1..=ENTITIES {
        let copies: Vec<(ZoneId, Held)> = sim
            .nodes
            .values()
            .filter_map(|n| {
                n.core
                    .participant()
                    .held(EntityId(entity))
                    .map(|h| (n.id, h.clone()))
            })
            .collect();
        let attached_in: Vec<ZoneId> = sim
            .nodes
            .values()
            .filter(|n| {
                n.core
                    .sim()
                    .input_rejections(PlayerId(PLAYER_BASE + entity))
                    .is_some()
            })
            .map(|n| n.id)
            .collect();
        why += &format!(
            "\n  entity {entity}: durable {:?}, held {copies:?}, player attached in {attached_in:?}, {:?}",
            sim.durable.get(&EntityId(entity)),
            sim.players[&(PLAYER_BASE + entity)]
        );
    }
    for npc in (0..NPCS).map(EntityId::npc) {
        let copies: Vec<(ZoneId, Held)> = sim
            .nodes
            .values()
            .filter_map(|n| n.core.participant().held(npc).map(|h| (n.id, h.clone())))
            .collect();
        let simulated_in: Vec<ZoneId> = sim
            .nodes
            .values_mut()
            .filter_map(|n| n.core.npcs().0.active.contains(&npc).then_some(n.id))
            .collect();
        why += &format!(
            "\n  NPC {npc}: durable {:?}, held {copies:?}, simulated in {simulated_in:?}",
            sim.durable.get(&npc)
        );
    }
    let attached: usize = sim
        .nodes
        .values()
        .map(|n| n.core.sim().player_count())
        .sum();
    let draining: Vec<ZoneId> = sim
        .nodes
        .values()
        .filter(|n| n.draining.is_some())
        .map(|n| n.id)
        .collect();
    let frozen: Vec<(ZoneId, Vec<EntityId>)> = sim
        .nodes
        .values_mut()
        .map(|n| (n.id, n.core.characters().frozen))
        .collect();
    let expected = sim.map().cell_owners.clone();
    let maps: Vec<(ZoneId, Option<Vec<u64>>)> = sim
        .nodes
        .values()
        .map(|n| (n.id, n.core.map().map(|m| m.cell_owners.clone())))
        .collect();
    Err(format!(
        "did not settle (lost or duplicated): coordinator up {}, draining {draining:?}, players attached {attached}, frozen {frozen:?}, map {expected:?}, zones' maps {maps:?}{why}",
        sim.coord.is_some()
    ))
}

#[test]
fn zones_and_coordinator_keep_one_authority_through_loss_partitions_pauses_crashes_and_restarts() {
    if let Ok(seed) = std::env::var("WORLDMESH_SIM_SEED") {
        let seed: u64 = seed.parse().expect("WORLDMESH_SIM_SEED is a number");
        match run_seed(seed, true) {
            Ok(steps) => println!("seed {seed} settled after {steps} steps"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("WORLDMESH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    // Seeds are independent: spread them over the cores (a seed replays the same on any).
    let next = std::sync::atomic::AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::<(u64, String)>::new());
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= seeds || failures.lock().unwrap().len() >= 3 {
                        return;
                    }
                    let outcome = std::panic::catch_unwind(|| run_seed(seed, false))
                        .unwrap_or_else(|p| Err(format!("panicked: {p:?}")));
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push((seed, e));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(seed, _)| *seed);
    let failures: Vec<String> = failures
        .into_iter()
        .map(|(seed, e)| {
            format!(
                "seed {seed} failed: {e}\n  replay: WORLDMESH_SIM_SEED={seed} cargo test --workspace --test simulation -- --nocapture"
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The pokes crossed borders, and some were asked about again and answered from the
    // target's record (zones that crashed took their counts with them: these are lower bounds).
    let (forwarded, repeats) = (
        FORWARDED.load(std::sync::atomic::Ordering::Relaxed),
        REPEATS.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!("{seeds} seeds: {forwarded} effects forwarded, {repeats} repeats answered");
    if seeds >= 100 {
        assert!(
            forwarded > 0 && repeats > 0,
            "{forwarded} forwarded, {repeats} repeats"
        );
    }
}
