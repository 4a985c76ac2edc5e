//! A trading bot's mind (`--behaviour trade`): bots trade in pairs (bot `2k` opens, bot
//! `2k + 1` answers). The answerer walks to a spot near its spawn point — spawn points sit on
//! zone borders in trade runs, so the two often stand in different zones — and waits; the
//! opener walks up to it and opens a trade; both offer a gem or some gold, sometimes the
//! answerer counters, and both accept the last revision. Now and then the opener cancels
//! instead, or walks away mid-trade. Sans-IO: the bot's loop feeds it what the client sees
//! and sends what it decides.
//!
//! The books ([`TradeAudit`]): every trade's outcome by reason, every refusal, and each bot's
//! holdings when it started trading and when the run ended — from which the report counts
//! items duplicated or lost and the gold created or destroyed (all must be 0).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use worldmesh_protocol::{
    EntityId, InventoryView, ServerMessage, TradeNews, TradeOutcome, TradeRefusal, TradeRequest,
    TradeView,
};

/// How close the opener walks before opening (the server allows `TRADE_RANGE`, 10 m).
const OPEN_WITHIN: f32 = 5.0;
/// A trade not over after this long is cancelled (the server times out idle ones at 60 s).
const STUCK_AFTER: Duration = Duration::from_secs(20);
/// A bot with an empty inventory starts trading this long after its login anyway.
const SETTLE: Duration = Duration::from_secs(3);

/// What the bot does this input tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub heading: f32,
    pub speed: f32,
    pub request: Option<TradeRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Accept,
    Cancel,
    WalkAway,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Between trades: the answerer walks to `spot`; the opener walks up to the answerer.
    Meet { not_before: Instant },
    /// The opener asked; waiting for the first view.
    Opening { since: Instant },
    Trading {
        trade: u64,
        since: Instant,
        offered: u32,
        accepted: Option<u32>,
        plan: Plan,
    },
    /// Walking off mid-trade until the server ends it.
    Leaving { trade: u64, since: Instant },
}

pub struct Trader {
    name: String,
    opener: bool,
    partner_name: String,
    partner: Option<EntityId>,
    inventory: Option<InventoryView>,
    ready: bool,
    logged_in: Instant,
    home: (f32, f32),
    spot: (f32, f32),
    state: State,
    rng: StdRng,
}

impl Trader {
    /// Bot `name` (index `index`, spawned at `home`), paired with `partner_name`.
    pub fn new(
        name: &str,
        index: u64,
        partner_name: String,
        home: (f32, f32),
        now: Instant,
    ) -> Self {
        Self {
            name: name.to_owned(),
            opener: index.is_multiple_of(2),
            partner_name,
            partner: None,
            inventory: None,
            ready: false,
            logged_in: now,
            home,
            spot: home,
            state: State::Meet { not_before: now },
            rng: StdRng::seed_from_u64(index ^ 0x7ade),
        }
    }

    /// The trade this bot is in, if any (to cancel at the end of a run).
    pub fn open_trade(&self) -> Option<u64> {
        match self.state {
            State::Trading { trade, .. } | State::Leaving { trade, .. } => Some(trade),
            State::Meet { .. } | State::Opening { .. } => None,
        }
    }

    /// Decides this input tick: where to walk, and a trade step to send.
    pub fn decide(
        &mut self,
        now: Instant,
        me: (f32, f32),
        seen: &[worldmesh_protocol::EntityState],
        audit: &TradeAudit,
    ) -> Step {
        if self.partner.is_none() {
            self.partner = audit.entity_of(&self.partner_name);
        }
        let partner_at = self
            .partner
            .and_then(|p| seen.iter().find(|e| e.id == p))
            .map(|e| (e.x, e.y));
        if !self.opener {
            audit.at(&self.name, me);
        }
        let mut step = Step {
            heading: 0.0,
            speed: 0.0,
            request: None,
        };
        match self.state.clone() {
            State::Meet { not_before } => {
                if !self.opener {
                    walk_to(&mut step, me, self.spot, 1.0);
                } else if let Some(p) = partner_at {
                    walk_to(&mut step, me, p, OPEN_WITHIN - 1.0);
                    let close = dist(me, p) <= OPEN_WITHIN;
                    if close && self.ready && now >= not_before && step.speed == 0.0 {
                        step.request = self.partner.map(|p| TradeRequest::Open { with: p.0 });
                        self.state = State::Opening { since: now };
                    }
                } else if let Some(far) = audit.where_is(&self.partner_name) {
                    // Out of sight (another spawn point): walk there; players arrange to meet.
                    walk_to(&mut step, me, far, OPEN_WITHIN - 1.0);
                }
            }
            State::Opening { since } => {
                if now.duration_since(since) > STUCK_AFTER {
                    self.state = State::Meet { not_before: now };
                }
            }
            State::Trading { trade, since, .. } => {
                if now.duration_since(since) > STUCK_AFTER {
                    step.request = Some(TradeRequest::Cancel { trade });
                    self.state = State::Leaving { trade, since: now };
                }
            }
            State::Leaving { since, .. } => {
                // Away from the partner, until the server calls it walked away (30 m).
                let away = partner_at.map_or(0.0, |p| (me.1 - p.1).atan2(me.0 - p.0));
                step.heading = away;
                step.speed = 5.0;
                if now.duration_since(since) > STUCK_AFTER {
                    self.state = State::Meet { not_before: now };
                }
            }
        }
        step
    }

