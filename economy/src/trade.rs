//! The trade saga, sans-IO: offer, counter, accept, commit — or cancel, time out, lose the
//! host — with every step idempotent and nothing ever locked.
//!
//! One of the two zones **hosts** a trade ([`Trade`]): the zone of the player who opened it.
//! The other party's zone relays that player's steps to the host and keeps a [`Guest`] watch.
//! Every change of an offer makes a new revision and clears both acceptances, so an accept
//! always names the exact offers it agrees to (an offer changed after acceptance is never
//! committed, and a replayed accept of an old revision is refused). When both parties have
//! accepted the same revision the host asks the ledger to commit it; a cancel or a timeout
//! asks it to abort instead; either is sent again until the ledger answers, and the ledger's
//! answer, not the host's wish, is the outcome both parties are told. The guest, hearing
//! nothing from the host for longer than the host would ever stay silent, asks the ledger to
//! abort: its first-writer-wins outcome then tells the guest what happened, whether the host
//! died before, during or after its commit.

use std::time::{Duration, Instant};

use crate::item::{Holder, Offer, Party, TradeId};
use crate::ledger::{AbortReason, Commit, Outcome};

/// The two parties: `A` opened the trade (its zone hosts it), `B` was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// What both parties are shown after every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: TradeId,
    pub revision: u32,
    /// `[A's, B's]`.
    pub offers: [Offer; 2],
    /// Whether each has accepted this revision.
    pub accepted: [bool; 2],
}

/// What a trade (host or guest) asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Show a party the trade as it is now (through its zone, to its client).
    Show(Side, View),
    /// Ask the ledger to commit (idempotent: the ledger answers the first outcome).
    Commit(Commit),
    /// Ask the ledger to end the trade without moving anything (idempotent likewise).
    Abort(TradeId, AbortReason),
    /// The trade is over, once: refresh the parties' holdings from the ledger if committed,
    /// tell the players.
    Done(Outcome),
}

/// A step refused: nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TradeError {
    #[error("not a party to this trade")]
    NotAParty,
    #[error("a trade with oneself")]
    WithSelf,
    #[error("malformed offer (too many items, or one twice)")]
    BadOffer,
    #[error("accepting revision {got}, but the trade is at revision {now}")]
    StaleRevision { got: u32, now: u32 },
    #[error("the trade is being committed or is over")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Asked the ledger (last at `sent`) to commit (`abort: None`: both accepted) or to abort
    /// (a cancel, a timeout); waiting for its answer.
    Deciding {
        sent: Instant,
        abort: Option<AbortReason>,
    },
    Done(Outcome),
}

/// The host's side of one trade.
#[derive(Debug, Clone)]
pub struct Trade {
    id: TradeId,
    parties: [Party; 2],
    offers: [Offer; 2],
    revision: u32,
    accepted: [Option<u32>; 2],
    state: State,
    /// The last change: an open trade idle for [`Trade::IDLE_TIMEOUT`] is aborted.
    touched: Instant,
}

impl Trade {
    /// An open trade nobody changes for this long is aborted.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// An unanswered commit or abort is sent again this often.
    pub const RETRY: Duration = Duration::from_secs(1);

    /// `a` opens a trade with `b`: empty offers, revision 1, both shown it.
    ///
    /// # Errors
    /// [`TradeError::WithSelf`] if `a` is `b`.
    pub fn open(
        id: TradeId,
        a: Party,
        b: Party,
        now: Instant,
    ) -> Result<(Self, Vec<Output>), TradeError> {
        if a.who == b.who {
            return Err(TradeError::WithSelf);
        }
        let t = Self {
            id,
            parties: [a, b],
            offers: [Offer::default(), Offer::default()],
            revision: 1,
            accepted: [None, None],
            state: State::Open,
            touched: now,
        };
        let shown = t.show();
        Ok((t, shown))
    }

    #[must_use]
    pub fn id(&self) -> TradeId {
        self.id
    }

    /// Which side `who` is, if a party.
    #[must_use]
    pub fn side(&self, who: Holder) -> Option<Side> {
        if who == self.parties[0].who {
            Some(Side::A)
        } else if who == self.parties[1].who {
            Some(Side::B)
        } else {
            None
        }
    }

    /// The outcome, once there is one.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        match self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// The trade as the parties see it.
    #[must_use]
    pub fn view(&self) -> View {
        View {
            id: self.id,
            revision: self.revision,
            offers: self.offers.clone(),
            accepted: self.accepted.map(|a| a == Some(self.revision)),
        }
    }

