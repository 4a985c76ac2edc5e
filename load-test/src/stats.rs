//! Measurements shared by all bots of a run, and the JSON report made from them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Live counters, updated by every bot.
pub struct Stats {
    pub connected: AtomicU64,
    pub logins: AtomicU64,
    pub disconnects: AtomicU64,
    pub errors: AtomicU64,
    pub snapshots: AtomicU64,
    /// Sum over bots of the time they spent logged in, microseconds.
    pub connected_us: AtomicU64,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub chats_heard: AtomicU64,
    /// Full snapshot updates after the first of a session. Every zone change (handoff,
    /// failover) causes one; on a lossy link so do the server's resyncs after lost acks.
    pub handoffs_seen: AtomicU64,
    /// The longest any bot went without a new snapshot while logged in, microseconds: what a
    /// player sees of a fault (a hung zone, a lost route, a stalled handoff).
    pub longest_snapshot_gap_us: AtomicU64,
    /// Game actions (fighting bots): sent, answered applied, answered twice, never answered.
    pub actions_sent: AtomicU64,
    pub actions_applied: AtomicU64,
    pub actions_duplicated: AtomicU64,
    pub actions_lost: AtomicU64,
    actions_refused: Mutex<BTreeMap<String, u64>>,
    /// Input → first snapshot acknowledging it, microseconds.
    rtt_us: Mutex<Histogram<u64>>,
    /// Distance between the client's predicted position and the reconciled one when a
    /// snapshot arrives, millimetres.
    correction_mm: Mutex<Histogram<u64>>,
    /// |gap between consecutive newest snapshots − the tick interval|, microseconds.
    jitter_us: Mutex<Histogram<u64>>,
    errors_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Bot name → its character's entity id, while logged in.
    entities: Mutex<BTreeMap<String, u64>>,
    /// World chat: sent, owed, heard.
    pub chat: crate::chat_audit::ChatAudit,
    /// The trades' books (`--behaviour trade`).
    pub trade: crate::trade::TradeAudit,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connected: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            connected_us: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            chats_heard: AtomicU64::new(0),
            handoffs_seen: AtomicU64::new(0),
            longest_snapshot_gap_us: AtomicU64::new(0),
            actions_sent: AtomicU64::new(0),
            actions_applied: AtomicU64::new(0),
            actions_duplicated: AtomicU64::new(0),
            actions_lost: AtomicU64::new(0),
            actions_refused: Mutex::new(BTreeMap::new()),
            // 1 µs to 60 s at 3 significant digits.
            rtt_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            // 1 mm to 10 km.
            correction_mm: Mutex::new(
                Histogram::new_with_bounds(1, 10_000_000, 3).expect("valid histogram bounds"),
            ),
            jitter_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            errors_by_reason: Mutex::new(BTreeMap::new()),
            entities: Mutex::new(BTreeMap::new()),
            trade: Default::default(),
            chat: Default::default(),
        }
    }
}

impl Stats {
    /// An action answered with a refusal, by the refusal's name.
    pub fn action_refused(&self, reason: &str) {
        *self
            .actions_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    pub fn entity_seen(&self, bot: &str, entity: u64) {
        self.entities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bot.to_owned(), entity);
    }

    pub fn entity_gone(&self, bot: &str) {
        self.entities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(bot);
    }

    /// The entity ids of every bot logged in now.
    pub fn entities(&self) -> Vec<u64> {
        self.entities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .copied()
            .collect()
    }

