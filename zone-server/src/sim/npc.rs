//! NPC behaviour: server-driven entities that wander, so a zone carries load without players;
//! and their lifecycle: the game's kinds give them components at spawn, a defeated NPC is
//! taken out at the end of its tick and comes back at its spawn point after its kind's
//! respawn time (`worldmesh_game::npc`).
//!
//! NPCs are the world's, not a zone's: the coordinator places each of the world's NPCs in the
//! zone owning its spawn point, and from then on an NPC is held like a character — handed
//! to the next zone at a border with its walk ([`Wanderer`]) and every registered component,
//! shown to neighbours as a ghost, restored by a survivor when its zone fails (fresh at its
//! spawn point, or from its checkpoint when its kind is persisted). A defeated NPC waiting to
//! come back stays held by its zone (in the [`Graveyard`]), so it is never lost or doubled.
//!
//! Each NPC walks in a straight line and picks a new heading and speed every few seconds,
//! from its own deterministic generator (seeded by its id and carried along in handoffs), so a
//! simulation replays exactly. When it decides and a player is within [`SEEK_RADIUS`], it
//! walks towards the nearest one instead (seek), using last tick's interest grid.
//! NPCs steer by writing their [`Intent`], exactly like players, and the movement system
//! moves both.

use bevy_ecs::prelude::*;
use worldmesh_game::{Defeated, Id, NpcKindId, NpcKinds};
use worldmesh_protocol::ids::{EntityId, Epoch};

use super::CharIndex;
use super::components::{
    CharacterRecord, Dirty, Frozen, Intent, Motion, Position, SimSettings, Tick,
};
use super::interest::Grid;

/// NPCs notice players this close, metres.
pub const SEEK_RADIUS: f32 = 30.0;

/// The engine's side of an NPC: its kind, its walk, and where it comes back when defeated.
/// Stays on an NPC frozen for a handoff (whose [`worldmesh_game::Npc`] is taken off, so game
/// systems leave it alone), and travels with it.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct Wanderer {
    pub kind: NpcKindId,
    /// The walk's generator state and the tick of its next decision.
    pub rng: u64,
    pub next_turn: u32,
    /// Its spawn point.
    pub home: Position,
}

impl Wanderer {
    pub fn new(seed: u64, kind: NpcKindId, home: Position) -> Self {
        Self {
            kind,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            next_turn: 0,
            home,
        }
    }

    /// splitmix64: tiny, fast, good enough for behaviour.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Turns NPCs when their time comes, and away from the world's edge.
pub fn wander(
    tick: Res<Tick>,
    settings: Res<SimSettings>,
    grid: Res<Grid>,
    mut npcs: Query<(&mut Wanderer, &mut Intent, &Position), Without<Frozen>>,
) {
    let b = settings.bounds;
    let ticks_per_s = (1.0 / settings.dt).max(1.0);
    for (mut npc, mut intent, pos) in &mut npcs {
        let at_edge = pos.x <= b.min_x || pos.x >= b.max_x || pos.y <= b.min_y || pos.y >= b.max_y;
        if tick.0 < npc.next_turn && !at_edge {
            continue;
        }
        let mut nearest: Option<(f32, Position)> = None;
        if grid.is_built() {
            // A zone configured with a short view sees less: NPCs notice no further.
            let radius = SEEK_RADIUS.min(grid.max_radius());
            grid.for_each_near(*pos, radius, |seen, d2| {
                if seen.q.kind == worldmesh_protocol::EntityKind::Player
                    && d2 > 0.25
                    && nearest.is_none_or(|(n, _)| d2 < n)
                {
                    nearest = Some((d2, seen.pos));
                }
            });
        }
        intent.heading = if at_edge {
            // Head back towards the middle of the world.
            ((b.min_y + b.max_y) / 2.0 - pos.y).atan2((b.min_x + b.max_x) / 2.0 - pos.x)
        } else if let Some((_, target)) = nearest {
            (target.y - pos.y).atan2(target.x - pos.x)
        } else {
            npc.unit() * std::f32::consts::TAU
        };
        intent.speed = 1.0 + npc.unit() * 3.0;
        // A new decision every 2–6 s.
        npc.next_turn = tick.0 + ((2.0 + npc.unit() * 4.0) * ticks_per_s) as u32;
    }
}

/// A defeated NPC waiting to come back. Still held by this zone (at `epoch`): it counts in
/// holdings and audits, and a failover brings it back at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waiting {
    pub id: EntityId,
    pub home: Position,
    /// The tick it comes back.
    pub due: u32,
    pub epoch: Epoch,
    pub version: u64,
}

