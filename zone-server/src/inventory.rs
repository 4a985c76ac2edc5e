//! The inventories of the characters simulated here, as the economy's ledger holds them.
//!
//! A zone never writes holdings in checkpoints: the ledger (persistence, SQL) is their only
//! truth. When a character comes into play here at an authority epoch (a login, a handoff's
//! arrival, a failover), the zone **claims** its inventory with that epoch and reads it in the
//! same step: from then on no zone that held the character before can change it (the ledger
//! refuses their changes as fenced), and what the zone shows is what the ledger holds. The
//! owner's client is shown the inventory once it is read, and again whenever it is attached to
//! a new player (a reconnect).
//!
//! [`Inventories`] is sans-IO: the zone core [reconciles](Inventories::reconcile) it with the
//! characters it simulates a few times a second and carries out what it returns (claims for
//! the driver to send, frames for players); the driver's answers come back through
//! [`Inventories::claimed`]. Reconciling, rather than hooking every way a character arrives,
//! means no way of arriving can be missed.

use std::collections::HashMap;

use worldmesh_economy::Inventory;
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::{InventoryView, ItemView, ServerMessage, codec};

/// A player character here: its id, epoch and player (if attached).
pub type Present = (EntityId, Epoch, Option<(LinkId, PlayerId)>);

/// What [`Inventories::reconcile`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Claim `entity`'s inventory at `epoch` (answer with [`Inventories::claimed`]).
    Claim { entity: EntityId, epoch: Epoch },
    /// Send `frame` (an encoded [`ServerMessage::Inventory`]) to a player, reliably.
    Show {
        link: LinkId,
        player_id: PlayerId,
        frame: Vec<u8>,
    },
}

#[derive(Debug)]
enum State {
    /// Claimed; the ledger has not answered yet.
    Asked,
    /// The ledger's answer, and whom it was shown to.
    Held {
        inventory: Inventory,
        shown_to: Option<PlayerId>,
    },
    /// The ledger holds a later claim: another zone owns the character now.
    Fenced,
}

#[derive(Debug)]
struct Entry {
    epoch: Epoch,
    state: State,
}

/// Inventories of the characters here, by entity.
#[derive(Debug, Default)]
pub struct Inventories {
    entries: HashMap<EntityId, Entry>,
}

impl Inventories {
    /// Brings the inventories in line with the player characters simulated here: a claim
    /// for each that arrived (or arrived again, at a new epoch), the inventory shown to each
    /// player who has not seen it, the entries of characters gone forgotten.
    pub fn reconcile(&mut self, here: &[Present]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(here.len());
        for &(entity, epoch, player) in here {
            seen.insert(entity);
            let entry = self.entries.entry(entity).or_insert(Entry {
                epoch: Epoch(0),
                state: State::Fenced,
            });
            if entry.epoch != epoch {
                *entry = Entry {
                    epoch,
                    state: State::Asked,
                };
                steps.push(Step::Claim { entity, epoch });
                continue;
            }
            if let (
                State::Held {
                    inventory,
                    shown_to,
                },
                Some((link, player_id)),
            ) = (&mut entry.state, player)
                && *shown_to != Some(player_id)
            {
                if let Some(frame) = encode(inventory) {
                    steps.push(Step::Show {
                        link,
                        player_id,
                        frame,
                    });
                }
                *shown_to = Some(player_id);
            }
        }
        self.entries.retain(|id, _| seen.contains(id));
        steps
    }

    /// The ledger's answer to a claim: the inventory, or `None` when a later claim is in
    /// force. An answer for an epoch no longer current is dropped.
    pub fn claimed(&mut self, entity: EntityId, epoch: Epoch, inventory: Option<Inventory>) {
        let Some(entry) = self.entries.get_mut(&entity) else {
            return;
        };
        if entry.epoch != epoch {
            return;
        }
        entry.state = match inventory {
            Some(inventory) => State::Held {
                inventory,
                shown_to: None,
            },
            None => {
                tracing::warn!(
                    entity = entity.0,
                    epoch = epoch.0,
                    "inventory claim fenced: another zone took the character over"
                );
                metrics::counter!("worldmesh_zone_inventory_fenced_total").increment(1);
                State::Fenced
            }
        };
    }

    /// `entity`'s inventory, once the ledger answered the claim.
    pub fn get(&self, entity: EntityId) -> Option<&Inventory> {
        match &self.entries.get(&entity)?.state {
            State::Held { inventory, .. } => Some(inventory),
            State::Asked | State::Fenced => None,
        }
    }
}

/// The client's view of an inventory, encoded.
fn encode(inventory: &Inventory) -> Option<Vec<u8>> {
    let view = InventoryView {
        gold: inventory.gold,
        items: inventory
            .items
            .iter()
            .map(|i| ItemView {
                id: i.id.0,
                kind: i.kind.0,
                count: i.count,
            })
            .collect(),
    };
    codec::encode_to_vec(&ServerMessage::Inventory(view)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use worldmesh_economy::{Item, ItemId, ItemKind};

    fn inv(gold: u64) -> Inventory {
        Inventory {
            epoch: 1,
            gold,
            items: vec![Item {
                id: ItemId(9),
                kind: ItemKind(2),
                count: 3,
                version: 1,
            }],
        }
    }

    #[test]
    fn claims_on_arrival_shows_once_per_player_and_claims_again_at_a_new_epoch() {
        let mut inv_s = Inventories::default();
        let (e, link) = (EntityId(7), LinkId(1));
        let here = |epoch: u64, player: Option<u64>| {
            vec![(e, Epoch(epoch), player.map(|p| (link, PlayerId(p))))]
        };
        assert_eq!(
            inv_s.reconcile(&here(1, Some(5))),
            [Step::Claim {
                entity: e,
                epoch: Epoch(1)
            }]
        );
        assert!(inv_s.reconcile(&here(1, Some(5))).is_empty(), "asked once");
        inv_s.claimed(e, Epoch(0), Some(inv(1))); // an old answer
        assert!(inv_s.get(e).is_none());
        inv_s.claimed(e, Epoch(1), Some(inv(50)));
        let shown = inv_s.reconcile(&here(1, Some(5)));
        assert!(matches!(
            shown[..],
            [Step::Show {
                player_id: PlayerId(5),
                ..
            }]
        ));
        assert!(inv_s.reconcile(&here(1, Some(5))).is_empty(), "shown once");
        // A reconnect: the new player is shown it too.
        assert_eq!(inv_s.reconcile(&here(1, Some(6))).len(), 1);
        // Back here at a later epoch (left and came back): claimed again.
        assert!(matches!(
            inv_s.reconcile(&here(3, Some(6)))[..],
            [Step::Claim {
                epoch: Epoch(3),
                ..
            }]
        ));
        inv_s.claimed(e, Epoch(3), None);
        assert!(inv_s.get(e).is_none(), "fenced");
        assert!(inv_s.reconcile(&[]).is_empty());
        assert!(inv_s.entries.is_empty(), "gone, forgotten");
    }
}
