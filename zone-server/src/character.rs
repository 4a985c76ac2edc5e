//! A character as the zone core knows it: its persistent state, with typed ids. Protobuf's
//! `Character` is the wire form persistence and handoff states carry; it is converted here, at
//! the edge (loads, saves, handoff states), and nowhere inside the core.

use worldmesh_game::ComponentValues;
use worldmesh_protocol::grpc::persistence as pb;
use worldmesh_protocol::ids::{EntityId, Epoch};

/// A player's character: who it is, where it stands, and the stamp persistence fences by.
#[derive(Debug, Clone, PartialEq)]
pub struct Character {
    /// Its database id, also the entity id snapshots name it by.
    pub id: EntityId,
    pub name: String,
    pub x: f32,
    pub y: f32,
    /// Radians.
    pub heading: f32,
    /// The authority it was last written under: persistence refuses a write at an older one.
    pub epoch: Epoch,
    /// Grows with every state handed to persistence: of two writes at one epoch, the newer
    /// version wins, so a retried or reordered checkpoint never goes back in time.
    pub version: u64,
    /// The game's persisted components, saved and fenced with the rest.
    pub game: ComponentValues,
}

impl Character {
    /// Whether this state supersedes `other` (same character): a newer epoch, or a newer
    /// version at the same epoch — the order persistence keeps.
    #[must_use]
    pub fn newer_than(&self, other: &Character) -> bool {
        (self.epoch, self.version) > (other.epoch, other.version)
    }
}

impl From<pb::Character> for Character {
    fn from(c: pb::Character) -> Self {
        Self {
            id: EntityId(c.id),
            name: c.name,
            x: c.x,
            y: c.y,
            heading: c.heading,
            epoch: Epoch(c.epoch),
            version: c.version,
            game: ComponentValues::decode_or_log(&c.game, "character"),
        }
    }
}

impl From<Character> for pb::Character {
    fn from(c: Character) -> Self {
        Self {
            id: c.id.0,
            name: c.name,
            x: c.x,
            y: c.y,
            heading: c.heading,
            epoch: c.epoch.0,
            version: c.version,
            game: c.game.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways_and_orders_by_epoch_then_version() {
        let wire = pb::Character {
            id: 7,
            name: "ada".into(),
            x: 1.5,
            y: -2.0,
            heading: 0.25,
            epoch: 3,
            version: 9,
            game: ComponentValues(vec![(worldmesh_game::ComponentKind(2), vec![1, 2])]).encode(),
        };
        let c = Character::from(wire.clone());
        assert_eq!((c.id, c.epoch), (EntityId(7), Epoch(3)));
        assert_eq!(pb::Character::from(c.clone()), wire);
        let later = Character {
            version: 10,
            ..c.clone()
        };
        let moved = Character {
            epoch: Epoch(4),
            version: 0,
            ..c.clone()
        };
        assert!(later.newer_than(&c) && moved.newer_than(&later) && !c.newer_than(&c));
    }
}
