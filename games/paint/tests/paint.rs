//! Paint played in a real zone world (the engine's `Sim`, as a zone server runs it), watched
//! through what a client gets: snapshots (colour and splatter are replicated), action answers,
//! events, and what is saved at logout (the count of splashes).

use worldmesh_game::{ComponentValues, GameComponent, GameRef};
use worldmesh_paint::{
    Choose, Colour, NO_COLOUR, NO_SUCH_COLOUR, NOT_YOURSELF, Paint, Painted, Splash, Splashes,
    Splatter,
};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::{ActionRefusal, WorldBounds, codec};
use worldmesh_zone::character::Character;
use worldmesh_zone::sim::movement::CollisionMap;
use worldmesh_zone::sim::{Sim, SimConfig};
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
        collision: CollisionMap::new(10.0, []),
        game: GameRef::new(Paint),
        snapshots: Default::default(),
    })
    .expect("paint registers cleanly")
}

fn character(id: u64, x: f32) -> Character {
    Character {
        id: EntityId(id),
        name: format!("p{id}"),
        x,
        y: 500.0,
        heading: 0.0,
        epoch: Epoch(1),
        version: 1,
        game: ComponentValues::default(),
    }
}

/// Sends an action as player 10, runs a tick: its answer.
fn act<A: worldmesh_game::Action + bincode::Encode>(
    me: &mut Watcher,
    sim: &mut Sim,
    target: Option<u64>,
    action: &A,
) -> Option<ActionRefusal> {
    let seq = me.act(sim, target.map(EntityId), action);
    me.run(sim, 1);
    me.answer(seq).expect("answered in the tick")
}

fn splashes(c: &Character) -> Option<u32> {
    let (_, bytes) = c.game.0.iter().find(|(k, _)| *k == Splashes::KIND)?;
    Some(codec::decode_value::<Splashes>(bytes, 64).unwrap().0)
}

#[test]
fn choose_splash_see_it_fade_and_keep_the_count() {
    let mut sim = sim();
    sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0));
    sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0));
    sim.spawn_player(LinkId(1), PlayerId(12), &character(102, 520.0));
    let mut me = Watcher::new(PlayerId(10));
    me.run(&mut sim, 2);

    assert_eq!(act(&mut me, &mut sim, Some(101), &Splash), Some(NO_COLOUR));
    assert_eq!(
        act(&mut me, &mut sim, None, &Choose { colour: 9 }),
        Some(NO_SUCH_COLOUR)
    );
    assert_eq!(act(&mut me, &mut sim, None, &Choose { colour: 3 }), None);
    me.run(&mut sim, 1);
    assert_eq!(
        me.field::<Colour>(EntityId(100)),
        Some(Colour(3)),
        "others see it too"
    );
    assert_eq!(
        act(&mut me, &mut sim, Some(100), &Splash),
        Some(NOT_YOURSELF)
    );
    assert_eq!(
        act(&mut me, &mut sim, Some(102), &Splash),
        Some(ActionRefusal::OutOfReach),
        "20 m away: the engine's reach check"
    );

    assert_eq!(act(&mut me, &mut sim, Some(101), &Splash), None);
    me.run(&mut sim, 1);
    let splatter = me
        .field::<Splatter>(EntityId(101))
        .expect("the paint is replicated");
    assert_eq!(splatter.colour, 3);
    assert_eq!(
        me.events::<Painted>(EntityId(101)),
        [Painted { by: 100, colour: 3 }]
    );

    // It fades after 10 s.
    me.run(&mut sim, worldmesh_paint::FADE_TICKS);
    assert_eq!(me.field::<Splatter>(EntityId(101)), None, "faded");

    // The colour and the count are saved and come back.
    let saved = sim.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(splashes(&saved), Some(1));
    let mut other = self::sim();
    other.spawn_player(LinkId(1), PlayerId(10), &saved);
    other.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0));
    let mut me = Watcher::new(PlayerId(10));
    me.run(&mut other, 2);
    assert_eq!(me.field::<Colour>(EntityId(100)), Some(Colour(3)));
    assert_eq!(act(&mut me, &mut other, Some(101), &Splash), None);
    let again = other.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(splashes(&again), Some(2), "counted on from the saved 1");
}
