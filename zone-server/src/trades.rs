//! Trades between players, as the zones run them (the saga itself is
//! `worldmesh_economy::trade`; PROTOCOL.md § Trades is the client's view).
//!
//! The zone of the player who opens a trade **hosts** it: it holds the
//! [`Trade`](worldmesh_economy::Trade) state machine, and asks the ledger to commit or abort.
//! The other party may be simulated here too, or by a neighbouring zone that shows it here as
//! a ghost (trades open within [`TRADE_RANGE`], so across a border the other party is always
//! in sight). Between two zones the steps travel as engine mail (`worldmesh_game::mail`),
//! which the effect machinery routes to wherever the addressee is simulated, retries and
//! applies once:
//!
//! - the guest party's zone checks each of its player's steps against the inventory it
//!   claimed (items held, gold enough), fills in the versions, and mails the step with its
//!   claim's epoch to the host party;
//! - the host mails the guest party every change of the trade (its view from that side) and
//!   the outcome; the guest's zone keeps a [`Guest`](worldmesh_economy::Guest) watch, which
//!   asks the ledger itself if the host falls silent (a crash) or its player walks away.
//!
//! Nothing is locked and nothing is undone: an offer is a proposal; the ledger moves items
//! only if both sides still hold them at the versions offered, under the claims named; its
//! first outcome is the one both parties are told. A party that leaves its zone (a border
//! crossed, a logout) or drifts out of [`TRADE_LEAVE_RANGE`] ends an open trade as walked
//! away. [`Trades`] is sans-IO: the zone core feeds it requests, letters, ledger answers and
//! the time, and carries out the [`Action`]s it returns.

use std::collections::HashMap;
use std::time::Instant;

use worldmesh_economy::trade::{Output as SagaOut, Side, View};
use worldmesh_economy::{
    AbortReason, Commit, Guest, Inventory, ItemId, Offer, Outcome, Party, Trade, TradeId,
};
use worldmesh_protocol::ids::EntityId;
use worldmesh_protocol::{
    ItemView, MAX_TRADE_ITEMS, OfferView, TRADE_LEAVE_RANGE, TRADE_RANGE, TradeNews, TradeRefusal,
    TradeRequest, TradeView,
};

/// What the trades need to know about the zone around them.
pub trait Surroundings {
    /// Where `who` stands and whether it is simulated here (`true`) or shown as a ghost of a
    /// neighbour's (`false`); `None` when out of sight.
    fn locate(&self, who: EntityId) -> Option<([f32; 2], bool)>;
    /// `who`'s inventory, once claimed and read here.
    fn inventory(&self, who: EntityId) -> Option<&Inventory>;
}

/// What a zone hands its trades, from a player or from another zone.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Letter {
    /// From the guest party's zone to the host party: a step of the guest, with the epoch its
    /// zone claimed its inventory at.
    Step {
        trade: u64,
        epoch: u64,
        step: GuestStep,
    },
    /// To a party, from the host: as its client is to be told.
    News(TradeNews),
}

/// A guest's step, checked by its own zone.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum GuestStep {
    /// Items as (id, version, kind, count), and gold.
    Offer {
        items: Vec<(u64, u64, u16, u32)>,
        gold: u64,
    },
    Accept {
        revision: u32,
    },
    Cancel,
}

/// What the zone core must do for its trades.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell player `to`: its client if it is simulated here, else mail it wherever it is,
    /// from `from` (the other party: a guest's zone learns the host party so).
    Tell {
        to: EntityId,
        from: EntityId,
        news: TradeNews,
    },
    /// Mail `letter` from `from` to `to` (a step, to the host party).
    Mail {
        from: EntityId,
        to: EntityId,
        letter: Letter,
    },
    /// Ask the ledger to commit; answer with [`Trades::decided`] (sent again until answered).
    Commit(Commit),
    /// Ask the ledger to end a trade without moving anything; answer likewise.
    Abort(TradeId, AbortReason),
    /// Read `who`'s inventory again: a trade it was in committed.
    Refresh(EntityId),
    /// A trade hosted here ended (for the read models).
    Ended {
        trade: TradeId,
        a: EntityId,
        b: EntityId,
        outcome: Outcome,
    },
}

struct Hosted {
    trade: Trade,
    /// `[A, B]` and whether each was simulated here when the trade opened: one that changes
    /// zone meanwhile has walked away.
    local: [bool; 2],
    /// What each side's offered items are, for the views.
    shown: [Vec<ItemView>; 2],
}