    /// The party `who`'s zone claimed its inventory at `epoch` (a guest's steps carry it: the
    /// host learns it from them). The commit names it, so a party taken over since is stale.
    pub fn set_epoch(&mut self, who: Holder, epoch: u64) {
        if let Some(side) = self.side(who)
            && self.state == State::Open
        {
            self.parties[side.index()].epoch = epoch;
        }
    }

    /// The parties, `[A, B]`.
    #[must_use]
    pub fn parties(&self) -> [Party; 2] {
        self.parties
    }

    /// Whether the trade is still open to offers and acceptances.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// A party walked away (out of range, into another zone, logged out): aborted as
    /// [`AbortReason::WalkedAway`], unless both already accepted (the ledger decides then).
    pub fn walk_away(&mut self, now: Instant) -> Vec<Output> {
        match self.state {
            State::Open => self.decide(now, Some(AbortReason::WalkedAway)),
            State::Deciding { .. } | State::Done(_) => Vec::new(),
        }
    }

    /// `who` puts `offer` on the table (replacing its last): a new revision, both
    /// acceptances cleared.
    ///
    /// # Errors
    /// Not a party, a malformed offer, or the trade no longer open.
    pub fn offer(
        &mut self,
        now: Instant,
        who: Holder,
        offer: Offer,
    ) -> Result<Vec<Output>, TradeError> {
        let side = self.open_side(who)?;
        if !offer.is_well_formed() {
            return Err(TradeError::BadOffer);
        }
        self.offers[side.index()] = offer;
        self.revision += 1;
        self.accepted = [None, None];
        self.touched = now;
        Ok(self.show())
    }

    /// `who` accepts revision `revision`; when both have accepted it, the commit goes to the
    /// ledger.
    ///
    /// # Errors
    /// Not a party, the trade no longer open, or `revision` is not the current one (a replayed
    /// accept, or one sent before the other side changed its offer).
    pub fn accept(
        &mut self,
        now: Instant,
        who: Holder,
        revision: u32,
    ) -> Result<Vec<Output>, TradeError> {
        let side = self.open_side(who)?;
        if revision != self.revision {
            return Err(TradeError::StaleRevision {
                got: revision,
                now: self.revision,
            });
        }
        self.accepted[side.index()] = Some(revision);
        self.touched = now;
        let mut out = self.show();
        if self.accepted == [Some(revision), Some(revision)] {
            out.extend(self.decide(now, None));
        }
        Ok(out)
    }

    /// `who` cancels (or walked away): the ledger is asked to abort. Too late once both have
    /// accepted: the ledger decides the commit then.
    ///
    /// # Errors
    /// Not a party, or the trade no longer open.
    pub fn cancel(&mut self, now: Instant, who: Holder) -> Result<Vec<Output>, TradeError> {
        self.open_side(who)?;
        Ok(self.decide(now, Some(AbortReason::Cancelled)))
    }

    /// The ledger's answer (to this host's commit or abort, or to the guest's abort): the
    /// outcome, once.
    pub fn on_outcome(&mut self, outcome: Outcome) -> Vec<Output> {
        match self.state {
            State::Done(_) => Vec::new(),
            State::Open | State::Deciding { .. } => {
                self.state = State::Done(outcome);
                vec![Output::Done(outcome)]
            }
        }
    }

    /// Timers: an idle open trade is aborted; an unanswered request is sent again.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        match self.state {
            State::Open if now.duration_since(self.touched) >= Self::IDLE_TIMEOUT => {
                self.decide(now, Some(AbortReason::TimedOut))
            }
            State::Deciding { sent, abort } if now.duration_since(sent) >= Self::RETRY => {
                self.decide(now, abort)
            }
            _ => Vec::new(),
        }
    }

    fn open_side(&self, who: Holder) -> Result<Side, TradeError> {
        let side = self.side(who).ok_or(TradeError::NotAParty)?;
        match self.state {
            State::Open => Ok(side),
            State::Deciding { .. } | State::Done(_) => Err(TradeError::Closed),
        }
    }

    /// Asks the ledger to commit (`abort: None`) or abort, now and again until it answers.
    fn decide(&mut self, now: Instant, abort: Option<AbortReason>) -> Vec<Output> {
        self.state = State::Deciding { sent: now, abort };
        vec![match abort {
            None => Output::Commit(self.commit()),
            Some(why) => Output::Abort(self.id, why),
        }]
    }

    fn commit(&self) -> Commit {
        Commit {
            id: self.id,
            a: (self.parties[0], self.offers[0].clone()),
            b: (self.parties[1], self.offers[1].clone()),
        }
    }

    fn show(&self) -> Vec<Output> {
        let v = self.view();
        vec![Output::Show(Side::A, v.clone()), Output::Show(Side::B, v)]
    }
}

