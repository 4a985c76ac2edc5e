//! The arena played in a real zone world (the engine's `Sim`, as a zone server runs it),
//! watched through what clients get: snapshots (health, level, down are replicated), action
//! answers, events, and checkpoints (XP is persisted).

use worldmesh_arena::actions::{COOLING_DOWN, NO_LINE_OF_SIGHT, NOT_A_FOE, YOU_ARE_DOWN};
use worldmesh_arena::components::Down;
use worldmesh_arena::{Arena, Goblin, Health, Level, Shoot, Strike, Xp};
use worldmesh_game::action::request;
use worldmesh_game::{ComponentValues, GameComponent, GameRef, NpcKind, NpcKinds};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::{ActionRefusal, WorldBounds, codec};
use worldmesh_zone::character::Character;
use worldmesh_zone::sim::movement::CollisionMap;
use worldmesh_zone::sim::{NPC_ID_BASE, Sim, SimConfig};
use worldmesh_zone::testing::Watcher;

fn sim() -> Sim {
    Sim::new(&SimConfig {
        tick_rate_hz: 20,
        bounds: WorldBounds {
            min_x: 0.0,
            min_y: 0.0,
            max_x: 1000.0,
            max_y: 1000.0,
        },
        view_radius: 100.0,
        snapshot_budget_bytes: 1100,
        chat_radius: 50.0,
        // A wall: the 10 m cell (60, 50), x 600..610, y 500..510.
        collision: CollisionMap::new(10.0, [(60, 50)]),
        game: GameRef::new(Arena),
        snapshots: Default::default(),
    })
    .expect("the arena registers cleanly")
}

fn character(id: u64, x: f32, y: f32) -> Character {
    Character {
        id: EntityId(id),
        name: format!("p{id}"),
        x,
        y,
        heading: 0.0,
        epoch: Epoch(1),
        version: 1,
        game: ComponentValues::default(),
    }
}

/// The XP of character `id` as its next checkpoint saves it.
fn xp_of(sim: &mut Sim, id: u64) -> u32 {
    let c = sim.checkpoint().into_iter().find(|c| c.id == EntityId(id));
    xp_of_last(&c.expect("a character that earned XP is checkpointed"))
}

#[test]
fn players_strike_fall_get_up_and_earn_xp() {
    let mut sim = sim();
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
    sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0, 500.0));
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    assert_eq!(w.field::<Health>(EntityId(101)), Some(Health::full(100)));
    assert_eq!(w.field::<Level>(EntityId(100)), Some(Level(1)));

    let first = w.act(&mut sim, Some(EntityId(101)), &Strike);
    let too_soon = w.act(&mut sim, Some(EntityId(101)), &Strike);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(first), Some(None));
    assert_eq!(w.answer(too_soon), Some(Some(COOLING_DOWN)));
    assert_eq!(w.field::<Health>(EntityId(101)).unwrap().hp, 90);
    let myself = w.act(&mut sim, Some(EntityId(100)), &Strike);
    w.run(&mut sim, 1);
    assert_eq!(
        w.answer(myself),
        Some(Some(NOT_A_FOE)),
        "nobody strikes themselves"
    );

    // Nine more strikes, each after its cooldown (0.8 s = 16 ticks): down.
    for _ in 0..9 {
        w.run(&mut sim, 16);
        let s = w.act(&mut sim, Some(EntityId(101)), &Strike);
        w.run(&mut sim, 1);
        assert_eq!(w.answer(s), Some(None));
    }
    w.run(&mut sim, 1);
    assert_eq!(w.field::<Health>(EntityId(101)).unwrap().hp, 0);
    assert!(w.field::<Down>(EntityId(101)).is_some(), "lies down");
    assert_eq!(xp_of(&mut sim, 100), 30, "30 XP per level of the downed");
    w.run(&mut sim, 16);
    let s = w.act(&mut sim, Some(EntityId(101)), &Strike);
    w.run(&mut sim, 1);
    assert_eq!(
        w.answer(s),
        Some(Some(NOT_A_FOE)),
        "the downed cannot be hit"
    );

    // Five seconds later it is up again, at full health, where it fell.
    w.run(&mut sim, 100);
    assert_eq!(w.field::<Health>(EntityId(101)), Some(Health::full(100)));
    assert!(w.field::<Down>(EntityId(101)).is_none());
}

