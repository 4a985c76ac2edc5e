//! The ledger rule: who holds what, and how a trade or an inventory change moves it, all at
//! once or not at all.
//!
//! Persistence applies exactly these rules as SQL transactions; [`Ledger`] is their model in
//! memory (the deterministic tests compare the two). Every request carries an id, and its
//! outcome is written once (first writer wins): [`Ledger::commit`] and [`Ledger::abort`] of
//! the same trade id, or a [`Ledger::change`] sent twice, in any order and any number of
//! times, leave one outcome, and every later call answers it. So a zone may retry a request
//! whose reply it lost, and a guest may abort a trade whose host went silent, without ever
//! moving anything twice or moving it after an abort.
//!
//! **Fencing.** A zone that takes a character over (login, handoff, failover) first
//! [claims](Ledger::claim) its inventory with the authority epoch the coordinator granted it,
//! and reads it in the same step. Every change carries that epoch and is refused
//! ([`AbortReason::Fenced`]) once a later claim raised it: a zombie zone can never write an
//! inventory. A trade names both parties' claimed epochs, so one that lands after either party
//! was taken over is [`AbortReason::Stale`]: the taking-over zone read the inventory it
//! simulates, and nothing changes it behind its back.

use std::collections::BTreeMap;

use crate::item::{ChangeId, Holder, Item, ItemId, Offer, Party, TradeId};

/// Why a request ended without moving anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A party cancelled (or walked away: out of range, logged out).
    Cancelled,
    /// Nobody finished it in time.
    TimedOut,
    /// The guest heard nothing from the host's zone for too long.
    HostLost,
    /// At commit: an offered item is no longer the offerer's at the version offered, or a
    /// party was taken over by another zone since the trade opened.
    Stale,
    /// At commit: an offerer has less gold than offered (or a change would leave less than 0).
    NotEnoughGold,
    /// Both sides are the same character, an offer is malformed, an amount overflows, or a
    /// granted item's id is taken.
    Invalid,
    /// An inventory change from a zone whose claim on the character was overtaken.
    Fenced,
    /// The parties drifted out of range of each other, or one of them left the zone it
    /// traded from (crossed a border, logged out, was disconnected).
    WalkedAway,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted(AbortReason),
}

impl Outcome {
    /// The stored and wire code: 0 committed, 1… the abort reasons in declaration order.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Outcome::Committed => 0,
            Outcome::Aborted(r) => match r {
                AbortReason::Cancelled => 1,
                AbortReason::TimedOut => 2,
                AbortReason::HostLost => 3,
                AbortReason::Stale => 4,
                AbortReason::NotEnoughGold => 5,
                AbortReason::Invalid => 6,
                AbortReason::Fenced => 7,
                AbortReason::WalkedAway => 8,
            },
        }
    }

    /// A short name for metrics and reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Aborted(r) => match r {
                AbortReason::Cancelled => "cancelled",
                AbortReason::TimedOut => "timed_out",
                AbortReason::HostLost => "host_lost",
                AbortReason::Stale => "stale",
                AbortReason::NotEnoughGold => "not_enough_gold",
                AbortReason::Invalid => "invalid",
                AbortReason::Fenced => "fenced",
                AbortReason::WalkedAway => "walked_away",
            },
        }
    }

    /// The inverse of [`Outcome::code`]; `None` for an unknown code.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        use AbortReason::*;
        Some(match code {
            0 => Outcome::Committed,
            1 => Outcome::Aborted(Cancelled),
            2 => Outcome::Aborted(TimedOut),
            3 => Outcome::Aborted(HostLost),
            4 => Outcome::Aborted(Stale),
            5 => Outcome::Aborted(NotEnoughGold),
            6 => Outcome::Aborted(Invalid),
            7 => Outcome::Aborted(Fenced),
            8 => Outcome::Aborted(WalkedAway),
            _ => return None,
        })
    }
}

/// A trade both parties accepted: what each gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: TradeId,
    pub a: (Party, Offer),
    pub b: (Party, Offer),
}

/// Where an item is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place {
    /// In a character's inventory.
    Carried(Holder),
    /// On the ground at a position: a world entity the zone owning that spot simulates.
    Ground([f32; 2]),
}

/// One step of an inventory change. A [`Ledger::change`] applies all of its steps or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// A new item into the inventory (loot, a reward). Its id is new (from a reserved block).
    Grant(Item),
    /// Gold earned (> 0) or spent (< 0); refused if it would leave less than 0.
    Gold(i64),
    /// Uses up `count` of a stack at the version seen; the last one destroys the item.
    Consume {
        item: ItemId,
        version: u64,
        count: u32,
    },
    /// From the inventory onto the ground at `at`.
    Drop {
        item: ItemId,
        version: u64,
        at: [f32; 2],
    },
    /// From the ground into the inventory.
    PickUp { item: ItemId, version: u64 },
}

