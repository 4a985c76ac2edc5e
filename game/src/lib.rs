//! The game-logic API: what a game adds to the world the zone servers simulate.
//!
//! A game is one type implementing [`Game`]. Its [`Game::register`] is the table of contents:
//! the actions players may ask for (each with its checks), the events it tells them, its
//! resources, and its systems in their [`TickSet`] slots. The zone server builds every zone's
//! world from it ([`install`]); the zone core knows no game. Game code never mentions zones,
//! epochs or gateways: it reads and writes components on entities, and the engine moves those
//! entities between servers.
//!
//! ```
//! use bevy_ecs::prelude::*;
//! use worldmesh_game::prelude::*;
//!
//! /// Knocks on a door within 2 m.
//! #[derive(bincode::Encode, bincode::Decode)]
//! struct Knock;
//!
//! impl Action for Knock {
//!     const KIND: ActionKind = ActionKind(1);
//!     const NAME: &'static str = "knock";
//!     const REACH: Option<f32> = Some(2.0);
//!     fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
//!         let door = ctx.target.expect("kinds with a reach have a target");
//!         ctx.to_observers(door, &Knocked);
//!         Ok(())
//!     }
//! }
//!
//! /// Heard by everyone near the door.
//! #[derive(bincode::Encode)]
//! struct Knocked;
//!
//! impl ServerEvent for Knocked {
//!     const KIND: EventKind = EventKind(1);
//!     const NAME: &'static str = "knocked";
//!     const DELIVERY: Delivery = Delivery::Reliable;
//! }
//!
//! struct Doors;
//!
//! impl Game for Doors {
//!     fn name(&self) -> &'static str {
//!         "doors"
//!     }
//!     fn register(&self, game: &mut GameRegistry) {
//!         game.action::<Knock>().event::<Knocked>();
//!     }
//! }
//!
//! let (mut world, mut schedule) = (World::new(), Schedule::default());
//! worldmesh_game::install(&Doors, &mut world, &mut schedule).unwrap();
//! assert!(world.resource::<ActionTable>().get(ActionKind(1)).is_some());
//! ```
//!
//! # Layout
//!
//! - this file: [`Game`], [`GameRegistry`], [`install`], [`GameError`], [`GameRef`] (a game
//!   as configurations hold it), [`NoGame`].
//! - [`component`]: components that travel: [`GameComponent`], replicated to observers,
//!   persisted with characters, carried in handoffs ([`Synced`], [`ComponentValues`]).
//! - [`npc`]: NPC kinds: [`NpcKind`] (components at spawn, share, respawn time), [`Npc`],
//!   [`Defeated`].
//! - [`world`]: what the engine keeps that games read: [`Id`], [`Position`], [`Motion`],
//!   [`Tick`], and the tick's [`TickSet`] order.
//! - [`action`]: client actions: [`Action`], the engine's checks, [`ActionCtx`].
//! - [`effect`]: what one entity does to another, applied where the target is simulated
//!   (across zone borders, exactly once): [`Effect`], [`Effects`], [`EffectCtx`].
//! - [`event`]: server events: [`ServerEvent`], [`Events`], [`Delivery`].
//! - [`loot`]: items and gold a game gives characters, recorded with the economy's ledger:
//!   [`Loot`].
//! - [`chronicle`]: what a game tells the read models (scores, kills): [`Chronicle`].
//! - [`mail`]: the engine's own letters between zones, routed like effects (trades use them).
//! - [`ground`]: what an item lying on the ground is ([`ground::GroundItem`]), replicated and
//!   ghosted like any component.

pub mod action;
pub mod chronicle;
pub mod component;
pub mod effect;
pub mod event;
pub mod ground;
pub mod loot;
pub mod mail;
pub mod npc;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bevy_ecs::prelude::*;
use bevy_ecs::system::ScheduleSystem;

