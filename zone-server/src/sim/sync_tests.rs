//! A game's registered components through the zone core: replicated in snapshots (and only
//! when they change), persisted in checkpoints and loaded on login, carried in handoffs,
//! mirrored on ghosts.

use bevy_ecs::prelude::*;
use worldmesh_game::prelude::*;
use worldmesh_game::{ComponentValues, Game, GameRef, GameRegistry};
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId, ZoneId};
use worldmesh_protocol::snapshot::SnapshotDecoder;
use worldmesh_protocol::{ActionRequest, Input, ServerMessage, codec};

use super::tests::config;
use super::*;
use crate::character::Character;

/// Replicated and persisted.
#[derive(Component, Debug, Clone, Copy, PartialEq, bincode::Encode, bincode::Decode)]
struct Health(u16);

impl GameComponent for Health {
    const KIND: ComponentKind = ComponentKind(1);
    const NAME: &'static str = "health";
}

/// Persisted, never shown.
#[derive(Component, Debug, Clone, Copy, PartialEq, bincode::Encode, bincode::Decode)]
struct Xp(u32);

impl GameComponent for Xp {
    const KIND: ComponentKind = ComponentKind(2);
    const NAME: &'static str = "xp";
}

/// Neither: it only follows the entity through handoffs.
#[derive(Component, Debug, Clone, Copy, PartialEq, bincode::Encode, bincode::Decode)]
struct Rage(u32);

impl GameComponent for Rage {
    const KIND: ComponentKind = ComponentKind(3);
    const NAME: &'static str = "rage";
}

#[derive(Debug, bincode::Encode, bincode::Decode)]
struct Hit;

impl Action for Hit {
    const KIND: ActionKind = ActionKind(1);
    const NAME: &'static str = "hit";
    const REACH: Option<f32> = Some(5.0);

    fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
        let target = ctx.target.expect("a reach means a target");
        if let Some(mut h) = ctx.world.get_mut::<Health>(target) {
            h.0 = h.0.saturating_sub(10);
        }
        Ok(())
    }
}

struct HpGame;

impl Game for HpGame {
    fn name(&self) -> &'static str {
        "hp"
    }

    fn register(&self, game: &mut GameRegistry) {
        game.component::<Health>(Replicated::Yes, Persisted::Yes)
            .component::<Xp>(Replicated::No, Persisted::Yes)
            .component::<Rage>(Replicated::No, Persisted::No)
            .action::<Hit>()
            // Rage grows every tick, and every tick this touches each Health mutably without
            // changing it: neither may cost snapshot bytes or checkpoints.
            .system(
                TickSet::Simulate,
                |mut q: Query<(&mut Rage, &mut Health)>| {
                    for (mut rage, mut health) in &mut q {
                        rage.0 += 1;
                        health.0 += 0;
                    }
                },
            );
    }
}

fn values(health: u16, xp: u32) -> ComponentValues {
    ComponentValues(vec![
        (
            Health::KIND,
            codec::encode_value(&Health(health), 64).unwrap(),
        ),
        (Xp::KIND, codec::encode_value(&Xp(xp), 64).unwrap()),
    ])
}

/// A character's stored values, with a rage (which a real game would insert itself: it is
/// not persisted).
fn with_rage(mut game: ComponentValues) -> ComponentValues {
    game.0
        .push((Rage::KIND, codec::encode_value(&Rage(0), 64).unwrap()));
    game
}

fn character(id: u64, x: f32, game: ComponentValues) -> Character {
    let game = with_rage(game);
    Character {
        id: EntityId(id),
        name: format!("c{id}"),
        x,
        y: 500.0,
        heading: 0.0,
        epoch: Epoch(1),
        version: 1,
        game,
    }
}

fn sim() -> Sim {
    Sim::new(&config(GameRef::new(HpGame))).unwrap()
}

fn get<T: Component + Copy>(sim: &Sim, id: u64) -> Option<T> {
    let e = sim.entity_of(EntityId(id)).or_else(|| {
        sim.world
            .resource::<GhostIndex>()
            .0
            .get(&EntityId(id))
            .copied()
    })?;
    sim.world.get::<T>(e).copied()
}

/// Player 10's client: decodes its snapshots and acknowledges each, like a real one.
struct Client {
    decoder: SnapshotDecoder,
    seq: u32,
}

impl Client {
    fn new() -> Self {
        Self {
            decoder: SnapshotDecoder::default(),
            seq: 0,
        }
    }

    /// Runs a tick and reads player 10's snapshot: returns its body's size in bytes.
    fn tick(&mut self, sim: &mut Sim) -> usize {
        self.seq += 1;
        sim.push_input(
            PlayerId(10),
            Input {
                seq: self.seq,
                ack_tick: self.decoder.ack_tick(),
                heading: 0.0,
                speed: 0.0,
                actions: 0,
            },
        );
        sim.step();
        let mut body = 0;
        for f in sim.take_outbox() {
            if f.player_id == PlayerId(10)
                && !f.reliable
                && let Ok(ServerMessage::Snapshot(s)) = codec::decode_frame(&f.frame)
            {
                self.decoder.apply(&s).unwrap();
                body = s.data.len();
            }
        }
        body
    }

    fn health_of(&self, id: u64) -> Option<u16> {
        let slot = self.decoder.view().iter().find(|(_, e)| e.id == id)?.0;
        let h: Health = self.decoder.fields_of(slot)?.get(Health::KIND)?.unwrap();
        Some(h.0)
    }
}