    /// A control message: trade news and inventories. Returns a step to send at once.
    pub fn on_message(
        &mut self,
        now: Instant,
        msg: &ServerMessage,
        audit: &TradeAudit,
    ) -> Option<TradeRequest> {
        match msg {
            ServerMessage::Inventory(v) => {
                self.inventory = Some(v.clone());
                let settled = now.duration_since(self.logged_in) >= SETTLE;
                if !self.ready && (settled || v.gold > 0 || !v.items.is_empty()) {
                    self.ready = true;
                    audit.baseline(&self.name, v);
                }
                audit.latest(&self.name, v);
                None
            }
            ServerMessage::Trade(TradeNews::View(v)) => self.on_view(now, v),
            ServerMessage::Trade(TradeNews::Done { trade, outcome }) => {
                if self.opener {
                    audit.outcome(*trade, *outcome);
                }
                self.rest(now);
                None
            }
            ServerMessage::Trade(TradeNews::Refused { why, .. }) => {
                audit.refused(*why);
                match (why, &self.state) {
                    // Steps that lost a race with the other side: the trade goes on.
                    (TradeRefusal::StaleRevision | TradeRefusal::Closed, _) => {}
                    (_, State::Opening { .. }) => self.rest(now),
                    _ => {}
                }
                None
            }
            _ => None,
        }
    }

    fn on_view(&mut self, now: Instant, v: &TradeView) -> Option<TradeRequest> {
        let trade = v.trade;
        match self.state {
            State::Trading { trade: t, .. } | State::Leaving { trade: t, .. } if t == trade => {}
            // A new trade: the opener's own, or the answerer's (declined until its
            // holdings are counted, or while it is in another).
            State::Opening { .. } if self.opener => {
                let plan = match self.rng.random_range(0..20) {
                    0 => Plan::Cancel,
                    1 => Plan::WalkAway,
                    _ => Plan::Accept,
                };
                self.state = State::Trading {
                    trade,
                    since: now,
                    offered: 0,
                    accepted: None,
                    plan,
                };
            }
            State::Meet { .. } if !self.opener && self.ready => {
                self.state = State::Trading {
                    trade,
                    since: now,
                    offered: 0,
                    accepted: None,
                    plan: Plan::Accept,
                };
            }
            _ => return Some(TradeRequest::Cancel { trade }),
        }
        let State::Trading {
            offered,
            accepted,
            plan,
            ..
        } = &mut self.state
        else {
            return None;
        };
        // Offer once; the answerer counters once in five trades, after the opener offered.
        let counter = !self.opener
            && *offered == 1
            && !v.theirs.items.is_empty()
            && self.rng.random_range(0..5) == 0;
        if *offered == 0 || counter {
            *offered += 1;
            let inv = self.inventory.clone().unwrap_or(InventoryView {
                gold: 0,
                items: Vec::new(),
            });
            let items = if inv.items.is_empty() {
                Vec::new()
            } else {
                vec![inv.items[self.rng.random_range(0..inv.items.len())].id]
            };
            let gold = self.rng.random_range(0..=inv.gold.min(10));
            return Some(TradeRequest::Offer { trade, items, gold });
        }
        // Both have offered (the opener offers first: revision 2; the answerer then: 3+).
        let both_offered = v.revision >= 3;
        if both_offered && !v.accepted && *accepted != Some(v.revision) {
            match *plan {
                Plan::Accept => {
                    *accepted = Some(v.revision);
                    return Some(TradeRequest::Accept {
                        trade,
                        revision: v.revision,
                    });
                }
                Plan::Cancel => {
                    self.state = State::Leaving { trade, since: now };
                    return Some(TradeRequest::Cancel { trade });
                }
                Plan::WalkAway => self.state = State::Leaving { trade, since: now },
            }
        }
        None
    }

