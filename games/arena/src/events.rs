//! What players are told.

use worldmesh_game::prelude::*;

/// An entity was hit: to its observers, as a datagram (the health bar in the next snapshot is
/// the truth; this is for the flash and the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Struck {
    /// The attacker's entity id.
    pub by: u64,
    pub damage: u16,
    /// Health left.
    pub hp: u16,
    pub ranged: bool,
}

impl ServerEvent for Struck {
    const KIND: EventKind = EventKind(1);
    const NAME: &'static str = "struck";
    const DELIVERY: Delivery = Delivery::Unreliable;
}

/// An entity went down: to its observers, reliably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct WentDown {
    /// Who downed it (0: nobody known).
    pub by: u64,
}

impl ServerEvent for WentDown {
    const KIND: EventKind = EventKind(2);
    const NAME: &'static str = "went_down";
    const DELIVERY: Delivery = Delivery::Reliable;
}

/// Your XP grew (and maybe your level): to that player, reliably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LevelUp {
    pub xp: u32,
    pub level: u16,
}

impl ServerEvent for LevelUp {
    const KIND: EventKind = EventKind(3);
    const NAME: &'static str = "level_up";
    const DELIVERY: Delivery = Delivery::Reliable;
}