#[test]
fn replicated_components_reach_observers_only_when_they_change() {
    let mut sim = sim();
    sim.spawn_player(
        LinkId(1),
        PlayerId(10),
        &character(100, 500.0, values(100, 0)),
    );
    sim.spawn_player(
        LinkId(1),
        PlayerId(11),
        &character(101, 503.0, values(80, 0)),
    );
    let mut client = Client::new();
    for _ in 0..5 {
        client.tick(&mut sim);
    }
    assert_eq!(client.health_of(101), Some(80), "loaded and replicated");
    assert_eq!(client.health_of(100), Some(100));
    assert_eq!(
        client.tick(&mut sim),
        1,
        "rage grows and health is touched every tick, yet nothing changes for clients: \
         three empty counts in one byte"
    );
    sim.push_action(
        LinkId(1),
        PlayerId(10),
        ActionRequest {
            seq: 1,
            kind: Hit::KIND,
            target: Some(EntityId(101)),
            payload: vec![],
        },
    );
    // 34 bits: the three counts, the entity's slot and empty delta, then its field entry
    // (slot, count, kind, length) and the byte itself.
    let bytes = client.tick(&mut sim);
    assert!(
        (2..=5).contains(&bytes),
        "one health bar changed: a few bytes ({bytes})"
    );
    assert_eq!(client.health_of(101), Some(70));
    assert_eq!(client.tick(&mut sim), 1);
    assert!(
        sim.world
            .resource::<ComponentTable>()
            .get(Xp::KIND)
            .is_some()
            && get::<Xp>(&sim, 100) == Some(Xp(0)),
        "persisted components load too"
    );
}

#[test]
fn persisted_components_are_checkpointed_and_loaded_again_on_login() {
    let mut sim = sim();
    sim.spawn_player(
        LinkId(1),
        PlayerId(10),
        &character(100, 500.0, values(100, 5)),
    );
    sim.step();
    assert!(
        sim.checkpoint().is_empty(),
        "rage (not persisted) changes every tick: no checkpoint for it"
    );
    let e = sim.entity_of(EntityId(100)).unwrap();
    sim.world.get_mut::<Xp>(e).unwrap().0 = 6;
    sim.step();
    let cp = sim.checkpoint();
    assert_eq!(cp.len(), 1, "a persisted component changed: checkpointed");
    assert_eq!(cp[0].game, values(100, 6), "health and xp, not rage");
    let last = sim.despawn_player(PlayerId(10)).unwrap();
    assert_eq!(last.game, values(100, 6));
    // Logging in again (another zone, say) restores them.
    let mut other = self::sim();
    other.spawn_player(LinkId(1), PlayerId(20), &last);
    assert_eq!(get::<Health>(&other, 100), Some(Health(100)));
    assert_eq!(get::<Xp>(&other, 100), Some(Xp(6)));
    // Stored values of a component the game no longer has, or that no longer decode, are
    // skipped: the character loads without them.
    let mut broken = last.clone();
    broken.game.0.retain(|(k, _)| *k != Rage::KIND);
    broken.id = EntityId(101);
    broken.game.0.push((ComponentKind(99), vec![1]));
    broken.game.0[0].1 = vec![0xff, 0xff, 0xff, 0xff];
    other.spawn_player(LinkId(1), PlayerId(21), &broken);
    assert_eq!(get::<Health>(&other, 101), None);
    assert_eq!(get::<Xp>(&other, 101), Some(Xp(6)));
}

#[test]
fn a_handoff_carries_every_registered_component_and_ghosts_show_the_replicated_ones() {
    let mut a = sim();
    a.spawn_player(
        LinkId(1),
        PlayerId(10),
        &character(100, 500.0, values(55, 9)),
    );
    for _ in 0..3 {
        a.step();
    }
    let rage = get::<Rage>(&a, 100).unwrap();
    assert!(rage.0 >= 3);
    // Zone B shows it as a ghost first: health only.
    let mut ghosts = Vec::new();
    a.visible_characters(&mut ghosts);
    assert_eq!(
        ghosts[0]
            .components
            .0
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>(),
        vec![Health::KIND]
    );
    let mut b = sim();
    b.spawn_player(
        LinkId(1),
        PlayerId(20),
        &character(200, 520.0, values(10, 0)),
    );
    b.set_ghosts(ZoneId(1), 0, &ghosts);
    assert_eq!(get::<Health>(&b, 100), Some(Health(55)));
    assert_eq!(get::<Xp>(&b, 100), None, "not replicated: not on the ghost");
    // Then the handoff: everything registered goes along, rage included.
    let (c, carried) = a.freeze(EntityId(100)).unwrap();
    a.remove_character(EntityId(100));
    b.spawn_arrival(&c, &carried);
    assert_eq!(get::<Health>(&b, 100), Some(Health(55)));
    assert_eq!(get::<Xp>(&b, 100), Some(Xp(9)));
    assert_eq!(get::<Rage>(&b, 100), Some(rage));
    // A ghost whose owner lost a component loses it too.
    let mut ghost = ghosts[0].clone();
    ghost.id = EntityId(300);
    b.set_ghosts(ZoneId(1), 1, std::slice::from_ref(&ghost));
    b.step();
    assert_eq!(get::<Health>(&b, 300), Some(Health(55)));
    ghost.components = ComponentValues::default();
    b.set_ghosts(ZoneId(1), 2, std::slice::from_ref(&ghost));
    assert_eq!(get::<Health>(&b, 300), None);
}
