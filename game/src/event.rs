//! Server events: what the game tells players about an entity (a hit landed, a monster died, a
//! door opened), beside the snapshots.
//!
//! A game raises an event with [`Events::to_observers`] (every player of this zone within
//! view radius of the entity; players across a zone border do not hear it yet) or
//! [`Events::to_player`] (the player of one character), from an action or a system. Events raised during a tick go out
//! at its end ([`TickSet::Events`](crate::TickSet::Events)), after the tick's snapshot: a
//! client applies the snapshot first, then the events about it. Each kind says how it travels
//! ([`Delivery`]).

use std::collections::BTreeSet;

use bevy_ecs::prelude::*;
use worldmesh_protocol::codec;
pub use worldmesh_protocol::{EventKind, GameEvent, MAX_GAME_PAYLOAD};

/// How an event kind travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// On the control stream: arrives, in order. For what a client must not miss (death,
    /// level up, loot).
    Reliable,
    /// As a datagram beside the snapshot: may be lost, costs no retransmission. For what the
    /// next moment supersedes (a hit splash).
    Unreliable,
}

/// One kind of event: its fields (the type itself, encoded as the payload) and how it travels.
pub trait ServerEvent: bincode::Encode + Send + Sync + 'static {
    /// Its number on the wire; unique within the game.
    const KIND: EventKind;
    /// A short name for metrics and logs.
    const NAME: &'static str;
    const DELIVERY: Delivery;
}

/// Who hears an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The player of this character (nobody, if it has none).
    Player(Entity),
    /// Every player who sees the entity the event is about.
    Observers,
}

/// An event raised this tick, encoded, waiting for the end of the tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub audience: Audience,
    /// The entity it is about.
    pub about: Entity,
    pub kind: EventKind,
    pub payload: Vec<u8>,
    pub delivery: Delivery,
}

/// The events raised this tick (a resource in every zone's world).
#[derive(Resource, Debug, Default)]
pub struct Events {
    registered: BTreeSet<EventKind>,
    raised: Vec<Raised>,
}

impl Events {
    /// An empty queue that accepts the given kinds.
    #[must_use]
    pub fn new(registered: BTreeSet<EventKind>) -> Self {
        Self {
            registered,
            raised: Vec::new(),
        }
    }

    /// Raises `event` about `about` to every player who sees it.
    pub fn to_observers<E: ServerEvent>(&mut self, about: Entity, event: &E) {
        self.raise(Audience::Observers, about, event);
    }

    /// Raises `event` about `about` to the player of character `to`.
    pub fn to_player<E: ServerEvent>(&mut self, to: Entity, about: Entity, event: &E) {
        self.raise(Audience::Player(to), about, event);
    }

    fn raise<E: ServerEvent>(&mut self, audience: Audience, about: Entity, event: &E) {
        // Both are the game's own mistakes, found by its first test: logged and counted, the
        // event dropped, the zone unharmed.
        if !self.registered.contains(&E::KIND) {
            tracing::error!(kind = E::NAME, "event raised but never registered; dropped");
            metrics::counter!("worldmesh_zone_events_dropped_total", "reason" => "unregistered")
                .increment(1);
            return;
        }
        let payload = match codec::encode_value(event, MAX_GAME_PAYLOAD) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(kind = E::NAME, error = %e, "event does not encode; dropped");
                metrics::counter!("worldmesh_zone_events_dropped_total", "reason" => "too_large")
                    .increment(1);
                return;
            }
        };
        self.raised.push(Raised {
            audience,
            about,
            kind: E::KIND,
            payload,
            delivery: E::DELIVERY,
        });
    }

    /// Takes the events raised so far (the engine, at the end of the tick).
    pub fn take(&mut self) -> Vec<Raised> {
        std::mem::take(&mut self.raised)
    }

    /// How many wait.
    #[must_use]
    pub fn len(&self) -> usize {
        self.raised.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }
}
