//! Items lying on the ground as entities of this world: an [`Id`] in the item range, a
//! [`Position`], no motion, and the engine's [`GroundItem`] component, which is what makes
//! observers see them in snapshots and neighbours see them as ghosts. Which items lie here,
//! and when they come and go, is the zone's business (`crate::ground`); this is only their
//! place in the world.

use worldmesh_game::ground::GroundItem;
use worldmesh_protocol::GroundItemView;

use super::*;

/// Item id → ECS entity, for the items on the ground this zone holds (not ghosts).
#[derive(Resource, Default)]
pub struct GroundIndex(pub HashMap<u64, Entity>);

/// An item on the ground as this zone sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeenItem {
    pub view: GroundItemView,
    pub at: [f32; 2],
    /// The neighbour holding it, when this zone only shows a ghost of it.
    pub from: Option<ZoneId>,
}

impl Sim {
    /// Puts `item` on the ground at `at` (or updates the one lying here); `false` for an id
    /// outside the item range.
    pub fn put_on_ground(&mut self, item: u64, view: GroundItemView, at: [f32; 2]) -> bool {
        let Some(id) = EntityId::item(item) else {
            return false;
        };
        // The real one wins over a neighbour's copy.
        self.remove_ghost(id);
        let position = Position { x: at[0], y: at[1] };
        match self.world.resource::<GroundIndex>().0.get(&item).copied() {
            Some(e) => {
                self.world
                    .entity_mut(e)
                    .insert((position, GroundItem(view)));
            }
            None => {
                let e = self
                    .world
                    .spawn((Id(id), position, Motion::default(), GroundItem(view)))
                    .id();
                self.world.resource_mut::<GroundIndex>().0.insert(item, e);
            }
        }
        true
    }

    /// Takes `item` off the ground here; whether it lay here.
    pub fn take_from_ground(&mut self, item: u64) -> bool {
        match self.world.resource_mut::<GroundIndex>().0.remove(&item) {
            Some(e) => {
                self.world.despawn(e);
                true
            }
            None => false,
        }
    }

    /// Drops the ghost of `item` a neighbour shows (it was picked up from here).
    pub fn forget_ground_ghost(&mut self, item: u64) {
        if let Some(id) = EntityId::item(item) {
            self.remove_ghost(id);
        }
    }

    /// The items on the ground this zone holds, by id.
    pub fn ground_items(&self) -> Vec<(u64, GroundItemView, [f32; 2])> {
        let index = &self.world.resource::<GroundIndex>().0;
        let mut out: Vec<_> = index
            .iter()
            .filter_map(|(&item, &e)| {
                let view = self.world.get::<GroundItem>(e)?.0;
                let p = self.world.get::<Position>(e)?;
                Some((item, view, [p.x, p.y]))
            })
            .collect();
        out.sort_by_key(|(item, _, _)| *item);
        out
    }

    /// How many items on the ground this zone holds.
    pub fn ground_count(&self) -> usize {
        self.world.resource::<GroundIndex>().0.len()
    }

    /// Item `item` as seen here: held here, or a ghost of a neighbour's.
    pub fn seen_item(&self, item: u64) -> Option<SeenItem> {
        let (entity, from) = match self.world.resource::<GroundIndex>().0.get(&item) {
            Some(&e) => (e, None),
            None => {
                let id = EntityId::item(item)?;
                let e = *self.world.resource::<GhostIndex>().0.get(&id)?;
                (e, Some(self.world.get::<Ghost>(e)?.from_zone))
            }
        };
        let view = self.world.get::<GroundItem>(entity)?.0;
        let p = self.world.get::<Position>(entity)?;
        Some(SeenItem {
            view,
            at: [p.x, p.y],
            from,
        })
    }

    /// Whether `id` is an item on the ground held here.
    pub(super) fn holds_ground(&self, id: EntityId) -> bool {
        id.item_id()
            .is_some_and(|item| self.world.resource::<GroundIndex>().0.contains_key(&item))
    }

    /// Where a player's character stands, and its id.
    pub fn player_at(&self, player_id: PlayerId) -> Option<(EntityId, [f32; 2])> {
        let &e = self.world.resource::<PlayerIndex>().0.get(&player_id)?;
        let id = self.world.get::<Id>(e)?.0;
        let p = self.world.get::<Position>(e)?;
        Some((id, [p.x, p.y]))
    }
}
