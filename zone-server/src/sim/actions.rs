//! Players' game actions: queued as they arrive, checked and applied in
//! [`TickSet::Actions`](worldmesh_game::TickSet::Actions), each answered once. The checks and
//! their order are `worldmesh_game::action`'s; the game's rules are its [`Action::apply`].
//!
//! [`Action::apply`]: worldmesh_game::Action::apply

use std::collections::VecDeque;

use bevy_ecs::prelude::*;
use worldmesh_game::action::{ActionCtx, MAX_ACTIONS_PER_TICK};
use worldmesh_game::effect::Answer;
use worldmesh_game::{ActionTable, Effects, Id};
use worldmesh_protocol::ids::{LinkId, PlayerId};
use worldmesh_protocol::{ActionOutcome, ActionRefusal, ActionRequest, ServerMessage, codec};

use super::components::{Frozen, Player, Position};
use super::{CharIndex, GhostIndex, Outbox};

/// A player's actions waiting for the next tick.
#[derive(Component, Debug, Default)]
pub struct ActionQueue(VecDeque<ActionRequest>);

impl ActionQueue {
    /// Queues an action; a full queue refuses it (the caller answers).
    pub fn push(&mut self, request: ActionRequest) -> Result<(), ActionRequest> {
        if self.0.len() >= MAX_ACTIONS_PER_TICK {
            return Err(request);
        }
        self.0.push_back(request);
        Ok(())
    }
}