    /// A trade ended: the opener pauses; the answerer picks a new spot near home (on
    /// either side of the border).
    fn rest(&mut self, now: Instant) {
        let pause = Duration::from_millis(self.rng.random_range(300..1500));
        self.state = State::Meet {
            not_before: now + pause,
        };
        if !self.opener {
            self.spot = (
                self.home.0 + self.rng.random_range(-12.0..12.0),
                self.home.1 + self.rng.random_range(-8.0..8.0),
            );
        }
    }
}

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    (a.0 - b.0).hypot(a.1 - b.1)
}

fn walk_to(step: &mut Step, me: (f32, f32), to: (f32, f32), within: f32) {
    let d = dist(me, to);
    if d > within {
        step.heading = (to.1 - me.1).atan2(to.0 - me.0);
        step.speed = (d * 2.0).min(4.0);
    }
}

#[derive(Default)]
struct Books {
    entities: HashMap<String, EntityId>,
    /// Where each answering bot stands (what players tell each other to meet).
    positions: HashMap<String, (f32, f32)>,
    committed: u64,
    committed_ids: Vec<u64>,
    aborted: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    baseline: HashMap<String, InventoryView>,
    latest: HashMap<String, InventoryView>,
}

/// What the trade audit found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TradeFindings {
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    pub refused: BTreeMap<String, u64>,
    /// Item ids held by more than one bot at the end, or held at the end and by nobody at
    /// the start.
    pub items_duplicated: u64,
    /// Item ids some bot held at the start and none at the end.
    pub items_lost: u64,
    /// Gold held at the end minus at the start (over the bots that traded).
    pub gold_delta: i64,
    pub traders: u64,
}

/// Shared by every bot of a run.
#[derive(Default)]
pub struct TradeAudit {
    books: Mutex<Books>,
}

impl TradeAudit {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A trading bot logged in as `entity`.
    pub fn online(&self, name: &str, entity: EntityId) {
        self.books().entities.insert(name.to_owned(), entity);
    }

    fn at(&self, name: &str, at: (f32, f32)) {
        self.books().positions.insert(name.to_owned(), at);
    }

    fn where_is(&self, name: &str) -> Option<(f32, f32)> {
        self.books().positions.get(name).copied()
    }

    fn entity_of(&self, name: &str) -> Option<EntityId> {
        self.books().entities.get(name).copied()
    }

    fn baseline(&self, name: &str, v: &InventoryView) {
        self.books()
            .baseline
            .entry(name.to_owned())
            .or_insert_with(|| v.clone());
    }

    fn latest(&self, name: &str, v: &InventoryView) {
        self.books().latest.insert(name.to_owned(), v.clone());
    }

    fn outcome(&self, trade: u64, o: TradeOutcome) {
        let mut b = self.books();
        if o == TradeOutcome::Committed {
            b.committed += 1;
            b.committed_ids.push(trade);
        } else {
            *b.aborted.entry(format!("{o:?}")).or_default() += 1;
        }
    }

    fn refused(&self, why: TradeRefusal) {
        *self
            .books()
            .refused
            .entry(why.name().to_owned())
            .or_default() += 1;
    }

    /// The entity ids of the bots that traded (their holdings were counted).
    pub fn traders(&self) -> Vec<u64> {
        let b = self.books();
        b.baseline
            .keys()
            .filter_map(|name| b.entities.get(name).map(|e| e.0))
            .collect()
    }

    /// The trades the bots were told committed (to check against the ledger).
    pub fn committed_trades(&self) -> Vec<u64> {
        self.books().committed_ids.clone()
    }

    /// The books at the end of a run.
    pub fn findings(&self) -> TradeFindings {
        let b = self.books();
        let mut f = TradeFindings {
            committed: b.committed,
            aborted: b.aborted.clone(),
            refused: b.refused.clone(),
            traders: b.baseline.len() as u64,
            ..Default::default()
        };
        let mut start: HashMap<u64, u32> = HashMap::new();
        let mut end: HashMap<u64, u32> = HashMap::new();
        let (mut gold_start, mut gold_end) = (0i64, 0i64);
        for (name, base) in &b.baseline {
            gold_start += base.gold as i64;
            for i in &base.items {
                *start.entry(i.id).or_default() += 1;
            }
            let last = b.latest.get(name).unwrap_or(base);
            gold_end += last.gold as i64;
            for i in &last.items {
                *end.entry(i.id).or_default() += 1;
            }
        }
        f.gold_delta = gold_end - gold_start;
        f.items_duplicated = end
            .iter()
            .map(|(id, n)| u64::from(n - 1) + u64::from(!start.contains_key(id)))
            .sum();
        f.items_lost = start.keys().filter(|id| !end.contains_key(id)).count() as u64;
        f
    }
}
