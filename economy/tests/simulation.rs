//! The trade saga under a seeded, lossy world: two zones host trades between their players,
//! a ledger (persistence) commits them, and every message between zones and to the ledger may
//! be lost, repeated or late; zones crash (losing every trade they host or watch) and come
//! back empty, or pause for a minute and more (a stopped process, a long GC-like stall) and
//! then carry on where they were, retries and all. Players offer, counter, accept (sometimes a stale revision), cancel or walk
//! away.
//!
//! What must hold, for every seed:
//! - every item exists exactly once and the sum of gold never changes (the ledger's rule);
//! - every party told an outcome was told the ledger's outcome, and at most once;
//! - once the faults stop, every trade one of whose zones survived has an outcome in the
//!   ledger, and every party whose zone survived has been told it.
//!
//! `WORLDMESH_TRADE_SEEDS=n` runs n seeds (default 500).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use worldmesh_economy::trade::{Output, Side, View};
use worldmesh_economy::{
    AbortReason, Commit, Guest, Item, ItemId, ItemKind, Ledger, Offer, Outcome, Party, Place,
    Trade, TradeId,
};
use worldmesh_protocol::ids::EntityId;

const PLAYERS: u64 = 6;
const STEP: Duration = Duration::from_millis(250);
/// Trades open in the first part; the rest is quiet (no crashes, no new trades) so that
/// every timer has run out.
const BUSY_STEPS: u32 = 600;
const QUIET_STEPS: u32 = 900;

#[derive(Debug, Clone)]
enum Msg {
    /// A guest party's step, relayed to the host zone.
    Step(TradeId, Step),
    /// The host shows the guest party the trade.
    Show(TradeId, View),
    /// The host tells the guest the outcome.
    Done(TradeId, Outcome),
    /// To the ledger.
    Commit(Commit),
    Abort(TradeId, AbortReason),
    /// The ledger's answer.
    Answer(TradeId, Outcome),
}

#[derive(Debug, Clone)]
enum Step {
    Offer(EntityId, Offer),
    Accept(EntityId, u32),
    Cancel(EntityId),
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Zone(usize),
    Ledger,
}

struct Zone {
    hosted: BTreeMap<TradeId, Trade>,
    guests: BTreeMap<TradeId, Guest>,
    /// What each guest party was last shown.
    shown: HashMap<TradeId, View>,
}

impl Zone {
    fn new() -> Self {
        Self {
            hosted: BTreeMap::new(),
            guests: BTreeMap::new(),
            shown: HashMap::new(),
        }
    }
}

struct Meta {
    a: EntityId,
    b: EntityId,
    host: usize,
    guest: usize,
    /// The host or guest zone crashed while it held the trade.
    host_lost: bool,
    guest_lost: bool,
}