pub use action::{Action, ActionCtx, ActionEntry, ActionKind, ActionRefusal};
pub use chronicle::{Chronicle, Record};
pub use component::{
    ComponentEntry, ComponentKind, ComponentTable, ComponentValues, GameComponent, Persisted,
    Replicated, SyncPoint, Synced,
};
pub use effect::{Effect, EffectCtx, EffectEntry, EffectKind, EffectTable, Effects};
pub use event::{Delivery, EventKind, Events, ServerEvent};
pub use loot::{Gift, Grant, Loot};
pub use npc::{Defeated, Npc, NpcKind, NpcKindEntry, NpcKindId, NpcKinds};
pub use world::{
    Character, CollisionMap, EngineSystems, Id, Immobile, Motion, Position, Tick, TickSet,
};

/// What a game module imports.
pub mod prelude {
    pub use crate::action::{Action, ActionCtx, ActionKind, ActionRefusal};
    pub use crate::chronicle::Chronicle;
    pub use crate::component::{ComponentKind, GameComponent, Persisted, Replicated};
    pub use crate::effect::{Effect, EffectCtx, EffectKind, Effects};
    pub use crate::event::{Delivery, EventKind, Events, ServerEvent};
    pub use crate::loot::{Grant, Loot};
    pub use crate::npc::{Defeated, Npc, NpcKind, NpcKindId};
    pub use crate::world::{
        Character, CollisionMap, Id, Immobile, Motion, Position, Tick, TickSet,
    };
    pub use crate::{ActionTable, Game, GameRegistry};
    pub use worldmesh_protocol::ids::EntityId;
}

/// A game: everything it adds to the world, registered in one place.
pub trait Game: Send + Sync + 'static {
    /// Its name, as `--game` selects it and logs show it.
    fn name(&self) -> &'static str;

    /// Registers the game's actions, events, resources and systems. Called once for every
    /// world a zone builds.
    fn register(&self, game: &mut GameRegistry);
}

/// Why a game could not be installed: a registration the game got wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GameError {
    #[error("actions {first:?} and {second:?} both use kind {kind}")]
    DuplicateAction {
        kind: ActionKind,
        first: &'static str,
        second: &'static str,
    },
    #[error("events {first:?} and {second:?} both use kind {kind}")]
    DuplicateEvent {
        kind: EventKind,
        first: &'static str,
        second: &'static str,
    },
    #[error("action {name:?} reaches {reach} m: a reach must be a finite distance ≥ 0")]
    BadReach { name: &'static str, reach: f32 },
    #[error("components {first:?} and {second:?} both use kind {kind}")]
    DuplicateComponent {
        kind: ComponentKind,
        first: &'static str,
        second: &'static str,
    },
    #[error("{count} replicated components: an entity update carries at most {max}")]
    TooManyReplicated { count: usize, max: usize },
    #[error("effects {first:?} and {second:?} both use kind {kind}")]
    DuplicateEffect {
        kind: EffectKind,
        first: &'static str,
        second: &'static str,
    },
    #[error("NPC kinds {first:?} and {second:?} both use kind {kind:?}")]
    DuplicateNpcKind {
        kind: NpcKindId,
        first: &'static str,
        second: &'static str,
    },
}

type Deferred<T> = Box<dyn FnOnce(&mut T)>;

/// What a game registers (see [`Game::register`]).
#[derive(Default)]
pub struct GameRegistry {
    actions: BTreeMap<ActionKind, ActionEntry>,
    events: BTreeMap<EventKind, &'static str>,
    effects: BTreeMap<EffectKind, EffectEntry>,
    components: BTreeMap<ComponentKind, ComponentEntry>,
    npcs: BTreeMap<NpcKindId, NpcKindEntry>,
    systems: Vec<Deferred<Schedule>>,
    resources: Vec<Deferred<World>>,
    errors: Vec<GameError>,
}

impl GameRegistry {
    /// A kind of action players may ask for.
    pub fn action<A: Action>(&mut self) -> &mut Self {
        let entry = ActionEntry::of::<A>();
        if let Some(reach) = entry.reach.filter(|r| !(r.is_finite() && *r >= 0.0)) {
            self.errors.push(GameError::BadReach {
                name: entry.name,
                reach,
            });
        }
        if let Some(first) = self.actions.insert(A::KIND, entry) {
            self.errors.push(GameError::DuplicateAction {
                kind: A::KIND,
                first: first.name,
                second: A::NAME,
            });
        }
        self
    }

