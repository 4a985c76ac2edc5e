//! Snapshot system: one frame per observer per tick, the observer first, then what it sees,
//! nearest first, capped so the frame fits one datagram.

use bevy_ecs::prelude::*;
use worldmesh_protocol::{codec, EntityKind, EntityState, ServerMessage, Snapshot};

use super::components::{CharacterRecord, Intent, Motion, Player, Position, SimSettings, Tick};
use super::interest::Grid;
use super::Outbox;

/// Scratch space reused across observers and ticks.
#[derive(Resource, Default)]
pub struct SnapshotScratch {
    near: Vec<(f32, Entity)>,
}

#[allow(clippy::too_many_arguments)]
pub fn build_snapshots(
    tick: Res<Tick>,
    settings: Res<SimSettings>,
    grid: Res<Grid>,
    mut scratch: ResMut<SnapshotScratch>,
    mut outbox: ResMut<Outbox>,
    observers: Query<(Entity, &Player, &Position, &Intent)>,
    states: Query<(&CharacterRecord, &Position, &Motion, Has<Player>)>,
) {
    let scratch = &mut *scratch;
    for (me, player, &at, intent) in &observers {
        scratch.near.clear();
        grid.for_each_near(at, settings.view_radius, |e, _, d2| {
            if e != me {
                scratch.near.push((d2, e));
            }
        });
        scratch.near.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let room = settings.snapshot_max_entities.saturating_sub(1);
        let mut entities = Vec::with_capacity(1 + scratch.near.len().min(room));
        for e in std::iter::once(me).chain(scratch.near.iter().take(room).map(|&(_, e)| e)) {
            if let Ok((rec, pos, motion, is_player)) = states.get(e) {
                entities.push(EntityState {
                    id: rec.id,
                    kind: if is_player { EntityKind::Player } else { EntityKind::Npc },
                    x: pos.x,
                    y: pos.y,
                    heading: motion.heading,
                    speed: motion.speed,
                });
            }
        }
        let msg = ServerMessage::Snapshot(Snapshot { tick: tick.0, last_input_seq: intent.last_seq, entities });
        match codec::encode_to_vec(&msg) {
            Ok(frame) => outbox.push(player.link, player.player_id, frame, false),
            Err(e) => tracing::error!(error = %e, player = player.player_id, "snapshot does not fit a frame"),
        }
    }
}