#[test]
fn a_shot_needs_a_clear_line_and_the_downed_cannot_act() {
    let mut sim = sim();
    // 100 and 101 on either side of the wall at x 600..610 (y 500..510); 102 in the open.
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 595.0, 505.0));
    sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 615.0, 505.0));
    sim.spawn_player(LinkId(1), PlayerId(12), &character(102, 595.0, 520.0));
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    let blocked = w.act(&mut sim, Some(EntityId(101)), &Shoot);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(blocked), Some(Some(NO_LINE_OF_SIGHT)));
    let clear = w.act(&mut sim, Some(EntityId(102)), &Shoot);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(clear), Some(None));
    assert_eq!(
        w.field::<Health>(EntityId(102)).unwrap().hp,
        94,
        "a level-1 arrow: 6"
    );
    let far = w.act(&mut sim, Some(EntityId(102)), &Strike);
    w.run(&mut sim, 1);
    assert_eq!(
        w.answer(far),
        Some(Some(ActionRefusal::OutOfReach)),
        "15 m is beyond a melee's reach: the engine refuses it"
    );
    // Player 13, next to player 10, downs it (ten strikes); player 10 then cannot act.
    sim.spawn_player(LinkId(1), PlayerId(13), &character(103, 596.0, 505.0));
    for seq in 1..=10 {
        let r = request(seq, Some(EntityId(100)), &Strike).unwrap();
        sim.push_action(LinkId(1), PlayerId(13), r);
        w.run(&mut sim, 17);
    }
    assert!(
        w.field::<Down>(EntityId(100)).is_some(),
        "player 10 is down"
    );
    let downed = w.act(&mut sim, Some(EntityId(103)), &Strike);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(downed), Some(Some(YOU_ARE_DOWN)));
}

/// An NPC id whose kind is a goblin.
fn a_goblin(sim_kinds: &NpcKinds) -> u64 {
    (NPC_ID_BASE.0..)
        .find(|id| sim_kinds.kind_of(*id).map(|k| k.kind) == Some(Goblin::KIND))
        .unwrap()
}

#[test]
fn monsters_fight_back_are_defeated_and_come_back() {
    let mut sim = sim();
    let kinds = {
        let mut world = bevy_ecs::world::World::new();
        let mut schedule = bevy_ecs::schedule::Schedule::default();
        worldmesh_game::install(&Arena, &mut world, &mut schedule).unwrap();
        world.remove_resource::<NpcKinds>().unwrap()
    };
    let goblin = a_goblin(&kinds);
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
    sim.spawn_npc(EntityId(goblin), 501.5, 500.0);
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    assert_eq!(w.field::<Health>(EntityId(goblin)), Some(Health::full(30)));
    // Chase it (it wanders) and strike whenever it is in reach; it strikes back. Three blows
    // of ours down it.
    let q = worldmesh_protocol::snapshot::Quantizer::new(WorldBounds {
        min_x: 0.0,
        min_y: 0.0,
        max_x: 1000.0,
        max_y: 1000.0,
    });
    let (mut blows, mut tick) = (Vec::new(), 0);
    while w.sees(EntityId(goblin)) && tick < 600 {
        tick += 1;
        let at = |id: u64| {
            let (_, e) = w.decoder().view().iter().find(|(_, e)| e.id == id)?;
            Some(q.dequantize(e))
        };
        let (Some(me), Some(it)) = (at(100), at(goblin)) else {
            break;
        };
        let d = (it.x - me.x).hypot(it.y - me.y);
        sim.push_input(
            PlayerId(10),
            worldmesh_protocol::Input {
                seq: tick,
                ack_tick: w.decoder().ack_tick(),
                heading: (it.y - me.y).atan2(it.x - me.x),
                speed: if d > 1.5 { 5.0 } else { 0.0 },
                actions: 0,
            },
        );
        if d < 2.2 {
            blows.push(w.act(&mut sim, Some(EntityId(goblin)), &Strike));
        }
        w.run(&mut sim, 1);
    }
    let landed = blows.iter().filter(|s| w.answer(**s) == Some(None)).count();
    assert_eq!(landed, 3, "three blows land (others were cooling down)");
    assert!(
        !w.sees(EntityId(goblin)),
        "defeated: taken out of the world"
    );
    assert_eq!(sim.npc_count(), (0, 1), "and waiting to come back");
    assert_eq!(xp_of(&mut sim, 100), 20, "a goblin's bounty");
    assert!(
        w.field::<Health>(EntityId(100)).unwrap().hp < 100,
        "the goblin hit back"
    );
    // Ten seconds after its defeat it is back, fresh, where it first stood.
    w.run(&mut sim, 200);
    assert_eq!(sim.npc_count(), (1, 0));
    assert!(w.sees(EntityId(goblin)));
    assert_eq!(w.field::<Health>(EntityId(goblin)), Some(Health::full(30)));
}

