//! Snapshot system: one delta-compressed frame per observer per tick.
//!
//! Interest uses hysteresis: an entity enters an observer's view within `view_radius` and
//! leaves only beyond `view_radius × (1 + HYSTERESIS)`, so an entity pacing along the edge does
//! not flicker in and out. Each visible entity's priority gain favours the near and the fast;
//! the observer's own entity always comes first. The [`ObserverEncoder`] then writes what fits
//! the byte budget (see `worldmesh_protocol::snapshot`).
//!
//! Crowds degrade gracefully (see [`SnapshotConfig`]):
//!
//! - **A cap on the replicated set.** An observer replicates itself and at most
//!   `max_visible` others: the nearest, with the same hysteresis as the radius (an entity
//!   already replicated ranks as if [`HYSTERESIS`] nearer), so membership at the edge of the
//!   set does not flap. Without it each of 1,000 players in one spot ranks and encodes ~1,000
//!   entities every tick; with it the work per observer is bounded whatever the crowd.
//! - **Level of detail by distance.** Within a quarter of the view radius an entity is due an
//!   update every tick, within half every 2nd tick, beyond every 4th ([`LOD_TIERS`]),
//!   staggered by id so the far ones do not all refresh on the same tick. An entity new to the
//!   view is always sent.
//! - **Observers in parallel.** Observers are independent: with `threads` > 1 they are split
//!   into contiguous chunks encoded on scoped threads, and the frames are merged in the
//!   observers' order, so the output is the same as on one thread.

use bevy_ecs::prelude::*;
use worldmesh_game::Synced;
use worldmesh_protocol::snapshot::{FieldValue, ObserverEncoder, Visible};
use worldmesh_protocol::{ServerMessage, codec};

use super::components::{Intent, Player, Position, SimSettings, Tick};
use super::interest::{Grid, Seen};
use super::{OutFrame, Outbox};

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

/// How often an entity is due an update by its distance from the observer: within
/// `fraction × view_radius`, every `every` ticks (the last tier covers the rest).
pub const LOD_TIERS: [(f32, u32); 3] = [(0.25, 1), (0.5, 2), (f32::INFINITY, 4)];

/// Fewer observers than this per thread are not worth a thread's hand-off.
const MIN_OBSERVERS_PER_THREAD: usize = 64;

/// How each observer's snapshot is chosen and built (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Most entities an observer replicates besides itself, the nearest (0: no cap).
    pub max_visible: usize,
    /// Far entities refresh less often ([`LOD_TIERS`]).
    pub lod: bool,
    /// Threads that encode observers' snapshots, the tick's own included (1: the tick
    /// thread alone, for one-core deployments).
    pub threads: usize,
}

/// The default cap: 128 entities of at most 67 bits each (a delta that does not fit the
/// small form, with its slot gap) fill 8,576 of the 8,608 bits a 1,100-byte datagram
/// leaves for the body, so in the steady state every due entity fits and none starves.
pub const DEFAULT_MAX_VISIBLE: usize = 128;

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            max_visible: DEFAULT_MAX_VISIBLE,
            lod: true,
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
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
    /// Entities left out of views by the cap (in range, beyond the nearest `max_visible`).
    pub capped: u64,
    /// Threads that encoded this tick's snapshots.
    pub threads: u64,
}

impl SnapshotStats {
    fn add(&mut self, o: &SnapshotStats) {
        self.observers += o.observers;
        self.visible += o.visible;
        self.changed += o.changed;
        self.written += o.written;
        self.bytes += o.bytes;
        self.capped += o.capped;
    }
}

/// One thread's scratch space and output, reused across ticks.
#[derive(Default)]
struct Worker {
    /// Frames encoded this tick, with their observer's place in the query.
    frames: Vec<(u32, OutFrame)>,
    /// The most entities one observer had in range lately: the capacity to start with.
    near_capacity: usize,
    visible: Vec<Visible>,
    sources: Vec<Entity>,
    stats: SnapshotStats,
}

/// Scratch space reused across observers and ticks, one per thread.
#[derive(Resource, Default)]
pub struct SnapshotScratch {
    workers: Vec<Worker>,
    /// Snapshot rounds so far: what level of detail counts in, because a dilated zone's tick
    /// numbers skip (every 2nd number could be every number of one parity).
    rounds: u64,
}