struct Watch {
    guest: Guest,
    me: EntityId,
    host_party: EntityId,
}

/// The trades this zone hosts and watches.
#[derive(Default)]
pub struct Trades {
    hosted: HashMap<TradeId, Hosted>,
    watched: HashMap<TradeId, Watch>,
    /// Players here in a trade (one at a time each).
    busy: HashMap<EntityId, TradeId>,
    /// Trades that ended here lately: late news of them (mail can be overtaken by mail) is
    /// dropped, never mistaken for a new trade.
    finished: std::collections::HashSet<TradeId>,
    /// The same ids, oldest first, to forget them in order.
    finished_order: std::collections::VecDeque<TradeId>,
    committed_across: u64,
}

/// Ended trades remembered against late news: far more than end within a mail's lifetime.
const FINISHED_MEMORY: usize = 4096;

impl Trades {
    /// Trades hosted and watched here.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.hosted.len(), self.watched.len())
    }

    /// Trades hosted here that committed with the other party in another zone.
    #[must_use]
    pub fn committed_across(&self) -> u64 {
        self.committed_across
    }

    /// A request from `who`, a player simulated here. `new_id` gives a fresh trade id (from
    /// the zone's reserved block).
    pub fn request(
        &mut self,
        now: Instant,
        here: &impl Surroundings,
        who: EntityId,
        request: TradeRequest,
        new_id: impl FnOnce() -> Option<u64>,
    ) -> Vec<Action> {
        let trade = match &request {
            TradeRequest::Open { .. } => 0,
            TradeRequest::Offer { trade, .. }
            | TradeRequest::Accept { trade, .. }
            | TradeRequest::Cancel { trade } => *trade,
        };
        match self.try_request(now, here, who, request, new_id) {
            Ok(actions) => actions,
            Err(why) => {
                refused(why);
                vec![Action::Tell {
                    to: who,
                    from: who,
                    news: TradeNews::Refused { trade, why },
                }]
            }
        }
    }

    fn try_request(
        &mut self,
        now: Instant,
        here: &impl Surroundings,
        who: EntityId,
        request: TradeRequest,
        new_id: impl FnOnce() -> Option<u64>,
    ) -> Result<Vec<Action>, TradeRefusal> {
        match request {
            TradeRequest::Open { with } => self.open(now, here, who, EntityId(with), new_id),
            TradeRequest::Offer { trade, items, gold } => {
                let id = TradeId(trade);
                let (offer, shown) = check_offer(here, who, &items, gold)?;
                if let Some(h) = self.hosted.get_mut(&id) {
                    let side = h.trade.side(who).ok_or(TradeRefusal::NoSuchTrade)?;
                    let epoch = claim_epoch(here, who)?;
                    h.trade.set_epoch(who, epoch);
                    let out = h.trade.offer(now, who, offer)?;
                    h.shown[index(side)] = shown;
                    Ok(self.carry_out(id, out))
                } else {
                    let items = offer
                        .items
                        .iter()
                        .zip(&shown)
                        .map(|((id, version), v)| (id.0, *version, v.kind, v.count))
                        .collect();
                    let epoch = claim_epoch(here, who)?;
                    self.to_host(id, who, epoch, GuestStep::Offer { items, gold })
                }
            }
            TradeRequest::Accept { trade, revision } => {
                let id = TradeId(trade);
                let epoch = claim_epoch(here, who)?;
                if let Some(h) = self.hosted.get_mut(&id) {
                    h.trade.side(who).ok_or(TradeRefusal::NoSuchTrade)?;
                    h.trade.set_epoch(who, epoch);
                    let out = h.trade.accept(now, who, revision)?;
                    Ok(self.carry_out(id, out))
                } else {
                    self.to_host(id, who, epoch, GuestStep::Accept { revision })
                }
            }
            TradeRequest::Cancel { trade } => {
                let id = TradeId(trade);
                if let Some(h) = self.hosted.get_mut(&id) {
                    let out = h.trade.cancel(now, who)?;
                    Ok(self.carry_out(id, out))
                } else {
                    self.to_host(id, who, 0, GuestStep::Cancel)
                }
            }
        }
    }

    fn open(
        &mut self,
        now: Instant,
        here: &impl Surroundings,
        who: EntityId,
        with: EntityId,
        new_id: impl FnOnce() -> Option<u64>,
    ) -> Result<Vec<Action>, TradeRefusal> {
        if with == who {
            return Err(TradeRefusal::WithSelf);
        }
        if self.busy.contains_key(&who) {
            return Err(TradeRefusal::Busy);
        }
        let my_epoch = claim_epoch(here, who)?;
        let (me, _) = here.locate(who).ok_or(TradeRefusal::NoSuchTrade)?;
        let with_local = match here.locate(with) {
            Some((them, local)) if !with.is_npc() && distance(me, them) <= TRADE_RANGE => local,
            _ => return Err(TradeRefusal::OutOfRange),
        };
        // A party here must have its inventory read (its epoch is the commit's fence); a
        // guest's epoch comes with its steps.
        let with_epoch = if with_local {
            if self.busy.contains_key(&with) {
                return Err(TradeRefusal::Busy);
            }
            claim_epoch(here, with)?
        } else {
            0
        };
        let id = TradeId(new_id().ok_or(TradeRefusal::NotReady)?);
        let (trade, out) = Trade::open(
            id,
            Party {
                who,
                epoch: my_epoch,
            },
            Party {
                who: with,
                epoch: with_epoch,
            },
            now,
        )?;
        self.busy.insert(who, id);
        if with_local {
            self.busy.insert(with, id);
        }
        self.hosted.insert(
            id,
            Hosted {
                trade,
                local: [true, with_local],
                shown: [Vec::new(), Vec::new()],
            },
        );
        metrics::counter!("worldmesh_zone_trades_opened_total", "across" => if with_local { "no" } else { "yes" })
            .increment(1);
        Ok(self.carry_out(id, out))
    }

    /// A guest's step, mailed to the host party of the trade `who` watches.
    fn to_host(
        &self,
        id: TradeId,
        who: EntityId,
        epoch: u64,
        step: GuestStep,
    ) -> Result<Vec<Action>, TradeRefusal> {
        let w = self.watch_of(id, who)?;
        Ok(vec![Action::Mail {
            from: who,
            to: w.host_party,
            letter: Letter::Step {
                trade: id.0,
                epoch,
                step,
            },
        }])
    }

    /// The guest watch of `who` over trade `id`.
    fn watch_of(&self, id: TradeId, who: EntityId) -> Result<&Watch, TradeRefusal> {
        self.watched
            .get(&id)
            .filter(|w| w.me == who && w.guest.outcome().is_none())
            .ok_or(TradeRefusal::NoSuchTrade)
    }

    /// A letter mailed to `to` (simulated here) by `from`.
    pub fn letter(
        &mut self,
        now: Instant,
        to: EntityId,
        from: EntityId,
        letter: Letter,
    ) -> Vec<Action> {
        match letter {
            Letter::Step { trade, epoch, step } => {
                let id = TradeId(trade);
                let result = match self.hosted.get_mut(&id) {
                    Some(h)
                        if h.trade.side(from) == Some(Side::B)
                            && h.trade.parties()[0].who == to =>
                    {
                        if epoch != 0 {
                            h.trade.set_epoch(from, epoch);
                        }
                        match step {
                            GuestStep::Offer { items, gold } => {
                                let offer = Offer {
                                    items: items.iter().map(|i| (ItemId(i.0), i.1)).collect(),
                                    gold,
                                };
                                let shown = items
                                    .iter()
                                    .map(|i| ItemView {
                                        id: i.0,
                                        kind: i.2,
                                        count: i.3,
                                    })
                                    .collect();
                                let out = h.trade.offer(now, from, offer);
                                if out.is_ok() {
                                    h.shown[1] = shown;
                                }
                                out
                            }
                            GuestStep::Accept { revision } => h.trade.accept(now, from, revision),
                            GuestStep::Cancel => h.trade.cancel(now, from),
                        }
                        .map_err(TradeRefusal::from)
                    }
                    // Not hosted here (its host party moved on, or the host restarted), or
                    // not this sender's.
                    _ => Err(TradeRefusal::NoSuchTrade),
                };
                match result {
                    Ok(out) => self.carry_out(id, out),
                    Err(why) => {
                        refused(why);
                        vec![Action::Mail {
                            from: to,
                            to: from,
                            letter: Letter::News(TradeNews::Refused { trade, why }),
                        }]
                    }
                }
            }
            Letter::News(news) => self.news(now, to, from, news),
        }
    }

    /// News of a trade hosted elsewhere for `to`, a party simulated here.
    fn news(&mut self, now: Instant, to: EntityId, from: EntityId, news: TradeNews) -> Vec<Action> {
        let mut out = Vec::new();
        let about = match &news {
            TradeNews::View(v) => v.trade,
            TradeNews::Done { trade, .. } | TradeNews::Refused { trade, .. } => *trade,
        };
        if self.finished.contains(&TradeId(about)) {
            return out;
        }
        match &news {
            TradeNews::View(v) => {
                let id = TradeId(v.trade);
                if self.hosted.contains_key(&id) {
                    // Our own trade's view mailed to a party that came here: shown directly.
                } else if let Some(w) = self.watched.get_mut(&id) {
                    w.guest.heard(now);
                } else if self.busy.get(&to).is_some_and(|t| *t != id) {
                    // Asked into a second trade while in one: declined.
                    return vec![Action::Mail {
                        from: to,
                        to: from,
                        letter: Letter::Step {
                            trade: v.trade,
                            epoch: 0,
                            step: GuestStep::Cancel,
                        },
                    }];
                } else {
                    self.busy.insert(to, id);
                    self.watched.insert(
                        id,
                        Watch {
                            guest: Guest::new(id, now),
                            me: to,
                            host_party: from,
                        },
                    );
                }
            }
            TradeNews::Done { trade, outcome } => {
                let id = TradeId(*trade);
                if let Some(mut w) = self.watched.remove(&id) {
                    w.guest.on_outcome(Outcome::from(*outcome));
                    self.busy.remove(&w.me);
                }
                self.finish(id);
                if *outcome == worldmesh_protocol::TradeOutcome::Committed {
                    out.push(Action::Refresh(to));
                }
            }
            TradeNews::Refused { .. } => {}
        }
        out.insert(0, Action::Tell { to, from, news });
        out
    }

    /// The ledger's answer about trade `id`.
    pub fn decided(&mut self, id: TradeId, outcome: Outcome) -> Vec<Action> {
        if let Some(h) = self.hosted.get_mut(&id) {
            let out = h.trade.on_outcome(outcome);
            return self.carry_out(id, out);
        }
        if let Some(w) = self.watched.get_mut(&id) {
            let out = w.guest.on_outcome(outcome);
            let me = w.me;
            if !out.is_empty() {
                self.watched.remove(&id);
                self.busy.remove(&me);
                self.finish(id);
                let mut actions = vec![Action::Tell {
                    to: me,
                    from: me,
                    news: TradeNews::Done {
                        trade: id.0,
                        outcome: outcome.into(),
                    },
                }];
                if outcome == Outcome::Committed {
                    actions.push(Action::Refresh(me));
                }
                return actions;
            }
        }
        Vec::new()
    }

    /// Timers and distances: an idle trade times out, an unanswered ledger request is sent
    /// again, a party gone from its zone or out of range walks away, a silent host sends its
    /// guest to the ledger.
    pub fn poll(&mut self, now: Instant, here: &impl Surroundings) -> Vec<Action> {
        let mut actions = Vec::new();
        let ids: Vec<TradeId> = self.hosted.keys().copied().collect();
        for id in ids {
            let Some(h) = self.hosted.get_mut(&id) else {
                continue;
            };
            let mut out = Vec::new();
            if h.trade.is_open() && !parties_together(here, h.trade.parties(), h.local) {
                out.extend(h.trade.walk_away(now));
            }
            out.extend(h.trade.poll(now));
            actions.extend(self.carry_out(id, out));
        }
        for (id, w) in &mut self.watched {
            let stayed = here
                .locate(w.me)
                .filter(|(_, local)| *local)
                .zip(here.locate(w.host_party))
                .is_some_and(|((me, _), (host, _))| distance(me, host) <= TRADE_LEAVE_RANGE);
            let mut out = Vec::new();
            if !stayed {
                out.extend(w.guest.walk_away(now));
            }
            out.extend(w.guest.poll(now));
            for o in out {
                if let SagaOut::Abort(_, why) = o {
                    actions.push(Action::Abort(*id, why));
                }
            }
        }
        actions
    }

    /// Turns the saga's outputs for hosted trade `id` into actions; forgets it once done.
    fn carry_out(&mut self, id: TradeId, out: Vec<SagaOut>) -> Vec<Action> {
        let Some(h) = self.hosted.get(&id) else {
            return Vec::new();
        };
        let parties = h.trade.parties();
        let mut actions = Vec::new();
        let mut done = None;
        for o in out {
            match o {
                SagaOut::Show(side, view) => {
                    let (me, other) = match side {
                        Side::A => (parties[0].who, parties[1].who),
                        Side::B => (parties[1].who, parties[0].who),
                    };
                    actions.push(Action::Tell {
                        to: me,
                        from: other,
                        news: TradeNews::View(view_for(h, &view, side)),
                    });
                }
                SagaOut::Commit(c) => actions.push(Action::Commit(c)),
                SagaOut::Abort(id, why) => actions.push(Action::Abort(id, why)),
                SagaOut::Done(outcome) => done = Some(outcome),
            }
        }
        if let Some(outcome) = done {
            metrics::counter!("worldmesh_zone_trades_total", "outcome" => outcome.name())
                .increment(1);
            let local = h.local;
            actions.push(Action::Ended {
                trade: id,
                a: parties[0].who,
                b: parties[1].who,
                outcome,
            });
            if outcome == Outcome::Committed && !local[1] {
                self.committed_across += 1;
            }
            self.hosted.remove(&id);
            self.finish(id);
            for (k, (party, here)) in parties.iter().zip(local).enumerate() {
                if self.busy.get(&party.who) == Some(&id) {
                    self.busy.remove(&party.who);
                }
                actions.push(Action::Tell {
                    to: party.who,
                    from: parties[1 - k].who,
                    news: TradeNews::Done {
                        trade: id.0,
                        outcome: outcome.into(),
                    },
                });
                // A remote party refreshes when the news reaches its zone.
                if here && outcome == Outcome::Committed {
                    actions.push(Action::Refresh(party.who));
                }
            }
        }
        actions
    }
}