#[test]
fn xp_level_and_health_survive_logout_and_login() {
    let mut sim = sim();
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
    sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0, 500.0));
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    for _ in 0..10 {
        w.act(&mut sim, Some(EntityId(101)), &Strike);
        w.run(&mut sim, 17);
    }
    // 101 got up again; 100 struck it down once: 30 XP; now hit 101 once more.
    w.run(&mut sim, 100);
    w.act(&mut sim, Some(EntityId(101)), &Strike);
    w.run(&mut sim, 1);
    let hurt = sim.despawn_player(PlayerId(11)).unwrap();
    let winner = sim.despawn_player(PlayerId(10)).unwrap();
    // Both log in again, in another zone's world.
    let mut other = self::sim();
    other.spawn_player(LinkId(1), PlayerId(10), &winner);
    other.spawn_player(LinkId(1), PlayerId(11), &hurt);
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut other, 2);
    assert_eq!(
        w.field::<Health>(EntityId(101)).unwrap().hp,
        90,
        "health kept"
    );
    assert_eq!(w.field::<Level>(EntityId(100)), Some(Level(1)));
    let again = other.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(
        (xp_of_last(&winner), xp_of_last(&again)),
        (30, 30),
        "xp saved, loaded, and saved again"
    );
}

/// The XP a saved character state holds.
fn xp_of_last(c: &Character) -> u32 {
    let (_, bytes) = c
        .game
        .0
        .iter()
        .find(|(k, _)| *k == Xp::KIND)
        .expect("xp is persisted");
    codec::decode_value::<Xp>(bytes, 64).unwrap().0
}

#[test]
fn a_potion_heals_is_told_and_comes_back_and_potions_are_saved() {
    use worldmesh_arena::potions::{Drank, HEALTHY, NO_POTIONS};
    use worldmesh_arena::{Drink, Potions};
    let mut sim = sim();
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
    sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0, 500.0));
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    assert_eq!(
        w.field::<Potions>(EntityId(100)),
        Some(Potions(3)),
        "a full set to start"
    );
    let healthy = w.act(&mut sim, None, &Drink);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(healthy), Some(Some(HEALTHY)), "nothing to heal");

    // 101 strikes 100 three times (player 11's actions), then 100 drinks: 70 + 40, capped.
    let mut seq = 0;
    for _ in 0..3 {
        seq += 1;
        let r = request(seq, Some(EntityId(100)), &Strike).unwrap();
        sim.push_action(LinkId(1), PlayerId(11), r);
        w.run(&mut sim, 17);
    }
    assert_eq!(w.field::<Health>(EntityId(100)).map(|h| h.hp), Some(70));
    let drink = w.act(&mut sim, None, &Drink);
    w.run(&mut sim, 2);
    assert_eq!(w.answer(drink), Some(None));
    assert_eq!(w.field::<Health>(EntityId(100)).map(|h| h.hp), Some(100));
    assert_eq!(w.field::<Potions>(EntityId(100)), Some(Potions(2)));
    assert_eq!(
        w.events::<Drank>(EntityId(100)),
        [Drank {
            healed: 30,
            hp: 100
        }]
    );

    // Saved with the character, loaded with it.
    let saved = sim.despawn_player(PlayerId(10)).unwrap();
    let mut other = self::sim();
    other.spawn_player(LinkId(1), PlayerId(10), &saved);
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut other, 2);
    assert_eq!(
        w.field::<Potions>(EntityId(100)),
        Some(Potions(2)),
        "potions kept"
    );

    // A character with none left (and hurt) is refused; one comes back every 30 s (600 ticks).
    let mut sim = self::sim();
    let mut dry = saved.clone();
    dry.game
        .0
        .retain(|(k, _)| *k != Potions::KIND && *k != Health::KIND);
    dry.game
        .0
        .push((Potions::KIND, codec::encode_value(&Potions(0), 64).unwrap()));
    dry.game.0.push((
        Health::KIND,
        codec::encode_value(&Health { hp: 50, max: 100 }, 64).unwrap(),
    ));
    sim.spawn_player(LinkId(1), PlayerId(10), &dry);
    let mut w = Watcher::new(PlayerId(10));
    w.run(&mut sim, 2);
    let none = w.act(&mut sim, None, &Drink);
    w.run(&mut sim, 1);
    assert_eq!(w.answer(none), Some(Some(NO_POTIONS)));
    w.run(&mut sim, 600);
    assert_eq!(
        w.field::<Potions>(EntityId(100)),
        Some(Potions(1)),
        "one back in 30 s"
    );
}
