//! The tick schedule under load: time dilation.
//!
//! Sans-IO: it takes `now` and says when the next tick is due, which number it carries and
//! how much world time it simulates. Ticks are numbered from the world's tick origin in wall
//! time, so every zone calls the same moment by the same number and a client's snapshot ticks
//! keep growing across handoffs.
//!
//! A zone that keeps up runs one tick per period, each simulating one period of world time. A
//! zone whose tick takes longer does not run late ticks back to back to catch up (which would
//! send bursts of snapshots and starve its links) nor drop inputs: it starts the next tick
//! when the last one ends, numbered by the wall clock (skipping numbers), and each tick still
//! simulates one period, so the world's clock runs slower than wall time in that zone — time
//! dilation, as EVE Online does it. The *dilation* is world time over wall time (1: real
//! time). It never goes below [`DILATION_FLOOR`]: when ticks take longer than
//! `period / floor`, each simulates more world time (a larger step), so the world never falls
//! further behind than the floor says. A dilated zone reports its factor (metric
//! `worldmesh_zone_time_dilation`, the heartbeat, the status line) and its tick time, which
//! is what the coordinator's balancer moves cells away from.
//!
//! Timers a game keeps in tick numbers ([`crate::sim::components::Tick`]) follow the tick
//! numbers, so they keep wall time; movement, NPCs and the per-tick rules slow down.

use std::time::{Duration, Instant};

/// The slowest a dilated zone's world clock runs, as a fraction of wall time.
pub const DILATION_FLOOR: f32 = 0.25;

/// Weight of the newest tick in the reported dilation (an average over ~20 ticks).
const SMOOTHING: f32 = 0.05;

/// One tick as the pacer starts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Its number from the world's tick origin.
    pub tick: u32,
    /// Numbers skipped since the last tick (the zone was late).
    pub skipped: u32,
    /// World time it simulates, in periods (1 unless the dilation hit the floor).
    pub time_scale: f32,
}

#[derive(Debug)]
pub struct Pacer {
    period: Duration,
    origin: Instant,
    tick: u32,
    last_start: Option<Instant>,
    dilation: f32,
}

impl Pacer {
    /// A schedule whose tick 0 was at `origin`, starting with the tick after `now`.
    pub fn new(period: Duration, origin: Instant, now: Instant) -> Self {
        let mut p = Self {
            period,
            origin,
            tick: 0,
            last_start: None,
            dilation: 1.0,
        };
        p.tick = p.ticks_at(now);
        p
    }

    fn ticks_at(&self, t: Instant) -> u32 {
        // In whole nanoseconds: 0.15 s / 0.05 s in floating point is 2.999….
        (t.saturating_duration_since(self.origin).as_nanos() / self.period.as_nanos().max(1)) as u32
    }

    /// When the next tick is due; in the past when the zone is late (start it at once).
    pub fn deadline(&self) -> Instant {
        self.origin + self.period * (self.tick + 1)
    }

    /// Starts the next tick at `now` (at or after [`Self::deadline`]).
    pub fn start(&mut self, now: Instant) -> Step {
        let next = (self.tick + 1).max(self.ticks_at(now));
        let skipped = next - (self.tick + 1);
        self.tick = next;
        let interval = self
            .last_start
            .map_or(self.period, |last| now.saturating_duration_since(last));
        self.last_start = Some(now);
        // World time per wall time if this tick simulates one period.
        let raw = (self.period.as_secs_f32() / interval.as_secs_f32().max(1e-6)).min(1.0);
        let time_scale = if raw < DILATION_FLOOR {
            DILATION_FLOOR / raw
        } else {
            1.0
        };
        self.dilation += (raw.max(DILATION_FLOOR) - self.dilation) * SMOOTHING;
        Step {
            tick: next,
            skipped,
            time_scale,
        }
    }

    /// World time over wall time, averaged over the last ~20 ticks (1: real time).
    pub fn dilation(&self) -> f32 {
        self.dilation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(50);

    /// Runs `n` ticks that each take `cost`, starting each as soon as it is due.
    fn run(pacer: &mut Pacer, mut now: Instant, cost: Duration, n: usize) -> (Instant, Vec<Step>) {
        let mut steps = Vec::new();
        for _ in 0..n {
            now = now.max(pacer.deadline());
            steps.push(pacer.start(now));
            now += cost;
        }
        (now, steps)
    }

    #[test]
    fn a_zone_that_keeps_up_runs_in_real_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, t0, t0);
        let (_, steps) = run(&mut p, t0, Duration::from_millis(20), 100);
        assert!(steps.windows(2).all(|w| w[1].tick == w[0].tick + 1));
        assert!(steps.iter().all(|s| s.skipped == 0 && s.time_scale == 1.0));
        assert!((p.dilation() - 1.0).abs() < 1e-3);
    }

    #[test]
    fn a_slow_tick_dilates_time_without_bursts_of_late_ticks() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, t0, t0);
        // Ticks of 100 ms: two periods each. The numbers follow the wall clock (one skipped
        // each time), each tick simulates one period: the world runs at half speed.
        let (_, steps) = run(&mut p, t0, Duration::from_millis(100), 200);
        let last = steps.last().unwrap();
        assert_eq!(last.tick, steps[0].tick + 2 * 199);
        assert!(
            steps[1..]
                .iter()
                .all(|s| s.skipped == 1 && s.time_scale == 1.0)
        );
        assert!((p.dilation() - 0.5).abs() < 0.01, "{}", p.dilation());
    }

    #[test]
    fn the_world_clock_never_runs_slower_than_the_floor() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, t0, t0);
        // Ticks of 1 s (20 periods): without the floor the world would run at 1/20 speed.
        let (_, steps) = run(&mut p, t0, Duration::from_secs(1), 100);
        let world_periods: f32 = steps[1..].iter().map(|s| s.time_scale).sum();
        let wall_periods = (steps.last().unwrap().tick - steps[0].tick) as f32;
        let ratio = world_periods / wall_periods;
        assert!((ratio - DILATION_FLOOR).abs() < 0.01, "{ratio}");
        assert!((p.dilation() - DILATION_FLOOR).abs() < 0.01);
    }

    #[test]
    fn one_hitch_costs_world_time_once_and_the_schedule_recovers() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, t0, t0);
        let (now, _) = run(&mut p, t0, Duration::from_millis(10), 10);
        let (now, hitch) = run(&mut p, now, Duration::from_millis(400), 1);
        let (_, after) = run(&mut p, now, Duration::from_millis(10), 10);
        assert_eq!(hitch[0].skipped, 0);
        // The first tick after the hitch skips the numbers it missed; then one per period.
        assert_eq!(after[0].skipped, 7);
        assert!(after[1..].iter().all(|s| s.skipped == 0));
    }
}
