//! The engine's mail between its parts on different zones: an opaque payload to an entity,
//! routed, retried and applied exactly once like any [`Effect`], and dropped into this zone's
//! [`Mailbox`] for the engine to read after the tick. Trades use it: a trade step from a party
//! simulated by one zone reaches the zone hosting the trade, and the trade's news reach the
//! party, wherever each is simulated (`zone-server/src/trades.rs`). Games never see it; its
//! effect kind, `EffectKind(u16::MAX)`, is reserved.

use bevy_ecs::prelude::*;
use worldmesh_protocol::ActionRefusal;
use worldmesh_protocol::ids::EntityId;

use crate::effect::{Effect, EffectCtx, EffectKind};
use crate::world::Id;

/// Most letters waiting in a mailbox; beyond, new ones are refused (the engine's senders
/// cope with a lost letter: trade steps are repeated by players, news by the next change).
pub const MAX_WAITING: usize = 10_000;

/// Largest letter body, bytes.
pub const MAX_LETTER: usize = 2048;

/// One letter: bytes only the engine reads.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Mail(pub Vec<u8>);

impl Effect for Mail {
    const KIND: EffectKind = EffectKind(u16::MAX);
    const NAME: &'static str = "engine_mail";
    const MAX_PAYLOAD: usize = MAX_LETTER + 8;

    fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
        let Some(to) = ctx.world.get::<Id>(ctx.target).map(|id| id.0) else {
            return Err(ActionRefusal::NoTarget);
        };
        let mut mailbox = ctx.world.resource_mut::<Mailbox>();
        if mailbox.0.len() >= MAX_WAITING {
            return Err(ActionRefusal::Flood);
        }
        mailbox.0.push(Letter {
            to,
            from: ctx.source,
            body: self.0,
        });
        Ok(())
    }
}

/// A letter delivered to an entity simulated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub to: EntityId,
    pub from: EntityId,
    pub body: Vec<u8>,
}

/// Letters delivered this tick (a resource in every world; the engine takes them).
#[derive(Resource, Debug, Default)]
pub struct Mailbox(pub Vec<Letter>);
