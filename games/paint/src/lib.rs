//! Paint: the smallest game on worldmesh, and the proof that the game API is not shaped
//! around the arena. A player picks a colour and splashes it on whoever stands near (a player
//! or an NPC, across a zone border too); the paint fades after a while; every player's count
//! of splashes is kept. No health, no fighting, nothing borrowed from `games/arena`.
//!
//! `worldmesh local --game paint` runs it.
//!
//! # Layout
//!
//! All in this file, in the order a reader meets it: [`Paint`] (the one registration); the
//! components [`Colour`] (a player's own: replicated, persisted), [`Splatter`] (paint on an
//! entity: replicated, carried through handoffs, fades) and [`Splashes`] (a count:
//! persisted); the actions [`Choose`] (a payload, no target) and [`Splash`] (a target); the
//! effect [`SplashOn`] (lands where the target is simulated); the event [`Painted`]; the
//! system [`fade`].

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

/// Colours a player may choose: `0 .. COLOURS`.
pub const COLOURS: u8 = 8;
/// Paint lasts this many ticks (10 s at 20 Hz).
pub const FADE_TICKS: u32 = 200;
/// How near a target must stand to be splashed, metres.
pub const SPLASH_REACH: f32 = 3.0;

/// [`Choose`]: no such colour.
pub const NO_SUCH_COLOUR: ActionRefusal = ActionRefusal::Rule(1);
/// [`Splash`]: choose a colour first.
pub const NO_COLOUR: ActionRefusal = ActionRefusal::Rule(2);
/// [`Splash`]: not on yourself.
pub const NOT_YOURSELF: ActionRefusal = ActionRefusal::Rule(3);

/// The paint game: register it with `GameRef::new(Paint)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paint;

impl Game for Paint {
    fn name(&self) -> &'static str {
        "paint"
    }

    fn register(&self, game: &mut GameRegistry) {
        game.component::<Colour>(Replicated::Yes, Persisted::Yes)
            .component::<Splatter>(Replicated::Yes, Persisted::No)
            .component::<Splashes>(Replicated::No, Persisted::Yes)
            .action::<Choose>()
            .action::<Splash>()
            .effect::<SplashOn>()
            .event::<Painted>()
            .system(TickSet::Simulate, fade);
    }
}

/// The colour a player splashes with.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Colour(pub u8);

impl GameComponent for Colour {
    const KIND: ComponentKind = ComponentKind(1);
    const NAME: &'static str = "colour";
}

/// Paint on an entity, until a tick.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Splatter {
    pub colour: u8,
    pub until: u32,
}

impl GameComponent for Splatter {
    const KIND: ComponentKind = ComponentKind(2);
    const NAME: &'static str = "splatter";
}

/// How many splashes a player has thrown, ever.
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode,
)]
pub struct Splashes(pub u32);

impl GameComponent for Splashes {
    const KIND: ComponentKind = ComponentKind(3);
    const NAME: &'static str = "splashes";
}

/// Pick a colour (the payload): `0 .. COLOURS`.
#[derive(Debug, Clone, Copy, bincode::Encode, bincode::Decode)]
pub struct Choose {
    pub colour: u8,
}

impl Action for Choose {
    const KIND: ActionKind = ActionKind(1);
    const NAME: &'static str = "choose";
    const REACH: Option<f32> = None;

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        if self.colour >= COLOURS {
            return Err(NO_SUCH_COLOUR);
        }
        ctx.world.entity_mut(ctx.actor).insert(Colour(self.colour));
        Ok(())
    }
}

/// Splash your colour on the target.
#[derive(Debug, Clone, Copy, bincode::Encode, bincode::Decode)]
pub struct Splash;

impl Action for Splash {
    const KIND: ActionKind = ActionKind(2);
    const NAME: &'static str = "splash";
    const REACH: Option<f32> = Some(SPLASH_REACH);

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        let (me, target) = (
            ctx.actor,
            ctx.target.expect("a kind with a reach has a target"),
        );
        if target == me {
            return Err(NOT_YOURSELF);
        }
        let Some(&Colour(colour)) = ctx.world.get::<Colour>(me) else {
            return Err(NO_COLOUR);
        };
        let thrown = ctx.world.get::<Splashes>(me).map_or(0, |s| s.0);
        ctx.world.entity_mut(me).insert(Splashes(thrown + 1));
        // The target may be a ghost of a neighbour's: the paint lands where it is simulated.
        ctx.affect(&SplashOn { colour });
        Ok(())
    }
}

/// Paint landing on its target, in the zone that simulates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SplashOn {
    pub colour: u8,
}

impl Effect for SplashOn {
    const KIND: EffectKind = EffectKind(1);
    const NAME: &'static str = "splash_on";

    fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
        let until = ctx.tick() + FADE_TICKS;
        ctx.world.entity_mut(ctx.target).insert(Splatter {
            colour: self.colour,
            until,
        });
        let (target, by) = (ctx.target, ctx.source.0);
        ctx.to_observers(
            target,
            &Painted {
                by,
                colour: self.colour,
            },
        );
        Ok(())
    }
}

/// Someone was painted: to its observers, reliably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Painted {
    /// The thrower's entity id.
    pub by: u64,
    pub colour: u8,
}

impl ServerEvent for Painted {
    const KIND: EventKind = EventKind(1);
    const NAME: &'static str = "painted";
    const DELIVERY: Delivery = Delivery::Reliable;
}

/// Paint past its time comes off (on what this zone simulates: a ghost's paint is its own
/// zone's business).
// The query spelled out says what the system touches; an alias would hide it.
#[allow(clippy::type_complexity)]
pub fn fade(
    tick: Res<Tick>,
    mut commands: Commands,
    painted: Query<(Entity, &Splatter), Or<(With<Character>, With<Npc>)>>,
) {
    for (entity, splatter) in &painted {
        if tick.0 >= splatter.until {
            commands.entity(entity).remove::<Splatter>();
        }
    }
}
