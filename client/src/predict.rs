//! Client-side prediction and reconciliation, as a game client does it: each input moves the
//! player's own character at once by the server's movement rules (PROTOCOL.md §4, Input);
//! each snapshot gives the authoritative state after the input `last_input_seq`, and the
//! client replays its newer inputs on top of it. The distance between what the client had
//! predicted and the reconciled position is the *correction error*: what a player would see
//! as a snap. No I/O; the bot feeds it.

use std::collections::VecDeque;

use worldmesh_protocol::{MAX_SPEED, WorldBounds};

/// Largest speed change per second (PROTOCOL.md: 30 m/s²).
const ACCELERATION: f32 = 30.0;
/// Inputs kept for replay: 3 s at 20 Hz, far beyond a round trip.
const PENDING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    pub x: f32,
    pub y: f32,
    pub speed: f32,
}

pub struct Predictor {
    dt: f32,
    bounds: WorldBounds,
    /// Inputs sent and not yet acknowledged: (seq, heading, requested speed).
    pending: VecDeque<(u32, f32, f32)>,
    predicted: Option<Motion>,
}

/// `a` is newer than `b` in wrapping sequence order.
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

impl Predictor {
    pub fn new(tick_rate_hz: u16, bounds: WorldBounds) -> Self {
        Self {
            dt: 1.0 / f32::from(tick_rate_hz.max(1)),
            bounds,
            pending: VecDeque::with_capacity(PENDING),
            predicted: None,
        }
    }

    /// The server's movement rule for one tick of one input.
    fn step(&self, m: Motion, heading: f32, requested: f32) -> Motion {
        let target = requested.clamp(0.0, MAX_SPEED);
        let max_change = ACCELERATION * self.dt;
        let speed = m.speed + (target - m.speed).clamp(-max_change, max_change);
        Motion {
            x: (m.x + heading.cos() * speed * self.dt).clamp(self.bounds.min_x, self.bounds.max_x),
            y: (m.y + heading.sin() * speed * self.dt).clamp(self.bounds.min_y, self.bounds.max_y),
            speed,
        }
    }

    /// An input was sent: predict its effect at once.
    pub fn on_input(&mut self, seq: u32, heading: f32, speed: f32) {
        if self.pending.len() == PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((seq, heading, speed));
        if let Some(m) = self.predicted {
            self.predicted = Some(self.step(m, heading, speed));
        }
    }

    /// A snapshot showed the character at `server` after applying `last_input_seq`: replay the
    /// newer inputs on top. Returns the correction (metres) against the previous prediction,
    /// `None` for the first snapshot (nothing predicted yet).
    pub fn on_snapshot(&mut self, last_input_seq: u32, server: Motion) -> Option<f32> {
        while self
            .pending
            .front()
            .is_some_and(|(s, _, _)| !newer(*s, last_input_seq))
        {
            self.pending.pop_front();
        }
        let mut m = server;
        for &(_, heading, speed) in &self.pending {
            m = self.step(m, heading, speed);
        }
        let error = self
            .predicted
            .map(|p| ((p.x - m.x).powi(2) + (p.y - m.y).powi(2)).sqrt());
        self.predicted = Some(m);
        error
    }

    pub fn predicted(&self) -> Option<Motion> {
        self.predicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORLD: WorldBounds = WorldBounds {
        min_x: 0.0,
        min_y: 0.0,
        max_x: 1000.0,
        max_y: 1000.0,
    };

    #[test]
    fn a_server_that_agrees_causes_no_correction() {
        // A "server" running the same rule one tick behind the client.
        let mut client = Predictor::new(20, WORLD);
        let server = Predictor::new(20, WORLD);
        let mut truth = Motion {
            x: 500.0,
            y: 500.0,
            speed: 0.0,
        };
        assert_eq!(client.on_snapshot(0, truth), None);
        for seq in 1..=40u32 {
            let heading = seq as f32 * 0.05;
            client.on_input(seq, heading, 8.0);
            if seq >= 2 {
                // The server applied input seq-1.
                let h = (seq - 1) as f32 * 0.05;
                truth = server.step(truth, h, 8.0);
                let err = client.on_snapshot(seq - 1, truth).unwrap();
                assert!(err < 1e-3, "tick {seq}: corrected {err} m");
            }
        }
        assert!(client.predicted().unwrap().speed > 7.9);
    }

    #[test]
    fn a_disagreeing_server_is_measured_and_wins() {
        let mut client = Predictor::new(20, WORLD);
        client.on_snapshot(
            0,
            Motion {
                x: 100.0,
                y: 100.0,
                speed: 0.0,
            },
        );
        client.on_input(1, 0.0, 10.0);
        // The server says the character did not move (e.g. it hit a wall).
        let err = client
            .on_snapshot(
                1,
                Motion {
                    x: 100.0,
                    y: 100.0,
                    speed: 0.0,
                },
            )
            .unwrap();
        assert!((err - 1.5 / 20.0).abs() < 1e-4, "{err}");
        assert_eq!(client.predicted().unwrap().x, 100.0);
        // Wrapping sequence numbers.
        assert!(newer(0, u32::MAX));
        assert!(!newer(u32::MAX, 0));
    }
}
