//! `zone-bench`: one zone's tick, in-process, no network.
//!
//! Spawns `--entities` moving entities spread uniformly over an `--area` square — `--observers`
//! of them players (they send a new random-walk input every tick and acknowledge the snapshot
//! of two ticks before, like a client ~50 ms away), the rest wandering NPCs — and runs
//! `--ticks` ticks as fast as it can, timing each whole tick (inputs, movement, interest,
//! snapshot encoding, the last on `--threads` threads). Prints one JSON line.
//!
//! The first `WARMUP_TICKS` ticks are not measured: every observer starts with full updates
//! of everything it sees, which is the login cost, not the steady state.
//!
//! `--crowd N`: the first N observers stand within a 20 m circle in the middle of the area
//! (and walk back into it when they stray), the rest as before: the crowd in one spot that
//! costs every observer × everything it sees.
//!
//! `--max-visible N` (0: no cap), `--no-lod` and `--threads N` set how snapshots are chosen
//! and built (see `worldmesh_zone::sim::snapshot`); their defaults are the zone's. With all
//! three at `0`, on, `1` the tick does what it did before crowds were capped.
//!
//! Starvation is measured from the client side: `--sample N` observers (evenly spaced over
//! the observers, so in and out of the crowd when there is one) decode their snapshots like clients, and for every entity in
//! such a view the bench records the last tick its client state matched the server's; the
//! report's `max_ticks_without_update` is the longest any visible entity went stale. Decoding
//! happens between ticks and is not timed.
//!
//! `--game arena` runs the example game: the NPCs are its monsters (they strike players they
//! reach), and every player decodes its own snapshots like a client and, once a second,
//! strikes the nearest monster it sees within melee reach or shoots the nearest within bow
//! range. Decoding and choosing targets happen between ticks and are not timed. It lives in
//! the `worldmesh` crate because that one knows the games; it measures the zone's tick alone.

use std::time::Instant;

use clap::Parser;
use std::collections::HashMap;
use worldmesh_game::action::request;
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::snapshot::{Quantizer, SnapshotDecoder};
use worldmesh_protocol::{EntityKind, Input, ServerMessage, WorldBounds, codec};
use worldmesh_zone::character::Character;
use worldmesh_zone::sim::snapshot::SnapshotConfig;
use worldmesh_zone::sim::{NPC_ID_BASE, Sim, SimConfig};

/// Ticks excluded from the figures (see the module doc): 40 ticks is 2 s at 20 Hz.
const WARMUP_TICKS: u32 = 40;

/// Size of one entity's full, uncompressed state: id (8), kind (1), x, y, heading, speed (4 each).
const NAIVE_ENTITY_BYTES: f64 = 25.0;

#[derive(Parser, Debug)]
#[command(about = "Benchmark one zone's tick (no network)")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    #[arg(long, default_value_t = 2_000)]
    observers: usize,
    #[arg(long, default_value_t = 400)]
    ticks: u32,
    /// Side of the square world, metres.
    #[arg(long, default_value_t = 2000.0)]
    area: f32,
    /// View radius, metres.
    #[arg(long, default_value_t = 100.0)]
    radius: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The game the zone runs: `none` or `arena` (players and monsters fight).
    #[arg(long, default_value = "none")]
    game: String,
    /// Observers packed in a 20 m circle in the middle (see the module doc).
    #[arg(long, default_value_t = 0)]
    crowd: usize,
    /// Most entities an observer replicates besides itself (0: no cap).
    #[arg(long, default_value_t = SnapshotConfig::default().max_visible)]
    max_visible: usize,
    /// Far entities update every tick (level of detail off).
    #[arg(long)]
    no_lod: bool,
    /// Threads encoding snapshots (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Observers whose snapshots are decoded to measure staleness (see the module doc).
    #[arg(long, default_value_t = 16)]
    sample: usize,
}

/// Radius of the `--crowd` circle, metres.
const CROWD_RADIUS: f32 = 20.0;