/// Answers one action to its player, and counts it.
pub fn answer(
    outbox: &mut Outbox,
    link: LinkId,
    player_id: PlayerId,
    kind: &'static str,
    seq: u32,
    refused: Option<ActionRefusal>,
) {
    let outcome = refused.map_or("applied", ActionRefusal::name);
    metrics::counter!("worldmesh_zone_actions_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
    // Two varints and a tag: always fits.
    if let Ok(frame) =
        codec::encode_to_vec(&ServerMessage::ActionDone(ActionOutcome { seq, refused }))
    {
        outbox.push(link, player_id, frame, true);
    }
}

/// Answers every action still queued on `entity` with `why`: its character is leaving this
/// zone (handed off, fenced), and every action is answered once even when it never runs here.
pub fn answer_queued(world: &mut World, entity: Entity, why: ActionRefusal) {
    let Some(player) = world.get::<Player>(entity).copied() else {
        return;
    };
    let Some(queued) = world
        .get_mut::<ActionQueue>(entity)
        .map(|mut q| std::mem::take(&mut q.0))
    else {
        return;
    };
    let answers: Vec<(&'static str, u32)> = {
        let table = world.resource::<ActionTable>();
        queued
            .iter()
            .map(|r| (table.get(r.kind).map_or("unknown", |e| e.name), r.seq))
            .collect()
    };
    let mut outbox = world.resource_mut::<Outbox>();
    for (kind, seq) in answers {
        answer(
            &mut outbox,
            player.link,
            player.player_id,
            kind,
            seq,
            Some(why),
        );
    }
}

/// Applies every queued action, player by player in player-id order (a tick replays the
/// same), each player's in the order they arrived.
pub fn apply_actions(world: &mut World) {
    let mut queued: Vec<(PlayerId, LinkId, Entity, VecDeque<ActionRequest>)> = {
        let mut q = world.query::<(Entity, &Player, &mut ActionQueue)>();
        q.iter_mut(world)
            .filter(|(_, _, a)| !a.0.is_empty())
            .map(|(e, p, mut a)| (p.player_id, p.link, e, std::mem::take(&mut a.0)))
            .collect()
    };
    queued.sort_unstable_by_key(|(p, ..)| *p);
    for (player_id, link, actor, requests) in queued {
        for request in requests {
            let (kind, refused) = match apply(world, actor, link, player_id, &request) {
                // Its effect on the target answers it, where the target is simulated.
                Ok(Applied::Deferred) => continue,
                Ok(Applied::Now(kind)) => (kind, None),
                Err((kind, why)) => (kind, Some(why)),
            };
            let mut outbox = world.resource_mut::<Outbox>();
            answer(&mut outbox, link, player_id, kind, request.seq, refused);
        }
    }
}

/// An action the game accepted.
enum Applied {
    /// Done: answer it now (with the kind's name, for the metric).
    Now(&'static str),
    /// It sent an effect to its target, whose outcome answers it.
    Deferred,
}

/// The engine's checks (see `worldmesh_game::action`), then the game's.
fn apply(
    world: &mut World,
    actor: Entity,
    link: LinkId,
    player: PlayerId,
    request: &ActionRequest,
) -> Result<Applied, (&'static str, ActionRefusal)> {
    let Some(entry) = world.resource::<ActionTable>().get(request.kind).copied() else {
        return Err(("unknown", ActionRefusal::UnknownKind));
    };
    let refuse = |why| (entry.name, why);
    // A character mid-handoff: its state has left with the handoff. Retry in a moment.
    if world.get::<Frozen>(actor).is_some() {
        return Err(refuse(ActionRefusal::Moving));
    }
    let target = match entry.reach {
        None => None,
        Some(reach) => {
            let id = request.target.ok_or(refuse(ActionRefusal::NoTarget))?;
            // Characters and NPCs simulated here, or ghosts of those a neighbour simulates
            // (the game changes those through effects, which the engine forwards).
            let target = world
                .resource::<CharIndex>()
                .0
                .get(&id)
                .or_else(|| world.resource::<GhostIndex>().0.get(&id))
                .copied()
                .ok_or(refuse(ActionRefusal::NoTarget))?;
            if world.get::<Frozen>(target).is_some() {
                return Err(refuse(ActionRefusal::Moving));
            }
            let (Some(&from), Some(&to)) =
                (world.get::<Position>(actor), world.get::<Position>(target))
            else {
                return Err(refuse(ActionRefusal::NoTarget));
            };
            if from.distance(to) > reach {
                return Err(refuse(ActionRefusal::OutOfReach));
            }
            Some((target, id))
        }
    };
    let Some(&Id(actor_id)) = world.get::<Id>(actor) else {
        return Err(refuse(ActionRefusal::NotInPlay));
    };
    let waiting = Answer {
        link,
        player,
        seq: request.seq,
        action: entry.name,
    };
    let mut ctx = ActionCtx::new(world, (actor, actor_id), target, waiting);
    let outcome = entry.run(&request.payload, &mut ctx);
    let deferred = ctx.answer_deferred();
    match outcome {
        Ok(()) if deferred => Ok(Applied::Deferred),
        Ok(()) => Ok(Applied::Now(entry.name)),
        Err(why) => {
            // Refused after it sent its effect: the effect is not sent after all.
            if deferred {
                world.resource_mut::<Effects>().retract(waiting);
            }
            Err(refuse(why))
        }
    }
}

#[cfg(test)]
mod tests {
    //! A small game of tag, installed into a real world: every engine check, the game's own
    //! rule, events to observers and to one player, and a game system in its slot.

    use bevy_ecs::prelude::*;
    use worldmesh_game::action::{self as game_action, Action, ActionCtx};
    use worldmesh_game::event::{Delivery, ServerEvent};
    use worldmesh_game::{Game, GameError, GameRef, GameRegistry, TickSet};
    use worldmesh_protocol::ids::{ActionKind, EntityId, Epoch, EventKind, LinkId, PlayerId};
    use worldmesh_protocol::{
        ActionOutcome, ActionRefusal, ActionRequest, GameEvent, ServerMessage, codec,
    };

    use crate::character::Character;
    use crate::sim::tests::config;
    use crate::sim::{OutFrame, Sim};

    /// How often a character was tagged.
    #[derive(Component, Debug, Default)]
    struct Tagged(u32);

    /// Ticks the game's own system has seen.
    #[derive(Resource, Debug, Default)]
    struct Seen(u32);

    #[derive(Debug, bincode::Encode, bincode::Decode)]
    struct Tag {
        strength: u8,
    }

    /// The game's rule: a tag needs some strength.
    const TOO_WEAK: ActionRefusal = ActionRefusal::Rule(1);

    impl Action for Tag {
        const KIND: ActionKind = ActionKind(1);
        const NAME: &'static str = "tag";
        const REACH: Option<f32> = Some(5.0);

        fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
            if self.strength == 0 {
                return Err(TOO_WEAK);
            }
            let target = ctx.target.expect("a reach means a target");
            let mut e = ctx.world.entity_mut(target);
            match e.get_mut::<Tagged>() {
                Some(mut t) => t.0 += 1,
                None => {
                    e.insert(Tagged(1));
                }
            }
            ctx.to_observers(
                target,
                &WasTagged {
                    strength: self.strength,
                },
            );
            Ok(())
        }
    }

    #[derive(Debug, bincode::Encode, bincode::Decode)]
    struct Wave;

    impl Action for Wave {
        const KIND: ActionKind = ActionKind(2);
        const NAME: &'static str = "wave";
        const REACH: Option<f32> = None;

        fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
            let me = ctx.actor;
            ctx.to_player(me, me, &WavedBack);
            Ok(())
        }
    }

    #[derive(Debug, bincode::Encode, bincode::Decode)]
    struct WasTagged {
        strength: u8,
    }

    impl ServerEvent for WasTagged {
        const KIND: EventKind = EventKind(1);
        const NAME: &'static str = "was_tagged";
        const DELIVERY: Delivery = Delivery::Reliable;
    }

    #[derive(Debug, bincode::Encode, bincode::Decode)]
    struct WavedBack;

    impl ServerEvent for WavedBack {
        const KIND: EventKind = EventKind(2);
        const NAME: &'static str = "waved_back";
        const DELIVERY: Delivery = Delivery::Unreliable;
    }

    struct TagGame;

    impl Game for TagGame {
        fn name(&self) -> &'static str {
            "tag"
        }

        fn register(&self, game: &mut GameRegistry) {
            game.action::<Tag>()
                .action::<Wave>()
                .event::<WasTagged>()
                .event::<WavedBack>()
                .resource(Seen::default())
                .system(TickSet::Simulate, |mut seen: ResMut<Seen>| seen.0 += 1);
        }
    }

    fn character(id: u64, x: f32) -> Character {
        Character {
            id: EntityId(id),
            name: format!("c{id}"),
            x,
            y: 500.0,
            heading: 0.0,
            epoch: Epoch(1),
            version: 1,
            game: Default::default(),
        }
    }

    /// Players 10, 11 and 12 with characters 100 (x 500), 101 (x 503) and 102 (x 900).
    fn world() -> Sim {
        let mut sim = Sim::new(&config(GameRef::new(TagGame))).unwrap();
        for (p, c, x) in [(10, 100, 500.0), (11, 101, 503.0), (12, 102, 900.0)] {
            sim.spawn_player(LinkId(1), PlayerId(p), &character(c, x));
        }
        sim
    }

    fn act(sim: &mut Sim, player: u64, seq: u32, request: ActionRequest) {
        sim.push_action(
            LinkId(1),
            PlayerId(player),
            ActionRequest { seq, ..request },
        );
    }

    fn tag(target: Option<u64>, strength: u8) -> ActionRequest {
        game_action::request(0, target.map(EntityId), &Tag { strength }).unwrap()
    }

    /// The answers and events a player received, in order.
    fn received(out: &[OutFrame], player: u64) -> (Vec<ActionOutcome>, Vec<(GameEvent, bool)>) {
        let (mut done, mut events) = (Vec::new(), Vec::new());
        for f in out.iter().filter(|f| f.player_id == PlayerId(player)) {
            match codec::decode_frame::<ServerMessage>(&f.frame).unwrap() {
                ServerMessage::ActionDone(o) => done.push(o),
                ServerMessage::Event(e) => events.push((e, f.reliable)),
                _ => {}
            }
        }
        (done, events)
    }

    #[test]
    fn an_action_in_reach_is_applied_once_and_its_event_reaches_the_observers() {
        let mut sim = world();
        act(&mut sim, 10, 1, tag(Some(101), 3));
        sim.step();
        let out = sim.take_outbox();
        let (done, events) = received(&out, 10);
        assert_eq!(
            done,
            [ActionOutcome {
                seq: 1,
                refused: None
            }]
        );
        let (event, reliable) = &events[0];
        assert_eq!(
            (event.kind, event.entity, *reliable),
            (EventKind(1), EntityId(101), true)
        );
        let heard: WasTagged = codec::decode_value(&event.payload, 256).unwrap();
        assert_eq!(heard.strength, 3);
        assert_eq!(received(&out, 11).1.len(), 1, "the target sees it too");
        assert!(received(&out, 12).1.is_empty(), "400 m away: out of view");
        assert!(
            received(&out, 11).0.is_empty(),
            "only the actor is answered"
        );
        let target = sim.entity_of(EntityId(101)).unwrap();
        assert_eq!(sim.world.get::<Tagged>(target).unwrap().0, 1);
        // Applied once: the next tick has nothing to do.
        sim.step();
        assert!(received(&sim.take_outbox(), 10).0.is_empty());
        assert_eq!(sim.world.get::<Tagged>(target).unwrap().0, 1);
    }

    #[test]
    fn the_engine_checks_refuse_with_their_reason() {
        let mut sim = world();
        let unknown = ActionRequest {
            kind: ActionKind(99),
            ..tag(Some(101), 1)
        };
        let garbage = ActionRequest {
            payload: vec![0xff; 9],
            ..tag(Some(101), 1)
        };
        act(&mut sim, 10, 1, unknown);
        act(&mut sim, 10, 2, tag(None, 1));
        act(&mut sim, 10, 3, tag(Some(12345), 1));
        act(&mut sim, 10, 4, garbage);
        act(&mut sim, 11, 5, tag(Some(102), 1));
        act(&mut sim, 11, 6, tag(Some(100), 0));
        sim.step();
        let out = sim.take_outbox();
        let refused = |p| -> Vec<(u32, Option<ActionRefusal>)> {
            received(&out, p)
                .0
                .iter()
                .map(|o| (o.seq, o.refused))
                .collect()
        };
        assert_eq!(
            refused(10),
            [
                (1, Some(ActionRefusal::UnknownKind)),
                (2, Some(ActionRefusal::NoTarget)),
                (3, Some(ActionRefusal::NoTarget)),
                (4, Some(ActionRefusal::Malformed)),
            ]
        );
        assert_eq!(
            refused(11),
            [(5, Some(ActionRefusal::OutOfReach)), (6, Some(TOO_WEAK))]
        );
        assert!(
            received(&out, 10).1.is_empty(),
            "refused actions raise nothing"
        );
    }

    #[test]
    fn floods_players_not_in_play_and_moving_targets_are_refused() {
        let mut sim = world();
        for seq in 1..=5 {
            act(&mut sim, 10, seq, tag(Some(101), 1));
        }
        // Answered at once: the fifth is beyond the allowance, player 77 has no character.
        let out = sim.take_outbox();
        assert_eq!(
            received(&out, 10).0,
            [ActionOutcome {
                seq: 5,
                refused: Some(ActionRefusal::Flood)
            }]
        );
        act(&mut sim, 77, 1, tag(Some(101), 1));
        let out = sim.take_outbox();
        assert_eq!(
            received(&out, 77).0[0].refused,
            Some(ActionRefusal::NotInPlay)
        );
        sim.step();
        let applied = received(&sim.take_outbox(), 10).0;
        assert_eq!(applied.len(), 4);
        assert!(applied.iter().all(|o| o.refused.is_none()));
        // A target mid-handoff: its state has left with it; retry.
        sim.freeze(EntityId(101)).unwrap();
        act(&mut sim, 10, 6, tag(Some(101), 1));
        sim.step();
        assert_eq!(
            received(&sim.take_outbox(), 10).0[0].refused,
            Some(ActionRefusal::Moving)
        );
    }

    #[test]
    fn actions_queued_on_a_character_that_leaves_are_answered_moving() {
        let mut sim = world();
        act(&mut sim, 10, 1, tag(Some(101), 1));
        act(&mut sim, 11, 2, tag(Some(100), 1));
        // Character 100 is handed to zone 2 before the tick; 101 is fenced.
        sim.ghostify(EntityId(100), worldmesh_protocol::ZoneId(2));
        sim.remove_character(EntityId(101));
        let out = sim.take_outbox();
        for (player, seq) in [(10, 1), (11, 2)] {
            assert_eq!(
                received(&out, player).0,
                [ActionOutcome {
                    seq,
                    refused: Some(ActionRefusal::Moving)
                }]
            );
        }
        sim.step();
        assert!(
            received(&sim.take_outbox(), 10).0.is_empty(),
            "answered once"
        );
    }

    #[test]
    fn events_to_one_player_go_to_that_player_only_and_unreliably_when_asked() {
        let mut sim = world();
        act(
            &mut sim,
            11,
            1,
            game_action::request(0, None, &Wave).unwrap(),
        );
        sim.step();
        let out = sim.take_outbox();
        let (done, events) = received(&out, 11);
        assert_eq!(done[0].refused, None);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].0.kind, events[0].1), (EventKind(2), false));
        assert!(received(&out, 10).1.is_empty());
    }

    #[test]
    fn game_systems_run_every_tick_in_their_slot() {
        let mut sim = world();
        for _ in 0..3 {
            sim.step();
        }
        assert_eq!(sim.world.resource::<Seen>().0, 3);
    }

    #[test]
    fn conflicting_registrations_stop_the_world_from_being_built() {
        struct Twice;
        impl Game for Twice {
            fn name(&self) -> &'static str {
                "twice"
            }
            fn register(&self, game: &mut GameRegistry) {
                game.action::<Tag>().action::<Tag>();
            }
        }
        assert!(matches!(
            Sim::new(&config(GameRef::new(Twice))),
            Err(GameError::DuplicateAction { .. })
        ));
    }
}
