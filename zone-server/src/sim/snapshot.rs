//! Snapshot system: one delta-compressed frame per observer per tick.
//!
//! Interest uses hysteresis: an entity enters an observer's view within `view_radius` and
//! leaves only beyond `view_radius × (1 + HYSTERESIS)`, so an entity pacing along the edge does
//! not flicker in and out. Each visible entity's priority gain favours the near and the fast;
//! the observer's own entity always comes first. The [`ObserverEncoder`] then writes what fits
//! the byte budget (see `worldmesh_protocol::snapshot`).

use bevy_ecs::prelude::*;
use worldmesh_game::Synced;
use worldmesh_protocol::snapshot::{FieldValue, ObserverEncoder, QEntity};
use worldmesh_protocol::{ServerMessage, codec};

use super::Outbox;
use super::components::{Intent, Player, Position, SimSettings, Tick};
use super::interest::Grid;

/// Extra radius, as a fraction of the view radius, an entity must go beyond to leave a view.
/// 10 % of 100 m is 10 m: more than a running player covers between two acks.
pub const HYSTERESIS: f32 = 0.10;

/// Bytes of a snapshot frame around its body: header (5), variant (1), tick, baseline and
/// input seq (≤ 5 each as varints), body length (≤ 3).
pub const ENVELOPE_BYTES: usize = 24;

/// The observer's encoder: what its client holds, slot assignment, priorities.
#[derive(Component, Default)]
pub struct Observer {
    pub encoder: ObserverEncoder,
    /// Send nothing for ticks up to this one: the zone that handed the player over already
    /// sent them, and a client's snapshot ticks must keep growing.
    pub floor: u32,
}

impl Observer {
    /// An observer taking over a client whose last snapshot (from another zone) was `tick`.
    pub fn after_handoff(tick: u32) -> Self {
        let mut encoder = ObserverEncoder::default();
        encoder.ignore_acks_before(tick + 1);
        Self {
            encoder,
            floor: tick,
        }
    }
}

/// Totals of the last tick's snapshots, for metrics and the benchmark.
#[derive(Resource, Default, Debug, Clone, Copy)]
pub struct SnapshotStats {
    pub observers: u64,
    pub visible: u64,
    /// Visible entities whose state changed since the client's baseline.
    pub changed: u64,
    pub written: u64,
    pub bytes: u64,
}

/// Scratch space reused across observers and ticks.
#[derive(Resource, Default)]
pub struct SnapshotScratch {
    visible: Vec<(QEntity, f32)>,
    /// The ECS entity of each `visible` entry, where its replicated fields are.
    sources: Vec<Entity>,
}

#[allow(clippy::too_many_arguments)]
pub fn build_snapshots(
    tick: Res<Tick>,
    settings: Res<SimSettings>,
    grid: Res<Grid>,
    mut scratch: ResMut<SnapshotScratch>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<SnapshotStats>,
    // Frozen characters (mid-handoff) observe too: a handoff normally lasts a tick, but one
    // waiting for a coordinator that is down may last seconds, and its player must keep seeing
    // the world. The gateway passes only the routed zone's snapshots, so the source's and the
    // target's never interleave.
    mut observers: Query<(Entity, &Player, &Position, &Intent, &mut Observer)>,
    synced: Query<&Synced>,
) {
    let enter = settings.view_radius;
    let leave = settings.view_radius * (1.0 + HYSTERESIS);
    let body_budget = settings
        .snapshot_budget_bytes
        .saturating_sub(ENVELOPE_BYTES);
    let SnapshotScratch { visible, sources } = &mut *scratch;
    let no_fields: &[FieldValue] = &[];
    *stats = SnapshotStats::default();
    for (me, player, &at, intent, mut observer) in &mut observers {
        if tick.0 <= observer.floor {
            continue;
        }
        visible.clear();
        sources.clear();
        let encoder = &observer.encoder;
        grid.for_each_near(at, leave, |seen, d2| {
            let d = d2.sqrt();
            if d > enter && !encoder.is_visible(seen.q.id) {
                return;
            }
            // Near and fast entities gain priority fastest; yourself above all.
            let gain = if seen.entity == me {
                1.0e6
            } else {
                (1.0 + seen.q.speed as f32 / 10.0) / (1.0 + d / 10.0)
            };
            visible.push((seen.q, gain));
            sources.push(seen.entity);
        });
        let sources = &*sources;
        let fields = |i: usize| {
            synced
                .get(sources[i])
                .map_or(no_fields, |s| &s.replicated[..])
        };
        let (snapshot, s) =
            observer
                .encoder
                .snapshot(tick.0, intent.last_seq, visible, fields, body_budget);
        match codec::encode_to_vec(&ServerMessage::Snapshot(snapshot)) {
            Ok(frame) => {
                stats.observers += 1;
                stats.visible += s.visible as u64;
                stats.changed += s.changed as u64;
                stats.written += s.written as u64;
                stats.bytes += frame.len() as u64;
                outbox.push(player.link, player.player_id, frame, false);
            }
            Err(e) => {
                tracing::error!(error = %e, player = player.player_id.0, "snapshot does not fit a frame");
            }
        }
    }
    metrics::counter!("worldmesh_zone_snapshot_bytes_total").increment(stats.bytes);
}
