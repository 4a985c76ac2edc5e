//! Input system: validates and applies the movement intents received since the last tick.
//!
//! Rules, each rejection counted per player and in `worldmesh_zone_inputs_rejected_total`
//! by `reason`:
//! - at most [`MAX_QUEUED_INPUTS`] inputs wait per player between two ticks; more are a flood
//!   and the oldest are dropped (`flood`);
//! - at most one input per player is applied per tick: the newest; older ones are superseded
//!   (not a rejection: clients may send faster than the tick rate);
//! - an input older than the last applied one (datagrams reorder) is ignored (`stale`);
//! - a requested speed above [`MAX_SPEED`] is clamped (`speed_hack`); above
//!   [`TELEPORT_FACTOR`] × `MAX_SPEED` the input is refused outright (`teleport`): no client
//!   asks for that by accident.

use std::collections::VecDeque;

use bevy_ecs::prelude::*;
use worldmesh_protocol::{Input, MAX_SPEED};

use super::components::{Intent, Player};
use super::snapshot::Observer;

/// Inputs that may wait for one tick per player: a client at 60 Hz sends 3 per 20 Hz tick.
pub const MAX_QUEUED_INPUTS: usize = 4;
/// A requested speed this many times `MAX_SPEED` is an attempt to teleport.
pub const TELEPORT_FACTOR: f32 = 5.0;

/// Why an input was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Flood,
    Stale,
    SpeedHack,
    Teleport,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Flood => "flood",
            Rejection::Stale => "stale",
            Rejection::SpeedHack => "speed_hack",
            Rejection::Teleport => "teleport",
        }
    }
}

/// How many of one player's inputs were refused, by reason (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    pub flood: u64,
    pub stale: u64,
    pub speed_hack: u64,
    pub teleport: u64,
}

/// A player's inputs waiting for the next tick, and its rejection counts.
#[derive(Component, Debug, Default)]
pub struct InputQueue {
    queue: VecDeque<Input>,
    pub rejected: Rejections,
}

impl InputQueue {
    fn reject(&mut self, why: Rejection) {
        let r = &mut self.rejected;
        match why {
            Rejection::Flood => r.flood += 1,
            Rejection::Stale => r.stale += 1,
            Rejection::SpeedHack => r.speed_hack += 1,
            Rejection::Teleport => r.teleport += 1,
        }
        metrics::counter!("worldmesh_zone_inputs_rejected_total", "reason" => why.as_str())
            .increment(1);
    }

    /// Queues an input, dropping the oldest beyond the bound.
    pub fn push(&mut self, input: Input) {
        if self.queue.len() == MAX_QUEUED_INPUTS {
            self.queue.pop_front();
            self.reject(Rejection::Flood);
        }
        self.queue.push_back(input);
    }
}

/// True if `a` is newer than `b` in wrapping sequence space.
pub fn seq_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

#[allow(clippy::type_complexity)]
pub fn apply_inputs(
    mut players: Query<
        (
            &mut InputQueue,
            &mut Intent,
            &mut Observer,
            Has<super::components::Frozen>,
        ),
        With<Player>,
    >,
) {
    for (mut queue, mut intent, mut observer, frozen) in &mut players {
        if queue.queue.is_empty() {
            continue;
        }
        // The newest input by seq wins; every input still carries a useful ack.
        let mut newest: Option<Input> = None;
        while let Some(input) = queue.queue.pop_front() {
            observer.encoder.ack(input.ack_tick);
            if newest.is_none_or(|n| seq_newer(input.seq, n.seq)) {
                newest = Some(input);
            }
        }
        // A character frozen for a handoff keeps its view (its acks count) but not its
        // intent: what it would do is decided where it lands (PROTOCOL.md: inputs sent during
        // a handoff are dropped).
        if frozen {
            continue;
        }
        let Some(input) = newest else { continue };
        if intent.any && !seq_newer(input.seq, intent.last_seq) {
            queue.reject(Rejection::Stale);
            continue;
        }
        if input.speed > MAX_SPEED * TELEPORT_FACTOR {
            queue.reject(Rejection::Teleport);
            continue;
        }
        if input.speed > MAX_SPEED {
            queue.reject(Rejection::SpeedHack);
        }
        intent.heading = input.heading;
        intent.speed = input.speed.clamp(0.0, MAX_SPEED);
        intent.last_seq = input.seq;
        intent.any = true;
    }
}

#[cfg(test)]
mod tests {
    use super::seq_newer;

    #[test]
    fn wrapping_sequence_order() {
        assert!(seq_newer(1, 0));
        assert!(!seq_newer(0, 1));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0, u32::MAX));
        assert!(!seq_newer(u32::MAX, 0));
    }
}