/// The other party's zone's watch over a trade hosted elsewhere: it learns the outcome from
/// the host, or, if the host falls silent, from the ledger.
#[derive(Debug, Clone)]
pub struct Guest {
    id: TradeId,
    heard: Instant,
    asked: Option<Instant>,
    done: Option<Outcome>,
    /// Set when the guest's party walked away: ask the ledger now, not after the silence.
    left: bool,
}

impl Guest {
    /// Silence from the host longer than this (more than its idle timeout plus slack: a live
    /// host has ended an idle trade by then) sends the guest to the ledger.
    pub const HOST_SILENCE: Duration = Duration::from_secs(70);

    #[must_use]
    pub fn new(id: TradeId, now: Instant) -> Self {
        Self {
            id,
            heard: now,
            asked: None,
            done: None,
            left: false,
        }
    }

    /// The guest's party walked away (out of range of the other, or gone from this zone): the
    /// ledger is asked to abort at once (it answers the first outcome: a commit the host
    /// made in time stands).
    pub fn walk_away(&mut self, now: Instant) -> Vec<Output> {
        if self.done.is_some() || self.left {
            return Vec::new();
        }
        self.left = true;
        self.asked = Some(now);
        vec![Output::Abort(self.id, AbortReason::WalkedAway)]
    }

    #[must_use]
    pub fn id(&self) -> TradeId {
        self.id
    }

    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.done
    }

    /// The host showed the trade (it is alive and the trade goes on).
    pub fn heard(&mut self, now: Instant) {
        self.heard = self.heard.max(now);
    }

    /// The outcome, from the host or from the ledger: `Done` the first time only.
    pub fn on_outcome(&mut self, outcome: Outcome) -> Vec<Output> {
        if self.done.is_some() {
            return Vec::new();
        }
        self.done = Some(outcome);
        vec![Output::Done(outcome)]
    }

    /// The silence timer: past it, ask the ledger to abort (it answers the first outcome,
    /// a commit included), again every [`Trade::RETRY`] until answered.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        if self.done.is_some() || !self.left && now.duration_since(self.heard) < Self::HOST_SILENCE
        {
            return Vec::new();
        }
        if self
            .asked
            .is_some_and(|at| now.duration_since(at) < Trade::RETRY)
        {
            return Vec::new();
        }
        self.asked = Some(now);
        let why = if self.left {
            AbortReason::WalkedAway
        } else {
            AbortReason::HostLost
        };
        vec![Output::Abort(self.id, why)]
    }
}

impl From<Outcome> for worldmesh_protocol::TradeOutcome {
    fn from(o: Outcome) -> Self {
        use worldmesh_protocol::TradeOutcome as T;
        match o {
            Outcome::Committed => T::Committed,
            Outcome::Aborted(why) => match why {
                AbortReason::Cancelled => T::Cancelled,
                AbortReason::TimedOut => T::TimedOut,
                AbortReason::HostLost => T::HostLost,
                AbortReason::Stale => T::Stale,
                AbortReason::NotEnoughGold => T::NotEnoughGold,
                AbortReason::Invalid => T::Invalid,
                AbortReason::Fenced => T::Fenced,
                AbortReason::WalkedAway => T::WalkedAway,
            },
        }
    }
}

impl From<worldmesh_protocol::TradeOutcome> for Outcome {
    fn from(o: worldmesh_protocol::TradeOutcome) -> Self {
        use worldmesh_protocol::TradeOutcome as T;
        let why = match o {
            T::Committed => return Outcome::Committed,
            T::Cancelled => AbortReason::Cancelled,
            T::TimedOut => AbortReason::TimedOut,
            T::HostLost => AbortReason::HostLost,
            T::Stale => AbortReason::Stale,
            T::NotEnoughGold => AbortReason::NotEnoughGold,
            T::Invalid => AbortReason::Invalid,
            T::Fenced => AbortReason::Fenced,
            T::WalkedAway => AbortReason::WalkedAway,
        };
        Outcome::Aborted(why)
    }
}