impl Trades {
    fn finish(&mut self, id: TradeId) {
        if self.finished_order.len() >= FINISHED_MEMORY
            && let Some(oldest) = self.finished_order.pop_front()
        {
            self.finished.remove(&oldest);
        }
        if self.finished.insert(id) {
            self.finished_order.push_back(id);
        }
    }
}

/// Whether the parties of an open trade are still where they traded from: each simulated
/// here or not as when it opened, and within [`TRADE_LEAVE_RANGE`] of each other.
fn parties_together(here: &impl Surroundings, parties: [Party; 2], local: [bool; 2]) -> bool {
    let (Some(a), Some(b)) = (here.locate(parties[0].who), here.locate(parties[1].who)) else {
        return false;
    };
    a.1 == local[0] && b.1 == local[1] && distance(a.0, b.0) <= TRADE_LEAVE_RANGE
}

/// The view of `side`: its own offer as "mine".
fn view_for(h: &Hosted, view: &View, side: Side) -> TradeView {
    let (me, other) = match side {
        Side::A => (0, 1),
        Side::B => (1, 0),
    };
    let offer = |i: usize| OfferView {
        items: h.shown[i].clone(),
        gold: view.offers[i].gold,
    };
    TradeView {
        trade: view.id.0,
        with: h.trade.parties()[other].who.0,
        revision: view.revision,
        mine: offer(me),
        theirs: offer(other),
        accepted: view.accepted[me],
        they_accepted: view.accepted[other],
    }
}

