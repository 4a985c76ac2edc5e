//! What the engine keeps on every entity and in every zone's world, for games to read: who an
//! entity is ([`Id`]), where it stands ([`Position`]) and how it moves ([`Motion`]), the tick
//! being run ([`Tick`]), and the order of a tick ([`TickSet`]).
//!
//! The engine writes these (inputs move players, handoffs bring entities in and take them
//! away); a game reads them and adds its own components beside them.

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