/// Defeated NPCs waiting to come back.
#[derive(Resource, Debug, Default)]
pub struct Graveyard(pub Vec<Waiting>);

impl Graveyard {
    /// Forgets a waiting NPC (revoked, or its zone lost its lease); whether it was here.
    pub fn remove(&mut self, id: EntityId) -> bool {
        let before = self.0.len();
        self.0.retain(|w| w.id != id);
        self.0.len() != before
    }
}

/// The name an NPC's checkpoint carries (a `:` no player name may contain).
pub fn checkpoint_name(id: EntityId) -> String {
    format!("npc:{}", id.npc_index().unwrap_or(id.0))
}

/// Spawns NPC `id` fresh at `at` (also where it comes back when defeated), held at `epoch`,
/// with its kind's components (the kind comes from its id).
pub fn spawn(world: &mut World, id: EntityId, at: Position, epoch: Epoch, version: u64) -> Entity {
    let kinds = world.resource::<NpcKinds>();
    let entry = kinds.kind_of(id.0).copied();
    let kind = entry.map(|k| k.kind).unwrap_or_default();
    let walk = Wanderer::new(id.0, kind, at);
    let entity = spawn_with(world, id, at, Motion::default(), walk, epoch, version);
    if let Some(kind) = entry {
        kind.spawn(&mut world.entity_mut(entity));
    }
    entity
}

/// Spawns an NPC with the engine's components only (the caller adds the game's: fresh from
/// its kind, or carried by a handoff, or from a checkpoint).
pub fn spawn_with(
    world: &mut World,
    id: EntityId,
    at: Position,
    motion: Motion,
    walk: Wanderer,
    epoch: Epoch,
    version: u64,
) -> Entity {
    let persisted = world
        .resource::<NpcKinds>()
        .get(walk.kind)
        .is_some_and(|k| k.persisted);
    let mut e = world.spawn((
        walk,
        worldmesh_game::Npc { kind: walk.kind },
        Id(id),
        CharacterRecord {
            name: checkpoint_name(id),
            epoch,
            version,
        },
        at,
        motion,
        Intent {
            heading: motion.heading,
            speed: motion.speed,
            ..Intent::default()
        },
    ));
    // Only a persisted kind is ever checkpointed: the others have nothing to mark.
    if persisted {
        e.insert(Dirty(false));
    }
    let entity = e.id();
    world.resource_mut::<CharIndex>().0.insert(id, entity);
    entity
}

/// Takes defeated NPCs out (after the tick's events went out, so observers heard of it) and
/// books their return.
pub fn reap(world: &mut World) {
    let mut q = world.query_filtered::<(Entity, &Id, &Wanderer, &CharacterRecord), (
        With<Defeated>,
        With<worldmesh_game::Npc>,
    )>();
    let defeated: Vec<(Entity, EntityId, Wanderer, Epoch, u64)> = q
        .iter(world)
        .map(|(e, id, w, r)| (e, id.0, *w, r.epoch, r.version))
        .collect();
    if defeated.is_empty() {
        return;
    }
    let now = world.resource::<Tick>().0;
    let hz = 1.0 / world.resource::<SimSettings>().dt;
    for (entity, id, walk, epoch, version) in defeated {
        let delay = world
            .resource::<NpcKinds>()
            .get(walk.kind)
            .map_or(0.0, |k| k.respawn_seconds);
        world.resource_mut::<CharIndex>().0.remove(&id);
        world.despawn(entity);
        let due = now + (delay * hz).round().max(1.0) as u32;
        world.resource_mut::<Graveyard>().0.push(Waiting {
            id,
            home: walk.home,
            due,
            epoch,
            version,
        });
    }
}

/// Brings back the NPCs whose time has come, fresh, at their spawn points.
pub fn respawn(world: &mut World) {
    let now = world.resource::<Tick>().0;
    let due: Vec<Waiting> = {
        let mut graveyard = world.resource_mut::<Graveyard>();
        if graveyard.0.iter().all(|w| w.due > now) {
            return;
        }
        let (due, waiting) = graveyard.0.drain(..).partition(|w| w.due <= now);
        graveyard.0 = waiting;
        due
    };
    for w in due {
        spawn(world, w.id, w.home, w.epoch, w.version);
    }
}