/// `who`'s offer of `items` and `gold`, checked against its inventory: the versions to
/// commit at, and what the items are.
fn check_offer(
    here: &impl Surroundings,
    who: EntityId,
    items: &[u64],
    gold: u64,
) -> Result<(Offer, Vec<ItemView>), TradeRefusal> {
    let inv = here.inventory(who).ok_or(TradeRefusal::NotReady)?;
    if items.len() > MAX_TRADE_ITEMS {
        return Err(TradeRefusal::NotHeld);
    }
    let mut offer = Offer {
        items: Vec::with_capacity(items.len()),
        gold,
    };
    let mut shown = Vec::with_capacity(items.len());
    for &id in items {
        let item = inv
            .items
            .iter()
            .find(|i| i.id.0 == id)
            .ok_or(TradeRefusal::NotHeld)?;
        offer.items.push((item.id, item.version));
        shown.push(ItemView {
            id,
            kind: item.kind.0,
            count: item.count,
        });
    }
    if !offer.is_well_formed() {
        return Err(TradeRefusal::NotHeld);
    }
    if gold > inv.gold {
        return Err(TradeRefusal::NotEnoughGold);
    }
    Ok((offer, shown))
}

fn claim_epoch(here: &impl Surroundings, who: EntityId) -> Result<u64, TradeRefusal> {
    here.inventory(who)
        .map(|i| i.epoch)
        .ok_or(TradeRefusal::NotReady)
}

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

