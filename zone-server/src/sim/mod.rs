//! The zone's simulation core: a bevy_ecs world stepped one fixed tick at a time. No I/O and
//! no clock: the driver calls [`Sim::step`] at the tick rate, tests call it directly.
//!
//! Each tick runs the systems in [`TickSet`] order: apply inputs → apply actions → simulate
//! (NPCs, the game's rules) → move → rebuild the interest grid → build snapshots → send the
//! game's events. The game (`worldmesh_game`) is installed into the world when it is built and
//! adds its systems to those slots. Frames for players accumulate in the [`Outbox`]; the
//! driver takes them after the step and sends them out.
//!
//! # Layout
//!
//! - this file: [`Sim`] (the world, its schedule, stepping), the shared resources and types.
//! - the tick's systems, one file each: [`input`], [`actions`], [`effects`] (a game's effects
//!   routed to where their targets are simulated, exactly once), [`npc`], [`movement`],
//!   [`interest`], [`snapshot`], [`events`]; their components in [`components`].
//! - `Sim`'s operations by concern, each an `impl Sim` block: `roster.rs` (joining, leaving,
//!   detached players, NPCs, inputs, checkpoints), `handoff.rs` (freeze, arrivals, removal),
//!   `ghosts.rs` (border visibility), `ground.rs` (items lying on the ground), `chat.rs`.

pub mod actions;
pub mod components;
pub mod effects;
pub mod events;
pub mod input;
pub mod interest;
pub mod movement;
pub mod npc;
pub mod snapshot;

mod chat;
mod ghosts;
mod ground;
mod handoff;
mod mail;
mod roster;
#[cfg(test)]
mod sync_tests;

use std::collections::HashMap;

use bevy_ecs::prelude::*;
pub use worldmesh_game::TickSet;
use worldmesh_game::{ComponentTable, ComponentValues, EngineSystems, GameError, GameRef, Synced};
use worldmesh_protocol::ids::{EntityId, LinkId, PlayerId, ZoneId};
use worldmesh_protocol::{
    ActionRefusal, ActionRequest, ChatHeard, Input, ServerMessage, WorldBounds, codec,
};

use crate::character::Character;

use components::*;
pub use components::{AbsentPlayer, Player};
pub use ground::{GroundIndex, SeenItem};

/// NPC entity ids start here, far above any character id SQL will hand out.
pub const NPC_ID_BASE: EntityId = EntityId::NPC_BASE;

/// Player id → entity, for routing inputs and leaves.
#[derive(Resource, Default)]
pub struct PlayerIndex(pub HashMap<PlayerId, Entity>);

/// Entity id → ECS entity for everything this zone holds (characters and NPCs; not ghosts),
/// for handoffs, takeovers and action targets.
#[derive(Resource, Default)]
pub struct CharIndex(pub HashMap<EntityId, Entity>);

/// Ghost id → ECS entity (border visibility).
#[derive(Resource, Default)]
pub struct GhostIndex(pub HashMap<EntityId, Entity>);

/// One character as a neighbouring zone shows it (border visibility), both ways: what we
/// send of ours and what we receive of theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct GhostState {
    pub id: EntityId,
    pub x: f32,
    pub y: f32,
    pub heading: f32,
    pub speed: f32,
    /// Its replicated game components.
    pub components: ComponentValues,
}

/// The characters (not NPCs) a zone holds, as audits count them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CharacterIds {
    /// Simulated and shown to players.
    pub active: Vec<EntityId>,
    /// Frozen for a handoff in flight.
    pub frozen: Vec<EntityId>,
}

/// A character removed without saving (handed off, or fenced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The player that was attached to it, to be told to look elsewhere.
    pub player: Option<Player>,
}

/// Everything that leaves with a handed-off character besides its persistent state.
#[derive(Debug, Clone, Default)]
pub struct Carried {
    /// The player, when one is attached.
    pub player: Option<Player>,
    /// The player a detached character waits for.
    pub detached: Option<AbsentPlayer>,
    pub speed: f32,
    pub intent_heading: f32,
    pub intent_speed: f32,
    pub last_input_seq: u32,
    /// Last tick a snapshot went to the player.
    pub last_tick_sent: u32,
    /// Every registered game component (persisted or not).
    pub components: ComponentValues,
    /// An NPC's walk (kind, generator, spawn point); `None` for a character.
    pub npc: Option<npc::Wanderer>,
}

