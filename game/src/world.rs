//! What the engine keeps on every entity and in every zone's world, for games to read: who an
//! entity is ([`Id`]), where it stands ([`Position`]) and how it moves ([`Motion`]), whether it
//! is a player's character simulated here ([`Character`]; NPCs carry
//! [`Npc`](crate::npc::Npc)), the tick being run ([`Tick`]), the walls ([`CollisionMap`]), and
//! the order of a tick ([`TickSet`]).
//!
//! The engine writes these (inputs move players, handoffs bring entities in and take them
//! away); a game reads them and adds its own components beside them.

use std::collections::HashSet;

use bevy_ecs::prelude::*;
use worldmesh_protocol::ids::EntityId;

/// The entity's id in the cluster: stable across zones and handoffs, what snapshots, actions
/// and events name it by. On every entity the engine simulates or shows.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[require(crate::component::Synced)]
pub struct Id(pub EntityId);

/// Where an entity stands, metres.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct Position {
    pub x: f32,
    pub y: f32,
}

impl Position {
    /// Straight-line distance to `other`, metres.
    #[must_use]
    pub fn distance(self, other: Position) -> f32 {
        (self.x - other.x).hypot(self.y - other.y)
    }
}

/// On a player's character while this zone simulates it (not on ghosts of a neighbour's, not
/// while it is frozen for a handoff): what a game's systems over players query, so they never
/// change state that is not theirs to change.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Character;

/// Set by a game on an entity that must not move (stunned, downed): the engine's movement
/// leaves it where it is; its player's inputs still count for when it is removed.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Immobile;

/// Square cells nobody may walk into (walls, water), from the zone's configuration: the
/// engine's movement stops at them, and games check lines of sight against them.
#[derive(Resource, Debug, Clone, Default)]
pub struct CollisionMap {
    cell: f32,
    blocked: HashSet<(i32, i32)>,
}

impl CollisionMap {
    pub fn new(cell: f32, blocked: impl IntoIterator<Item = (i32, i32)>) -> Self {
        Self {
            cell: cell.max(0.1),
            blocked: blocked.into_iter().collect(),
        }
    }

    pub fn is_blocked(&self, x: f32, y: f32) -> bool {
        !self.blocked.is_empty()
            && self.blocked.contains(&(
                (x / self.cell).floor() as i32,
                (y / self.cell).floor() as i32,
            ))
    }

    /// Whether the straight line from `a` to `b` crosses no blocked cell (sampled every
    /// quarter cell, ends included).
    #[must_use]
    pub fn line_clear(&self, a: Position, b: Position) -> bool {
        if self.blocked.is_empty() {
            return true;
        }
        let steps = (a.distance(b) / (self.cell / 4.0)).ceil().max(1.0) as u32;
        (0..=steps).all(|i| {
            let t = i as f32 / steps as f32;
            !self.is_blocked(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t)
        })
    }
}

/// Current motion: heading (radians, counter-clockwise from +x) and speed (m/s).
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Motion {
    pub heading: f32,
    pub speed: f32,
}

/// The tick being run. Ticks are numbered from the world's tick origin, so every zone calls
/// the same moment by the same number; the first tick run is 1.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(pub u32);

/// The steps of one tick, in order. A game places its systems in one of them (usually
/// [`TickSet::Simulate`]); the engine's own systems sit in each.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TickSet {
    /// Players' movement inputs become intents.
    Input,
    /// Players' actions are checked and applied (see [`crate::action`]).
    Actions,
    /// Server-driven behaviour: NPCs, the game's rules (regeneration, cooldowns, AI).
    Simulate,
    /// Intents become motion and positions.
    Movement,
    /// The interest grid is rebuilt from the new positions.
    Interest,
    /// Each player's snapshot is built.
    Snapshot,
    /// Events raised this tick go out to their audiences (see [`crate::event`]).
    Events,
}

impl TickSet {
    /// Every set, in the order a tick runs them.
    pub const ORDER: [TickSet; 7] = [
        TickSet::Input,
        TickSet::Actions,
        TickSet::Simulate,
        TickSet::Movement,
        TickSet::Interest,
        TickSet::Snapshot,
        TickSet::Events,
    ];
}

/// The engine's own systems of one [`TickSet`] slot. A game's systems in that slot run after
/// them (see [`GameRegistry::system`](crate::GameRegistry::system)): a game's `Simulate`
/// system sees this tick's NPC moves, its `Snapshot` system this tick's snapshots.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSystems(pub TickSet);
