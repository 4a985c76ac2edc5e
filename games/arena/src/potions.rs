//! Potions: a player carries a few, drinks one to heal, and gets one back every so often.
//!
//! The whole feature is this file plus four lines in [`Arena`](crate::Arena)'s registration;
//! `docs/game-api.md` builds it step by step (a component, a replicated field, an action, an
//! event, a system).

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

use crate::actions::YOU_ARE_DOWN;
use crate::components::{Down, Health};
use crate::{Rules, TICK_HZ};

/// Nothing left to drink.
pub const NO_POTIONS: ActionRefusal = ActionRefusal::Rule(5);
/// Already at full health: a potion would be wasted.
pub const HEALTHY: ActionRefusal = ActionRefusal::Rule(6);

/// Potions carried. Replicated (the client draws them; observers see them too, which the
/// arena does not mind) and persisted (they come back on login, across handoffs and after a
/// zone fails).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Potions(pub u8);

impl GameComponent for Potions {
    const KIND: ComponentKind = ComponentKind(8);
    const NAME: &'static str = "potions";
}

/// Drink a potion: heal [`Rules::potion_heal`], up to full health. No target, no payload.
#[derive(Debug, Clone, Copy, bincode::Encode, bincode::Decode)]
pub struct Drink;

impl Action for Drink {
    const KIND: ActionKind = ActionKind(3);
    const NAME: &'static str = "drink";
    const REACH: Option<f32> = None;

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        let me = ctx.actor;
        let heal = ctx.world.resource::<Rules>().potion_heal;
        if ctx.world.get::<Down>(me).is_some() {
            return Err(YOU_ARE_DOWN);
        }
        let Some(health) = ctx.world.get::<Health>(me).copied() else {
            return Err(HEALTHY);
        };
        if health.hp >= health.max {
            return Err(HEALTHY);
        }
        match ctx.world.get_mut::<Potions>(me) {
            Some(mut potions) if potions.0 > 0 => potions.0 -= 1,
            _ => return Err(NO_POTIONS),
        }
        let hp = health.hp.saturating_add(heal).min(health.max);
        ctx.world.entity_mut(me).insert(Health { hp, ..health });
        ctx.to_observers(
            me,
            &Drank {
                healed: hp - health.hp,
                hp,
            },
        );
        Ok(())
    }
}

/// Someone drank a potion: to its observers, reliably (the health bar in the next snapshot is
/// the truth; this is for the sound and the sparkle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Drank {
    pub healed: u16,
    /// Health now.
    pub hp: u16,
}

impl ServerEvent for Drank {
    const KIND: EventKind = EventKind(4);
    const NAME: &'static str = "drank";
    const DELIVERY: Delivery = Delivery::Reliable;
}

/// Every [`Rules::potion_refill_seconds`], each player this zone simulates gets a potion back,
/// up to [`Rules::potions_max`]; a player without any yet (new, or from before potions
/// existed) gets the full set at once.
pub fn refill(
    tick: Res<Tick>,
    rules: Res<Rules>,
    mut commands: Commands,
    mut players: Query<(Entity, Option<&mut Potions>), With<Character>>,
) {
    let every = Rules::ticks(rules.potion_refill_seconds, TICK_HZ);
    for (entity, potions) in &mut players {
        match potions {
            None => {
                commands.entity(entity).insert(Potions(rules.potions_max));
            }
            Some(mut p) if p.0 < rules.potions_max && tick.0.is_multiple_of(every) => p.0 += 1,
            Some(_) => {}
        }
    }
}