/// One frame for one player, already encoded.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub link: LinkId,
    pub player_id: PlayerId,
    pub frame: Vec<u8>,
    /// Control stream (true) or datagram (false).
    pub reliable: bool,
}

/// Frames produced by a tick (and by chat between ticks).
#[derive(Resource, Default)]
pub struct Outbox(pub Vec<OutFrame>);

impl Outbox {
    pub fn push(&mut self, link: LinkId, player_id: PlayerId, frame: Vec<u8>, reliable: bool) {
        self.0.push(OutFrame {
            link,
            player_id,
            frame,
            reliable,
        });
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub tick_rate_hz: u32,
    pub bounds: WorldBounds,
    /// How far an observer sees, metres.
    pub view_radius: f32,
    /// Largest snapshot frame in bytes, so that a snapshot fits one datagram.
    pub snapshot_budget_bytes: usize,
    /// How far chat carries, metres.
    pub chat_radius: f32,
    /// Cells nobody may walk into.
    pub collision: movement::CollisionMap,
    /// The game the world runs (`NoGame` for bare movement and chat).
    pub game: GameRef,
    /// How observers' snapshots are chosen and built: the cap, level of detail, threads.
    pub snapshots: snapshot::SnapshotConfig,
}

/// Where a spawned character stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spawned {
    pub entity_id: EntityId,
    pub x: f32,
    pub y: f32,
    pub heading: f32,
}

pub struct Sim {
    world: World,
    schedule: Schedule,
    chat_radius: f32,
    /// Seconds one tick simulates at time scale 1.
    base_dt: f32,
}

impl Sim {
    /// A world running `config.game`; fails only when the game's registrations conflict.
    pub fn new(config: &SimConfig) -> Result<Self, GameError> {
        let mut world = World::new();
        world.insert_resource(SimSettings {
            dt: 1.0 / config.tick_rate_hz.max(1) as f32,
            bounds: config.bounds,
            view_radius: config.view_radius,
            snapshot_budget_bytes: config.snapshot_budget_bytes,
        });
        world.insert_resource(Tick(0));
        world.insert_resource(PlayerIndex::default());
        world.insert_resource(CharIndex::default());
        world.insert_resource(GhostIndex::default());
        world.insert_resource(GroundIndex::default());
        world.insert_resource(npc::Graveyard::default());
        world.insert_resource(effects::Origin::default());
        world.insert_resource(effects::Outgoing::default());
        world.insert_resource(effects::Incoming::default());
        world.insert_resource(effects::InFlight::default());
        world.insert_resource(effects::EffectStats::default());
        world.insert_resource(Outbox::default());
        world.insert_resource(events::BorderEvents::default());
        world.insert_resource(config.collision.clone());
        world.insert_resource(interest::Grid::default());
        world.insert_resource(snapshot::SnapshotScratch::default());
        world.insert_resource(snapshot::SnapshotSettings(config.snapshots));
        world.insert_resource(snapshot::SnapshotStats::default());
        let mut schedule = Schedule::default();
        for pair in TickSet::ORDER.windows(2) {
            schedule.configure_sets(pair[1].after(pair[0]));
        }
        for slot in TickSet::ORDER {
            schedule.configure_sets(EngineSystems(slot).in_set(slot));
        }
        let engine = |slot| EngineSystems(slot);
        schedule.add_systems((
            npc::respawn
                .in_set(engine(TickSet::Input))
                .before(input::apply_inputs),
            input::apply_inputs.in_set(engine(TickSet::Input)),
            actions::apply_actions.in_set(engine(TickSet::Actions)),
            effects::route
                .in_set(engine(TickSet::Actions))
                .after(actions::apply_actions),
            npc::wander.in_set(engine(TickSet::Simulate)),
            movement::integrate.in_set(engine(TickSet::Movement)),
            interest::rebuild_grid.in_set(engine(TickSet::Interest)),
            snapshot::build_snapshots.in_set(engine(TickSet::Snapshot)),
            effects::route
                .in_set(engine(TickSet::Events))
                .before(events::send_events),
            events::send_events.in_set(engine(TickSet::Events)),
            npc::reap
                .in_set(engine(TickSet::Events))
                .after(events::send_events),
        ));
        worldmesh_game::install(&*config.game, &mut world, &mut schedule)?;
        Ok(Self {
            world,
            schedule,
            chat_radius: config.chat_radius,
            base_dt: 1.0 / config.tick_rate_hz.max(1) as f32,
        })
    }

