//! The ledger rule: who holds what, and how a trade changes it, all at once or not at all.
//!
//! Persistence applies exactly this rule as one SQL transaction; [`Ledger`] is its model in
//! memory. A trade's outcome is written once (first writer wins): [`Ledger::commit`] and
//! [`Ledger::abort`] of the same trade id, in any order and any number of times, leave one
//! outcome, and every later call answers it. So the host may retry a commit whose reply it
//! lost, and the guest may abort a trade whose host went silent, without ever moving anything
//! twice or moving it after an abort.

use std::collections::BTreeMap;

use crate::item::{Holder, Item, ItemId, Offer, TradeId};

/// Why a trade ended without moving anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A party cancelled (or walked away: out of range, logged out).
    Cancelled,
    /// Nobody finished it in time.
    TimedOut,
    /// The guest heard nothing from the host's zone for too long.
    HostLost,
    /// At commit: an offered item is no longer the offerer's at the version offered.
    Stale,
    /// At commit: an offerer has less gold than offered.
    NotEnoughGold,
    /// At commit: both sides are the same character, or an offer is malformed.
    Invalid,
}

/// How a trade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted(AbortReason),
}

/// A trade both parties accepted: what each gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: TradeId,
    pub a: (Holder, Offer),
    pub b: (Holder, Offer),
}

/// Holdings and outcomes.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    items: BTreeMap<ItemId, (Holder, Item)>,
    gold: BTreeMap<Holder, u64>,
    outcomes: BTreeMap<TradeId, Outcome>,
}

impl Ledger {
    /// Gives `holder` a new item (a drop, a reward). Its id must be new.
    pub fn grant(&mut self, holder: Holder, item: Item) {
        self.items.insert(item.id, (holder, item));
    }

    /// Sets `holder`'s gold.
    pub fn set_gold(&mut self, holder: Holder, gold: u64) {
        self.gold.insert(holder, gold);
    }

    #[must_use]
    pub fn gold(&self, holder: Holder) -> u64 {
        self.gold.get(&holder).copied().unwrap_or(0)
    }

    /// The items `holder` holds, by id.
    #[must_use]
    pub fn items_of(&self, holder: Holder) -> Vec<Item> {
        self.items
            .values()
            .filter(|(h, _)| *h == holder)
            .map(|(_, i)| *i)
            .collect()
    }

    /// Who holds item `id`, and the item.
    #[must_use]
    pub fn item(&self, id: ItemId) -> Option<(Holder, Item)> {
        self.items.get(&id).copied()
    }

    /// Every item, with its holder.
    pub fn all_items(&self) -> impl Iterator<Item = (Holder, Item)> + '_ {
        self.items.values().copied()
    }

    /// The sum of everyone's gold.
    #[must_use]
    pub fn total_gold(&self) -> u64 {
        self.gold.values().sum()
    }

    /// The outcome of trade `id`, if it has one.
    #[must_use]
    pub fn outcome(&self, id: TradeId) -> Option<Outcome> {
        self.outcomes.get(&id).copied()
    }

    /// Commits `trade` if it has no outcome yet and both sides still hold what they offered;
    /// otherwise records why not. Either way the trade's (first) outcome is returned.
    pub fn commit(&mut self, trade: &Commit) -> Outcome {
        if let Some(o) = self.outcome(trade.id) {
            return o;
        }
        let outcome = match self.check(trade) {
            Err(why) => Outcome::Aborted(why),
            Ok(()) => {
                self.apply(trade);
                Outcome::Committed
            }
        };
        self.outcomes.insert(trade.id, outcome);
        outcome
    }

    /// Ends trade `id` without moving anything, unless it already has an outcome: the
    /// (first) outcome.
    pub fn abort(&mut self, id: TradeId, why: AbortReason) -> Outcome {
        *self.outcomes.entry(id).or_insert(Outcome::Aborted(why))
    }

    fn check(&self, t: &Commit) -> Result<(), AbortReason> {
        if t.a.0 == t.b.0 || !t.a.1.is_well_formed() || !t.b.1.is_well_formed() {
            return Err(AbortReason::Invalid);
        }
        for (holder, offer) in [&t.a, &t.b] {
            if self.gold(*holder) < offer.gold {
                return Err(AbortReason::NotEnoughGold);
            }
            for (id, version) in &offer.items {
                match self.items.get(id) {
                    Some((h, item)) if h == holder && item.version == *version => {}
                    _ => return Err(AbortReason::Stale),
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, t: &Commit) {
        for ((from, offer), to) in [(&t.a, t.b.0), (&t.b, t.a.0)] {
            for (id, _) in &offer.items {
                if let Some((holder, item)) = self.items.get_mut(id) {
                    *holder = to;
                    item.version += 1;
                }
            }
            *self.gold.entry(*from).or_insert(0) -= offer.gold;
            *self.gold.entry(to).or_insert(0) += offer.gold;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::ItemKind;
    use worldmesh_protocol::ids::EntityId;

    fn sword(id: u64) -> Item {
        Item {
            id: ItemId(id),
            kind: ItemKind(1),
            count: 1,
            version: 1,
        }
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        l.grant(EntityId(1), sword(10));
        l.grant(EntityId(2), sword(20));
        l.set_gold(EntityId(1), 100);
        l.set_gold(EntityId(2), 5);
        l
    }

    fn swap(id: u64, gold: u64) -> Commit {
        Commit {
            id: TradeId(id),
            a: (
                EntityId(1),
                Offer {
                    items: vec![(ItemId(10), 1)],
                    gold,
                },
            ),
            b: (
                EntityId(2),
                Offer {
                    items: vec![(ItemId(20), 1)],
                    gold: 0,
                },
            ),
        }
    }

    #[test]
    fn a_commit_moves_everything_once_and_answers_the_same_forever() {
        let mut l = ledger();
        assert_eq!(l.commit(&swap(7, 30)), Outcome::Committed);
        assert_eq!(l.item(ItemId(10)).unwrap().0, EntityId(2));
        assert_eq!(l.item(ItemId(20)).unwrap().0, EntityId(1));
        assert_eq!((l.gold(EntityId(1)), l.gold(EntityId(2))), (70, 35));
        // Retried (a lost reply): nothing moves again; an abort after it changes nothing.
        assert_eq!(l.commit(&swap(7, 30)), Outcome::Committed);
        assert_eq!(
            l.abort(TradeId(7), AbortReason::HostLost),
            Outcome::Committed
        );
        assert_eq!((l.gold(EntityId(1)), l.gold(EntityId(2))), (70, 35));
        // The same items at their old versions: stale.
        assert_eq!(l.commit(&swap(8, 0)), Outcome::Aborted(AbortReason::Stale));
    }

    #[test]
    fn an_abort_first_wins_and_a_bad_commit_moves_nothing() {
        let mut l = ledger();
        assert_eq!(
            l.abort(TradeId(7), AbortReason::HostLost),
            Outcome::Aborted(AbortReason::HostLost)
        );
        assert_eq!(
            l.commit(&swap(7, 30)),
            Outcome::Aborted(AbortReason::HostLost)
        );
        assert_eq!(
            l.commit(&swap(9, 101)),
            Outcome::Aborted(AbortReason::NotEnoughGold)
        );
        let mut myself = swap(10, 0);
        myself.b.0 = EntityId(1);
        assert_eq!(l.commit(&myself), Outcome::Aborted(AbortReason::Invalid));
        assert_eq!(l.item(ItemId(10)).unwrap().0, EntityId(1));
        assert_eq!(l.total_gold(), 105);
    }
}
