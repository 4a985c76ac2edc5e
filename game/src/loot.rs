//! What a game gives a character: items and gold. Holdings are not components: they live in
//! the economy's ledger, the one truth about who holds what, so that items and gold survive
//! crashes, move in trades and can never be duplicated. A game asks through [`Loot`] (from a
//! system, an action or an effect, wherever the character is simulated); the engine records
//! the grant with the ledger, once, and shows the player its new inventory.
//!
//! ```
//! # use bevy_ecs::prelude::*;
//! # use worldmesh_game::prelude::*;
//! fn reward(mut loot: ResMut<Loot>, winners: Query<&Id, Added<Character>>) {
//!     for id in &winners {
//!         loot.gold(id.0, 10);
//!         loot.item(id.0, 7, 1); // the game's item kind 7: a welcome potion
//!     }
//! }
//! ```
//!
//! A grant is asked for now and recorded a moment later (one ledger round trip): one asked
//! in the last moments before its zone crashes may be lost, never doubled, and one for a
//! character that leaves the zone before its inventory was read there is dropped (counted).

use bevy_ecs::prelude::*;
use worldmesh_protocol::ids::EntityId;

/// Most grants waiting for the engine; beyond, new ones are dropped (counted).
pub const MAX_PENDING: usize = 10_000;

/// One thing a game gives a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A new stack of `count` of the game's item kind `kind`.
    Item { kind: u16, count: u32 },
    /// Gold.
    Gold(u64),
}

/// The grants a tick asked for (a resource every world has).
#[derive(Resource, Debug, Default)]
pub struct Loot {
    grants: Vec<(EntityId, Grant)>,
    dropped: u64,
}

impl Loot {
    /// Gives `to` a new stack of `count` items of the game's kind `kind` (`count` 0: nothing).
    pub fn item(&mut self, to: EntityId, kind: u16, count: u32) {
        if count > 0 {
            self.push(to, Grant::Item { kind, count });
        }
    }

    /// Gives `to` some gold (0: nothing).
    pub fn gold(&mut self, to: EntityId, amount: u64) {
        if amount > 0 {
            self.push(to, Grant::Gold(amount));
        }
    }

    fn push(&mut self, to: EntityId, grant: Grant) {
        if self.grants.len() < MAX_PENDING {
            self.grants.push((to, grant));
        } else {
            self.dropped += 1;
        }
    }

    /// The grants asked for since the last call, and how many were dropped (the engine's).
    pub fn take(&mut self) -> (Vec<(EntityId, Grant)>, u64) {
        (
            std::mem::take(&mut self.grants),
            std::mem::take(&mut self.dropped),
        )
    }
}