    /// A kind of event the game raises.
    pub fn event<E: ServerEvent>(&mut self) -> &mut Self {
        if let Some(first) = self.events.insert(E::KIND, E::NAME) {
            self.errors.push(GameError::DuplicateEvent {
                kind: E::KIND,
                first,
                second: E::NAME,
            });
        }
        self
    }

    /// A kind of effect the game's actions and systems send (see [`effect`]).
    pub fn effect<E: Effect>(&mut self) -> &mut Self {
        if let Some(first) = self.effects.insert(E::KIND, EffectEntry::of::<E>()) {
            self.errors.push(GameError::DuplicateEffect {
                kind: E::KIND,
                first: first.name,
                second: E::NAME,
            });
        }
        self
    }

    /// A component of the game's that follows its entity through handoffs, replicated to
    /// observers and persisted with characters as asked (see [`component`]).
    pub fn component<T: GameComponent>(
        &mut self,
        replicated: Replicated,
        persisted: Persisted,
    ) -> &mut Self {
        let entry = ComponentEntry::of::<T>(replicated, persisted);
        if let Some(first) = self.components.insert(T::KIND, entry) {
            self.errors.push(GameError::DuplicateComponent {
                kind: T::KIND,
                first: first.name,
                second: T::NAME,
            });
        }
        self.systems.push(Box::new(|schedule: &mut Schedule| {
            schedule.add_systems((
                component::sync::<T>.in_set(SyncPoint::BeforeSnapshot),
                component::sync::<T>.in_set(SyncPoint::EndOfTick),
            ));
        }));
        self
    }

    /// A kind of NPC (see [`npc`]): the engine's NPC population is shared among the
    /// registered kinds by weight.
    pub fn npc<K: NpcKind>(&mut self) -> &mut Self {
        let entry = NpcKindEntry::of::<K>();
        if let Some(first) = self.npcs.insert(K::KIND, entry) {
            self.errors.push(GameError::DuplicateNpcKind {
                kind: K::KIND,
                first: first.name,
                second: K::NAME,
            });
        }
        self
    }

    /// Systems, run every tick in `slot` (after the engine's own systems of that slot).
    pub fn system<M>(
        &mut self,
        slot: TickSet,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M> + 'static,
    ) -> &mut Self {
        self.systems.push(Box::new(move |schedule: &mut Schedule| {
            schedule.add_systems(
                systems
                    .in_set(slot)
                    .after(world::EngineSystems(slot))
                    .before(SyncPoint::EndOfTick),
            );
        }));
        self
    }

    /// A resource the game's systems and actions share (tuning, spawn tables, …).
    pub fn resource<R: Resource>(&mut self, resource: R) -> &mut Self {
        self.resources.push(Box::new(move |world: &mut World| {
            world.insert_resource(resource);
        }));
        self
    }
}

/// The actions a world accepts, by kind (a resource in every zone's world).
#[derive(Resource, Debug, Default)]
pub struct ActionTable(BTreeMap<ActionKind, ActionEntry>);

