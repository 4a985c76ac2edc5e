//! Paint played in a real zone world (the engine's `Sim`, as a zone server runs it), watched
//! through what a client gets: snapshots (colour and splatter are replicated), action answers,
//! events, and what is saved at logout (the count of splashes).

use worldmesh_game::action::request;
use worldmesh_game::{ComponentValues, GameComponent, GameRef, ServerEvent};
use worldmesh_paint::{
    Choose, Colour, NO_COLOUR, NO_SUCH_COLOUR, NOT_YOURSELF, Paint, Painted, Splash, Splashes,
    Splatter,
};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId};
use worldmesh_protocol::snapshot::SnapshotDecoder;
use worldmesh_protocol::{ActionRefusal, GameEvent, ServerMessage, WorldBounds, codec};
use worldmesh_zone::character::Character;
use worldmesh_zone::sim::movement::CollisionMap;
use worldmesh_zone::sim::{Sim, SimConfig};

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

/// Player 10's client: its view, its answers, its events.
#[derive(Default)]
struct Client {
    decoder: SnapshotDecoder,
    answers: Vec<(u32, Option<ActionRefusal>)>,
    events: Vec<GameEvent>,
    seq: u32,
}

impl Client {
    fn run(&mut self, sim: &mut Sim, ticks: u32) {
        for _ in 0..ticks {
            sim.step();
            for f in sim.take_outbox() {
                if f.player_id != PlayerId(10) {
                    continue;
                }
                match codec::decode_frame::<ServerMessage>(&f.frame) {
                    Ok(ServerMessage::Snapshot(s)) => {
                        self.decoder.apply(&s).unwrap();
                    }
                    Ok(ServerMessage::ActionDone(a)) => self.answers.push((a.seq, a.refused)),
                    Ok(ServerMessage::Event(e)) => self.events.push(e),
                    _ => {}
                }
            }
        }
    }

    /// Sends an action as player 10 and runs a tick: its answer.
    fn act<A: worldmesh_game::Action + bincode::Encode>(
        &mut self,
        sim: &mut Sim,
        target: Option<u64>,
        action: &A,
    ) -> Option<ActionRefusal> {
        self.seq += 1;
        let r = request(self.seq, target.map(EntityId), action).unwrap();
        sim.push_action(LinkId(1), PlayerId(10), r);
        self.run(sim, 1);
        let seq = self.seq;
        self.answers
            .iter()
            .find(|(s, _)| *s == seq)
            .expect("answered in the tick")
            .1
    }

    fn field<T: GameComponent + bincode::Decode<()>>(&self, id: u64) -> Option<T> {
        let slot = self.decoder.view().iter().find(|(_, e)| e.id == id)?.0;
        self.decoder.fields_of(slot)?.get(T::KIND)?.ok()
    }
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
    let mut me = Client::default();
    me.run(&mut sim, 2);

    assert_eq!(me.act(&mut sim, Some(101), &Splash), Some(NO_COLOUR));
    assert_eq!(
        me.act(&mut sim, None, &Choose { colour: 9 }),
        Some(NO_SUCH_COLOUR)
    );
    assert_eq!(me.act(&mut sim, None, &Choose { colour: 3 }), None);
    me.run(&mut sim, 1);
    assert_eq!(
        me.field::<Colour>(100),
        Some(Colour(3)),
        "others see it too"
    );
    assert_eq!(me.act(&mut sim, Some(100), &Splash), Some(NOT_YOURSELF));
    assert_eq!(
        me.act(&mut sim, Some(102), &Splash),
        Some(ActionRefusal::OutOfReach),
        "20 m away: the engine's reach check"
    );

    assert_eq!(me.act(&mut sim, Some(101), &Splash), None);
    me.run(&mut sim, 1);
    let splatter = me.field::<Splatter>(101).expect("the paint is replicated");
    assert_eq!(splatter.colour, 3);
    let painted: Vec<Painted> = me
        .events
        .iter()
        .filter(|e| e.kind == Painted::KIND && e.entity == EntityId(101))
        .map(|e| codec::decode_value(&e.payload, 64).unwrap())
        .collect();
    assert_eq!(painted, [Painted { by: 100, colour: 3 }]);

    // It fades after 10 s.
    me.run(&mut sim, worldmesh_paint::FADE_TICKS);
    assert_eq!(me.field::<Splatter>(101), None, "faded");

    // The colour and the count are saved and come back.
    let saved = sim.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(splashes(&saved), Some(1));
    let mut other = self::sim();
    other.spawn_player(LinkId(1), PlayerId(10), &saved);
    other.spawn_player(LinkId(1), PlayerId(11), &character(101, 502.0));
    let mut me = Client::default();
    me.run(&mut other, 2);
    assert_eq!(me.field::<Colour>(100), Some(Colour(3)));
    assert_eq!(me.act(&mut other, Some(101), &Splash), None);
    let again = other.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(splashes(&again), Some(2), "counted on from the saved 1");
}