fn refused(why: TradeRefusal) {
    metrics::counter!("worldmesh_zone_trade_refusals_total", "why" => why.name()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use worldmesh_economy::{Item, ItemKind};
    use worldmesh_protocol::TradeOutcome;

    /// One zone's surroundings: who stands where (simulated here or a ghost), inventories.
    #[derive(Default)]
    struct Here {
        at: HashMap<EntityId, ([f32; 2], bool)>,
        inv: HashMap<EntityId, Inventory>,
    }

    impl Surroundings for Here {
        fn locate(&self, who: EntityId) -> Option<([f32; 2], bool)> {
            self.at.get(&who).copied()
        }
        fn inventory(&self, who: EntityId) -> Option<&Inventory> {
            self.inv.get(&who)
        }
    }

    const A: EntityId = EntityId(1);
    const B: EntityId = EntityId(2);

    fn inventory(epoch: u64, gold: u64, item: u64) -> Inventory {
        Inventory {
            epoch,
            gold,
            items: vec![Item {
                id: ItemId(item),
                kind: ItemKind(2),
                count: 1,
                version: 3,
            }],
        }
    }

    /// Two zones: west hosts A (B a ghost there), east simulates B (A a ghost there).
    fn two_zones() -> (Here, Here) {
        let mut west = Here::default();
        west.at.insert(A, ([199.0, 200.0], true));
        west.at.insert(B, ([207.0, 200.0], false));
        west.inv.insert(A, inventory(4, 100, 10));
        let mut east = Here::default();
        east.at.insert(A, ([199.0, 200.0], false));
        east.at.insert(B, ([207.0, 200.0], true));
        east.inv.insert(B, inventory(9, 50, 20));
        (west, east)
    }

    /// Delivers mail between the two zones until none is left; returns what each zone told
    /// its own players, and the ledger requests.
    fn settle(
        now: Instant,
        zones: &mut [(&mut Trades, &Here); 2],
        mut pending: Vec<(usize, Action)>,
    ) -> (Vec<(EntityId, TradeNews)>, Vec<Action>) {
        let (mut told, mut ledger) = (Vec::new(), Vec::new());
        while let Some((z, action)) = pending.pop() {
            match action {
                Action::Tell { to, from, news } => {
                    if zones[z].1.locate(to).is_some_and(|(_, local)| local) {
                        told.push((to, news));
                    } else {
                        let other = 1 - z;
                        let out = zones[other].0.letter(now, to, from, Letter::News(news));
                        pending.extend(out.into_iter().map(|a| (other, a)));
                    }
                }
                Action::Mail { from, to, letter } => {
                    let other = 1 - z;
                    let out = zones[other].0.letter(now, to, from, letter);
                    pending.extend(out.into_iter().map(|a| (other, a)));
                }
                a @ (Action::Commit(_) | Action::Abort(..) | Action::Refresh(_)) => ledger.push(a),
                Action::Ended { .. } => {}
            }
        }
        (told, ledger)
    }

    fn view_of(told: &[(EntityId, TradeNews)], who: EntityId) -> TradeView {
        told.iter()
            .rev()
            .find_map(|(to, n)| match n {
                TradeNews::View(v) if *to == who => Some(v.clone()),
                _ => None,
            })
            .expect("a view")
    }

    #[test]
    fn a_trade_across_a_border_commits_what_both_accepted_and_tells_both() {
        let t0 = Instant::now();
        let (west_here, east_here) = two_zones();
        let (mut west, mut east) = (Trades::default(), Trades::default());
        let open = west.request(t0, &west_here, A, TradeRequest::Open { with: B.0 }, || {
            Some(500)
        });
        let mut zones = [(&mut west, &west_here), (&mut east, &east_here)];
        let (told, _) = settle(t0, &mut zones, open.into_iter().map(|a| (0, a)).collect());
        assert_eq!(view_of(&told, B).with, A.0, "B's zone relayed the view");
        assert_eq!(zones[1].0.len(), (0, 1), "east watches the trade");

        let offer = |z: &mut [(&mut Trades, &Here); 2], k: usize, who, item, gold| {
            let (t, h) = &mut z[k];
            let out = t.request(
                t0,
                *h,
                who,
                TradeRequest::Offer {
                    trade: 500,
                    items: vec![item],
                    gold,
                },
                || None,
            );
            settle(t0, z, out.into_iter().map(|a| (k, a)).collect())
        };
        offer(&mut zones, 0, A, 10, 30);
        let (told, _) = offer(&mut zones, 1, B, 20, 0);
        let va = view_of(&told, A);
        assert_eq!(va.revision, 3);
        assert_eq!(
            va.theirs.items[0].id, 20,
            "B's item shown to A with its details"
        );
        assert_eq!(va.mine.gold, 30);
        // B's stale accept of revision 2 is refused, back across the border.
        let (t, h) = &mut zones[1];
        let out = t.request(
            t0,
            *h,
            B,
            TradeRequest::Accept {
                trade: 500,
                revision: 2,
            },
            || None,
        );
        let (told, _) = settle(t0, &mut zones, out.into_iter().map(|a| (1, a)).collect());
        assert!(told.contains(&(
            B,
            TradeNews::Refused {
                trade: 500,
                why: TradeRefusal::StaleRevision
            }
        )));
        let mut ledger = Vec::new();
        for (k, who) in [(0, A), (1, B)] {
            let (t, h) = &mut zones[k];
            let out = t.request(
                t0,
                *h,
                who,
                TradeRequest::Accept {
                    trade: 500,
                    revision: 3,
                },
                || None,
            );
            ledger.extend(settle(t0, &mut zones, out.into_iter().map(|a| (k, a)).collect()).1);
        }
        let [Action::Commit(c)] = &ledger[..] else {
            panic!("one commit: {ledger:?}")
        };
        assert_eq!(c.a.0, Party { who: A, epoch: 4 });
        assert_eq!(
            c.b.0,
            Party { who: B, epoch: 9 },
            "B's epoch came with its steps"
        );
        assert_eq!(
            c.b.1.items,
            [(ItemId(20), 3)],
            "at the version B's zone read"
        );

        // The ledger answers the host; both parties hear, each zone refreshes its own.
        let out = zones[0].0.decided(TradeId(500), Outcome::Committed);
        let (told, refresh) = settle(t0, &mut zones, out.into_iter().map(|a| (0, a)).collect());
        let done = TradeNews::Done {
            trade: 500,
            outcome: TradeOutcome::Committed,
        };
        assert!(told.contains(&(A, done.clone())) && told.contains(&(B, done)));
        assert!(refresh.contains(&Action::Refresh(A)) && refresh.contains(&Action::Refresh(B)));
        assert_eq!(zones[0].0.len(), (0, 0));
        assert_eq!(zones[1].0.len(), (0, 0));
        // A view overtaken by the outcome (mail is not ordered) starts nothing.
        let late = Letter::News(TradeNews::View(va));
        assert!(zones[1].0.letter(t0, B, A, late).is_empty());
        assert_eq!(zones[1].0.len(), (0, 0));
    }

    #[test]
    fn hostile_steps_are_refused_and_nothing_is_asked_of_the_ledger() {
        let t0 = Instant::now();
        let (mut here, _) = two_zones();
        here.at.insert(B, ([205.0, 200.0], true));
        here.inv.insert(B, inventory(9, 50, 20));
        here.at.insert(EntityId(3), ([400.0, 200.0], true));
        here.inv.insert(EntityId(3), inventory(1, 0, 30));
        let mut t = Trades::default();
        let refusal = |out: Vec<Action>| match &out[..] {
            [
                Action::Tell {
                    news: TradeNews::Refused { why, .. },
                    ..
                },
            ] => *why,
            other => panic!("not a refusal: {other:?}"),
        };
        let open = |with: EntityId| TradeRequest::Open { with: with.0 };
        assert_eq!(
            refusal(t.request(t0, &here, A, open(A), || Some(1))),
            TradeRefusal::WithSelf
        );
        assert_eq!(
            refusal(t.request(t0, &here, A, open(EntityId(3)), || Some(1))),
            TradeRefusal::OutOfRange
        );
        assert_eq!(
            refusal(t.request(t0, &here, A, open(EntityId(1 << 50)), || Some(1))),
            TradeRefusal::OutOfRange
        );
        assert!(t.request(t0, &here, A, open(B), || Some(7)).len() == 2);
        assert_eq!(
            refusal(t.request(t0, &here, B, open(A), || Some(8))),
            TradeRefusal::Busy
        );
        let offer = |items: Vec<u64>, gold| TradeRequest::Offer {
            trade: 7,
            items,
            gold,
        };
        assert_eq!(
            refusal(t.request(t0, &here, A, offer(vec![20], 0), || None)),
            TradeRefusal::NotHeld,
            "B's item"
        );
        assert_eq!(
            refusal(t.request(t0, &here, A, offer(vec![10, 10], 0), || None)),
            TradeRefusal::NotHeld,
            "twice"
        );
        assert_eq!(
            refusal(t.request(t0, &here, A, offer(vec![], 101), || None)),
            TradeRefusal::NotEnoughGold
        );
        assert_eq!(
            refusal(t.request(t0, &here, A, offer(vec![], u64::MAX), || None)),
            TradeRefusal::NotEnoughGold
        );
        assert_eq!(
            refusal(t.request(t0, &here, EntityId(3), offer(vec![], 0), || None)),
            TradeRefusal::NoSuchTrade,
            "a stranger"
        );
        assert_eq!(
            refusal(t.request(
                t0,
                &here,
                A,
                TradeRequest::Accept {
                    trade: 7,
                    revision: 0
                },
                || None
            )),
            TradeRefusal::StaleRevision
        );
        // Both accept revision 1 (empty offers): committed; a replayed accept finds no trade.
        t.request(
            t0,
            &here,
            A,
            TradeRequest::Accept {
                trade: 7,
                revision: 1,
            },
            || None,
        );
        let out = t.request(
            t0,
            &here,
            B,
            TradeRequest::Accept {
                trade: 7,
                revision: 1,
            },
            || None,
        );
        assert!(out.iter().any(|a| matches!(a, Action::Commit(_))));
        assert_eq!(
            refusal(t.request(t0, &here, A, offer(vec![10], 0), || None)),
            TradeRefusal::Closed
        );
        t.decided(TradeId(7), Outcome::Committed);
        assert_eq!(
            refusal(t.request(
                t0,
                &here,
                B,
                TradeRequest::Accept {
                    trade: 7,
                    revision: 1
                },
                || None
            )),
            TradeRefusal::NoSuchTrade
        );
    }

    #[test]
    fn a_party_that_walks_away_or_changes_zone_ends_the_trade() {
        let t0 = Instant::now();
        let (mut west_here, mut east_here) = two_zones();
        let (mut west, mut east) = (Trades::default(), Trades::default());
        let open = west.request(t0, &west_here, A, TradeRequest::Open { with: B.0 }, || {
            Some(9)
        });
        let mut zones = [(&mut west, &west_here), (&mut east, &east_here)];
        settle(t0, &mut zones, open.into_iter().map(|a| (0, a)).collect());
        // B crosses into the west zone: both zones see it walk away and ask the ledger.
        west_here.at.insert(B, ([203.0, 200.0], true));
        east_here.at.insert(B, ([203.0, 200.0], false));
        let host = west.poll(t0, &west_here);
        assert_eq!(host, [Action::Abort(TradeId(9), AbortReason::WalkedAway)]);
        let guest = east.poll(t0, &east_here);
        assert_eq!(guest, [Action::Abort(TradeId(9), AbortReason::WalkedAway)]);
        assert!(
            east.poll(t0, &east_here).is_empty(),
            "not again before the retry"
        );
        // The ledger's (one) outcome reaches each.
        let walked = Outcome::Aborted(AbortReason::WalkedAway);
        assert!(matches!(
            &east.decided(TradeId(9), walked)[..],
            [Action::Tell { to: B, .. }]
        ));
        let out = west.decided(TradeId(9), walked);
        let told = out
            .iter()
            .filter(|a| matches!(a, Action::Tell { .. }))
            .count();
        assert_eq!(told, 2, "A and B told: {out:?}");
        assert!(out.contains(&Action::Ended {
            trade: TradeId(9),
            a: A,
            b: B,
            outcome: walked
        }));
        assert_eq!((west.len(), east.len()), ((0, 0), (0, 0)));
    }
}