    pub fn record_snapshot_gap(&self, gap: std::time::Duration) {
        self.longest_snapshot_gap_us
            .fetch_max(gap.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn record_rtt(&self, us: u64) {
        let _ = self
            .rtt_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(us.clamp(1, 60_000_000));
    }

    pub fn record_correction_m(&self, metres: f32) {
        let mm = (metres.max(0.0) * 1000.0) as u64;
        let _ = self
            .correction_mm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(mm.clamp(1, 10_000_000));
    }

    pub fn record_jitter_us(&self, us: u64) {
        let _ = self
            .jitter_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(us.clamp(1, 60_000_000));
    }

    /// Starts a fresh measurement window for the latency histograms (RTT, correction,
    /// jitter): benchmarks call it once the ramp is over.
    pub fn reset_histograms(&self) {
        for h in [&self.rtt_us, &self.correction_mm, &self.jitter_us] {
            h.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reset();
        }
    }

    pub fn correction_m(&self) -> Percentiles {
        percentiles(&self.correction_mm, 1000.0)
    }

    pub fn jitter_ms(&self) -> Percentiles {
        percentiles(&self.jitter_us, 1000.0)
    }

    pub fn record_error(&self, reason: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .errors_by_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    pub fn rtt_ms(&self) -> Percentiles {
        percentiles(&self.rtt_us, 1000.0)
    }

    /// Snapshots per logged-in bot per second, over the time bots were logged in.
    pub fn snapshots_per_bot_per_s(&self) -> f64 {
        let secs = self.connected_us.load(Ordering::Relaxed) as f64 / 1e6;
        if secs <= 0.0 {
            0.0
        } else {
            self.snapshots.load(Ordering::Relaxed) as f64 / secs
        }
    }

    /// One status line for humans; the snapshot rate is over the last `interval_s`, given the
    /// snapshot count at its start (updated in place).
    pub fn status_line(
        &self,
        elapsed_s: f64,
        target: usize,
        last_snapshots: &mut u64,
        interval_s: f64,
    ) -> String {
        let rtt = self.rtt_ms();
        let connected = self.connected.load(Ordering::Relaxed);
        let snapshots = self.snapshots.load(Ordering::Relaxed);
        let rate = if connected > 0 && interval_s > 0.0 {
            (snapshots - *last_snapshots) as f64 / connected as f64 / interval_s
        } else {
            0.0
        };
        *last_snapshots = snapshots;
        format!(
            "t={elapsed_s:>5.0}s bots {}/{} snapshots/bot/s {:.1} rtt p50 {:.1} ms p99 {:.1} ms correction p99 {:.2} m handoffs {} disconnects {} errors {}",
            connected,
            target,
            rate,
            rtt.p50,
            rtt.p99,
            self.correction_m().p99,
            self.handoffs_seen.load(Ordering::Relaxed),
            self.disconnects.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    pub fn report(&self, bots_target: usize, bots_connected: u64, duration_s: f64) -> Report {
        let secs = self.connected_us.load(Ordering::Relaxed) as f64 / 1e6;
        let per_bot_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let chat = self.chat.findings();
        let trades = self.trade.findings();
        Report {
            bots_target,
            bots_connected,
            disconnects: self.disconnects.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            errors_by_reason: self
                .errors_by_reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            snapshots_per_bot_per_s: self.snapshots_per_bot_per_s(),
            rtt_ms: self.rtt_ms(),
            handoffs: 0,
            handoff_ms: None,
            lost_entities: None,
            duplicated_entities: None,
            npcs: None,
            npc_duplicates: None,
            bytes_down_per_bot_per_s: per_bot_s(self.bytes_down.load(Ordering::Relaxed)),
            bytes_up_per_bot_per_s: per_bot_s(self.bytes_up.load(Ordering::Relaxed)),
            chats_heard: self.chats_heard.load(Ordering::Relaxed),
            duration_s,
            handoffs_seen: self.handoffs_seen.load(Ordering::Relaxed),
            correction_error_m: self.correction_m(),
            snapshot_jitter_ms: self.jitter_ms(),
            longest_snapshot_gap_ms: self.longest_snapshot_gap_us.load(Ordering::Relaxed) as f64
                / 1000.0,
            actions_sent: self.actions_sent.load(Ordering::Relaxed),
            actions_applied: self.actions_applied.load(Ordering::Relaxed),
            actions_refused: self
                .actions_refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            actions_duplicated: self.actions_duplicated.load(Ordering::Relaxed),
            actions_lost: self.actions_lost.load(Ordering::Relaxed),
            cross_zone_actions: None,
            chat_sent: chat.sent,
            chat_delivered_ratio: chat.delivered_ratio,
            chat_duplicates: chat.duplicates,
            chat_latency_ms: chat.latency_ms,
            trades_committed: trades.committed,
            trades_aborted: trades.aborted,
            trade_refusals: trades.refused,
            cross_zone_trades: None,
            load_imbalance: None,
            items_duplicated: trades.items_duplicated,
            items_lost: trades.items_lost,
            gold_delta: trades.gold_delta,
        }
    }
}

impl Report {
    /// Fills in what an audit of the zones found.
    pub fn set_audit(&mut self, a: crate::audit::Audited) {
        self.lost_entities = Some(a.lost);
        self.duplicated_entities = Some(a.duplicated);
        self.npcs = Some(a.npcs);
        self.npc_duplicates = Some(a.npc_duplicates);
    }

    /// The final table for humans (the JSON is for machines).
    pub fn table(&self) -> String {
        let p = |p: &Percentiles, unit: &str| {
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} {unit}",
                p.p50, p.p99, p.max
            )
        };
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        row(
            "bots connected / target",
            format!("{} / {}", self.bots_connected, self.bots_target),
        );
        row("disconnects", self.disconnects.to_string());
        row(
            "errors",
            format!("{} {:?}", self.errors, self.errors_by_reason),
        );
        row("input→ack RTT", p(&self.rtt_ms, "ms"));
        row(
            "snapshots / bot / s",
            format!("{:.2}", self.snapshots_per_bot_per_s),
        );
        row(
            "snapshot interval jitter",
            p(&self.snapshot_jitter_ms, "ms"),
        );
        row(
            "longest without a snapshot",
            format!("{:.0} ms", self.longest_snapshot_gap_ms),
        );
        row("prediction correction", p(&self.correction_error_m, "m"));
        row(
            "bytes down / up per bot / s",
            format!(
                "{:.0} / {:.0}",
                self.bytes_down_per_bot_per_s, self.bytes_up_per_bot_per_s
            ),
        );
        row("handoffs seen by bots", self.handoffs_seen.to_string());
        if let (Some(lost), Some(duplicated)) = (self.lost_entities, self.duplicated_entities) {
            row(
                "characters lost / duplicated",
                format!("{lost} / {duplicated}"),
            );
        }
        if let (Some(npcs), Some(duplicated)) = (self.npcs, self.npc_duplicates) {
            row("NPCs / duplicated", format!("{npcs} / {duplicated}"));
        }
        if self.actions_sent > 0 {
            row(
                "actions sent / applied",
                format!("{} / {}", self.actions_sent, self.actions_applied),
            );
            row("actions refused", format!("{:?}", self.actions_refused));
            row(
                "actions duplicated / lost",
                format!("{} / {}", self.actions_duplicated, self.actions_lost),
            );
            if let Some(n) = self.cross_zone_actions {
                row("effects across zone borders", n.to_string());
            }
        }
        row("chat lines heard", self.chats_heard.to_string());
        row(
            "world chat sent / delivered",
            format!(
                "{} / {:.4} (duplicates {})",
                self.chat_sent, self.chat_delivered_ratio, self.chat_duplicates
            ),
        );
        row("world chat latency", p(&self.chat_latency_ms, "ms"));
        if self.trades_committed > 0 || !self.trades_aborted.is_empty() {
            row(
                "trades committed / aborted",
                format!("{} / {:?}", self.trades_committed, self.trades_aborted),
            );
            if let Some(n) = self.cross_zone_trades {
                row("trades across zone borders", n.to_string());
            }
            row("trade refusals", format!("{:?}", self.trade_refusals));
            row(
                "items duplicated / lost, gold delta",
                format!(
                    "{} / {}, {}",
                    self.items_duplicated, self.items_lost, self.gold_delta
                ),
            );
        }
        row("duration", format!("{:.1} s", self.duration_s));
        t
    }
}

/// Percentiles of a histogram, divided by `scale` (its unit per reported unit).
fn percentiles(h: &Mutex<Histogram<u64>>, scale: f64) -> Percentiles {
    let h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: h.value_at_quantile(0.5) as f64 / scale,
        p99: h.value_at_quantile(0.99) as f64 / scale,
        max: h.max() as f64 / scale,
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The JSON report of a run. Field names are a contract (dashboards and CI read them): add
/// fields, never rename.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    pub bots_target: usize,
    /// Bots logged in at the end of the run.
    pub bots_connected: u64,
    /// Connections lost unexpectedly (not by the bot's own logout).
    pub disconnects: u64,
    /// Failed logins, kicks and protocol errors.
    pub errors: u64,
    pub errors_by_reason: BTreeMap<String, u64>,
    pub snapshots_per_bot_per_s: f64,
    /// Input sent → first snapshot acknowledging it.
    pub rtt_ms: Percentiles,
    /// Zone handoffs completed (counted by the zones that received the characters).
    pub handoffs: u64,
    /// Handoff latency: the source froze the character → the new zone sent its first
    /// snapshot. Filled in by `worldmesh local`, which can see inside the zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_ms: Option<Percentiles>,
    /// Bots' characters found in no zone (two audits in a row, one second apart). Filled in
    /// when the bots can see the zones: `worldmesh local`, or `load-test run --coordinator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_entities: Option<u64>,
    /// Characters simulated by two zones at once (two audits in a row). Filled in when the
    /// bots can see the zones: `worldmesh local`, or `load-test run --coordinator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicated_entities: Option<u64>,
    /// The world's NPCs at the end, alive or waiting to come back (audited like characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npcs: Option<u64>,
    /// NPCs simulated by two zones at once (two audits in a row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npc_duplicates: Option<u64>,
    pub bytes_down_per_bot_per_s: f64,
    pub bytes_up_per_bot_per_s: f64,
    pub chats_heard: u64,
    pub duration_s: f64,
    /// Zone changes the bots saw: full snapshot updates in mid-session (on a lossy link,
    /// resyncs after lost acks count too).
    #[serde(default)]
    pub handoffs_seen: u64,
    /// Client-side prediction error corrected on reconciliation, metres.
    #[serde(default)]
    pub correction_error_m: Percentiles,
    /// Deviation of the gap between consecutive snapshots from the tick interval.
    #[serde(default)]
    pub snapshot_jitter_ms: Percentiles,
    /// The longest any bot went without a new snapshot while logged in (a gap still open when
    /// the run ended counts up to then).
    #[serde(default)]
    pub longest_snapshot_gap_ms: f64,
    /// Game actions the bots sent (`--behaviour fight`).
    #[serde(default)]
    pub actions_sent: u64,
    /// Of those, answered as applied.
    #[serde(default)]
    pub actions_applied: u64,
    /// Answered with a refusal, by reason (`ActionRefusal::name`; `rule_N` for a game's).
    #[serde(default)]
    pub actions_refused: BTreeMap<String, u64>,
    /// Answers received twice for one action (must be 0: every action is answered once).
    #[serde(default)]
    pub actions_duplicated: u64,
    /// Actions never answered: still unanswered 2 s after sending when the bot stopped, or
    /// sent by a bot whose connection was lost (must be 0 on a clean run).
    #[serde(default)]
    pub actions_lost: u64,
    /// Game effects the zones forwarded to another zone (an action on an entity across a
    /// border, XP for a kill across one), each counted once however often retried. Filled in
    /// by `worldmesh local`, which sees inside the zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone_actions: Option<u64>,
    /// World chat lines the bots sent (each bot about every 30 s).
    #[serde(default)]
    pub chat_sent: u64,
    /// World lines heard by bots online when they were sent and still online at the end, over
    /// all such (line, bot) pairs; lines of the last second not judged (1.0: all delivered).
    #[serde(default)]
    pub chat_delivered_ratio: f64,
    /// World lines a bot heard twice (must be 0).
    #[serde(default)]
    pub chat_duplicates: u64,
    /// A world line's send → heard, over every bot that heard it.
    #[serde(default)]
    pub chat_latency_ms: Percentiles,
    /// Trades committed (`--behaviour trade`, counted by the bot that opened each).
    #[serde(default)]
    pub trades_committed: u64,
    /// Trades that ended without moving anything, by the ledger's reason.
    #[serde(default)]
    pub trades_aborted: BTreeMap<String, u64>,
    /// Trade steps the server refused, by reason.
    #[serde(default)]
    pub trade_refusals: BTreeMap<String, u64>,
    /// Committed trades whose parties were simulated by two zones (from the zones' audit;
    /// absent when the bots ran without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone_trades: Option<u64>,
    /// Items held by two trading bots at the end, or by one but by none at the start (must
    /// be 0).
    #[serde(default)]
    pub items_duplicated: u64,
    /// Items a trading bot held at the start and none at the end (must be 0).
    #[serde(default)]
    pub items_lost: u64,
    /// Gold the trading bots held at the end minus at the start (must be 0).
    #[serde(default)]
    pub gold_delta: i64,
    /// Max over mean of players per zone, sampled every second and averaged over the run's
    /// last 30 s (1: even); from the cluster, absent when the bots ran without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_imbalance: Option<f64>,
}
