//! The monsters: two NPC kinds, and their blows. The engine walks them (they wander, and head
//! for players they notice); the arena makes them strike the players they reach.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bevy_ecs::prelude::*;
use bevy_ecs::world::EntityWorldMut;
use worldmesh_game::prelude::*;

use crate::components::{Down, Health, LastHitBy, Level};
use crate::events::Struck;
use crate::{Rules, TICK_HZ};

/// What makes an NPC a monster: how hard it hits, what downing it is worth, when it may swing
/// again. Carried with it (not replicated, not persisted).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Monster {
    pub damage: u16,
    /// XP for whoever downs it.
    pub bounty: u32,
    pub next_swing: u32,
}

impl GameComponent for Monster {
    const KIND: ComponentKind = ComponentKind(7);
    const NAME: &'static str = "monster";
}

/// Small, common, weak.
pub struct Goblin;

impl NpcKind for Goblin {
    const KIND: NpcKindId = NpcKindId(1);
    const NAME: &'static str = "goblin";
    const WEIGHT: u32 = 3;
    const RESPAWN_SECONDS: f32 = 10.0;

    fn spawn(npc: &mut EntityWorldMut<'_>) {
        npc.insert((
            Health::full(30),
            Level(1),
            Monster {
                damage: 4,
                bounty: 20,
                next_swing: 0,
            },
        ));
    }
}

/// Big, rare, hits hard.
pub struct Ogre;

impl NpcKind for Ogre {
    const KIND: NpcKindId = NpcKindId(2);
    const NAME: &'static str = "ogre";
    const WEIGHT: u32 = 1;
    const RESPAWN_SECONDS: f32 = 20.0;

    fn spawn(npc: &mut EntityWorldMut<'_>) {
        npc.insert((
            Health::full(90),
            Level(3),
            Monster {
                damage: 9,
                bounty: 60,
                next_swing: 0,
            },
        ));
    }
}

/// Standing players, bucketed by position (cells as wide as a monster's reach), so each
/// monster looks at a few players instead of all.
type Buckets = HashMap<(i32, i32), Vec<(Entity, Position)>, BuildHasherDefault<CellHasher>>;

/// Hashes cell coordinates with a multiply: they are not attacker-chosen, and every monster
/// looks up nine cells every tick.
#[derive(Default)]
pub struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(b as u32);
        }
    }

    fn write_i32(&mut self, v: i32) {
        self.write_u32(v as u32);
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(26) ^ v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn cell(p: Position, size: f32) -> (i32, i32) {
    ((p.x / size).floor() as i32, (p.y / size).floor() as i32)
}

/// Monsters strike the nearest standing player within reach when their swing is ready.
pub fn strike_players(
    tick: Res<Tick>,
    rules: Res<Rules>,
    mut events: ResMut<Events>,
    mut commands: Commands,
    mut monsters: Query<(&Id, &Position, &mut Monster, &Health), (With<Npc>, Without<Down>)>,
    mut players: Query<
        (Entity, &Position, &mut Health),
        (With<Character>, Without<Npc>, Without<Down>),
    >,
    mut buckets: Local<Buckets>,
) {
    let reach = rules.monster_reach.max(0.1);
    // Cleared, not kept: players roam, and a map of every cell ever visited would grow.
    buckets.clear();
    for (entity, &at, health) in &players {
        if health.hp > 0 {
            buckets
                .entry(cell(at, reach))
                .or_default()
                .push((entity, at));
        }
    }
    if buckets.is_empty() {
        return;
    }
    let cooldown = Rules::ticks(rules.monster_cooldown, TICK_HZ);
    for (id, &at, mut monster, health) in &mut monsters {
        if health.hp == 0 || tick.0 < monster.next_swing {
            continue;
        }
        let (cx, cy) = cell(at, reach);
        let mut nearest: Option<(f32, Entity)> = None;
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &(e, p) in buckets.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    let d = at.distance(p);
                    if d <= reach && nearest.is_none_or(|(n, _)| d < n) {
                        nearest = Some((d, e));
                    }
                }
            }
        }
        let Some((_, victim)) = nearest else { continue };
        let Ok((_, _, mut h)) = players.get_mut(victim) else {
            continue;
        };
        if h.hp == 0 {
            continue;
        }
        h.hp = h.hp.saturating_sub(monster.damage);
        monster.next_swing = tick.0 + cooldown;
        commands.entity(victim).insert(LastHitBy(id.0.0));
        events.to_observers(
            victim,
            &Struck {
                by: id.0.0,
                damage: monster.damage,
                hp: h.hp,
                ranged: false,
            },
        );
    }
}
