//! Effects: what one entity does to another — a blow landing, XP earned, a door opened —
//! applied by whichever zone simulates the target, exactly once.
//!
//! An action runs where its actor is simulated: it checks the actor's side (cooldowns, range,
//! line of sight, against the target as this zone sees it) and changes the actor. What it does
//! *to the target* it sends as an effect ([`ActionCtx::affect`](crate::ActionCtx::affect)):
//! a typed message the engine applies to the target where the target lives. When the target
//! is simulated here, at once; when a neighbouring zone simulates it (the player sees it as a
//! ghost across the border), the effect is forwarded to that zone and applied at its next
//! tick; if the target is mid-handoff, or its zone failed over, the engine retries at its new
//! owner. Each effect carries an idempotency key, and the target remembers the keys applied to
//! it (in its handoffs and checkpoints), so a retry after a lost reply is answered, not applied
//! again. The action's answer to the player waits for its effect's outcome.
//!
//! Systems send effects too ([`Effects::send`]): XP to the attacker of a monster that fell,
//! wherever that attacker is now. This is how BigWorld's calls through mailboxes and
//! SpatialOS's commands work; here they are typed Rust and the routing is the engine's.

use std::collections::BTreeSet;

use bevy_ecs::prelude::*;
use worldmesh_protocol::codec;
pub use worldmesh_protocol::ids::EffectKind;
use worldmesh_protocol::ids::{EntityId, LinkId, PlayerId};
use worldmesh_protocol::{ActionRefusal, MAX_GAME_PAYLOAD};

use crate::event::{Events, ServerEvent};
use crate::world::Tick;

/// One kind of effect: its fields (the type itself, encoded as the payload) and what it does
/// to its target.
pub trait Effect: bincode::Encode + bincode::Decode<()> + Send + Sync + 'static {
    /// Its number between zones; unique within the game.
    const KIND: EffectKind;
    /// A short name for metrics and logs.
    const NAME: &'static str;
    /// Largest encoded payload. Games keep the default; the engine's own [`crate::mail`]
    /// carries more.
    const MAX_PAYLOAD: usize = MAX_GAME_PAYLOAD;

    /// Checks the target's side of the game's rules and changes the target. A refusal
    /// becomes the answer of the action that sent it.
    fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal>;
}

/// What an effect is applied to.
pub struct EffectCtx<'w> {
    /// The zone's world: the target's components are here.
    pub world: &'w mut World,
    /// The target, simulated by this zone.
    pub target: Entity,
    /// The entity that sent it (the actor of an action; maybe simulated elsewhere).
    pub source: EntityId,
}

impl EffectCtx<'_> {
    #[must_use]
    pub fn tick(&self) -> u32 {
        self.world.resource::<Tick>().0
    }

    /// Raises `event` about `about` to every player who sees it.
    pub fn to_observers<E: ServerEvent>(&mut self, about: Entity, event: &E) {
        self.world
            .resource_mut::<Events>()
            .to_observers(about, event);
    }

    /// Raises `event` about `about` to the player of character `to`.
    pub fn to_player<E: ServerEvent>(&mut self, to: Entity, about: Entity, event: &E) {
        self.world
            .resource_mut::<Events>()
            .to_player(to, about, event);
    }

    /// Sends a further effect (to the source, say), as [`Effects::send`].
    pub fn send<E: Effect>(&mut self, source: EntityId, target: EntityId, effect: &E) {
        self.world
            .resource_mut::<Effects>()
            .send(source, target, effect);
    }
}

/// Who is waiting for an effect's outcome: the player whose action sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub link: LinkId,
    pub player: PlayerId,
    pub seq: u32,
    /// The action kind's name, for the metric.
    pub action: &'static str,
}

/// An effect sent this tick, encoded, waiting for the engine to route it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub source: EntityId,
    pub target: EntityId,
    pub kind: EffectKind,
    pub payload: Vec<u8>,
    /// The action waiting for it, if one is.
    pub answer: Option<Answer>,
}

/// The effects sent this tick (a resource in every zone's world).
#[derive(Resource, Debug, Default)]
pub struct Effects {
    registered: BTreeSet<EffectKind>,
    sent: Vec<Sent>,
}

impl Effects {
    #[must_use]
    pub fn new(registered: BTreeSet<EffectKind>) -> Self {
        Self {
            registered,
            sent: Vec::new(),
        }
    }

    /// Sends `effect` from `source` to `target`, wherever it is simulated.
    pub fn send<E: Effect>(&mut self, source: EntityId, target: EntityId, effect: &E) {
        self.push(source, target, effect, None);
    }