/// A bench player's client side when it fights: what it sees, and when it acts next.
struct Fighter {
    decoder: SnapshotDecoder,
    seq: u32,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = Args::parse();
    let observers = args.observers.min(args.entities);
    let Some(game) = worldmesh::games::by_name(&args.game) else {
        eprintln!(
            "unknown game {:?}: one of {}",
            args.game,
            worldmesh::games::NAMES.join(", ")
        );
        std::process::exit(2);
    };
    let fights = args.game == "arena";
    let bounds = WorldBounds {
        min_x: 0.0,
        min_y: 0.0,
        max_x: args.area,
        max_y: args.area,
    };
    let quantizer = Quantizer::new(bounds);
    let mut sim = Sim::new(&SimConfig {
        tick_rate_hz: 20,
        bounds,
        view_radius: args.radius,
        snapshot_budget_bytes: 1100,
        chat_radius: 50.0,
        collision: Default::default(),
        game,
        snapshots: SnapshotConfig {
            max_visible: args.max_visible,
            lod: !args.no_lod,
            threads: match args.threads {
                0 => SnapshotConfig::default().threads,
                n => n,
            },
        },
    })
    .expect("the repository's games register cleanly");
    let mut rng = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64*: deterministic for a seed.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut headings = Vec::with_capacity(observers);
    let middle = args.area / 2.0;
    for i in 0..args.entities {
        let (mut x, mut y) = (next() * args.area, next() * args.area);
        if i < args.crowd.min(observers) {
            let (a, r) = (next() * std::f32::consts::TAU, CROWD_RADIUS * next().sqrt());
            (x, y) = (middle + r * a.cos(), middle + r * a.sin());
        }
        if i < observers {
            let c = Character {
                id: EntityId(i as u64 + 1),
                name: format!("p{i}"),
                x,
                y,
                heading: 0.0,
                epoch: Epoch(0),
                version: 0,
                game: Default::default(),
            };
            sim.spawn_player(LinkId(0), PlayerId(i as u64 + 1), &c);
            headings.push(next() * std::f32::consts::TAU);
        } else {
            sim.spawn_npc(EntityId(NPC_ID_BASE.0 + i as u64), x, y);
        }
    }

