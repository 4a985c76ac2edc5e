//! A link conditioner for one client's datagrams: loss, latency and jitter, so bots meet the
//! network as it is rather than loopback. Applied to inputs on the way out and to snapshots on
//! the way in (before decoding, so a "lost" snapshot is really missing from the client's
//! delta state). Jitter reorders datagrams, as real networks do. The control stream is
//! reliable and left alone.

use std::collections::BinaryHeap;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

/// Link settings; the default is a perfect link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkConditions {
    /// Probability that a datagram is dropped, each way, 0..=1.
    pub loss: f64,
    /// One-way delay added to every datagram.
    pub latency: Duration,
    /// Up to this much more one-way delay, uniformly random per datagram.
    pub jitter: Duration,
}

impl LinkConditions {
    pub fn is_perfect(&self) -> bool {
        self.loss <= 0.0 && self.latency.is_zero() && self.jitter.is_zero()
    }

    /// `None`: drop it. Otherwise the delay to apply.
    pub fn fate(&self, rng: &mut impl Rng) -> Option<Duration> {
        if self.loss > 0.0 && rng.random_bool(self.loss.min(1.0)) {
            return None;
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.jitter.mul_f64(rng.random_range(0.0..1.0))
        };
        Some(self.latency + jitter)
    }
}

/// Datagrams held back until their delivery time.
#[derive(Default)]
pub struct DelayQueue {
    heap: BinaryHeap<Held>,
    next: u64,
}

struct Held {
    due: Instant,
    order: u64,
    bytes: Bytes,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Earliest due first (BinaryHeap is a max-heap).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

impl DelayQueue {
    pub fn push(&mut self, due: Instant, bytes: Bytes) {
        self.next += 1;
        self.heap.push(Held {
            due,
            order: self.next,
            bytes,
        });
    }

    /// When the earliest held datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.due)
    }

    /// The earliest datagram, if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        if self.heap.peek()?.due <= now {
            return self.heap.pop().map(|h| h.bytes);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn loss_and_delay_follow_the_settings() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let link = LinkConditions {
            loss: 0.05,
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
        };
        let fates: Vec<_> = (0..10_000).map(|_| link.fate(&mut rng)).collect();
        let lost = fates.iter().filter(|f| f.is_none()).count();
        assert!((400..600).contains(&lost), "{lost} of 10,000 lost");
        assert!(
            fates
                .iter()
                .flatten()
                .all(|d| *d >= Duration::from_millis(100) && *d < Duration::from_millis(120))
        );
        assert_eq!(
            LinkConditions::default().fate(&mut rng),
            Some(Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn the_delay_queue_releases_in_due_order() {
        let mut q = DelayQueue::default();
        let now = Instant::now();
        q.push(now + Duration::from_millis(20), Bytes::from_static(b"late"));
        q.push(
            now + Duration::from_millis(10),
            Bytes::from_static(b"early"),
        );
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.next_due(), Some(now + Duration::from_millis(10)));
        let later = now + Duration::from_millis(25);
        assert_eq!(q.pop_due(later).as_deref(), Some(&b"early"[..]));
        assert_eq!(q.pop_due(later).as_deref(), Some(&b"late"[..]));
        assert_eq!(q.pop_due(later), None);
    }
}
