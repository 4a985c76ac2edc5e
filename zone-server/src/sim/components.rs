//! Components and resources of the zone's ECS world.

use bevy_ecs::prelude::*;
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId, ZoneId};

/// A connected player's character. Entities without it are not observers.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Player {
    pub player_id: PlayerId,
    /// The gateway link the player's frames go out on.
    pub link: LinkId,
}

/// The persistent identity of a character, with its authority stamp.
#[derive(Component, Debug, Clone)]
pub struct CharacterRecord {
    pub id: EntityId,
    pub name: String,
    pub epoch: Epoch,
    /// Version of the last state handed to persistence.
    pub version: u64,
}

impl CharacterRecord {
    /// The record of an entity that is never saved here (an NPC, or a ghost of another
    /// zone's character): an id and nothing to stamp.
    pub fn unsaved(id: EntityId) -> Self {
        Self {
            id,
            name: String::new(),
            epoch: Epoch(0),
            version: 0,
        }
    }
}

#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct Position {
    pub x: f32,
    pub y: f32,
}

/// Current motion: heading (radians) and speed (m/s).
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Motion {
    pub heading: f32,
    pub speed: f32,
}

/// What the player last asked for, and which input that was.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Intent {
    pub heading: f32,
    pub speed: f32,
    pub last_seq: u32,
    /// Whether any input has been applied yet (seq 0 is a valid first seq).
    pub any: bool,
}

/// Set when state changed since the last checkpoint.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Dirty(pub bool);

/// Current tick number; the first tick run is 1.
#[derive(Resource, Debug, Default, Clone, Copy)]
pub struct Tick(pub u32);

/// Fixed settings of the simulation.
#[derive(Resource, Debug, Clone)]
pub struct SimSettings {
    /// Seconds per tick.
    pub dt: f32,
    pub bounds: worldmesh_protocol::WorldBounds,
    pub view_radius: f32,
    /// Largest snapshot frame, bytes (one datagram).
    pub snapshot_budget_bytes: usize,
}

/// Being handed to another zone: not simulated and its inputs' intents ignored until the
/// handoff is decided (see `worldmesh_world::handoff`); its player still gets snapshots.
#[derive(Component, Debug, Clone, Copy)]
pub struct Frozen;

/// A character with no player attached (restored by failover, or handed in before its
/// gateway's link arrived): kept for a grace period for its player to come back.
#[derive(Component, Debug, Clone)]
pub struct Detached {
    /// The player and gateway it had, if known.
    pub owner: Option<AbsentPlayer>,
    /// Tick it became detached.
    pub since: u32,
}

/// The player a detached character waits for, and the gateway that player is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsentPlayer {
    pub player_id: PlayerId,
    pub gateway: String,
}

/// A read-only copy of a character another zone simulates near our border: shown to
/// observers, never simulated or saved here.
#[derive(Component, Debug, Clone, Copy)]
pub struct Ghost {
    pub from_zone: ZoneId,
    /// Tick of the batch that last refreshed it.
    pub tick: u32,
}
