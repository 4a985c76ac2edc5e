//! What the arena keeps on players and monsters.

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

/// Hit points. Replicated (every observer draws the bar) and persisted.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Health {
    pub hp: u16,
    pub max: u16,
}

impl Health {
    #[must_use]
    pub fn full(max: u16) -> Self {
        Self { hp: max, max }
    }
}

impl GameComponent for Health {
    const KIND: ComponentKind = ComponentKind(1);
    const NAME: &'static str = "health";
}

/// Level: hits harder. Replicated (shown over heads) and persisted.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Level(pub u16);

impl GameComponent for Level {
    const KIND: ComponentKind = ComponentKind(2);
    const NAME: &'static str = "level";
}

/// Experience: persisted, told to its player only (as [`LevelUp`](crate::LevelUp)).
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode,
)]
pub struct Xp(pub u32);

impl GameComponent for Xp {
    const KIND: ComponentKind = ComponentKind(3);
    const NAME: &'static str = "xp";
}

/// Downed: lies where it fell until `until` (a tick), then gets up at full health. Replicated
/// so clients draw it lying; not persisted (a player who logs out downed gets up on login).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Down {
    pub until: u32,
}

impl GameComponent for Down {
    const KIND: ComponentKind = ComponentKind(4);
    const NAME: &'static str = "down";
}

/// When each attack is ready again (ticks). Carried through handoffs, so crossing a border
/// does not reset a cooldown.
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode,
)]
pub struct Cooldowns {
    pub strike_ready: u32,
    pub shoot_ready: u32,
}

impl GameComponent for Cooldowns {
    const KIND: ComponentKind = ComponentKind(5);
    const NAME: &'static str = "cooldowns";
}

/// Who last hit it (an entity id): who earns the XP when it goes down.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LastHitBy(pub u64);

impl GameComponent for LastHitBy {
    const KIND: ComponentKind = ComponentKind(6);
    const NAME: &'static str = "last_hit_by";
}
