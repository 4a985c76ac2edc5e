//! Effects on their way (the game's side is `worldmesh_game::effect`): each is routed to
//! where its target is simulated, applied there exactly once, and its outcome answers the
//! action that sent it.
//!
//! - Target simulated here: applied at once (or, while it is frozen for a handoff, at the
//!   next tick it is not: by then it is back here, or a ghost of its new zone).
//! - Target shown here as a ghost: forwarded to the zone the ghost comes from, in this tick's
//!   border batch for that zone ([`Outgoing`]). That zone applies it at its next tick and
//!   answers in its own next batch ([`Incoming`]).
//! - Unanswered ([`RETRY_TICKS`] later: a batch was dropped, the target was mid-handoff or
//!   moved on, its zone failed over) it is sent again, to wherever the target is simulated
//!   *now*, under the same idempotency key ([`EffectKey`]: this zone's id and a counter). The
//!   target remembers the keys applied to it ([`Applied`], which travels with it), so a
//!   repeat is answered with the first outcome, never applied twice.
//! - Target nowhere to be seen: refused `NoTarget` (at once if it never was; after
//!   [`LOST_TICKS`] unseen if it was; after [`GIVE_UP_TICKS`] in any case).

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use worldmesh_game::effect::{Answer, Applied, AppliedKey, EffectCtx, GIVE_UP_TICKS, Sent};
use worldmesh_game::{EffectTable, Effects};
use worldmesh_protocol::ActionRefusal;
use worldmesh_protocol::ids::{EffectKind, EntityId, ZoneId};

use super::components::{Frozen, Ghost, Tick};
use super::{CharIndex, GhostIndex, Outbox, actions};

/// Ticks to wait for an answer before sending an effect again: a border batch there and one
/// back take two ticks; one more absorbs a late tick.
pub const RETRY_TICKS: u32 = 4;

/// Ticks an effect's target may stay out of sight (not simulated here, no ghost) before the
/// effect is refused: a handoff shows a ghost again within a tick or two.
pub const LOST_TICKS: u32 = 20;

/// An effect's idempotency key: the zone that first routed it (its registration id, unique in
/// the cluster's life) and a number counted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectKey {
    pub zone: ZoneId,
    pub seq: u64,
}

/// An effect between zones, either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub key: EffectKey,
    pub source: EntityId,
    pub target: EntityId,
    pub kind: EffectKind,
    pub payload: Vec<u8>,
}

/// What a zone answers about a forwarded effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Applied,
    Refused(ActionRefusal),
    /// Not simulated here (handed on, or frozen mid-handoff): ask whoever has it now.
    NotHere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub key: EffectKey,
    pub answered: Answered,
}

/// This zone's id for new keys (the zone core sets it; a re-registered zone has a new one).
#[derive(Resource, Debug, Default)]
pub struct Origin {
    pub zone: ZoneId,
    next: u64,
}

/// Border traffic this tick produced, by destination zone (the zone core puts it in the
/// tick's border batches).
#[derive(Resource, Debug, Default)]
pub struct Outgoing {
    pub forwards: Vec<(ZoneId, Forward)>,
    pub replies: Vec<(ZoneId, Reply)>,
}

/// Border traffic received since the last tick, handled at the next one.
#[derive(Resource, Debug, Default)]
pub struct Incoming {
    pub forwards: Vec<(ZoneId, Forward)>,
    pub replies: Vec<Reply>,
}

/// An effect routed from here and not answered yet.
#[derive(Debug)]
struct Pending {
    sent: Sent,
    /// First routed at; the tick it was last seen (simulated here or as a ghost).
    since: u32,
    seen: u32,
    next_try: u32,
    /// Whether it ever left this zone (from then on it is applied only through the keys).
    forwarded: bool,
}

/// Effects routed from here and not answered yet, by key (ordered: a tick replays the same).
#[derive(Resource, Debug, Default)]
pub struct InFlight(BTreeMap<EffectKey, Pending>);