impl From<TradeError> for worldmesh_protocol::TradeRefusal {
    fn from(e: TradeError) -> Self {
        use worldmesh_protocol::TradeRefusal as R;
        match e {
            TradeError::NotAParty => R::NoSuchTrade,
            TradeError::WithSelf => R::WithSelf,
            TradeError::BadOffer => R::NotHeld,
            TradeError::StaleRevision { .. } => R::StaleRevision,
            TradeError::Closed => R::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::ItemId;
    use worldmesh_protocol::ids::EntityId;

    const A: Holder = EntityId(1);
    const B: Holder = EntityId(2);
    const PA: Party = Party { who: A, epoch: 1 };
    const PB: Party = Party { who: B, epoch: 1 };

    fn offer(item: u64, gold: u64) -> Offer {
        Offer {
            items: vec![(ItemId(item), 1)],
            gold,
        }
    }

    #[test]
    fn both_accept_one_revision_then_it_commits_once() {
        let t0 = Instant::now();
        let (mut t, shown) = Trade::open(TradeId(1), PA, PB, t0).unwrap();
        assert_eq!(shown.len(), 2);
        t.offer(t0, A, offer(10, 5)).unwrap();
        t.offer(t0, B, offer(20, 0)).unwrap();
        let rev = t.view().revision;
        assert_eq!(rev, 3);
        t.accept(t0, A, rev).unwrap();
        // B counters after A accepted: A's acceptance is gone, the old revision is stale.
        t.offer(t0, B, offer(21, 0)).unwrap();
        assert_eq!(t.view().accepted, [false, false]);
        assert_eq!(
            t.accept(t0, A, rev),
            Err(TradeError::StaleRevision { got: 3, now: 4 })
        );
        t.accept(t0, A, 4).unwrap();
        let out = t.accept(t0, B, 4).unwrap();
        let commit = out
            .iter()
            .find_map(|o| match o {
                Output::Commit(c) => Some(c.clone()),
                _ => None,
            })
            .expect("committing");
        assert_eq!(commit.b.1, offer(21, 0));
        assert_eq!(t.offer(t0, A, offer(10, 0)), Err(TradeError::Closed));
        assert_eq!(
            t.cancel(t0, B),
            Err(TradeError::Closed),
            "too late to cancel"
        );
        // Unanswered: sent again after RETRY, not before.
        assert!(t.poll(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(t.poll(t0 + Trade::RETRY), [Output::Commit(commit.clone())]);
        assert_eq!(
            t.on_outcome(Outcome::Committed),
            [Output::Done(Outcome::Committed)]
        );
        assert!(t.on_outcome(Outcome::Committed).is_empty(), "once");
        assert!(t.poll(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn strangers_oneself_and_bad_offers_are_refused() {
        let t0 = Instant::now();
        assert!(matches!(
            Trade::open(TradeId(1), PA, PA, t0),
            Err(TradeError::WithSelf)
        ));
        let (mut t, _) = Trade::open(TradeId(1), PA, PB, t0).unwrap();
        assert_eq!(
            t.offer(t0, EntityId(3), offer(1, 0)),
            Err(TradeError::NotAParty)
        );
        let twice = Offer {
            items: vec![(ItemId(1), 1), (ItemId(1), 1)],
            gold: 0,
        };
        assert_eq!(t.offer(t0, A, twice), Err(TradeError::BadOffer));
        assert_eq!(t.view().revision, 1, "nothing changed");
    }

    #[test]
    fn an_idle_trade_times_out_and_a_silent_host_sends_the_guest_to_the_ledger() {
        let t0 = Instant::now();
        let (mut t, _) = Trade::open(TradeId(1), PA, PB, t0).unwrap();
        assert!(t.poll(t0 + Duration::from_secs(59)).is_empty());
        let idle = t0 + Trade::IDLE_TIMEOUT;
        let abort = Output::Abort(TradeId(1), AbortReason::TimedOut);
        assert_eq!(t.poll(idle), std::slice::from_ref(&abort));
        assert_eq!(
            t.poll(idle + Trade::RETRY),
            [abort],
            "until the ledger answers"
        );
        let ledger_says = Outcome::Aborted(AbortReason::TimedOut);
        assert_eq!(t.on_outcome(ledger_says), [Output::Done(ledger_says)]);
        let mut g = Guest::new(TradeId(1), t0);
        g.heard(t0 + Duration::from_secs(5));
        assert!(g.poll(t0 + Duration::from_secs(70)).is_empty());
        let ask = t0 + Duration::from_secs(75);
        assert_eq!(
            g.poll(ask),
            [Output::Abort(TradeId(1), AbortReason::HostLost)]
        );
        assert!(g.poll(ask).is_empty(), "not again before RETRY");
        assert_eq!(g.poll(ask + Trade::RETRY).len(), 1);
        // The ledger says the host had committed after all.
        assert_eq!(
            g.on_outcome(Outcome::Committed),
            [Output::Done(Outcome::Committed)]
        );
        assert!(g.poll(ask + Duration::from_secs(9)).is_empty());
    }
}