impl ActionTable {
    #[must_use]
    pub fn get(&self, kind: ActionKind) -> Option<&ActionEntry> {
        self.0.get(&kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ActionEntry> {
        self.0.values()
    }
}

/// Builds `game` into a world and its tick schedule: its resources inserted, its systems
/// placed in their slots, its actions in [`ActionTable`], its events accepted by [`Events`],
/// its components in [`ComponentTable`] with their [`SyncPoint`] systems. The engine calls it
/// once per world, after adding its own systems.
pub fn install(
    game: &dyn Game,
    world: &mut World,
    schedule: &mut Schedule,
) -> Result<(), GameError> {
    let mut registry = GameRegistry::default();
    // The engine's own: which forwarded effects each entity has seen (exactly-once).
    registry.component::<effect::Applied>(Replicated::No, Persisted::Yes);
    registry.effect::<mail::Mail>();
    // Items on the ground: seen by clients and by neighbouring zones (ghosts).
    registry.component::<ground::GroundItem>(Replicated::Yes, Persisted::No);
    game.register(&mut registry);
    if let Some(e) = registry.errors.into_iter().next() {
        return Err(e);
    }
    let replicated = registry
        .components
        .values()
        .filter(|c| c.replicated)
        .count();
    let max = worldmesh_protocol::snapshot::MAX_FIELDS;
    if replicated > max {
        return Err(GameError::TooManyReplicated {
            count: replicated,
            max,
        });
    }
    schedule.configure_sets((
        SyncPoint::BeforeSnapshot
            .in_set(TickSet::Interest)
            .before(world::EngineSystems(TickSet::Interest)),
        SyncPoint::EndOfTick
            .in_set(TickSet::Events)
            .after(world::EngineSystems(TickSet::Events)),
    ));
    world.init_resource::<component::SyncClock>();
    world.init_resource::<loot::Loot>();
    world.init_resource::<mail::Mailbox>();
    world.init_resource::<chronicle::Chronicle>();
    for insert in registry.resources {
        insert(world);
    }
    for add in registry.systems {
        add(schedule);
    }
    world.insert_resource(ActionTable(registry.actions));
    world.insert_resource(ComponentTable(registry.components));
    world.insert_resource(NpcKinds::new(registry.npcs.into_values().collect()));
    world.insert_resource(Events::new(
        registry.events.into_keys().collect::<BTreeSet<_>>(),
    ));
    world.insert_resource(Effects::new(registry.effects.keys().copied().collect()));
    world.insert_resource(EffectTable(registry.effects));
    Ok(())
}

/// A game shared by every world a zone server builds; what configurations hold.
#[derive(Clone)]
pub struct GameRef(pub Arc<dyn Game>);

impl GameRef {
    pub fn new(game: impl Game) -> Self {
        Self(Arc::new(game))
    }
}

impl Default for GameRef {
    /// [`NoGame`].
    fn default() -> Self {
        Self::new(NoGame)
    }
}

impl std::fmt::Debug for GameRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GameRef({:?})", self.0.name())
    }
}

impl std::ops::Deref for GameRef {
    type Target = dyn Game;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// No game: bare movement and chat. What a zone runs without `--game`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGame;

impl Game for NoGame {
    fn name(&self) -> &'static str {
        "none"
    }

    fn register(&self, _game: &mut GameRegistry) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Component, bincode::Encode, bincode::Decode)]
    struct Hp(u16);

    impl GameComponent for Hp {
        const KIND: ComponentKind = ComponentKind(1);
        const NAME: &'static str = "hp";
    }

    #[derive(Component, bincode::Encode, bincode::Decode)]
    struct Mana(u16);

    impl GameComponent for Mana {
        const KIND: ComponentKind = ComponentKind(1);
        const NAME: &'static str = "mana";
    }

    struct Clash;

    impl Game for Clash {
        fn name(&self) -> &'static str {
            "clash"
        }

        fn register(&self, game: &mut GameRegistry) {
            game.component::<Hp>(Replicated::Yes, Persisted::Yes)
                .component::<Mana>(Replicated::No, Persisted::No);
        }
    }

    #[test]
    fn two_components_of_one_kind_are_refused() {
        let (mut world, mut schedule) = (World::new(), Schedule::default());
        assert_eq!(
            install(&Clash, &mut world, &mut schedule),
            Err(GameError::DuplicateComponent {
                kind: ComponentKind(1),
                first: "hp",
                second: "mana",
            })
        );
    }

    #[test]
    fn stored_component_values_round_trip_and_garbage_is_an_error() {
        let values = ComponentValues(vec![
            (ComponentKind(1), vec![7]),
            (ComponentKind(9), vec![]),
        ]);
        assert_eq!(ComponentValues::decode(&values.encode()), Ok(values));
        assert!(
            ComponentValues::default().encode().is_empty(),
            "no game, no bytes"
        );
        assert!(ComponentValues::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(ComponentValues::decode_or_log(&[0xff], "test").is_empty());
    }
}