/// What one observer's encode needs besides its own state.
struct Shared<'a, 'w, 's> {
    tick: u32,
    round: u64,
    settings: &'a SimSettings,
    config: SnapshotConfig,
    grid: &'a Grid,
    synced: &'a Query<'w, 's, &'static Synced>,
}

type ObserverItem<'a> = (Entity, &'a Player, Position, u32, Mut<'a, Observer>);

#[allow(clippy::too_many_arguments)]
pub fn build_snapshots(
    tick: Res<Tick>,
    settings: Res<SimSettings>,
    config: Res<SnapshotSettings>,
    grid: Res<Grid>,
    mut scratch: ResMut<SnapshotScratch>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<SnapshotStats>,
    // Frozen characters (mid-handoff) observe too: a handoff normally lasts a tick, but one
    // waiting for a coordinator that is down may last seconds, and its player must keep seeing
    // the world. The gateway passes only the routed zone's snapshots, so the source's and the
    // target's never interleave.
    mut observers: Query<(Entity, &Player, &Position, &Intent, &mut Observer)>,
    synced: Query<&'static Synced>,
) {
    let items: Vec<ObserverItem> = observers
        .iter_mut()
        .filter(|(.., o)| tick.0 > o.floor)
        .map(|(me, player, &at, intent, observer)| (me, player, at, intent.last_seq, observer))
        .collect();
    scratch.rounds += 1;
    let shared = Shared {
        tick: tick.0,
        round: scratch.rounds,
        settings: &settings,
        config: config.0,
        grid: &grid,
        synced: &synced,
    };
    let threads = config
        .0
        .threads
        .clamp(1, (items.len() / MIN_OBSERVERS_PER_THREAD).max(1));
    let workers = &mut scratch.workers;
    if workers.len() < threads {
        workers.resize_with(threads, Worker::default);
    }
    // Dealt round-robin, not in contiguous chunks: observers next to each other in the query
    // often stand next to each other (a crowd that logged in together), and a thread given
    // the whole crowd would finish long after the other.
    let mut hands: Vec<Vec<(u32, ObserverItem)>> = (0..threads)
        .map(|_| Vec::with_capacity(items.len() / threads + 1))
        .collect();
    for (i, item) in items.into_iter().enumerate() {
        hands[i % threads].push((i as u32, item));
    }
    std::thread::scope(|scope| {
        let mut work = hands.iter_mut().zip(workers.iter_mut());
        // This thread takes the first hand; one scoped thread per other hand.
        let first = work.next();
        for (hand, worker) in work {
            let shared = &shared;
            scope.spawn(move || encode_all(shared, hand, worker));
        }
        if let Some((hand, worker)) = first {
            encode_all(&shared, hand, worker);
        }
    });
    *stats = SnapshotStats {
        threads: threads as u64,
        ..SnapshotStats::default()
    };
    // Frames in the observers' order, whatever the threads: the output does not depend on
    // how many encoded it.
    let mut frames = Vec::new();
    for worker in &mut workers[..threads] {
        stats.add(&worker.stats);
        frames.append(&mut worker.frames);
    }
    frames.sort_unstable_by_key(|(i, _)| *i);
    outbox.0.extend(frames.into_iter().map(|(_, f)| f));
    metrics::counter!("worldmesh_zone_snapshot_bytes_total").increment(stats.bytes);
    metrics::counter!("worldmesh_zone_snapshot_capped_total").increment(stats.capped);
}

/// The snapshot settings as a resource.
#[derive(Resource, Debug, Clone, Copy, Default)]
pub struct SnapshotSettings(pub SnapshotConfig);

fn encode_all(shared: &Shared, hand: &mut [(u32, ObserverItem)], worker: &mut Worker) {
    worker.stats = SnapshotStats::default();
    for (i, (me, player, at, last_seq, observer)) in hand {
        if let Some(frame) = encode_one(shared, *me, player, *at, *last_seq, observer, worker) {
            worker.frames.push((*i, frame));
        }
    }
}