    /// The last tick run (0 before the first step).
    pub fn tick(&self) -> u32 {
        self.world.resource::<Tick>().0
    }

    /// Runs one tick.
    pub fn step(&mut self) {
        let next = self.tick() + 1;
        self.step_at(next);
    }

    /// How much world time each tick simulates from now on, in tick periods (1: one period;
    /// more when the zone's time dilation hit its floor, see `crate::pacer`).
    pub fn set_time_scale(&mut self, scale: f32) {
        let dt = self.base_dt * scale.max(1.0);
        self.world.resource_mut::<SimSettings>().dt = dt;
    }

    /// Runs the tick numbered `tick` (zones number ticks from the world's tick origin, so
    /// every zone calls the same moment by the same number). `tick` must grow.
    pub fn step_at(&mut self, tick: u32) {
        self.world.resource_mut::<Tick>().0 = tick;
        self.schedule.run(&mut self.world);
    }

    /// A component of an entity held here (a character or an NPC), to inspect.
    pub fn get<T: Component>(&self, id: EntityId) -> Option<&T> {
        self.world.get::<T>(self.entity_of(id)?)
    }

    fn entity_of(&self, id: EntityId) -> Option<Entity> {
        self.world.resource::<CharIndex>().0.get(&id).copied()
    }

    /// Takes the frames produced since the last call.
    pub fn take_outbox(&mut self) -> Vec<OutFrame> {
        std::mem::take(&mut self.world.resource_mut::<Outbox>().0)
    }

    /// Totals of the last tick's snapshots.
    pub fn snapshot_stats(&self) -> snapshot::SnapshotStats {
        *self.world.resource::<snapshot::SnapshotStats>()
    }

    /// Names this zone in the keys of the effects it routes (its registration id).
    pub fn set_origin(&mut self, zone: ZoneId) {
        self.world.resource_mut::<effects::Origin>().zone = zone;
    }

    /// Effects for other zones and answers to theirs, produced since the last call, by zone.
    #[allow(clippy::type_complexity)]
    pub fn take_border_traffic(
        &mut self,
    ) -> (
        Vec<(ZoneId, effects::Forward)>,
        Vec<(ZoneId, effects::Reply)>,
    ) {
        let out = std::mem::take(&mut *self.world.resource_mut::<effects::Outgoing>());
        (out.forwards, out.replies)
    }

    /// Effects zone `from` sent for entities simulated here, and its answers to ours: handled
    /// at the next tick.
    pub fn receive_border_traffic(
        &mut self,
        from: ZoneId,
        forwards: Vec<effects::Forward>,
        replies: Vec<effects::Reply>,
    ) {
        let mut incoming = self.world.resource_mut::<effects::Incoming>();
        incoming
            .forwards
            .extend(forwards.into_iter().map(|f| (from, f)));
        incoming.replies.extend(replies);
    }

    /// Events of the last tick about entities simulated here, for the neighbours that show
    /// them (see [`events`]).
    pub fn take_border_events(&mut self) -> Vec<events::BorderEvent> {
        std::mem::take(&mut self.world.resource_mut::<events::BorderEvents>().0)
    }

    /// Events a neighbour raised about entities shown here as ghosts: told to the players
    /// near them now, with the next frames out.
    pub fn receive_border_events(&mut self, events: Vec<events::BorderEvent>) {
        events::deliver_border_events(&mut self.world, events);
    }

