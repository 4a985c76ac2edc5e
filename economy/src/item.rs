//! Items and what a player offers.

use worldmesh_protocol::ids::EntityId;

/// An item instance's id, unique in the whole world for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub u64);

/// What an item is (the game's numbering: a sword, a potion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemKind(pub u16);

/// A trade's id, unique in the whole world: the host zone's id in the high 24 bits, its
/// counter in the low 40, so zones never need to agree on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TradeId(pub u64);

impl TradeId {
    #[must_use]
    pub fn new(zone: u64, counter: u64) -> Self {
        Self((zone << 40) | (counter & ((1 << 40) - 1)))
    }
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
