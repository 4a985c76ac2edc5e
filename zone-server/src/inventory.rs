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

use std::collections::{HashMap, VecDeque};

use worldmesh_economy::{Change, ChangeId, Inventory, Item, ItemId, ItemKind, Outcome};
use worldmesh_game::{Gift, Grant};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::{InventoryView, ItemView, ServerMessage, codec};

/// A player character here: its id, epoch and player (if attached).
pub type Present = (EntityId, Epoch, Option<(LinkId, PlayerId)>);

/// What [`Inventories::reconcile`] asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Claim `entity`'s inventory at `epoch` (answer with [`Inventories::claimed`]).
    Claim { entity: EntityId, epoch: Epoch },
    /// Send `frame` (an encoded [`ServerMessage::Inventory`]) to a player, reliably.
    Show {
        link: LinkId,
        player_id: PlayerId,
        frame: Vec<u8>,
    },
    /// Reserve `count` ids from the ledger (answer with [`Inventories::ids_reserved`]).
    ReserveIds { count: u64 },
    /// Record a change with the ledger (answer with [`Inventories::changed`]); sent again
    /// with the same id until answered, so it is applied once.
    Change {
        id: ChangeId,
        entity: EntityId,
        epoch: Epoch,
        changes: Vec<Change>,
    },
}

