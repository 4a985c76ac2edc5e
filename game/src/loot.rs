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

/// What a game gives one character in one ledger change: all of it or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gift {
    pub to: EntityId,
    pub grants: Vec<Grant>,
    /// Given at most once per character and key, ever ([`Loot::once`]).
    pub once: Option<u32>,
}

/// The grants a tick asked for (a resource every world has).
#[derive(Resource, Debug, Default)]
pub struct Loot {
    gifts: Vec<Gift>,
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

    /// Gives `to` everything in `kit` together, at most once per character and `key` for
    /// the life of the world, however often it is asked, by however many zones (a starter
    /// kit, a one-time quest reward): the ledger records it under an id made of the two.
    /// `key` below 2^22.
    pub fn once(&mut self, to: EntityId, key: u32, kit: &[Grant]) {
        let grants: Vec<Grant> = kit
            .iter()
            .copied()
            .filter(|g| !matches!(g, Grant::Gold(0) | Grant::Item { count: 0, .. }))
            .collect();
        if !grants.is_empty() {
            self.add(Gift {
                to,
                grants,
                once: Some(key),
            });
        }
    }

    fn push(&mut self, to: EntityId, grant: Grant) {
        self.add(Gift {
            to,
            grants: vec![grant],
            once: None,
        });
    }

    fn add(&mut self, gift: Gift) {
        if self.gifts.len() < MAX_PENDING {
            self.gifts.push(gift);
        } else {
            self.dropped += 1;
        }
    }

    /// The gifts asked for since the last call, and how many were dropped (the engine's).
    pub fn take(&mut self) -> (Vec<Gift>, u64) {
        (
            std::mem::take(&mut self.gifts),
            std::mem::take(&mut self.dropped),
        )
    }
}
