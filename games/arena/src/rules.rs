//! The rules that run every tick: newcomers get their stats, the beaten fall (players lie
//! down, monsters are defeated) and their last attacker earns XP, the downed get up.

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

use crate::components::{Cooldowns, Down, Health, LastHitBy, Level, Xp};
use crate::events::{LevelUp, WentDown};
use crate::monsters::Monster;
use crate::{Rules, TICK_HZ};

/// A character seen for the first time (a new player; a returning one brings its stored
/// health, level and XP) gets what it lacks; a new one its starter kit too (given once per
/// character by the ledger, however often asked).
pub fn newcomers(
    rules: Res<Rules>,
    mut commands: Commands,
    mut loot: ResMut<Loot>,
    fresh: Query<
        (Entity, &Id, Has<Health>, Has<Level>, Has<Xp>),
        (With<Character>, Without<Cooldowns>),
    >,
) {
    for (entity, id, has_health, has_level, has_xp) in &fresh {
        if !has_xp {
            let mut kit = vec![Grant::Gold(rules.starter_gold)];
            kit.extend((0..rules.starter_gems).map(|_| Grant::Item {
                kind: crate::GEM,
                count: 1,
            }));
            loot.once(id.0, crate::STARTER_KIT, &kit);
        }
        let mut e = commands.entity(entity);
        e.insert(Cooldowns::default());
        if !has_health {
            e.insert(Health::full(rules.player_health));
        }
        if !has_level {
            e.insert(Level(1));
        }
        if !has_xp {
            e.insert(Xp(0));
        }
    }
}

/// Whoever is at 0 health falls: a player lies down (and cannot move) until it gets up, a
/// monster is defeated (the engine takes it away and brings it back later). The last attacker
/// earns XP — the monster's bounty, or per level of the downed player — as a [`Reward`],
/// wherever that attacker is simulated now.
pub fn fall(
    tick: Res<Tick>,
    rules: Res<Rules>,
    mut events: ResMut<Events>,
    mut effects: ResMut<Effects>,
    mut chronicle: ResMut<Chronicle>,
    mut commands: Commands,
    fallen: Query<
        (
            Entity,
            &Id,
            &Health,
            Option<&LastHitBy>,
            Option<&Monster>,
            Option<&Level>,
            Has<Npc>,
        ),
        (
            Without<Down>,
            Without<Defeated>,
            Or<(With<Character>, With<Npc>)>,
        ),
    >,
) {
    let down_ticks = Rules::ticks(rules.down_seconds, TICK_HZ);
    for (entity, &Id(id), health, hit_by, monster, level, is_npc) in &fallen {
        if health.hp > 0 {
            continue;
        }
        if is_npc {
            commands.entity(entity).insert(Defeated);
        } else {
            commands.entity(entity).insert((
                Down {
                    until: tick.0 + down_ticks,
                },
                Immobile,
            ));
        }
        let by = hit_by.map_or(0, |h| h.0);
        events.to_observers(entity, &WentDown { by });
        let xp = match monster {
            Some(m) => m.bounty,
            None => rules.xp_per_player_level * level.map_or(1, |l| l.0.max(1)) as u32,
        };
        if by != 0 {
            chronicle.kill(EntityId(by), id);
            let trophy = !id.is_npc();
            effects.send(id, EntityId(by), &Reward { xp, trophy });
        }
    }
}

/// XP for downing someone: applied to the winner wherever it is simulated (a monster may fall
/// in one zone to an arrow shot from the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Reward {
    pub xp: u32,
    /// A player was downed: the winner takes a trophy too.
    pub trophy: bool,
}

impl Effect for Reward {
    const KIND: EffectKind = EffectKind(2);
    const NAME: &'static str = "reward";

    fn apply(self, ctx: &mut EffectCtx<'_>) -> Result<(), ActionRefusal> {
        let winner = ctx.target;
        // Monsters earn nothing.
        let Some(mut xp) = ctx.world.get_mut::<Xp>(winner) else {
            return Ok(());
        };
        xp.0 = xp.0.saturating_add(self.xp);
        let total = xp.0;
        let earned = ctx.world.resource::<Rules>().level_for(total);
        let level = match ctx.world.get_mut::<Level>(winner) {
            Some(mut level) => {
                level.0 = level.0.max(earned);
                level.0
            }
            None => earned,
        };
        ctx.to_player(winner, winner, &LevelUp { xp: total, level });
        // Gold and a trophy, recorded with the ledger by the engine, once.
        if let Some(&Id(id)) = ctx.world.get::<Id>(winner) {
            // The leaderboard's score: XP.
            ctx.world
                .resource_mut::<Chronicle>()
                .score(id, u64::from(total), u32::from(level));
            let gold = ctx.world.resource::<Rules>().gold_per_kill;
            let mut loot = ctx.world.resource_mut::<Loot>();
            loot.gold(id, gold);
            if self.trophy {
                loot.item(id, crate::TROPHY, 1);
            }
        }
        Ok(())
    }
}

/// The downed whose time is up get up where they fell, at full health.
pub fn get_up(
    tick: Res<Tick>,
    mut commands: Commands,
    mut downed: Query<(Entity, &Down, &mut Health), With<Character>>,
) {
    for (entity, down, mut health) in &mut downed {
        if tick.0 >= down.until {
            health.hp = health.max;
            commands
                .entity(entity)
                .remove::<(Down, Immobile, LastHitBy)>();
        }
    }
}