    /// Effect counts since the zone started.
    pub fn effect_stats(&self) -> effects::EffectStats {
        *self.world.resource::<effects::EffectStats>()
    }

    /// Effects routed from here still waiting for an answer.
    pub fn effects_in_flight(&self) -> usize {
        self.world.resource::<effects::InFlight>().len()
    }

    /// Gives `entity` the game components `values` hold (a login, an arrival).
    fn insert_components(&mut self, entity: Entity, values: &ComponentValues) {
        if values.is_empty() {
            return;
        }
        self.world
            .resource_scope(|world, table: Mut<ComponentTable>| {
                table.insert_values(&mut world.entity_mut(entity), values);
            });
    }
}

/// The components every character has, from its persistent state.
fn character_components(
    c: &Character,
    x: f32,
    y: f32,
    speed: f32,
) -> (Id, CharacterRecord, Position, Motion) {
    (
        Id(c.id),
        CharacterRecord {
            name: c.name.clone(),
            epoch: c.epoch,
            version: c.version,
        },
        Position { x, y },
        Motion {
            heading: c.heading,
            speed,
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use worldmesh_protocol::ids::Epoch;
    use worldmesh_protocol::snapshot::{Quantizer, SnapshotDecoder};
    use worldmesh_protocol::{EntityState, codec};

    /// A 1 km world, 100 m view, one blocked 10 m cell at (600, 400), running `game`.
    pub(crate) fn config(game: GameRef) -> SimConfig {
        SimConfig {
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
            collision: movement::CollisionMap::new(10.0, [(60, 40)]),
            game,
            snapshots: Default::default(),
        }
    }

    fn sim() -> Sim {
        Sim::new(&config(GameRef::default())).expect("no game to conflict")
    }

    /// A player's refusal counts as (flood, stale, speed hack, teleport).
    fn rejected(sim: &Sim, player: u64) -> Option<(u64, u64, u64, u64)> {
        sim.input_rejections(PlayerId(player))
            .map(|r| (r.flood, r.stale, r.speed_hack, r.teleport))
    }

    fn character(id: u64, x: f32, y: f32) -> Character {
        Character {
            id: EntityId(id),
            name: format!("c{id}"),
            x,
            y,
            heading: 0.0,
            epoch: Epoch(0),
            version: 3,
            game: Default::default(),
        }
    }

    /// What a client would show, tick by tick: each snapshot decoded in order by one decoder
    /// per player (no acks are sent here, so every snapshot is a full update).
    struct Shown {
        tick: u32,
        last_input_seq: u32,
        entities: Vec<EntityState>,
    }

    fn snapshots(out: &[OutFrame], player: u64) -> Vec<Shown> {
        let q = Quantizer::new(WorldBounds {
            min_x: 0.0,
            min_y: 0.0,
            max_x: 1000.0,
            max_y: 1000.0,
        });
        let mut dec = SnapshotDecoder::default();
        out.iter()
            .filter(|f| f.player_id == PlayerId(player) && !f.reliable)
            .map(
                |f| match codec::decode_frame::<ServerMessage>(&f.frame).unwrap() {
                    ServerMessage::Snapshot(s) => {
                        dec.apply(&s).unwrap();
                        let mut entities: Vec<EntityState> =
                            dec.view().iter().map(|(_, e)| q.dequantize(e)).collect();
                        entities.sort_by_key(|e| e.id);
                        Shown {
                            tick: s.tick,
                            last_input_seq: s.last_input_seq,
                            entities,
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                },
            )
            .collect()
    }

    /// 300 players in a 30 m square around (500, 500), walking; `threads` encoding.
    fn crowd(snapshots: snapshot::SnapshotConfig) -> Sim {
        let mut sim = Sim::new(&SimConfig {
            snapshots,
            ..config(GameRef::default())
        })
        .expect("no game to conflict");
        for i in 0..300u64 {
            let (x, y) = (485.0 + (i % 17) as f32 * 1.8, 485.0 + (i / 17) as f32 * 1.7);
            sim.spawn_player(LinkId(1), PlayerId(i + 1), &character(i + 1, x, y));
        }
        sim
    }

    fn walk(sim: &mut Sim, tick: u32) {
        for i in 0..300u32 {
            sim.push_input(
                PlayerId(i as u64 + 1),
                Input {
                    seq: tick,
                    ack_tick: tick.saturating_sub(2),
                    heading: (i * 37 + tick * 3) as f32 * 0.01,
                    speed: 2.0,
                    actions: 0,
                },
            );
        }
    }

    #[test]
    fn in_a_crowd_a_player_replicates_only_the_nearest_max_visible() {
        let mut sim = crowd(snapshot::SnapshotConfig {
            max_visible: 40,
            lod: true,
            threads: 1,
        });
        for tick in 1..=10 {
            walk(&mut sim, tick);
            sim.step();
        }
        let out = sim.take_outbox();
        let shown = snapshots(&out, 1);
        let last = shown.last().expect("player 1 gets snapshots");
        assert_eq!(last.entities.len(), 41, "itself and the nearest 40");
        assert!(last.entities.iter().any(|e| e.id == EntityId(1)));
        // The nearest: nobody outside the view is nearer than the farthest inside it (give or
        // take the hysteresis, which keeps the ones already shown).
        let at = |id: EntityId| sim.locate(id).expect("simulated here").0;
        let me = at(EntityId(1));
        let dist = |id: EntityId| {
            let p = at(id);
            (p[0] - me[0]).hypot(p[1] - me[1])
        };
        let inside: Vec<EntityId> = last.entities.iter().map(|e| e.id).collect();
        let farthest_in = inside.iter().map(|&id| dist(id)).fold(0.0, f32::max);
        let nearest_out = (1..=300)
            .map(EntityId)
            .filter(|id| !inside.contains(id))
            .map(dist)
            .fold(f32::INFINITY, f32::min);
        assert!(
            nearest_out * (1.0 + snapshot::HYSTERESIS) >= farthest_in,
            "{nearest_out} m out vs {farthest_in} m in"
        );
        assert!(sim.snapshot_stats().capped >= 300 * (299 - 40) - 300);
    }

    #[test]
    fn snapshots_do_not_depend_on_how_many_threads_encode_them() {
        let config = |threads| snapshot::SnapshotConfig {
            threads,
            ..Default::default()
        };
        let (mut one, mut three) = (crowd(config(1)), crowd(config(3)));
        for tick in 1..=30 {
            walk(&mut one, tick);
            walk(&mut three, tick);
            one.step();
            three.step();
            let (a, b) = (one.take_outbox(), three.take_outbox());
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(
                    (a.player_id, &a.frame),
                    (b.player_id, &b.frame),
                    "tick {tick}"
                );
            }
        }
        assert_eq!(three.snapshot_stats().threads, 3);
    }

    #[test]
    fn inputs_move_players_and_snapshots_show_neighbours_only() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 550.0, 500.0));
        sim.spawn_player(LinkId(1), PlayerId(12), &character(102, 900.0, 900.0));
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 1,
                ack_tick: 0,
                heading: 0.0,
                speed: 5.0,
                actions: 0,
            },
        );
        for _ in 0..20 {
            sim.step();
        }
        let out = sim.take_outbox();
        let s = snapshots(&out, 10);
        assert_eq!(s.len(), 20);
        let last = s.last().unwrap();
        assert_eq!(last.tick, 20);
        assert_eq!(last.last_input_seq, 1);
        assert_eq!(last.entities[0].id, EntityId(100));
        // Speed ramps 1.5, 3, 4.5, then 5 m/s (MAX_ACCEL): 94 × 0.05 = 4.7 m in 20 ticks.
        assert!(
            (last.entities[0].x - 504.7).abs() < 0.05,
            "moved 4.7 m in 1 s: {}",
            last.entities[0].x
        );
        let ids: Vec<u64> = last.entities.iter().map(|e| e.id.0).collect();
        assert_eq!(ids, vec![100, 101]);
        // Old, reordered inputs are ignored; a speed hack is clamped; a teleport is refused.
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 0,
                ack_tick: 0,
                heading: 0.0,
                speed: 0.0,
                actions: 0,
            },
        );
        sim.step();
        assert_eq!(
            rejected(&sim, 10),
            Some((0, 1, 0, 0)),
            "stale input counted"
        );
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 2,
                ack_tick: 0,
                heading: 0.0,
                speed: 20.0,
                actions: 0,
            },
        );
        for _ in 0..10 {
            sim.step();
        }
        let s = snapshots(&sim.take_outbox(), 10);
        assert_eq!(
            s.last().unwrap().entities[0].speed,
            worldmesh_protocol::MAX_SPEED
        );
        assert_eq!(s.last().unwrap().last_input_seq, 2);
        assert_eq!(rejected(&sim, 10), Some((0, 1, 1, 0)), "speed hack counted");
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 3,
                ack_tick: 0,
                heading: 1.0,
                speed: 1000.0,
                actions: 0,
            },
        );
        sim.step();
        let s = snapshots(&sim.take_outbox(), 10);
        assert_eq!(s[0].last_input_seq, 2, "the teleport input was not applied");
        assert_eq!(s[0].entities[0].speed, worldmesh_protocol::MAX_SPEED);
        assert_eq!(rejected(&sim, 10), Some((0, 1, 1, 1)), "teleport counted");
    }

    #[test]
    fn one_input_per_tick_and_floods_are_dropped() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        for seq in 1..=10 {
            sim.push_input(
                PlayerId(10),
                Input {
                    seq,
                    ack_tick: 0,
                    heading: 0.0,
                    speed: seq as f32 * 0.1,
                    actions: 0,
                },
            );
        }
        sim.step();
        let s = snapshots(&sim.take_outbox(), 10);
        assert_eq!(
            s[0].last_input_seq, 10,
            "the newest input is the one applied"
        );
        assert_eq!(
            rejected(&sim, 10),
            Some((6, 0, 0, 0)),
            "10 inputs in one tick: 6 beyond the bound of 4"
        );
    }

    #[test]
    fn blocked_cells_stop_movement() {
        let mut sim = sim();
        // The test map blocks the 10 m cell (60, 40): x 600..610, y 400..410.
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 590.0, 405.0));
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 1,
                ack_tick: 0,
                heading: 0.0,
                speed: 5.0,
                actions: 0,
            },
        );
        for _ in 0..60 {
            sim.step();
        }
        let s = snapshots(&sim.take_outbox(), 10);
        let me = &s.last().unwrap().entities[0];
        assert!(
            me.x < 600.0 && me.x > 599.0,
            "stopped at the wall: x = {}",
            me.x
        );
    }

    #[test]
    fn positions_stay_inside_the_world() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 999.0, 1.0));
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 1,
                ack_tick: 0,
                heading: -0.7,
                speed: 10.0,
                actions: 0,
            },
        );
        for _ in 0..100 {
            sim.step();
        }
        let s = snapshots(&sim.take_outbox(), 10);
        let me = &s.last().unwrap().entities[0];
        assert_eq!((me.x, me.y), (1000.0, 0.0));
    }

    #[test]
    fn checkpoints_carry_new_versions_and_despawn_returns_final_state() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        assert!(sim.checkpoint().is_empty(), "nothing changed yet");
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 1,
                ack_tick: 0,
                heading: 0.0,
                speed: 2.0,
                actions: 0,
            },
        );
        sim.step();
        let cp = sim.checkpoint();
        assert_eq!(cp.len(), 1);
        assert_eq!(cp[0].version, 4);
        let last = sim.despawn_player(PlayerId(10)).unwrap();
        assert_eq!(last.version, 5);
        assert_eq!(sim.player_count(), 0);
        assert!(sim.despawn_player(PlayerId(10)).is_none());
    }

    #[test]
    fn respawning_a_live_character_takes_it_over() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        sim.push_input(
            PlayerId(10),
            Input {
                seq: 1,
                ack_tick: 0,
                heading: 0.0,
                speed: 2.0,
                actions: 0,
            },
        );
        sim.step();
        let again = sim.spawn_player(LinkId(2), PlayerId(20), &character(100, 0.0, 0.0));
        assert!(
            (again.x - 500.075).abs() < 1e-3,
            "1.5 m/s for one tick: {}",
            again.x
        );
        assert_eq!(sim.player_count(), 1);
        assert!(sim.despawn_player(PlayerId(10)).is_none());
        assert_eq!(sim.despawn_link(LinkId(2)).len(), 1);
    }

    #[test]
    fn npcs_wander_inside_the_world_and_are_seen_but_never_saved() {
        let mut sim = sim();
        for i in 0..20 {
            sim.spawn_npc(EntityId(NPC_ID_BASE.0 + i), 500.0 + i as f32, 500.0);
        }
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        for _ in 0..200 {
            sim.step();
        }
        let shown = snapshots(&sim.take_outbox(), 10);
        let last = shown.last().unwrap();
        let npcs: Vec<&EntityState> = last
            .entities
            .iter()
            .filter(|e| e.kind == worldmesh_protocol::EntityKind::Npc)
            .collect();
        assert!(!npcs.is_empty(), "NPCs near the player are visible");
        assert!(
            npcs.iter()
                .all(|e| (0.0..=1000.0).contains(&e.x) && (0.0..=1000.0).contains(&e.y))
        );
        assert!(npcs.iter().any(|e| e.speed > 0.0), "NPCs move");
        assert!(
            sim.checkpoint().iter().all(|c| c.id < NPC_ID_BASE),
            "NPCs are never checkpointed"
        );
    }

    #[test]
    fn interest_hysteresis_one_enter_one_leave_per_crossing() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        // A second player comes in from 120 m, paces back and forth across the 100 m edge
        // (±3 m) for 10 s, then walks away: exactly one enter and one leave, no flicker.
        sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 620.0, 500.0));
        let mut visible_history = Vec::new();
        for t in 0..500u32 {
            let (heading, speed) = match t {
                0..46 => (std::f32::consts::PI, 10.0),
                46..346 => (
                    if ((t - 46) / 40) % 2 == 0 {
                        0.0
                    } else {
                        std::f32::consts::PI
                    },
                    3.0,
                ),
                _ => (0.0, 10.0),
            };
            sim.push_input(
                PlayerId(11),
                Input {
                    seq: t + 1,
                    ack_tick: 0,
                    heading,
                    speed,
                    actions: 0,
                },
            );
            sim.step();
            let shown = snapshots(&sim.take_outbox(), 10);
            visible_history.push(shown[0].entities.iter().any(|e| e.id == EntityId(101)));
        }
        let enters = visible_history.windows(2).filter(|w| !w[0] && w[1]).count();
        let leaves = visible_history.windows(2).filter(|w| w[0] && !w[1]).count();
        assert!(!visible_history[0], "starts outside the view");
        assert_eq!((enters, leaves), (1, 1), "one enter, one leave");
        assert!(!visible_history.last().unwrap());
    }

    #[test]
    fn npcs_seek_nearby_players() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        sim.spawn_npc(NPC_ID_BASE, 520.0, 500.0);
        for _ in 0..200 {
            sim.step();
        }
        let shown = snapshots(&sim.take_outbox(), 10);
        let npc = shown
            .last()
            .unwrap()
            .entities
            .iter()
            .find(|e| e.id == NPC_ID_BASE)
            .copied()
            .expect("NPC in view");
        let d = ((npc.x - 500.0).powi(2) + (npc.y - 500.0).powi(2)).sqrt();
        assert!(d < 20.0, "the NPC came closer (now {d:.1} m)");
    }

    #[test]
    fn chat_reaches_players_in_range() {
        let mut sim = sim();
        sim.spawn_player(LinkId(1), PlayerId(10), &character(100, 500.0, 500.0));
        sim.spawn_player(LinkId(1), PlayerId(11), &character(101, 520.0, 500.0));
        sim.spawn_player(LinkId(1), PlayerId(12), &character(102, 700.0, 500.0));
        sim.chat(PlayerId(10), "hi".into());
        let out = sim.take_outbox();
        let mut heard: Vec<u64> = out
            .iter()
            .filter(|f| f.reliable)
            .map(|f| f.player_id.0)
            .collect();
        heard.sort();
        assert_eq!(heard, vec![10, 11]);
    }
}