/// Whether an entity `d` metres away is due an update in snapshot round `round`
/// ([`LOD_TIERS`]).
fn due(round: u64, id: u64, d: f32, view_radius: f32) -> bool {
    let every = LOD_TIERS
        .iter()
        .find(|(fraction, _)| d <= fraction * view_radius)
        .map_or(1, |&(_, every)| every);
    // Staggered by id: the far entities of a view refresh on different ticks.
    round.wrapping_add(id).is_multiple_of(every as u64)
}

fn encode_one(
    shared: &Shared,
    me: Entity,
    player: &Player,
    at: Position,
    last_seq: u32,
    observer: &mut Observer,
    worker: &mut Worker,
) -> Option<OutFrame> {
    let Shared {
        tick,
        round,
        settings,
        config,
        grid,
        synced,
    } = *shared;
    let enter = settings.view_radius;
    let leave = settings.view_radius * (1.0 + HYSTERESIS);
    let body_budget = settings
        .snapshot_budget_bytes
        .saturating_sub(ENVELOPE_BYTES);
    let Worker {
        near_capacity,
        visible,
        sources,
        stats,
        ..
    } = worker;
    // In range: the squared distance and the grid's entry. No square root and no lookup in
    // the encoder for the inner disc, which holds most of a crowd.
    let mut near: Vec<(f32, &Seen)> = Vec::with_capacity(*near_capacity);
    let encoder = &observer.encoder;
    let enter2 = enter * enter;
    grid.for_each_near(at, leave, |seen, d2| {
        if d2 > enter2 && !encoder.is_visible(seen.q.id) {
            return;
        }
        // The observer ranks first whatever else stands on its spot.
        near.push((if seen.entity == me { -1.0 } else { d2 }, seen));
    });
    *near_capacity = (*near_capacity).max(near.len());
    let cap = config.max_visible;
    if cap > 0 && near.len() > cap + 1 {
        stats.capped += (near.len() - cap - 1) as u64;
        // First by plain distance to the nearest 1.5 × cap (cheap), then among those with
        // hysteresis: one already shown ranks as if HYSTERESIS nearer. In an even crowd the
        // (1.5 × cap)-th is 1.22 × as far as the cap-th, so no shown entity beyond the first
        // cut could have ranked within the cap.
        let first = cap + cap / 2 + 1;
        if near.len() > first {
            near.select_nth_unstable_by(first, |a, b| a.0.total_cmp(&b.0));
            near.truncate(first);
        }
        let shrink = 1.0 / ((1.0 + HYSTERESIS) * (1.0 + HYSTERESIS));
        for n in &mut near {
            if n.0 > 0.0 && encoder.is_visible(n.1.q.id) {
                n.0 *= shrink;
            }
        }
        near.select_nth_unstable_by(cap, |a, b| a.0.total_cmp(&b.0));
        near.truncate(cap + 1);
    }
    visible.clear();
    sources.clear();
    for &(_, seen) in &near {
        let d = ((seen.pos.x - at.x).powi(2) + (seen.pos.y - at.y).powi(2)).sqrt();
        // Near and fast entities gain priority fastest; yourself above all.
        let (gain, due) = if seen.entity == me {
            (1.0e6, true)
        } else {
            let gain = (1.0 + seen.q.speed as f32 / 10.0) / (1.0 + d / 10.0);
            (gain, !config.lod || due(round, seen.q.id, d, enter))
        };
        visible.push(Visible {
            entity: seen.q,
            gain,
            due,
        });
        sources.push(seen.entity);
    }
    let sources = &*sources;
    let no_fields: &[FieldValue] = &[];
    let fields = |i: usize| {
        synced
            .get(sources[i])
            .map_or(no_fields, |s| &s.replicated[..])
    };
    let (snapshot, s) = observer
        .encoder
        .snapshot(tick, last_seq, visible, fields, body_budget);
    match codec::encode_to_vec(&ServerMessage::Snapshot(snapshot)) {
        Ok(frame) => {
            stats.observers += 1;
            stats.visible += s.visible as u64;
            stats.changed += s.changed as u64;
            stats.written += s.written as u64;
            stats.bytes += frame.len() as u64;
            Some(OutFrame {
                link: player.link,
                player_id: player.player_id,
                frame,
                reliable: false,
            })
        }
        Err(e) => {
            tracing::error!(error = %e, player = player.player_id.0, "snapshot does not fit a frame");
            None
        }
    }
}
