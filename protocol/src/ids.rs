//! Typed ids: the numbers that name things in the cluster, so that a zone id is never passed
//! where an entity id is expected. Each is a transparent wrapper: in bincode it encodes as its
//! inner integer (the wire format of `PROTOCOL.md` is unchanged), and in protobuf messages it
//! stays a bare integer, converted at the gRPC edge.

use std::fmt;

use bincode::{Decode, Encode};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Encode, Decode)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

id!(
    /// A player: one logged-in connection, numbered by its gateway (unique across gateways:
    /// each numbers from a random prefix).
    PlayerId(u64)
);
id!(
    /// A simulated thing: a character (its database id) or an NPC. Stable across zones and
    /// handoffs; what snapshots name.
    EntityId(u64)
);
id!(
    /// A zone server, as numbered by the coordinator at registration; 0 is no zone.
    ZoneId(u64)
);
id!(
    /// One gateway's link to one zone, numbered by the zone.
    LinkId(u32)
);
id!(
    /// How many times an entity's authority has changed hands; grows by one per handoff or
    /// failover. Writes stamped with an older epoch are refused (fencing).
    Epoch(u64)
);

id!(
    /// A kind of game action, numbered by the game that registers it.
    ActionKind(u16)
);
id!(
    /// A kind of game event, numbered by the game that registers it.
    EventKind(u16)
);
id!(
    /// A kind of game effect (what one entity does to another, applied where the target is
    /// simulated), numbered by the game that registers it. Travels between zones only.
    EffectKind(u16)
);
id!(
    /// A kind of game component (health, level, …) that travels in snapshots, handoffs and
    /// checkpoints, numbered by the game that registers it.
    ComponentKind(u16)
);

impl ComponentKind {
    /// The engine's component on an item lying on the ground ([`crate::GroundItemView`]):
    /// what it is, replicated to everyone who sees it. Games never register it.
    pub const GROUND_ITEM: ComponentKind = ComponentKind(u16::MAX - 1);
}

impl ZoneId {
    /// No zone: an entity nobody simulates (logged out), a cell nobody owns.
    pub const NONE: ZoneId = ZoneId(0);
}

impl EntityId {
    /// The first NPC id; the world's `N` NPCs are `NPC_BASE + 0 .. NPC_BASE + N`. Far above
    /// any character id SQL hands out, so a character and an NPC never share an id.
    pub const NPC_BASE: EntityId = EntityId(1 << 48);

    /// The first id of an item lying on the ground: item `i` is the entity `ITEM_BASE + i`
    /// while it lies there (item ids come from SQL, far below 2^56).
    pub const ITEM_BASE: EntityId = EntityId(1 << 56);

    /// Whether this names an NPC (a world entity no player plays) rather than a character
    /// or an item on the ground.
    pub fn is_npc(self) -> bool {
        self >= Self::NPC_BASE && self < Self::ITEM_BASE
    }

    /// Whether this names an item on the ground.
    pub fn is_item(self) -> bool {
        self >= Self::ITEM_BASE
    }

    /// The entity of item `item` while it lies on the ground (`None` for an id too large to
    /// be one).
    pub fn item(item: u64) -> Option<EntityId> {
        Self::ITEM_BASE
            .0
            .checked_add(item)
            .filter(|&e| e >= Self::ITEM_BASE.0)
            .map(EntityId)
    }

    /// Which item this ground entity is; `None` for a character or an NPC.
    pub fn item_id(self) -> Option<u64> {
        self.is_item().then(|| self.0 - Self::ITEM_BASE.0)
    }

    /// The `index`th NPC of the world.
    pub fn npc(index: u64) -> EntityId {
        EntityId(Self::NPC_BASE.0 + index)
    }

    /// Which of the world's NPCs this is; `None` for a character.
    pub fn npc_index(self) -> Option<u64> {
        self.0
            .checked_sub(Self::NPC_BASE.0)
            .filter(|_| self.is_npc())
    }
}

impl Epoch {
    /// The epoch after this one.
    #[must_use]
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }

    /// The epoch before this one (0 stays 0).
    #[must_use]
    pub fn prev(self) -> Epoch {
        Epoch(self.0.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_and_zone_zero_is_none() {
        // That ids keep the wire format is checked by the byte examples in `codec.rs`.
        assert_eq!(Epoch(4).next(), Epoch(5));
        assert_eq!(ZoneId::NONE, ZoneId::from(0));
        assert_eq!(EntityId(42).to_string(), "42");
    }
}
