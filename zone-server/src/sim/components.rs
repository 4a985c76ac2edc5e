//! Components and resources of the zone's ECS world. The ones games read (`Id`, `Position`,
//! `Motion`, `Tick`) are `worldmesh_game`'s, re-exported here.

use bevy_ecs::prelude::*;
pub use worldmesh_game::world::{Id, Motion, Position, Tick};
use worldmesh_protocol::ids::{Epoch, LinkId, PlayerId, ZoneId};

/// A connected player's character. Entities without it are not observers.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Player {
    pub player_id: PlayerId,
    /// The gateway link the player's frames go out on.
    pub link: LinkId,
}

/// What makes an entity a character simulated (and saved) here: its name and its authority
/// stamp. NPCs and ghosts have none; every entity has an [`Id`].
#[derive(Component, Debug, Clone)]
pub struct CharacterRecord {
    pub name: String,
    pub epoch: Epoch,
    /// Version of the last state handed to persistence.
    pub version: u64,
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
