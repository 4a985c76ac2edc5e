//! NPC behaviour: server-driven entities that wander, so a zone carries load without players;
//! and their lifecycle: the game's kinds give them components at spawn, a defeated NPC is
//! taken out at the end of its tick and comes back at its spawn point after its kind's
//! respawn time (`worldmesh_game::npc`).
//!
//! Each NPC walks in a straight line and picks a new heading and speed every few seconds,
//! from its own deterministic generator (seeded by its id), so a simulation replays exactly.
//! When it decides and a player is within [`SEEK_RADIUS`], it walks towards the nearest one
//! instead (seek), using last tick's interest grid.
//! NPCs steer by writing their [`Intent`], exactly like players, and the movement system
//! moves both. They are not persisted.

use bevy_ecs::prelude::*;
use worldmesh_game::{Defeated, Id, NpcKinds};
use worldmesh_protocol::ids::EntityId;

use super::NpcIndex;
use super::components::{Intent, Motion, Position, SimSettings, Tick};
use super::interest::Grid;

/// NPCs notice players this close, metres.
pub const SEEK_RADIUS: f32 = 30.0;

/// The engine's side of an NPC: its walk, and where it comes back when defeated.
#[derive(Component, Debug, Clone)]
pub struct Wanderer {
    rng: u64,
    next_turn: u32,
    /// Its spawn point.
    pub home: Position,
}

impl Wanderer {
    pub fn new(seed: u64, home: Position) -> Self {
        Self {
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
    mut npcs: Query<(&mut Wanderer, &mut Intent, &Position)>,
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
            grid.for_each_near(*pos, SEEK_RADIUS, |seen, d2| {
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

/// Defeated NPCs waiting to come back: (id, spawn point, tick due).
#[derive(Resource, Debug, Default)]
pub struct Graveyard(pub Vec<(EntityId, Position, u32)>);

/// Spawns NPC `id` at `at` with its kind's components (the kind comes from its id).
pub fn spawn(world: &mut World, id: EntityId, at: Position) -> Entity {
    let kinds = world.resource::<NpcKinds>();
    let entry = kinds.kind_of(id.0).copied();
    let npc = worldmesh_game::Npc {
        kind: entry.map(|k| k.kind).unwrap_or_default(),
    };
    let mut e = world.spawn((
        Wanderer::new(id.0, at),
        npc,
        Id(id),
        at,
        Motion::default(),
        Intent::default(),
    ));
    if let Some(kind) = entry {
        kind.spawn(&mut e);
    }
    let entity = e.id();
    world.resource_mut::<NpcIndex>().0.insert(id, entity);
    entity
}

/// Takes defeated NPCs out (after the tick's events went out, so observers heard of it) and
/// books their return.
pub fn reap(world: &mut World) {
    let mut q =
        world.query_filtered::<(Entity, &Id, &Wanderer, &worldmesh_game::Npc), With<Defeated>>();
    let defeated: Vec<(Entity, EntityId, Position, worldmesh_game::NpcKindId)> = q
        .iter(world)
        .map(|(e, id, w, npc)| (e, id.0, w.home, npc.kind))
        .collect();
    if defeated.is_empty() {
        return;
    }
    let now = world.resource::<Tick>().0;
    let hz = 1.0 / world.resource::<SimSettings>().dt;
    for (entity, id, home, kind) in defeated {
        let delay = world
            .resource::<NpcKinds>()
            .get(kind)
            .map_or(0.0, |k| k.respawn_seconds);
        world.resource_mut::<NpcIndex>().0.remove(&id);
        world.despawn(entity);
        let due = now + (delay * hz).round().max(1.0) as u32;
        world.resource_mut::<Graveyard>().0.push((id, home, due));
    }
}

/// Brings back the NPCs whose time has come, fresh, at their spawn points.
pub fn respawn(world: &mut World) {
    let now = world.resource::<Tick>().0;
    let due: Vec<(EntityId, Position, u32)> = {
        let mut graveyard = world.resource_mut::<Graveyard>();
        if graveyard.0.iter().all(|(_, _, at)| *at > now) {
            return;
        }
        let (due, waiting) = graveyard.0.drain(..).partition(|(_, _, at)| *at <= now);
        graveyard.0 = waiting;
        due
    };
    for (id, home, _) in due {
        spawn(world, id, home);
    }
}