/// Ids asked for at a time, and the fewest left before asking again.
const ID_BLOCK: u64 = 4096;
const ID_LOW: u64 = 1024;
/// Most grants waiting for an inventory read or for ids; beyond, dropped (counted).
const MAX_WAITING: usize = 10_000;

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
    /// Ids reserved and not used yet: `[next, end)`.
    ids: (u64, u64),
    asking_ids: bool,
    /// Gifts the game asked for, waiting for their character's inventory to be read (or for
    /// ids).
    waiting: VecDeque<Gift>,
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
        self.grant_waiting(&mut steps);
        steps
    }

    /// The game gave a character something (`worldmesh_game::Loot`).
    pub fn give(&mut self, gift: Gift) {
        if self.waiting.len() >= MAX_WAITING {
            metrics::counter!("worldmesh_zone_loot_dropped_total", "reason" => "backlog")
                .increment(1);
            return;
        }
        self.waiting.push_back(gift);
    }

    /// One grant to `to` (tests, and games through [`Inventories::give`]).
    pub fn grant(&mut self, to: EntityId, grant: Grant) {
        self.give(Gift {
            to,
            grants: vec![grant],
            once: None,
        });
    }

    /// A fresh id from the reserved block (a trade's), if one is at hand.
    pub fn take_id(&mut self) -> Option<u64> {
        (self.ids.0 < self.ids.1).then(|| {
            self.ids.0 += 1;
            self.ids.0 - 1
        })
    }

    /// Reads `entity`'s inventory again (a trade it was in committed) and shows it anew.
    pub fn refresh(&mut self, entity: EntityId) {
        if let Some(entry) = self.entries.get_mut(&entity)
            && matches!(entry.state, State::Held { .. })
        {
            entry.epoch = Epoch(0);
        }
    }

    /// The epoch `entity`'s inventory was claimed at, once the ledger answered the claim.
    pub fn claimed_epoch(&self, entity: EntityId) -> Option<Epoch> {
        let entry = self.entries.get(&entity)?;
        matches!(entry.state, State::Held { .. }).then_some(entry.epoch)
    }

    /// Turns waiting grants into ledger changes where the inventory is read and ids are at
    /// hand; asks for ids when few are left.
    fn grant_waiting(&mut self, steps: &mut Vec<Step>) {
        let mut keep = VecDeque::new();
        while let Some(gift) = self.waiting.pop_front() {
            let to = gift.to;
            let epoch = match self.entries.get(&to) {
                Some(Entry {
                    epoch,
                    state: State::Held { .. },
                }) => *epoch,
                Some(Entry {
                    state: State::Asked,
                    ..
                }) => {
                    keep.push_back(gift);
                    continue;
                }
                // Gone from here, or another zone's now: nobody here can record it.
                _ => {
                    metrics::counter!("worldmesh_zone_loot_dropped_total", "reason" => "gone")
                        .increment(1);
                    continue;
                }
            };
            let needed = gift.grants.len() as u64 + u64::from(gift.once.is_none());
            if self.ids.1 - self.ids.0 < needed {
                keep.push_back(gift);
                continue;
            }
            let id = match gift.once {
                None => ChangeId(self.take_id().expect("counted above")),
                Some(key) => match ChangeId::once(to, key) {
                    Some(id) => id,
                    None => {
                        metrics::counter!("worldmesh_zone_loot_dropped_total", "reason" => "bad_once_key")
                            .increment(1);
                        continue;
                    }
                },
            };
            let changes = gift
                .grants
                .iter()
                .map(|grant| match *grant {
                    Grant::Gold(g) => Change::Gold(i64::try_from(g).unwrap_or(i64::MAX)),
                    Grant::Item { kind, count } => Change::Grant(Item {
                        id: ItemId(self.take_id().expect("counted above")),
                        kind: ItemKind(kind),
                        count,
                        version: 1,
                    }),
                })
                .collect();
            steps.push(Step::Change {
                id,
                entity: to,
                epoch,
                changes,
            });
        }
        self.waiting = keep;
        if self.ids.1 - self.ids.0 < ID_LOW && !self.asking_ids {
            self.asking_ids = true;
            steps.push(Step::ReserveIds { count: ID_BLOCK });
        }
    }

    /// The ledger reserved `[first, first + count)`.
    pub fn ids_reserved(&mut self, first: u64, count: u64) {
        self.asking_ids = false;
        if self.ids.0 == self.ids.1 {
            self.ids = (first, first + count);
        } else {
            // Rare (a block still in use): keep the larger remainder.
            let left = self.ids.1 - self.ids.0;
            if count > left {
                self.ids = (first, first + count);
            }
        }
    }

    /// The ledger's answer to a change: when it was recorded, the inventory is read again
    /// (a claim at the same epoch) and shown anew.
    pub fn changed(&mut self, entity: EntityId, epoch: Epoch, outcome: Outcome) {
        if outcome != Outcome::Committed {
            tracing::warn!(
                entity = entity.0,
                ?outcome,
                "a grant was refused by the ledger"
            );
            metrics::counter!("worldmesh_zone_loot_dropped_total", "reason" => "refused")
                .increment(1);
        }
        self.reread(entity, epoch);
    }

    /// Reads `entity`'s inventory again (and shows it anew) if it is still claimed at
    /// `epoch`: a change of it was answered.
    pub fn reread(&mut self, entity: EntityId, epoch: Epoch) {
        if let Some(entry) = self.entries.get_mut(&entity)
            && entry.epoch == epoch
        {
            // A different epoch makes the next reconciliation claim (here: read) again.
            entry.epoch = Epoch(0);
        }
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
        inv_s.ids_reserved(1000, ID_BLOCK); // no id requests in the way
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
        assert!(
            inv_s
                .reconcile(&[])
                .iter()
                .all(|s| matches!(s, Step::ReserveIds { .. }))
        );
        assert!(inv_s.entries.is_empty(), "gone, forgotten");
    }

    #[test]
    fn grants_wait_for_the_read_and_for_ids_then_go_out_once_each() {
        let mut inv_s = Inventories::default();
        let (e, link) = (EntityId(7), LinkId(1));
        let here = vec![(e, Epoch(2), Some((link, PlayerId(5))))];
        inv_s.grant(e, Grant::Gold(10));
        let steps = inv_s.reconcile(&here);
        assert!(steps.contains(&Step::Claim {
            entity: e,
            epoch: Epoch(2)
        }));
        assert!(steps.contains(&Step::ReserveIds { count: ID_BLOCK }));
        inv_s.ids_reserved(100, ID_BLOCK);
        assert!(
            !inv_s
                .reconcile(&here)
                .iter()
                .any(|s| matches!(s, Step::Change { .. })),
            "not before the inventory is read"
        );
        inv_s.claimed(e, Epoch(2), Some(inv(0)));
        inv_s.grant(e, Grant::Item { kind: 4, count: 1 });
        let changes: Vec<Step> = inv_s
            .reconcile(&here)
            .into_iter()
            .filter(|s| matches!(s, Step::Change { .. }))
            .collect();
        assert_eq!(changes.len(), 2);
        assert!(
            matches!(&changes[0], Step::Change { id: ChangeId(100), changes, .. } if changes == &[Change::Gold(10)])
        );
        assert!(
            matches!(&changes[1], Step::Change { id: ChangeId(101), changes, .. }
            if matches!(changes[..], [Change::Grant(Item { id: ItemId(102), .. })]))
        );
        // Recorded: read again at the same epoch, shown again.
        inv_s.changed(e, Epoch(2), Outcome::Committed);
        assert!(inv_s.reconcile(&here).contains(&Step::Claim {
            entity: e,
            epoch: Epoch(2)
        }));
        // A grant for a character gone from here is dropped.
        inv_s.grant(EntityId(99), Grant::Gold(1));
        assert!(
            !inv_s
                .reconcile(&here)
                .iter()
                .any(|s| matches!(s, Step::Change { .. }))
        );
    }
}
