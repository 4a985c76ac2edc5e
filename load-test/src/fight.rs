//! A fighting bot's mind (`--behaviour fight`), for the example game (`games/arena`): seek
//! the nearest standing monster or player it sees, walk up and strike it (or shoot it from
//! afar), back off when badly hurt (drinking a potion if it has one), lie still while down. Sans-IO: the bot's loop feeds it what
//! the client sees and sends what it decides; it also keeps the books on every action (each
//! must be answered exactly once).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use worldmesh_arena::actions::{SHOOT_REACH, STRIKE_REACH};
use worldmesh_arena::components::Down;
use worldmesh_arena::{Drink, Health, Potions, Shoot, Strike};
use worldmesh_game::GameComponent;
use worldmesh_game::action::request;
use worldmesh_protocol::snapshot::EntityFields;
use worldmesh_protocol::{ActionOutcome, ActionRefusal, ActionRequest, EntityId, EntityState};

use crate::stats::Stats;

/// Below this share of its health a bot backs off.
const RETREAT_BELOW: f32 = 0.3;
/// An action unanswered this long is lost (the server answers within a tick or two).
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);
/// Answered sequence numbers remembered to catch a second answer.
const ANSWERED_MEMORY: usize = 1024;

/// What the bot does this input tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub heading: f32,
    pub speed: f32,
    pub action: Option<ActionRequest>,
}

#[derive(Debug)]
pub struct Fighter {
    seq: u32,
    strike_ready: Instant,
    shoot_ready: Instant,
    drink_ready: Instant,
    /// Sent, not yet answered: seq → when.
    pending: HashMap<u32, Instant>,
    answered: HashSet<u32>,
    answered_order: VecDeque<u32>,
}

fn field<T: GameComponent + bincode::Decode<()>>(fields: Option<&EntityFields>) -> Option<T> {
    fields?.get::<T>(T::KIND)?.ok()
}

impl Fighter {
    pub fn new(now: Instant) -> Self {
        Self {
            seq: 0,
            strike_ready: now,
            shoot_ready: now,
            drink_ready: now,
            pending: HashMap::new(),
            answered: HashSet::new(),
            answered_order: VecDeque::new(),
        }
    }