    let mut fighters: Vec<Fighter> = (0..if fights { observers } else { 0 })
        .map(|_| Fighter {
            decoder: SnapshotDecoder::default(),
            seq: 0,
        })
        .collect();
    let (mut strikes, mut shots) = (0u64, 0u64);
    // The sampled observers' clients, and per entity they see the last tick its client state
    // matched the server's.
    let sampled = args.sample.min(observers);
    let mut clients: HashMap<usize, (SnapshotDecoder, HashMap<u64, u32>)> = (0..sampled)
        .map(|k| (k * observers / sampled, Default::default()))
        .collect();
    let mut max_stale = 0u32;
    let mut threads = 0u64;
    let mut capped = 0u64;
    let mut tick_ms = Vec::with_capacity(args.ticks as usize);
    let (mut visible, mut changed, mut bytes, mut observed) = (0u64, 0u64, 0u64, 0u64);
    let mut max_frame = 0usize;
    for t in 1..=args.ticks {
        for (i, h) in headings.iter_mut().enumerate() {
            *h += (next() - 0.5) * 0.6;
            if i < args.crowd
                && let Some(([x, y], _)) = sim.locate(EntityId(i as u64 + 1))
                && (x - middle).hypot(y - middle) > CROWD_RADIUS
            {
                *h = (middle - y).atan2(middle - x);
            }
            let input = Input {
                seq: t,
                ack_tick: t.saturating_sub(2),
                heading: *h,
                speed: 3.0,
                actions: 0,
            };
            sim.push_input(PlayerId(i as u64 + 1), input);
        }
        let started = Instant::now();
        sim.step();
        let elapsed = started.elapsed();
        let frames = sim.take_outbox();
        if t > WARMUP_TICKS {
            max_frame = frames
                .iter()
                .map(|f| f.frame.len())
                .max()
                .unwrap_or(0)
                .max(max_frame);
        }
        for f in &frames {
            let Some((decoder, fresh)) = clients.get_mut(&(f.player_id.0 as usize - 1)) else {
                continue;
            };
            if let Ok(ServerMessage::Snapshot(snap)) = codec::decode_frame(&f.frame) {
                let _ = decoder.apply(&snap);
            }
            for (_, e) in decoder.view() {
                let truth = sim.locate(EntityId(e.id)).map(|([x, y], _)| {
                    let q = quantizer.quantize(e.id, e.kind, x, y, 0.0, 0.0);
                    (q.x, q.y)
                });
                let last = fresh.entry(e.id).or_insert(t);
                if truth == Some((e.x, e.y)) {
                    *last = t;
                } else if t > WARMUP_TICKS {
                    max_stale = max_stale.max(t - *last);
                }
            }
        }
        if fights {
            for f in &frames {
                if let Ok(ServerMessage::Snapshot(s)) = codec::decode_frame(&f.frame) {
                    let _ = fighters[f.player_id.0 as usize - 1].decoder.apply(&s);
                }
            }
            // Once a second each, staggered: the nearest monster in melee reach, else in
            // bow range.
            for (i, fighter) in fighters.iter_mut().enumerate() {
                if !(t as usize + i).is_multiple_of(20) {
                    continue;
                }
                let me = EntityId(i as u64 + 1);
                let view = fighter.decoder.view();
                let Some(at) = view.iter().find(|(_, e)| e.id == me.0) else {
                    continue;
                };
                let at = quantizer.dequantize(&at.1);
                let nearest = view
                    .iter()
                    .filter(|(_, e)| e.kind == EntityKind::Npc)
                    .map(|(_, e)| {
                        let e = quantizer.dequantize(e);
                        ((e.x - at.x).hypot(e.y - at.y), e.id)
                    })
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                let Some((d, target)) = nearest else { continue };
                fighter.seq += 1;
                let player = PlayerId(i as u64 + 1);
                let r = if d <= worldmesh_arena::actions::STRIKE_REACH {
                    strikes += 1;
                    request(fighter.seq, Some(target), &worldmesh_arena::Strike)
                } else if d <= worldmesh_arena::actions::SHOOT_REACH {
                    shots += 1;
                    request(fighter.seq, Some(target), &worldmesh_arena::Shoot)
                } else {
                    continue;
                };
                sim.push_action(LinkId(0), player, r.expect("a unit action encodes"));
            }
        }
        drop(frames);
        if t > WARMUP_TICKS {
            tick_ms.push(elapsed.as_secs_f64() * 1000.0);
            let s = sim.snapshot_stats();
            visible += s.visible;
            changed += s.changed;
            bytes += s.bytes;
            observed += s.observers;
            threads = threads.max(s.threads);
            capped += s.capped;
        }
    }
    tick_ms.sort_by(f64::total_cmp);
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let json = serde_json::json!({
        "entities": args.entities,
        "observers": observers,
        "ticks": args.ticks,
        "tick_ms": {
            "p50": percentile(&tick_ms, 0.5),
            "p99": percentile(&tick_ms, 0.99),
            "max": tick_ms.last().copied().unwrap_or(0.0),
        },
        "visible_per_observer_avg": per(visible, observed),
        "bytes_per_observer_per_tick_avg": per(bytes, observed),
        "largest_snapshot_bytes": max_frame,
        "crowd": args.crowd.min(observers),
        "max_visible": args.max_visible,
        "lod": !args.no_lod,
        "threads": threads,
        "capped_per_observer_avg": per(capped, observed),
        "sampled_observers": sampled,
        "max_ticks_without_update": max_stale,
        "bytes_per_moving_visible_entity_avg": per(bytes, changed),
        "naive_bytes_per_moving_visible_entity": NAIVE_ENTITY_BYTES,
        "game": args.game,
        "strikes": strikes,
        "shots": shots,
        "npcs_alive_waiting": sim.npc_count(),
    });
    println!("{json}");
}
