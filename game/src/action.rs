//! Client actions: what a player asks the game to do (attack, use, open, …).
//!
//! A player sends an [`ActionRequest`]: a kind, maybe a target, a payload. The engine checks,
//! in this order, and refuses with the first that fails:
//!
//! 1. the player has a character in play ([`ActionRefusal::NotInPlay`]);
//! 2. no more than [`MAX_ACTIONS_PER_TICK`] of its actions wait for this tick
//!    ([`ActionRefusal::Flood`]);
//! 3. the kind is registered ([`ActionRefusal::UnknownKind`]);
//! 4. neither the actor nor the target is moving between zones right now
//!    ([`ActionRefusal::Moving`]: a handoff lasts about a tick; the client retries);
//! 5. a kind with a reach names a target that exists here ([`ActionRefusal::NoTarget`]) and
//!    stands within the reach ([`ActionRefusal::OutOfReach`]);
//! 6. the payload decodes as the kind's arguments ([`ActionRefusal::Malformed`]).
//!
//! Then it calls [`Action::apply`], which checks the game's own rules (refusing with
//! [`ActionRefusal::Rule`]) and changes the world. Every action is answered with an
//! [`ActionOutcome`](worldmesh_protocol::ActionOutcome) and counted by kind and outcome.
//! Actions run in [`TickSet::Actions`](crate::TickSet::Actions), in the order they arrived.
//!
//! An action runs where its actor is simulated. Its target may be simulated by a neighbouring
//! zone (the player sees it across the border, as a ghost): the action then reads the target
//! as this zone sees it (position, replicated components), and changes it only through an
//! [`Effect`] ([`ActionCtx::affect`]), which the engine applies where the target lives,
//! exactly once. The action's answer waits for that effect's outcome. Writing a component of
//! a ghost target directly changes nothing that lasts (the next border batch overwrites it).

use bevy_ecs::prelude::*;
use worldmesh_protocol::codec::{self, EncodeError};
use worldmesh_protocol::ids::EntityId;
pub use worldmesh_protocol::{ActionKind, ActionRefusal, ActionRequest, MAX_GAME_PAYLOAD};

use crate::effect::{Answer, Effect, Effects};
use crate::event::{Events, ServerEvent};
use crate::world::Tick;

/// Most actions one player may have waiting for one tick; more are refused as a flood.
pub const MAX_ACTIONS_PER_TICK: usize = 4;

/// One kind of action: its arguments (the type itself, decoded from the payload), how far it
/// reaches, and what it does.
pub trait Action: bincode::Decode<()> + Send + Sync + 'static {
    /// Its number on the wire; unique within the game.
    const KIND: ActionKind;
    /// A short name for metrics and logs.
    const NAME: &'static str;
    /// How far from the actor its target may stand, metres; `None`: it takes no target.
    const REACH: Option<f32>;

    /// Checks the game's rules and changes the world. The engine has already checked the
    /// actor, the target's existence and reach, and the payload.
    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal>;
}

/// What an action is applied to.
pub struct ActionCtx<'w> {
    /// The zone's world: read and change the game's components here.
    pub world: &'w mut World,
    /// The acting character.
    pub actor: Entity,
    /// The target, for kinds with a reach: it exists and stands within reach. Simulated here,
    /// or a ghost of an entity a neighbour simulates (change it through [`ActionCtx::affect`]).
    pub target: Option<Entity>,
    ids: (EntityId, Option<EntityId>),
    answer: Option<Answer>,
}

impl<'w> ActionCtx<'w> {
    /// The context the engine gives an action: the actor and target as entities of `world`
    /// and by id, and the player waiting for the answer.
    pub fn new(
        world: &'w mut World,
        actor: (Entity, EntityId),
        target: Option<(Entity, EntityId)>,
        answer: Answer,
    ) -> Self {
        Self {
            world,
            actor: actor.0,
            target: target.map(|t| t.0),
            ids: (actor.1, target.map(|t| t.1)),
            answer: Some(answer),
        }
    }

    /// Sends `effect` to the target, wherever it is simulated (here: applied at once; a
    /// neighbour: at its next tick), exactly once. The action's answer waits for the effect's
    /// outcome: applied, or the effect's refusal. Only the first call of an action does that;
    /// later ones are plain [`Effects::send`]s.
    pub fn affect<E: Effect>(&mut self, effect: &E) {
        let Some(target) = self.ids.1 else {
            tracing::error!(
                effect = E::NAME,
                "affect() in an action without a target; dropped"
            );
            return;
        };
        let answer = self.answer.take();
        let actor = self.ids.0;
        let sent = self
            .world
            .resource_mut::<Effects>()
            .push(actor, target, effect, answer);
        if !sent {
            // Not sent (the game's mistake, logged): the engine answers as usual.
            self.answer = answer;
        }
    }

    /// Whether the answer now waits for an effect (the engine then does not answer).
    #[must_use]
    pub fn answer_deferred(&self) -> bool {
        self.answer.is_none()
    }

    /// The acting character's id.
    #[must_use]
    pub fn actor_id(&self) -> EntityId {
        self.ids.0
    }

    /// The target's id, for kinds with a reach.
    #[must_use]
    pub fn target_id(&self) -> Option<EntityId> {
        self.ids.1
    }
}

impl ActionCtx<'_> {
    /// The tick being run.
    #[must_use]
    pub fn tick(&self) -> u32 {
        self.world.resource::<Tick>().0
    }

    /// The events raised this tick, to raise more.
    pub fn events(&mut self) -> Mut<'_, Events> {
        self.world.resource_mut::<Events>()
    }

    /// Raises `event` about `about` to every player who sees it.
    pub fn to_observers<E: ServerEvent>(&mut self, about: Entity, event: &E) {
        self.events().to_observers(about, event);
    }

    /// Raises `event` about `about` to the player of character `to` (nobody, if it has none).
    pub fn to_player<E: ServerEvent>(&mut self, to: Entity, about: Entity, event: &E) {
        self.events().to_player(to, about, event);
    }
}

/// A registered kind as the engine runs it: its checks' parameters and its decode-and-apply.
#[derive(Debug, Clone, Copy)]
pub struct ActionEntry {
    pub kind: ActionKind,
    pub name: &'static str,
    pub reach: Option<f32>,
    apply: fn(&[u8], &mut ActionCtx<'_>) -> Result<(), ActionRefusal>,
}

impl ActionEntry {
    /// The entry of kind `A`.
    #[must_use]
    pub fn of<A: Action>() -> Self {
        Self {
            kind: A::KIND,
            name: A::NAME,
            reach: A::REACH,
            apply: decode_and_apply::<A>,
        }
    }

    /// Decodes `payload` as the kind's arguments and applies it.
    pub fn run(&self, payload: &[u8], ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        (self.apply)(payload, ctx)
    }
}

fn decode_and_apply<A: Action>(
    payload: &[u8],
    ctx: &mut ActionCtx<'_>,
) -> Result<(), ActionRefusal> {
    let action: A =
        codec::decode_value(payload, MAX_GAME_PAYLOAD).map_err(|_| ActionRefusal::Malformed)?;
    action.apply(ctx)
}

/// The request a client sends for `action` (client side: bots, a game's client code).
pub fn request<A: Action + bincode::Encode>(
    seq: u32,
    target: Option<EntityId>,
    action: &A,
) -> Result<ActionRequest, EncodeError> {
    Ok(ActionRequest {
        seq,
        kind: A::KIND,
        target,
        payload: codec::encode_value(action, MAX_GAME_PAYLOAD)?,
    })
}