/// A character's holdings as a zone reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The epoch of the claim in force.
    pub epoch: u64,
    pub gold: u64,
    /// By id.
    pub items: Vec<Item>,
}

/// Holdings, claims and outcomes.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    items: BTreeMap<ItemId, (Place, Item)>,
    gold: BTreeMap<Holder, u64>,
    epochs: BTreeMap<Holder, u64>,
    outcomes: BTreeMap<u64, Outcome>,
}

impl Ledger {
    /// Gives `holder` a new item outside any request (test set-up). Its id must be new.
    pub fn grant(&mut self, holder: Holder, item: Item) {
        self.items.insert(item.id, (Place::Carried(holder), item));
    }

    /// Sets `holder`'s gold (test set-up).
    pub fn set_gold(&mut self, holder: Holder, gold: u64) {
        self.gold.insert(holder, gold);
    }

    #[must_use]
    pub fn gold(&self, holder: Holder) -> u64 {
        self.gold.get(&holder).copied().unwrap_or(0)
    }

    /// The epoch of the claim in force on `holder` (0: never claimed).
    #[must_use]
    pub fn epoch(&self, holder: Holder) -> u64 {
        self.epochs.get(&holder).copied().unwrap_or(0)
    }

    /// The items `holder` carries, by id.
    #[must_use]
    pub fn items_of(&self, holder: Holder) -> Vec<Item> {
        self.items
            .values()
            .filter(|(p, _)| *p == Place::Carried(holder))
            .map(|(_, i)| *i)
            .collect()
    }

    /// Where item `id` is, and the item.
    #[must_use]
    pub fn item(&self, id: ItemId) -> Option<(Place, Item)> {
        self.items.get(&id).copied()
    }