struct World {
    rng: StdRng,
    now: Instant,
    ledger: Ledger,
    zones: [Zone; 2],
    /// A paused zone handles nothing (its messages wait, its timers stand still) until then.
    paused_until: [Option<Instant>; 2],
    /// Player → zone.
    zone_of: HashMap<EntityId, usize>,
    net: Vec<(Instant, To, Msg)>,
    trades: BTreeMap<TradeId, Meta>,
    /// (trade, party) → outcomes told.
    told: HashMap<(TradeId, EntityId), Vec<Outcome>>,
    loss: f64,
    counter: u64,
    /// Commits that reached the ledger after it had an abort outcome for the trade (so far
    /// repeats of refused commits; the race of a late commit against a guest's abort is
    /// scripted in `a_commit_late_after_the_guests_abort_moves_nothing`).
    late_commits: u64,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ledger = Ledger::default();
        let mut zone_of = HashMap::new();
        for p in 1..=PLAYERS {
            let who = EntityId(p);
            ledger.set_gold(who, 100);
            for k in 0..3 {
                ledger.grant(
                    who,
                    Item {
                        id: ItemId(p * 10 + k),
                        kind: ItemKind(1),
                        count: 1,
                        version: 1,
                    },
                );
            }
            zone_of.insert(who, rng.random_range(0..2));
        }
        let loss = [0.0, 0.05, 0.2][rng.random_range(0..3)];
        Self {
            rng,
            now: Instant::now(),
            ledger,
            zones: [Zone::new(), Zone::new()],
            paused_until: [None, None],
            zone_of,
            net: Vec::new(),
            trades: BTreeMap::new(),
            told: HashMap::new(),
            loss,
            counter: 0,
            late_commits: 0,
            log: Vec::new(),
        }
    }

    /// Sends `msg`: maybe lost (while `lossy`), maybe twice, 0-3 steps late — or, rarely, a
    /// minute and more late (a zone paused, a connection stuck in a retransmit backoff): late
    /// enough for the other side to give up on it first.
    fn send(&mut self, to: To, msg: Msg, lossy: bool) {
        if lossy && self.rng.random_bool(self.loss) {
            self.log.push(format!("lost {msg:?}"));
            return;
        }
        let copies = if self.rng.random_bool(0.05) { 2 } else { 1 };
        for _ in 0..copies {
            let steps = if lossy && self.rng.random_bool(0.02) {
                self.rng.random_range(240..400)
            } else {
                self.rng.random_range(0..4)
            };
            self.net.push((self.now + STEP * steps, to, msg.clone()));
        }
    }

    fn told(&mut self, id: TradeId, party: EntityId, outcome: Outcome) {
        self.log
            .push(format!("{party:?} told {outcome:?} of {id:?}"));
        self.told.entry((id, party)).or_default().push(outcome);
    }

    /// Carries out what the host of trade `id` (in zone `z`) asked.
    fn host_outputs(&mut self, id: TradeId, out: Vec<Output>, lossy: bool) {
        let Some(meta) = self.trades.get(&id) else {
            return;
        };
        let (a, guest) = (meta.a, meta.guest);
        for o in out {
            match o {
                Output::Show(Side::A, _) => {}
                Output::Show(Side::B, v) => self.send(To::Zone(guest), Msg::Show(id, v), lossy),
                Output::Commit(c) => self.send(To::Ledger, Msg::Commit(c), lossy),
                Output::Abort(t, why) => self.send(To::Ledger, Msg::Abort(t, why), lossy),
                Output::Done(outcome) => {
                    self.told(id, a, outcome);
                    self.send(To::Zone(guest), Msg::Done(id, outcome), lossy);
                }
            }
        }
    }

    fn guest_outputs(&mut self, id: TradeId, out: Vec<Output>, lossy: bool) {
        let Some(meta) = self.trades.get(&id) else {
            return;
        };
        let b = meta.b;
        for o in out {
            match o {
                Output::Abort(t, why) => self.send(To::Ledger, Msg::Abort(t, why), lossy),
                Output::Done(outcome) => self.told(id, b, outcome),
                Output::Show(..) | Output::Commit(_) => unreachable!("a guest only aborts"),
            }
        }
    }

    fn deliver(&mut self, to: To, msg: Msg, lossy: bool) {
        match (to, msg) {
            (To::Ledger, Msg::Commit(c)) => {
                if matches!(self.ledger.outcome(c.id.0), Some(Outcome::Aborted(_))) {
                    self.late_commits += 1;
                }
                let o = self.ledger.commit(&c);
                self.log.push(format!("ledger commit {:?}: {o:?}", c.id));
                let host = self.trades[&c.id].host;
                self.send(To::Zone(host), Msg::Answer(c.id, o), lossy);
            }
            (To::Ledger, Msg::Abort(id, why)) => {
                let o = self.ledger.abort(id, why);
                self.log
                    .push(format!("ledger abort {id:?} ({why:?}): {o:?}"));
                let meta = &self.trades[&id];
                let (host, guest) = (meta.host, meta.guest);
                self.send(To::Zone(host), Msg::Answer(id, o), lossy);
                self.send(To::Zone(guest), Msg::Answer(id, o), lossy);
            }
            (To::Zone(z), Msg::Answer(id, o)) => {
                if let Some(t) = self.zones[z].hosted.get_mut(&id) {
                    let out = t.on_outcome(o);
                    self.host_outputs(id, out, lossy);
                }
                if let Some(g) = self.zones[z].guests.get_mut(&id) {
                    let out = g.on_outcome(o);
                    self.guest_outputs(id, out, lossy);
                }
            }
            (To::Zone(z), Msg::Step(id, step)) => {
                let now = self.now;
                let Some(t) = self.zones[z].hosted.get_mut(&id) else {
                    return;
                };
                let out = match step {
                    Step::Offer(who, o) => t.offer(now, who, o),
                    Step::Accept(who, r) => t.accept(now, who, r),
                    Step::Cancel(who) => t.cancel(now, who),
                };
                if let Ok(out) = out {
                    self.host_outputs(id, out, lossy);
                }
            }
            (To::Zone(z), Msg::Show(id, v)) => {
                let now = self.now;
                if let Some(g) = self.zones[z].guests.get_mut(&id) {
                    g.heard(now);
                    self.zones[z].shown.insert(id, v);
                }
            }
            (To::Zone(z), Msg::Done(id, o)) => {
                if let Some(g) = self.zones[z].guests.get_mut(&id) {
                    let out = g.on_outcome(o);
                    self.guest_outputs(id, out, lossy);
                }
            }
            (to, msg) => unreachable!("{msg:?} to {to:?}"),
        }
    }

    /// A player as a party to a trade opened now: with the claim in force.
    fn party(&self, who: EntityId) -> Party {
        Party {
            who,
            epoch: self.ledger.epoch(who),
        }
    }

    /// What a player offers: some of its items as the ledger has them now (an offer a moment
    /// old may be stale by commit time: that is the ledger's to catch), some gold.
    fn some_offer(&mut self, who: EntityId) -> Offer {
        let items = self.ledger.items_of(who);
        let n = self.rng.random_range(0..=items.len().min(2));
        let mut offer = Offer {
            items: items[..n].iter().map(|i| (i.id, i.version)).collect(),
            gold: self.rng.random_range(0..=60),
        };
        if self.rng.random_bool(0.05) {
            // An item it does not hold.
            offer.items.push((ItemId(999), 1));
        }
        offer
    }

    fn step(&mut self, busy: bool) {
        self.now += STEP;
        // The network.
        let now = self.now;
        for z in 0..2 {
            if self.paused_until[z].is_some_and(|until| until <= now) {
                self.log.push(format!("zone {z} resumes"));
                self.paused_until[z] = None;
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.net.drain(..).partition(|(at, ..)| *at <= now);
        self.net = later;
        for (at, to, msg) in due {
            match to {
                To::Zone(z) if self.paused_until[z].is_some() => {
                    self.net.push((at + STEP, to, msg));
                }
                _ => self.deliver(to, msg, busy),
            }
        }
        // Timers.
        for z in 0..2 {
            if self.paused_until[z].is_some() {
                continue;
            }
            let ids: Vec<TradeId> = self.zones[z].hosted.keys().copied().collect();
            for id in ids {
                let out = self.zones[z].hosted.get_mut(&id).unwrap().poll(now);
                self.host_outputs(id, out, busy);
            }
            let ids: Vec<TradeId> = self.zones[z].guests.keys().copied().collect();
            for id in ids {
                let out = self.zones[z].guests.get_mut(&id).unwrap().poll(now);
                self.guest_outputs(id, out, busy);
            }
        }
        if !busy {
            return;
        }
        // A zone pauses now and then, for longer than a guest waits for its host.
        if self.rng.random_bool(0.01) {
            let z = self.rng.random_range(0..2);
            let until = now + STEP * self.rng.random_range(240..400);
            self.log.push(format!("zone {z} pauses"));
            self.paused_until[z] = Some(until);
        }
        // A zone crashes now and then, losing what it hosts and watches.
        if self.rng.random_bool(0.01) {
            let z = self.rng.random_range(0..2);
            self.log.push(format!("zone {z} crashes"));
            self.paused_until[z] = None;
            let lost = std::mem::replace(&mut self.zones[z], Zone::new());
            for id in lost.hosted.keys() {
                self.trades.get_mut(id).unwrap().host_lost = true;
            }
            for id in lost.guests.keys() {
                self.trades.get_mut(id).unwrap().guest_lost = true;
            }
        }
        // A player is taken over by a zone (a handoff, a failover, a new login): a claim with
        // a later epoch, which makes any trade it is in stale at commit.
        if self.rng.random_bool(0.005) {
            let who = EntityId(self.rng.random_range(1..=PLAYERS));
            let epoch = self.ledger.epoch(who) + 1;
            self.log.push(format!("{who:?} taken over, epoch {epoch}"));
            self.ledger.claim(who, epoch).expect("a later epoch");
        }
        // Someone opens a trade.
        if self.rng.random_bool(0.05) {
            let a = EntityId(self.rng.random_range(1..=PLAYERS));
            let b = EntityId(self.rng.random_range(1..=PLAYERS));
            let (host, guest) = (self.zone_of[&a], self.zone_of[&b]);
            self.counter += 1;
            let id = TradeId(self.counter);
            let (pa, pb) = (self.party(a), self.party(b));
            if let Ok((t, out)) = Trade::open(id, pa, pb, now) {
                self.log.push(format!("{a:?} opens {id:?} with {b:?}"));
                self.trades.insert(
                    id,
                    Meta {
                        a,
                        b,
                        host,
                        guest,
                        host_lost: false,
                        guest_lost: false,
                    },
                );
                self.zones[host].hosted.insert(id, t);
                self.zones[guest].guests.insert(id, Guest::new(id, now));
                self.host_outputs(id, out, true);
            }
        }
        // Parties act on the trades they know of.
        let open: Vec<(TradeId, EntityId, EntityId, usize, usize)> = self
            .trades
            .iter()
            .map(|(id, m)| (*id, m.a, m.b, m.host, m.guest))
            .collect();
        for (id, a, b, host, guest) in open {
            if !self.rng.random_bool(0.2) {
                continue;
            }
            let a_side = self.rng.random_bool(0.5);
            if self.paused_until[if a_side { host } else { guest }].is_some() {
                continue;
            }
            let who = if a_side { a } else { b };
            let shown = if a_side {
                self.zones[host].hosted.get(&id).map(Trade::view)
            } else {
                self.zones[guest].shown.get(&id).cloned()
            };
            let Some(view) = shown else { continue };
            let step = match self.rng.random_range(0..10) {
                0..=3 => Step::Offer(who, self.some_offer(who)),
                4..=7 => {
                    // Sometimes a stale revision (a replayed or late accept).
                    let stale = u32::from(self.rng.random_bool(0.1));
                    Step::Accept(who, view.revision.saturating_sub(stale))
                }
                8 => Step::Cancel(who),
                _ => continue,
            };
            if a_side {
                self.deliver(To::Zone(host), Msg::Step(id, step), true);
            } else {
                self.send(To::Zone(host), Msg::Step(id, step), true);
            }
        }
    }
}

fn run(seed: u64) -> Result<(u64, u64, u64), String> {
    let mut w = World::new(seed);
    let items_before: Vec<ItemId> = {
        let mut v: Vec<ItemId> = w.ledger.all_items().map(|(_, i)| i.id).collect();
        v.sort_unstable();
        v
    };
    let gold_before = w.ledger.total_gold();
    for _ in 0..BUSY_STEPS {
        w.step(true);
    }
    for _ in 0..QUIET_STEPS {
        w.step(false);
    }
    let fail = |w: &World, what: String| {
        let tail = w.log[w.log.len().saturating_sub(40)..].join("\n  ");
        Err(format!("seed {seed}: {what}\n  {tail}"))
    };
    let mut items_after: Vec<ItemId> = w.ledger.all_items().map(|(_, i)| i.id).collect();
    items_after.sort_unstable();
    if items_after != items_before {
        return fail(&w, "items appeared or vanished".into());
    }
    if w.ledger.total_gold() != gold_before {
        return fail(
            &w,
            format!("gold {} → {}", gold_before, w.ledger.total_gold()),
        );
    }
    let mut committed = 0;
    for (id, meta) in &w.trades {
        let ledger = w.ledger.outcome(id.0);
        committed += u64::from(ledger == Some(Outcome::Committed));
        for (party, lost) in [(meta.a, meta.host_lost), (meta.b, meta.guest_lost)] {
            let told = w.told.get(&(*id, party)).cloned().unwrap_or_default();
            if told.len() > 1 {
                return fail(&w, format!("{party:?} told {told:?} of {id:?}"));
            }
            if let Some(&o) = told.first()
                && Some(o) != ledger
            {
                return fail(
                    &w,
                    format!("{party:?} told {o:?} of {id:?}, the ledger says {ledger:?}"),
                );
            }
            if !lost && told.is_empty() {
                return fail(&w, format!("{party:?} never told the outcome of {id:?}"));
            }
        }
        if !(meta.host_lost && meta.guest_lost) && ledger.is_none() {
            return fail(&w, format!("{id:?} has no outcome in the ledger"));
        }
    }
    Ok((w.trades.len() as u64, committed, w.late_commits))
}

#[test]
fn trades_hold_under_loss_repeats_delays_and_crashes() {
    let seeds: u64 = std::env::var("WORLDMESH_TRADE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let (mut trades, mut committed, mut late) = (0, 0, 0);
    for seed in 0..seeds {
        let (t, c, l) = run(seed).unwrap_or_else(|e| panic!("{e}"));
        trades += t;
        committed += c;
        late += l;
    }
    println!(
        "{seeds} seeds: {trades} trades, {committed} committed, {late} commits after an abort"
    );
    assert!(committed > seeds, "trades do commit ({committed})");
}

/// The race the ledger's first-writer-wins rule exists for, step by step: both accept, the
/// host stalls before its commit gets through, the guest gives up on it and aborts at the
/// ledger; then the host's commit arrives. Nothing moves, and both are told the same.
#[test]
fn a_commit_late_after_the_guests_abort_moves_nothing() {
    let (a, b) = (EntityId(1), EntityId(2));
    let mut ledger = Ledger::default();
    ledger.grant(
        a,
        Item {
            id: ItemId(10),
            kind: ItemKind(1),
            count: 1,
            version: 1,
        },
    );
    ledger.set_gold(b, 50);
    let t0 = Instant::now();
    let id = TradeId(1);
    let (mut host, _) = Trade::open(
        id,
        Party { who: a, epoch: 0 },
        Party { who: b, epoch: 0 },
        t0,
    )
    .unwrap();
    let mut guest = Guest::new(id, t0);
    host.offer(
        t0,
        a,
        Offer {
            items: vec![(ItemId(10), 1)],
            gold: 0,
        },
    )
    .unwrap();
    host.offer(
        t0,
        b,
        Offer {
            items: vec![],
            gold: 50,
        },
    )
    .unwrap();
    let rev = host.view().revision;
    host.accept(t0, a, rev).unwrap();
    let out = host.accept(t0, b, rev).unwrap();
    let Some(Output::Commit(commit)) = out.into_iter().find(|o| matches!(o, Output::Commit(_)))
    else {
        panic!("both accepted: a commit");
    };
    // The commit is stuck; the guest hears nothing for long enough and asks the ledger.
    let later = t0 + Guest::HOST_SILENCE;
    let [Output::Abort(_, why)] = guest.poll(later)[..] else {
        panic!("the guest aborts");
    };
    let first = ledger.abort(id, why);
    assert_eq!(first, Outcome::Aborted(AbortReason::HostLost));
    assert_eq!(guest.on_outcome(first), [Output::Done(first)]);
    // The host's commit lands at last: answered with the first outcome, nothing moved.
    let late = ledger.commit(&commit);
    assert_eq!(late, first);
    assert_eq!(host.on_outcome(late), [Output::Done(first)]);
    assert_eq!(
        ledger.item(ItemId(10)).map(|(p, _)| p),
        Some(Place::Carried(a))
    );
    assert_eq!((ledger.gold(a), ledger.gold(b)), (0, 50));
}