    /// Decides, from what the client sees: itself (`me`, its fields), and every entity in
    /// view with its fields. `wander` is the heading to keep when there is nobody to fight.
    pub fn decide<'a>(
        &mut self,
        now: Instant,
        me: &EntityState,
        my_fields: Option<&EntityFields>,
        seen: impl Iterator<Item = (&'a EntityState, Option<&'a EntityFields>)>,
        wander: f32,
        stats: &Stats,
    ) -> Decision {
        if field::<Down>(my_fields).is_some() {
            return Decision {
                heading: wander,
                speed: 0.0,
                action: None,
            };
        }
        let foe = seen
            .filter(|(e, _)| e.id != me.id)
            .filter(|(_, f)| field::<Health>(*f).is_some_and(|h| h.hp > 0))
            .filter(|(_, f)| field::<Down>(*f).is_none())
            .map(|(e, _)| ((e.x - me.x).hypot(e.y - me.y), e))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((distance, foe)) = foe else {
            return Decision {
                heading: wander,
                speed: 3.0,
                action: None,
            };
        };
        let towards = (foe.y - me.y).atan2(foe.x - me.x);
        let hurt = field::<Health>(my_fields)
            .is_some_and(|h| (h.hp as f32) < RETREAT_BELOW * h.max.max(1) as f32);
        if hurt {
            // One potion at a time: the next snapshot shows whether it worked.
            let potions = field::<Potions>(my_fields).map_or(0, |p| p.0);
            let action = (potions > 0 && now >= self.drink_ready).then(|| {
                self.drink_ready = now + Duration::from_secs(1);
                self.send(None, &Drink, now, stats)
            });
            return Decision {
                heading: towards + std::f32::consts::PI,
                speed: 9.0,
                action,
            };
        }
        let mut action = None;
        // A little inside the reach: positions in view are a tick or two old.
        if distance <= STRIKE_REACH - 0.3 && now >= self.strike_ready {
            self.strike_ready = now + Duration::from_millis(850);
            action = Some(self.send(Some(foe.id), &Strike, now, stats));
        } else if distance <= SHOOT_REACH - 1.0 && now >= self.shoot_ready {
            self.shoot_ready = now + Duration::from_millis(1550);
            action = Some(self.send(Some(foe.id), &Shoot, now, stats));
        }
        Decision {
            heading: towards,
            speed: if distance > 1.8 { 6.0 } else { 0.0 },
            action,
        }
    }

    fn send<A: worldmesh_game::Action + bincode::Encode>(
        &mut self,
        target: Option<EntityId>,
        action: &A,
        now: Instant,
        stats: &Stats,
    ) -> ActionRequest {
        self.seq = self.seq.wrapping_add(1);
        self.pending.insert(self.seq, now);
        stats
            .actions_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request(self.seq, target, action).expect("unit actions encode")
    }

    /// Books an answer: applied, refused (by reason), or a second answer to one action.
    pub fn answered(&mut self, outcome: &ActionOutcome, stats: &Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.pending.remove(&outcome.seq).is_none() {
            if self.answered.contains(&outcome.seq) {
                stats.actions_duplicated.fetch_add(1, Relaxed);
            }
            return;
        }
        self.answered.insert(outcome.seq);
        self.answered_order.push_back(outcome.seq);
        if self.answered_order.len() > ANSWERED_MEMORY
            && let Some(old) = self.answered_order.pop_front()
        {
            self.answered.remove(&old);
        }
        match outcome.refused {
            None => {
                stats.actions_applied.fetch_add(1, Relaxed);
            }
            Some(ActionRefusal::Rule(n)) => stats.action_refused(&format!("rule_{n}")),
            Some(why) => stats.action_refused(why.name()),
        }
    }

    /// At the end of a session: actions unanswered past the deadline are lost (younger ones
    /// may still be in flight and are not counted); with `connection_lost`, all of them.
    pub fn finish(&mut self, now: Instant, connection_lost: bool, stats: &Stats) {
        let lost = self
            .pending
            .values()
            .filter(|&&at| connection_lost || now.duration_since(at) >= ANSWER_DEADLINE)
            .count();
        stats
            .actions_lost
            .fetch_add(lost as u64, std::sync::atomic::Ordering::Relaxed);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worldmesh_game::Action;
    use worldmesh_protocol::EntityKind;
    use worldmesh_protocol::snapshot::{
        FieldValue, ObserverEncoder, Quantizer, SnapshotDecoder, Visible,
    };
    use worldmesh_protocol::{WorldBounds, codec};

    fn at(id: u64, x: f32) -> EntityState {
        EntityState {
            id: EntityId(id),
            kind: if id > 100 {
                EntityKind::Npc
            } else {
                EntityKind::Player
            },
            x,
            y: 0.0,
            heading: 0.0,
            speed: 0.0,
        }
    }

    /// Fields as a client would hold them: through a real encoder and decoder.
    fn fields(health: &[(u16, u16)]) -> Vec<EntityFields> {
        let values: Vec<Vec<FieldValue>> = health
            .iter()
            .map(|&(hp, max)| {
                vec![FieldValue {
                    kind: Health::KIND,
                    stamp: 1,
                    value: Some(
                        codec::encode_value(&Health { hp, max }, 64)
                            .unwrap()
                            .into_boxed_slice(),
                    ),
                }]
            })
            .collect();
        let q = Quantizer::new(WorldBounds {
            min_x: 0.0,
            min_y: 0.0,
            max_x: 100.0,
            max_y: 100.0,
        });
        let visible: Vec<_> = (0..values.len())
            .map(|i| {
                let mut e = q.quantize(i as u64 + 1, EntityKind::Player, 1.0, 1.0, 0.0, 0.0);
                e.rev = 1;
                Visible::new(e, 1.0)
            })
            .collect();
        let (snap, _) =
            ObserverEncoder::default().snapshot(1, 0, &visible, |i| &values[i], 1 << 16);
        let mut dec = SnapshotDecoder::default();
        dec.apply(&snap).unwrap();
        (0..values.len())
            .map(|i| dec.fields_of(i as u16).unwrap().clone())
            .collect()
    }

    #[test]
    fn strikes_the_nearest_standing_foe_shoots_from_afar_and_backs_off_when_hurt() {
        let stats = Stats::default();
        let now = Instant::now();
        let f = fields(&[(100, 100), (0, 30), (30, 30), (20, 100)]);
        let (me, down_goblin, goblin) = (at(1, 10.0), at(101, 11.0), at(102, 12.0));
        let mut fighter = Fighter::new(now);
        let seen = [(&down_goblin, Some(&f[1])), (&goblin, Some(&f[2]))];
        let d = fighter.decide(now, &me, Some(&f[0]), seen.into_iter(), 0.0, &stats);
        let strike = d.action.expect("the standing goblin 2 m away is struck");
        assert_eq!(
            (strike.kind, strike.target),
            (Strike::KIND, Some(goblin.id))
        );
        // Cooling down now; from 20 m it shoots instead.
        let far = at(103, 30.0);
        let seen = [(&far, Some(&f[2]))];
        let d = fighter.decide(now, &me, Some(&f[0]), seen.into_iter(), 0.0, &stats);
        assert_eq!(d.action.map(|a| a.kind), Some(Shoot::KIND));
        assert!(d.speed > 0.0 && d.heading.abs() < 1e-3, "walks towards it");
        // Badly hurt: runs the other way, does not attack.
        let seen = [(&goblin, Some(&f[2]))];
        let later = now + Duration::from_secs(5);
        let d = fighter.decide(later, &me, Some(&f[3]), seen.into_iter(), 0.0, &stats);
        assert!(d.action.is_none() && (d.heading - std::f32::consts::PI).abs() < 1e-3);
        assert_eq!(
            stats
                .actions_sent
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn every_action_is_answered_once_or_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = Stats::default();
        let now = Instant::now();
        let mut fighter = Fighter::new(now);
        let a = fighter.send(Some(EntityId(5)), &Strike, now, &stats);
        let _unanswered = fighter.send(Some(EntityId(5)), &Shoot, now, &stats);
        let _late = fighter.send(
            Some(EntityId(5)),
            &Shoot,
            now + Duration::from_secs(9),
            &stats,
        );
        fighter.answered(
            &ActionOutcome {
                seq: a.seq,
                refused: None,
            },
            &stats,
        );
        fighter.answered(
            &ActionOutcome {
                seq: a.seq,
                refused: None,
            },
            &stats,
        );
        fighter.answered(
            &ActionOutcome {
                seq: 99,
                refused: None,
            },
            &stats,
        );
        fighter.finish(now + Duration::from_secs(10), false, &stats);
        assert_eq!(stats.actions_applied.load(Relaxed), 1);
        assert_eq!(
            stats.actions_duplicated.load(Relaxed),
            1,
            "a's second answer"
        );
        assert_eq!(
            stats.actions_lost.load(Relaxed),
            1,
            "the unanswered one; the late one may still be in flight"
        );
    }
}