    /// Every item, with its place.
    pub fn all_items(&self) -> impl Iterator<Item = (Place, Item)> + '_ {
        self.items.values().copied()
    }

    /// The sum of everyone's gold.
    #[must_use]
    pub fn total_gold(&self) -> u64 {
        self.gold.values().sum()
    }

    /// The outcome of request `id` (a trade's or a change's), if it has one.
    #[must_use]
    pub fn outcome(&self, id: u64) -> Option<Outcome> {
        self.outcomes.get(&id).copied()
    }

    /// A zone taking `holder` over with authority `epoch` claims its inventory and reads it.
    ///
    /// # Errors
    /// [`AbortReason::Fenced`] if a claim with a later epoch is in force.
    pub fn claim(&mut self, holder: Holder, epoch: u64) -> Result<Inventory, AbortReason> {
        if self.epoch(holder) > epoch {
            return Err(AbortReason::Fenced);
        }
        self.epochs.insert(holder, epoch);
        Ok(self.inventory(holder))
    }

    /// `holder`'s inventory, without claiming it.
    #[must_use]
    pub fn inventory(&self, holder: Holder) -> Inventory {
        Inventory {
            epoch: self.epoch(holder),
            gold: self.gold(holder),
            items: self.items_of(holder),
        }
    }

    /// Commits `trade` if it has no outcome yet, both parties' claims are still the ones it
    /// names and both still hold what they offered; otherwise records why not. Either way the
    /// trade's (first) outcome is returned.
    pub fn commit(&mut self, trade: &Commit) -> Outcome {
        if let Some(o) = self.outcome(trade.id.0) {
            return o;
        }
        let outcome = match self.check(trade) {
            Err(why) => Outcome::Aborted(why),
            Ok(()) => {
                self.apply(trade);
                Outcome::Committed
            }
        };
        self.outcomes.insert(trade.id.0, outcome);
        outcome
    }

    /// Ends trade `id` without moving anything, unless it already has an outcome: the
    /// (first) outcome.
    pub fn abort(&mut self, id: TradeId, why: AbortReason) -> Outcome {
        *self.outcomes.entry(id.0).or_insert(Outcome::Aborted(why))
    }

    /// Applies `changes` to `holder`'s inventory, all or none, if request `id` has no outcome
    /// yet and `epoch` is the claim in force. Either way the request's (first) outcome.
    pub fn change(
        &mut self,
        id: ChangeId,
        holder: Holder,
        epoch: u64,
        changes: &[Change],
    ) -> Outcome {
        if let Some(o) = self.outcome(id.0) {
            return o;
        }
        // A model: trying on a copy is the simplest all-or-nothing.
        let mut trial = self.clone();
        let outcome = match trial.try_change(holder, epoch, changes) {
            Ok(()) => {
                *self = trial;
                Outcome::Committed
            }
            Err(why) => Outcome::Aborted(why),
        };
        self.outcomes.insert(id.0, outcome);
        outcome
    }

    /// The checks in the order persistence makes them, so both give the same reason: the
    /// request's shape, the claim, the gold (the sum of its `Gold` steps), then each step.
    fn try_change(
        &mut self,
        holder: Holder,
        epoch: u64,
        changes: &[Change],
    ) -> Result<(), AbortReason> {
        let delta = gold_delta(changes).ok_or(AbortReason::Invalid)?;
        if self.epoch(holder) != epoch {
            return Err(AbortReason::Fenced);
        }
        let gold = i128::from(self.gold(holder)) + i128::from(delta);
        if gold < 0 {
            return Err(AbortReason::NotEnoughGold);
        }
        if gold > i128::from(MAX_GOLD) {
            return Err(AbortReason::Invalid);
        }
        self.gold.insert(holder, gold as u64);
        for change in changes {
            match *change {
                Change::Gold(_) => {}
                Change::Grant(item) => {
                    if self.items.contains_key(&item.id) {
                        return Err(AbortReason::Invalid);
                    }
                    self.items.insert(item.id, (Place::Carried(holder), item));
                }
                Change::Consume {
                    item,
                    version,
                    count,
                } => {
                    let (_, it) = self.held(holder, item, version)?;
                    if count > it.count {
                        return Err(AbortReason::Invalid);
                    }
                    if count == it.count {
                        self.items.remove(&item);
                    } else if let Some((_, it)) = self.items.get_mut(&item) {
                        it.count -= count;
                        it.version += 1;
                    }
                }
                Change::Drop { item, version, at } => {
                    self.held(holder, item, version)?;
                    if let Some((place, it)) = self.items.get_mut(&item) {
                        *place = Place::Ground(at);
                        it.version += 1;
                    }
                }
                Change::PickUp { item, version } => match self.items.get_mut(&item) {
                    Some((place @ Place::Ground(_), it)) if it.version == version => {
                        *place = Place::Carried(holder);
                        it.version += 1;
                    }
                    _ => return Err(AbortReason::Stale),
                },
            }
        }
        Ok(())
    }

    fn held(
        &self,
        holder: Holder,
        item: ItemId,
        version: u64,
    ) -> Result<(Place, Item), AbortReason> {
        match self.items.get(&item) {
            Some((p, it)) if *p == Place::Carried(holder) && it.version == version => Ok((*p, *it)),
            _ => Err(AbortReason::Stale),
        }
    }

    /// In persistence's order: the trade's shape, both claims, both purses, then the items.
    fn check(&self, t: &Commit) -> Result<(), AbortReason> {
        if !trade_is_well_formed(t) {
            return Err(AbortReason::Invalid);
        }
        let parties = [&t.a, &t.b];
        if parties.iter().any(|(p, _)| self.epoch(p.who) != p.epoch) {
            return Err(AbortReason::Stale);
        }
        if parties.iter().any(|(p, o)| self.gold(p.who) < o.gold) {
            return Err(AbortReason::NotEnoughGold);
        }
        let after = |(p, o): &(Party, Offer), got: u64| self.gold(p.who) - o.gold + got;
        if after(&t.a, t.b.1.gold) > MAX_GOLD || after(&t.b, t.a.1.gold) > MAX_GOLD {
            return Err(AbortReason::Invalid);
        }
        for (party, offer) in parties {
            for (id, version) in &offer.items {
                self.held(party.who, *id, *version)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, t: &Commit) {
        for ((from, offer), to) in [(&t.a, t.b.0.who), (&t.b, t.a.0.who)] {
            for (id, _) in &offer.items {
                if let Some((place, item)) = self.items.get_mut(id) {
                    *place = Place::Carried(to);
                    item.version += 1;
                }
            }
            *self.gold.entry(from.who).or_insert(0) -= offer.gold;
            *self.gold.entry(to).or_insert(0) += offer.gold;
        }
    }
}

/// Most items one read of the ground returns (a zone's cells, by id): a fuller answer is
/// cut there, and a zone reading one that long only adds what it lists.
pub const MAX_GROUND_READ: usize = 10_000;

/// The most gold one character may hold: SQL's `BIGINT` holds it with room for a trade's sum.
pub const MAX_GOLD: u64 = 1 << 53;

/// A change's shape: no empty stack granted or consumed, positions finite, and the sum of its
/// gold steps an amount (`None` otherwise).
#[must_use]
pub fn gold_delta(changes: &[Change]) -> Option<i64> {
    let mut delta: i64 = 0;
    for change in changes {
        match *change {
            Change::Gold(g) => {
                if g.unsigned_abs() > MAX_GOLD {
                    return None;
                }
                delta = delta.checked_add(g)?;
            }
            Change::Grant(item) if item.count == 0 => return None,
            Change::Consume { count: 0, .. } => return None,
            Change::Drop { at, .. } if !at.iter().all(|c| c.is_finite()) => return None,
            _ => {}
        }
    }
    Some(delta)
}

/// A trade's shape: two different characters, well-formed offers, amounts in range.
#[must_use]
pub fn trade_is_well_formed(t: &Commit) -> bool {
    t.a.0.who != t.b.0.who
        && [&t.a.1, &t.b.1]
            .iter()
            .all(|o| o.is_well_formed() && o.gold <= MAX_GOLD)
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

    fn party(who: u64) -> Party {
        Party {
            who: EntityId(who),
            epoch: 0,
        }
    }

    fn swap(id: u64, gold: u64) -> Commit {
        Commit {
            id: TradeId(id),
            a: (
                party(1),
                Offer {
                    items: vec![(ItemId(10), 1)],
                    gold,
                },
            ),
            b: (
                party(2),
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
        assert_eq!(l.item(ItemId(10)).unwrap().0, Place::Carried(EntityId(2)));
        assert_eq!(l.item(ItemId(20)).unwrap().0, Place::Carried(EntityId(1)));
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
        myself.b.0 = party(1);
        assert_eq!(l.commit(&myself), Outcome::Aborted(AbortReason::Invalid));
        assert_eq!(l.item(ItemId(10)).unwrap().0, Place::Carried(EntityId(1)));
        assert_eq!(l.total_gold(), 105);
    }

    #[test]
    fn a_claim_fences_the_zone_before_it_and_changes_apply_all_or_nothing() {
        let mut l = ledger();
        let (a, b) = (EntityId(1), EntityId(2));
        assert_eq!(l.claim(a, 3).unwrap().items.len(), 1);
        let potion = Item {
            id: ItemId(30),
            kind: ItemKind(2),
            count: 5,
            version: 1,
        };
        let loot = [Change::Grant(potion), Change::Gold(25)];
        assert_eq!(l.change(ChangeId(100), a, 3, &loot), Outcome::Committed);
        assert_eq!(
            l.change(ChangeId(100), a, 3, &loot),
            Outcome::Committed,
            "a retry"
        );
        assert_eq!((l.gold(a), l.items_of(a).len()), (125, 2), "applied once");
        // Drink two: the stack shrinks, its version grows; then spend more gold than held:
        // nothing of the request happens.
        let drink = [Change::Consume {
            item: ItemId(30),
            version: 1,
            count: 2,
        }];
        assert_eq!(l.change(ChangeId(101), a, 3, &drink), Outcome::Committed);
        let broke = [
            Change::Consume {
                item: ItemId(30),
                version: 2,
                count: 3,
            },
            Change::Gold(-126),
        ];
        assert_eq!(
            l.change(ChangeId(102), a, 3, &broke),
            Outcome::Aborted(AbortReason::NotEnoughGold)
        );
        assert_eq!(l.item(ItemId(30)).unwrap().1.count, 3);
        // Dropped, then picked up by b (b's zone claimed b at epoch 1).
        let drop = [Change::Drop {
            item: ItemId(30),
            version: 2,
            at: [4.0, 5.0],
        }];
        assert_eq!(l.change(ChangeId(103), a, 3, &drop), Outcome::Committed);
        assert_eq!(l.item(ItemId(30)).unwrap().0, Place::Ground([4.0, 5.0]));
        l.claim(b, 1).unwrap();
        let pick = [Change::PickUp {
            item: ItemId(30),
            version: 3,
        }];
        assert_eq!(l.change(ChangeId(104), b, 1, &pick), Outcome::Committed);
        assert_eq!(
            l.change(ChangeId(105), a, 3, &pick),
            Outcome::Aborted(AbortReason::Stale),
            "picked up once"
        );
        // Another zone takes a over at epoch 4: the zone at epoch 3 is a zombie now.
        assert_eq!(l.claim(a, 2), Err(AbortReason::Fenced));
        l.claim(a, 4).unwrap();
        assert_eq!(
            l.change(ChangeId(106), a, 3, &[Change::Gold(1)]),
            Outcome::Aborted(AbortReason::Fenced)
        );
        // A trade opened before the takeover is stale.
        assert_eq!(
            l.commit(&swap(107, 0)),
            Outcome::Aborted(AbortReason::Stale)
        );
        assert_eq!(l.total_gold(), 130);
        for code in 0..8 {
            assert_eq!(Outcome::from_code(code).map(Outcome::code), Some(code));
        }
    }
}
