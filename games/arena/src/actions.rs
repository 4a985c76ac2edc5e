//! What players may do: strike (melee) and shoot (ranged). The engine has checked the kind,
//! the payload, that the target exists (here, or as a ghost across a border) and is within
//! the kind's reach; the arena checks the attacker's side and sends a [`Hit`], which lands
//! where the target is simulated.

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

use crate::components::{Cooldowns, Down, Health, LastHitBy, Level};
use crate::events::Struck;
use crate::{Rules, TICK_HZ};

/// The attack is not ready yet.
pub const COOLING_DOWN: ActionRefusal = ActionRefusal::Rule(1);
/// A wall is in the way.
pub const NO_LINE_OF_SIGHT: ActionRefusal = ActionRefusal::Rule(2);
/// The attacker is down.
pub const YOU_ARE_DOWN: ActionRefusal = ActionRefusal::Rule(3);
/// The target cannot be hit: itself, no health, or already down.
pub const NOT_A_FOE: ActionRefusal = ActionRefusal::Rule(4);

/// Melee reach, metres.
pub const STRIKE_REACH: f32 = 2.5;
/// Ranged reach, metres.
pub const SHOOT_REACH: f32 = 25.0;

/// A melee blow at the target.
#[derive(Debug, Clone, Copy, bincode::Encode, bincode::Decode)]
pub struct Strike;

impl Action for Strike {
    const KIND: ActionKind = ActionKind(1);
    const NAME: &'static str = "strike";
    const REACH: Option<f32> = Some(STRIKE_REACH);

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        attack(ctx, false)
    }
}

/// An arrow at the target: longer reach, less damage, a slower cooldown, and it needs a
/// clear line over the walls.
#[derive(Debug, Clone, Copy, bincode::Encode, bincode::Decode)]
pub struct Shoot;

impl Action for Shoot {
    const KIND: ActionKind = ActionKind(2);
    const NAME: &'static str = "shoot";
    const REACH: Option<f32> = Some(SHOOT_REACH);

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        attack(ctx, true)
    }
}

/// The attacker's side: down or not, the target worth hitting (as this zone sees it: it may
/// be a ghost across a border), the cooldown, the line of sight. What lands on the target is a
/// [`Hit`], applied where the target is simulated.
fn attack(ctx: &mut ActionCtx<'_>, ranged: bool) -> Result<(), ActionRefusal> {
    let (actor, target) = (ctx.actor, ctx.target.expect("both kinds have a reach"));
    let tick = ctx.tick();
    let world = &mut *ctx.world;
    if world.get::<Down>(actor).is_some() {
        return Err(YOU_ARE_DOWN);
    }
    if target == actor || !hittable(world, target) {
        return Err(NOT_A_FOE);
    }
    let cooldowns = world.get::<Cooldowns>(actor).copied().unwrap_or_default();
    let ready = if ranged {
        cooldowns.shoot_ready
    } else {
        cooldowns.strike_ready
    };
    if tick < ready {
        return Err(COOLING_DOWN);
    }
    if ranged {
        let (Some(&from), Some(&to)) =
            (world.get::<Position>(actor), world.get::<Position>(target))
        else {
            return Err(NOT_A_FOE);
        };
        let clear = world
            .get_resource::<CollisionMap>()
            .is_none_or(|map| map.line_clear(from, to));
        if !clear {
            return Err(NO_LINE_OF_SIGHT);
        }
    }
    let rules = world.resource::<Rules>();
    let level = world.get::<Level>(actor).map_or(1, |l| l.0.max(1));
    let (base, per, cooldown) = if ranged {
        (
            rules.shoot_damage,
            rules.shoot_per_level,
            rules.shoot_cooldown,
        )
    } else {
        (
            rules.strike_damage,
            rules.strike_per_level,
            rules.strike_cooldown,
        )
    };
    let damage = base.saturating_add(per.saturating_mul(level - 1));
    let next = tick + Rules::ticks(cooldown, TICK_HZ);
    let mut cooldowns = cooldowns;
    if ranged {
        cooldowns.shoot_ready = next;
    } else {
        cooldowns.strike_ready = next;
    }
    world.entity_mut(actor).insert(cooldowns);
    ctx.affect(&Hit { damage, ranged });
    Ok(())
}

/// Standing, with health left: worth a blow.
fn hittable(world: &World, target: Entity) -> bool {
    world.get::<Down>(target).is_none() && world.get::<Health>(target).is_some_and(|h| h.hp > 0)
}

/// A blow landing: applied where the target is simulated (here, or the zone across the
/// border), which checks again that it is worth hitting (it may have gone down meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Hit {
    pub damage: u16,
    pub ranged: bool,
}

impl Effect for Hit {
    const KIND: EffectKind = EffectKind(1);
    const NAME: &'static str = "hit";

    fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
        let target = ctx.target;
        if !hittable(ctx.world, target) {
            return Err(NOT_A_FOE);
        }
        let by = ctx.source.0;
        let hp = {
            let mut health = ctx.world.get_mut::<Health>(target).expect("checked above");
            health.hp = health.hp.saturating_sub(self.damage);
            health.hp
        };
        ctx.world.entity_mut(target).insert(LastHitBy(by));
        ctx.to_observers(
            target,
            &Struck {
                by,
                damage: self.damage,
                hp,
                ranged: self.ranged,
            },
        );
        Ok(())
    }
}
