//! The rules that run every tick: newcomers get their stats, the beaten fall (players lie
//! down, monsters are defeated) and their last attacker earns XP, the downed get up.

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;

use crate::components::{Cooldowns, Down, Health, LastHitBy, Level, Xp};
use crate::events::{LevelUp, WentDown};
use crate::monsters::Monster;
use crate::{Rules, TICK_HZ};

/// A character seen for the first time (a new player; a returning one brings its stored
/// health, level and XP) gets what it lacks.
pub fn newcomers(
    rules: Res<Rules>,
    mut commands: Commands,
    fresh: Query<(Entity, Has<Health>, Has<Level>, Has<Xp>), (With<Character>, Without<Cooldowns>)>,
) {
    for (entity, has_health, has_level, has_xp) in &fresh {
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
/// earns XP: the monster's bounty, or per level of the downed player.
pub fn fall(
    tick: Res<Tick>,
    rules: Res<Rules>,
    mut events: ResMut<Events>,
    mut commands: Commands,
    mut sides: ParamSet<(
        Query<
            (
                Entity,
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
        Query<(Entity, &Id, &mut Xp, &mut Level), With<Character>>,
    )>,
) {
    let down_ticks = Rules::ticks(rules.down_seconds, TICK_HZ);
    // (attacker id, XP earned) for each fall this tick.
    let mut earned: Vec<(u64, u32)> = Vec::new();
    for (entity, health, hit_by, monster, level, is_npc) in &sides.p0() {
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
        earned.push((by, xp));
    }
    for (by, xp_earned) in earned {
        if let Some((winner, _, mut xp, mut level)) =
            sides.p1().iter_mut().find(|(_, id, _, _)| id.0.0 == by)
        {
            xp.0 = xp.0.saturating_add(xp_earned);
            level.0 = level.0.max(rules.level_for(xp.0));
            events.to_player(
                winner,
                winner,
                &LevelUp {
                    xp: xp.0,
                    level: level.0,
                },
            );
        }
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
