//! The world-chat audit: every world line a bot sends is recorded, before it is sent, with the
//! bots online to hear it; every line a bot hears is checked off once. At the end of a run a
//! line counts as delivered to a bot that was online both when it was sent and when the run
//! ended (a bot that left meanwhile is not owed it), lines sent in the last second (still on
//! their way) left out. A line heard twice by one bot is a duplicate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::Percentiles;

/// Lines sent this close to the end are not judged.
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// What the audit found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChatFindings {
    pub sent: u64,
    /// Deliveries over (lines × bots owed them); 1.0 when nothing was owed.
    pub delivered_ratio: f64,
    pub duplicates: u64,
    /// Send → heard, over every first hearing.
    pub latency_ms: Percentiles,
}

/// A fixed-size set of bot indexes.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) -> bool {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let was = self.0[word] & bit != 0;
        self.0[word] |= bit;
        was
    }

    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1u64 << (i % 64));
        }
    }

    /// |self ∩ other| and |self ∩ other ∩ third|.
    fn counts(&self, other: &Bits, third: &Bits) -> (u64, u64) {
        let (mut both, mut all) = (0, 0);
        for (i, w) in self.0.iter().enumerate() {
            let b = w & other.0.get(i).copied().unwrap_or(0);
            both += u64::from(b.count_ones());
            all += u64::from((b & third.0.get(i).copied().unwrap_or(0)).count_ones());
        }
        (both, all)
    }
}

struct Line {
    sent_at: Instant,
    owed: Bits,
    heard: Bits,
}

struct Inner {
    index: HashMap<String, usize>,
    online: Bits,
    lines: HashMap<String, Line>,
    duplicates: u64,
    /// The online set and the time when the run ended.
    end: Option<(Instant, Bits)>,
    latency_us: Histogram<u64>,
}

/// Shared by every bot of a run.
pub struct ChatAudit {
    inner: Mutex<Inner>,
}

impl Default for ChatAudit {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                online: Bits::default(),
                lines: HashMap::new(),
                duplicates: 0,
                end: None,
                latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds"),
            }),
        }
    }
}

impl ChatAudit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A bot logged in: its index for the calls below.
    pub fn online(&self, name: &str) -> usize {
        let mut inner = self.lock();
        let next = inner.index.len();
        let i = *inner.index.entry(name.to_owned()).or_insert(next);
        inner.online.set(i);
        i
    }

    pub fn offline(&self, bot: usize) {
        self.lock().online.clear(bot);
    }

    /// A world line `text` (unique in the run) is about to be sent.
    pub fn sent(&self, text: &str, now: Instant) {
        let mut inner = self.lock();
        let owed = inner.online.clone();
        inner.lines.insert(
            text.to_owned(),
            Line {
                sent_at: now,
                owed,
                heard: Bits::default(),
            },
        );
    }

    /// Bot `bot` heard the world line `text`. Lines no bot of this run sent are ignored.
    pub fn heard(&self, bot: usize, text: &str, now: Instant) {
        let mut inner = self.lock();
        let Some(line) = inner.lines.get_mut(text) else {
            return;
        };
        if line.heard.set(bot) {
            inner.duplicates += 1;
            return;
        }
        let us = now.saturating_duration_since(line.sent_at).as_micros() as u64;
        let _ = inner.latency_us.record(us.max(1));
    }

    /// The run ends now: who is online is who is owed the lines sent before.
    pub fn end(&self, now: Instant) {
        let mut inner = self.lock();
        let online = inner.online.clone();
        inner.end = Some((now, online));
    }

    pub fn findings(&self) -> ChatFindings {
        let inner = self.lock();
        let (owed, delivered) = match &inner.end {
            None => (0, 0),
            Some((end, online)) => inner
                .lines
                .values()
                .filter(|l| l.sent_at + IN_FLIGHT <= *end)
                .map(|l| l.owed.counts(online, &l.heard))
                .fold((0, 0), |(o, d), (lo, ld)| (o + lo, d + ld)),
        };
        let h = &inner.latency_us;
        ChatFindings {
            sent: inner.lines.len() as u64,
            delivered_ratio: if owed == 0 {
                1.0
            } else {
                delivered as f64 / owed as f64
            },
            duplicates: inner.duplicates,
            latency_ms: if h.is_empty() {
                Percentiles::default()
            } else {
                Percentiles {
                    p50: h.value_at_quantile(0.5) as f64 / 1000.0,
                    p99: h.value_at_quantile(0.99) as f64 / 1000.0,
                    max: h.max() as f64 / 1000.0,
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_delivered_and_duplicates() {
        let audit = ChatAudit::default();
        let t0 = Instant::now();
        let (a, b, c) = (audit.online("a"), audit.online("b"), audit.online("c"));
        audit.sent("a #1", t0);
        let d = audit.online("d"); // not online when it was sent: not owed it
        audit.heard(a, "a #1", t0);
        audit.heard(b, "a #1", t0 + Duration::from_millis(20));
        audit.heard(b, "a #1", t0 + Duration::from_millis(30));
        audit.heard(d, "a #1", t0);
        audit.offline(c); // left: not owed it any more
        audit.heard(a, "stranger", t0);
        audit.end(t0 + Duration::from_secs(5));
        let f = audit.findings();
        assert_eq!((f.sent, f.duplicates), (1, 1));
        assert_eq!(f.delivered_ratio, 1.0);
        let audit2 = ChatAudit::default();
        let (a, _b) = (audit2.online("a"), audit2.online("b"));
        audit2.sent("x", t0);
        audit2.heard(a, "x", t0);
        audit2.end(t0 + Duration::from_secs(5));
        assert_eq!(audit2.findings().delivered_ratio, 0.5);
    }
}
