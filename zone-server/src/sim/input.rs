//! Input system: applies the movement intents received since the last tick.

use bevy_ecs::prelude::*;
use worldmesh_protocol::{Input, MAX_SPEED};

use super::components::{Intent, Player};
use super::snapshot::Observer;
use super::PlayerIndex;

/// Inputs received since the last tick, in arrival order.
#[derive(Resource, Default)]
pub struct PendingInputs(pub Vec<(u64, Input)>);

/// True if `a` is newer than `b` in wrapping sequence space.
pub fn seq_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

pub fn apply_inputs(mut pending: ResMut<PendingInputs>, index: Res<PlayerIndex>, mut intents: Query<(&mut Intent, &mut Observer), With<Player>>) {
    for (player_id, input) in pending.0.drain(..) {
        let Some(&entity) = index.0.get(&player_id) else { continue };
        let Ok((mut intent, mut observer)) = intents.get_mut(entity) else { continue };
        // Even a stale input carries a useful ack: the newest snapshot the client holds.
        observer.encoder.ack(input.ack_tick);
        // Datagrams reorder: an older input than one already applied is ignored.
        if intent.any && !seq_newer(input.seq, intent.last_seq) {
            continue;
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