impl InFlight {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Counts since the zone started, for the heartbeat, the report and metrics.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EffectStats {
    /// Effects sent to another zone (each once, however often retried).
    pub forwarded: u64,
    /// Forwarded effects applied here (from other zones).
    pub applied_for_others: u64,
    /// Repeats answered from the target's record instead of applied again.
    pub repeats: u64,
    /// Given up: the target was nowhere to be seen.
    pub lost_targets: u64,
}

/// Where an effect's target is, seen from here.
enum Whereabouts {
    Here(Entity),
    Frozen,
    Ghost(ZoneId),
    Nowhere,
}

fn locate(world: &World, id: EntityId) -> Whereabouts {
    if let Some(&e) = world.resource::<CharIndex>().0.get(&id) {
        return if world.get::<Frozen>(e).is_some() {
            Whereabouts::Frozen
        } else {
            Whereabouts::Here(e)
        };
    }
    world
        .resource::<GhostIndex>()
        .0
        .get(&id)
        .and_then(|&e| world.get::<Ghost>(e))
        .map_or(Whereabouts::Nowhere, |g| Whereabouts::Ghost(g.from_zone))
}

/// Routes the effects sent since the last call, retries those due, and handles what the
/// neighbours sent (incoming effects first: they were sent a tick ago). Runs after the
/// actions (so an action's effect on a target here lands in the same tick) and at the end of
/// the tick (the game's systems' effects).
pub fn route(world: &mut World) {
    let tick = world.resource::<Tick>().0;
    let incoming = std::mem::take(&mut *world.resource_mut::<Incoming>());
    for (from, f) in incoming.forwards {
        let answered = match locate(world, f.target) {
            Whereabouts::Here(entity) => {
                let sent = Sent {
                    source: f.source,
                    target: f.target,
                    kind: f.kind,
                    payload: f.payload,
                    answer: None,
                };
                match apply_here(world, entity, f.key, &sent, true, tick) {
                    Ok(()) => Answered::Applied,
                    Err(why) => Answered::Refused(why),
                }
            }
            _ => Answered::NotHere,
        };
        world.resource_mut::<Outgoing>().replies.push((
            from,
            Reply {
                key: f.key,
                answered,
            },
        ));
    }
    for reply in incoming.replies {
        let done = match reply.answered {
            Answered::Applied => Some(None),
            Answered::Refused(why) => Some(Some(why)),
            Answered::NotHere => None,
        };
        let mut in_flight = world.resource_mut::<InFlight>();
        match done {
            Some(refused) => {
                if let Some(p) = in_flight.0.remove(&reply.key) {
                    answer(world, p.sent.answer, refused);
                }
            }
            // Ask again soon, wherever it is by then.
            None => {
                if let Some(p) = in_flight.0.get_mut(&reply.key) {
                    p.next_try = p.next_try.min(tick + 1);
                }
            }
        }
    }
    let fresh = world.resource_mut::<Effects>().take();
    for sent in fresh {
        let key = {
            let mut origin = world.resource_mut::<Origin>();
            origin.next += 1;
            EffectKey {
                zone: origin.zone,
                seq: origin.next,
            }
        };
        let pending = Pending {
            sent,
            since: tick,
            seen: tick,
            next_try: tick,
            forwarded: false,
        };
        deliver(world, key, pending, tick, true);
    }
    let due: Vec<EffectKey> = world
        .resource::<InFlight>()
        .0
        .iter()
        .filter(|(_, p)| p.next_try <= tick)
        .map(|(k, _)| *k)
        .collect();
    for key in due {
        if let Some(p) = world.resource_mut::<InFlight>().0.remove(&key) {
            deliver(world, key, p, tick, false);
        }
    }
}

/// One attempt at an effect: applied here, forwarded, kept for later, or refused.
fn deliver(world: &mut World, key: EffectKey, mut p: Pending, tick: u32, first: bool) {
    if tick.wrapping_sub(p.since) > GIVE_UP_TICKS {
        world.resource_mut::<EffectStats>().lost_targets += 1;
        return answer(world, p.sent.answer, Some(ActionRefusal::NoTarget));
    }
    match locate(world, p.sent.target) {
        Whereabouts::Here(entity) => {
            let outcome = apply_here(world, entity, key, &p.sent, p.forwarded, tick);
            answer(world, p.sent.answer, outcome.err());
        }
        Whereabouts::Frozen => {
            p.seen = tick;
            p.next_try = tick + 1;
            world.resource_mut::<InFlight>().0.insert(key, p);
        }
        Whereabouts::Ghost(zone) => {
            if !p.forwarded {
                world.resource_mut::<EffectStats>().forwarded += 1;
                metrics::counter!("worldmesh_zone_effects_forwarded_total").increment(1);
            }
            p.forwarded = true;
            p.seen = tick;
            p.next_try = tick + RETRY_TICKS;
            let forward = Forward {
                key,
                source: p.sent.source,
                target: p.sent.target,
                kind: p.sent.kind,
                payload: p.sent.payload.clone(),
            };
            world
                .resource_mut::<Outgoing>()
                .forwards
                .push((zone, forward));
            world.resource_mut::<InFlight>().0.insert(key, p);
        }
        Whereabouts::Nowhere if first || tick.wrapping_sub(p.seen) > LOST_TICKS => {
            if !first {
                world.resource_mut::<EffectStats>().lost_targets += 1;
            }
            answer(world, p.sent.answer, Some(ActionRefusal::NoTarget));
        }
        Whereabouts::Nowhere => {
            p.next_try = tick + 2;
            world.resource_mut::<InFlight>().0.insert(key, p);
        }
    }
}

/// Applies an effect to `target`, simulated here. `dedupe`: the effect may have been applied
/// elsewhere or before (it left its first zone): the target's record of keys decides, and
/// records this one.
fn apply_here(
    world: &mut World,
    target: Entity,
    key: EffectKey,
    sent: &Sent,
    dedupe: bool,
    tick: u32,
) -> Result<(), ActionRefusal> {
    if dedupe
        && let Some(outcome) = world
            .get::<Applied>(target)
            .and_then(|a| a.outcome(key.zone.0, key.seq))
    {
        world.resource_mut::<EffectStats>().repeats += 1;
        metrics::counter!("worldmesh_zone_effect_repeats_total").increment(1);
        return outcome.map_or(Ok(()), Err);
    }
    let entry = world.resource::<EffectTable>().get(sent.kind).copied();
    let outcome = match entry {
        Some(entry) => {
            let mut ctx = EffectCtx {
                world,
                target,
                source: sent.source,
            };
            let outcome = entry.run(&sent.payload, &mut ctx);
            metrics::counter!(
                "worldmesh_zone_effects_total",
                "kind" => entry.name,
                "outcome" => outcome.err().map_or("applied", ActionRefusal::name),
            )
            .increment(1);
            outcome
        }
        // A neighbour running another build of the game: its kind is unknown here.
        None => Err(ActionRefusal::UnknownKind),
    };
    if dedupe {
        if key.zone != world.resource::<Origin>().zone {
            world.resource_mut::<EffectStats>().applied_for_others += 1;
        }
        let record = AppliedKey {
            zone: key.zone.0,
            seq: key.seq,
            tick,
            refused: outcome.err(),
        };
        let mut e = world.entity_mut(target);
        match e.get_mut::<Applied>() {
            Some(mut applied) => applied.record(record),
            None => {
                let mut applied = Applied::default();
                applied.record(record);
                e.insert(applied);
            }
        }
    }
    outcome
}

/// Answers the action waiting for an effect, if one is.
fn answer(world: &mut World, to: Option<Answer>, refused: Option<ActionRefusal>) {
    let Some(a) = to else { return };
    let mut outbox = world.resource_mut::<Outbox>();
    actions::answer(&mut outbox, a.link, a.player, a.action, a.seq, refused);
}