    pub(crate) fn push<E: Effect>(
        &mut self,
        source: EntityId,
        target: EntityId,
        effect: &E,
        answer: Option<Answer>,
    ) -> bool {
        // The game's own mistakes, found by its first test: logged and counted, dropped.
        if !self.registered.contains(&E::KIND) {
            tracing::error!(kind = E::NAME, "effect sent but never registered; dropped");
            metrics::counter!("worldmesh_zone_effects_dropped_total", "reason" => "unregistered")
                .increment(1);
            return false;
        }
        let payload = match codec::encode_value(effect, E::MAX_PAYLOAD) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(kind = E::NAME, error = %e, "effect does not encode; dropped");
                metrics::counter!("worldmesh_zone_effects_dropped_total", "reason" => "too_large")
                    .increment(1);
                return false;
            }
        };
        self.sent.push(Sent {
            source,
            target,
            kind: E::KIND,
            payload,
            answer,
        });
        true
    }

    /// Withdraws what an action sent for its answer (the action was refused after all).
    pub fn retract(&mut self, answer: Answer) {
        self.sent.retain(|s| s.answer != Some(answer));
    }

    /// Takes what was sent so far (the engine).
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// A registered kind as the engine runs it.
#[derive(Debug, Clone, Copy)]
pub struct EffectEntry {
    pub kind: EffectKind,
    pub name: &'static str,
    apply: fn(&[u8], &mut EffectCtx<'_>) -> Result<(), ActionRefusal>,
}

impl EffectEntry {
    #[must_use]
    pub fn of<E: Effect>() -> Self {
        Self {
            kind: E::KIND,
            name: E::NAME,
            apply: |payload, ctx| {
                let effect: E = codec::decode_value(payload, E::MAX_PAYLOAD)
                    .map_err(|_| ActionRefusal::Malformed)?;
                effect.apply(ctx)
            },
        }
    }

    /// Decodes `payload` as the kind's fields and applies it.
    pub fn run(&self, payload: &[u8], ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
        (self.apply)(payload, ctx)
    }
}

/// The effect kinds a world's game registered.
#[derive(Resource, Debug, Default, Clone)]
pub struct EffectTable(pub(crate) std::collections::BTreeMap<EffectKind, EffectEntry>);

impl EffectTable {
    #[must_use]
    pub fn get(&self, kind: EffectKind) -> Option<&EffectEntry> {
        self.0.get(&kind)
    }
}

/// One applied key, as the target remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AppliedKey {
    /// The zone that sent it (its registration id) and its number there.
    pub zone: u64,
    pub seq: u64,
    /// The tick it was applied at (forgotten [`Applied::KEEP_TICKS`] later).
    pub tick: u32,
    pub refused: Option<ActionRefusal>,
}

/// The engine's record, on an entity, of the forwarded effects applied to it lately: what
/// makes a retried effect (its answer lost, its target handed on or failed over meanwhile) be
/// answered instead of applied again. A persisted component of the engine's (its kind,
/// `ComponentKind(u16::MAX)`, is reserved), so it travels in handoffs and checkpoints.
#[derive(Component, Debug, Clone, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Applied(pub Vec<AppliedKey>);

impl crate::GameComponent for Applied {
    const KIND: crate::ComponentKind = crate::ComponentKind(u16::MAX);
    const NAME: &'static str = "applied_effects";
}

impl Applied {
    /// How long a key is remembered: far longer than a sender retries (it gives up after
    /// [`GIVE_UP_TICKS`]).
    pub const KEEP_TICKS: u32 = 2 * GIVE_UP_TICKS;
    /// Most keys kept: bounds the component (and a checkpoint) at about half a kilobyte.
    pub const MAX: usize = 48;

    /// What became of `(zone, seq)` here, if it was applied (or refused) lately.
    #[must_use]
    pub fn outcome(&self, zone: u64, seq: u64) -> Option<Option<ActionRefusal>> {
        self.0
            .iter()
            .find(|k| k.zone == zone && k.seq == seq)
            .map(|k| k.refused)
    }

    /// Remembers a key, forgetting the stale and, beyond [`Applied::MAX`], the oldest.
    pub fn record(&mut self, key: AppliedKey) {
        self.0
            .retain(|k| key.tick.wrapping_sub(k.tick) < Self::KEEP_TICKS);
        if self.0.len() >= Self::MAX {
            self.0.remove(0);
        }
        self.0.push(key);
    }
}

/// Ticks a sender keeps retrying an unanswered effect (5 s at 20 Hz) before it answers its
/// action `NoTarget`: by then the target has left every zone that could be asked.
pub const GIVE_UP_TICKS: u32 = 100;
