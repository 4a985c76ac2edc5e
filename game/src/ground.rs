//! Items lying on the ground are world entities the engine keeps (`zone-server`'s
//! `ground.rs`): an [`Id`](crate::world::Id) in the item range
//! ([`EntityId::ITEM_BASE`](worldmesh_protocol::EntityId::ITEM_BASE)), a
//! [`Position`](crate::world::Position), and this component, which says what the item is.
//! Being a registered, replicated component is what shows it to clients in snapshots and to
//! neighbouring zones on ghosts, without any machinery of its own. Its kind,
//! [`ComponentKind::GROUND_ITEM`](worldmesh_protocol::ComponentKind::GROUND_ITEM), is
//! reserved. Games read it (a game may show or ignore items), never write it.

use bevy_ecs::prelude::*;
use worldmesh_protocol::{ComponentKind, GroundItemView};

use crate::component::GameComponent;

/// What an item on the ground is (kind, stack, ledger version).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct GroundItem(pub GroundItemView);

impl GameComponent for GroundItem {
    const KIND: ComponentKind = ComponentKind::GROUND_ITEM;
    const NAME: &'static str = "ground_item";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_view_clients_decode() {
        let view = GroundItemView {
            kind: 2,
            count: 3,
            version: 7,
        };
        let ours = worldmesh_protocol::codec::encode_value(&GroundItem(view), 64).unwrap();
        let theirs = worldmesh_protocol::codec::encode_value(&view, 64).unwrap();
        assert_eq!(ours, theirs);
    }
}
