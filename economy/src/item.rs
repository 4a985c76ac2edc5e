//! Items and what a player offers.

use worldmesh_protocol::ids::EntityId;

/// An item instance's id, unique in the whole world for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub u64);

/// What an item is (the game's numbering: a sword, a potion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemKind(pub u16);

/// A trade's id, unique in the whole world for ever: taken from a block of ids persistence
/// reserved for the host zone (so zones never need to agree on one, and a restarted zone
/// never reuses one). Trades, inventory changes and items share that id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TradeId(pub u64);

/// An inventory change's id (see [`crate::ledger::Ledger::change`]), from the same blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeId(pub u64);

impl ChangeId {
    /// Where ids for [`ChangeId::once`] begin; reserved blocks stay below (persistence
    /// refuses to reserve past it).
    pub const ONCE_BASE: u64 = 1 << 62;

    /// The id of the change a game makes at most once per character and `key` (a starter
    /// kit, a quest reward): the same for every zone and every retry, so the ledger records
    /// it once however often it is asked. `None` for a character id of 2^40 or more or a key
    /// of 2^22 or more.
    #[must_use]
    pub fn once(holder: Holder, key: u32) -> Option<Self> {
        (holder.0 < 1 << 40 && key < 1 << 22)
            .then(|| Self(Self::ONCE_BASE | u64::from(key) << 40 | holder.0))
    }
}

/// A party to a trade: the character and the epoch its zone claimed its inventory with when
/// the trade opened (a commit after another zone took it over is stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Party {
    pub who: Holder,
    pub epoch: u64,
}

/// One item instance: a stack of `count` of a kind. `version` grows with every change of its
/// owner or count, so an offer names exactly the state it was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    pub kind: ItemKind,
    pub count: u32,
    pub version: u64,
}

/// What one side puts on the table: whole item instances at the versions seen, and gold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    pub items: Vec<(ItemId, u64)>,
    pub gold: u64,
}

impl Offer {
    /// At most this many items in one offer: a trade window, not a warehouse.
    pub const MAX_ITEMS: usize = 16;

    /// Well-formed: not too many items, none twice.
    #[must_use]
    pub fn is_well_formed(&self) -> bool {
        let mut ids: Vec<ItemId> = self.items.iter().map(|(i, _)| *i).collect();
        ids.sort_unstable();
        ids.dedup();
        self.items.len() <= Self::MAX_ITEMS && ids.len() == self.items.len()
    }
}

/// Who holds what, as a party to a trade: a character.
pub type Holder = EntityId;
