//! The handoff saga and entity authority, both sides, without I/O.
//!
//! Every entity has one *authority*: the zone allowed to simulate it and write its state, and
//! an *epoch* that grows every time the authority changes. The coordinator keeps the durable
//! record ([`Authority`], one SQL row per entity); zones keep what they hold ([`Participant`]).
//!
//! # The saga (entity E, source zone A at epoch e, target zone B, handoff id X = (e, attempt))
//!
//! 1. A freezes E (stops simulating it, buffers its inputs) and sends `Begin{X, state}`,
//!    repeating it until it hears a decision.
//! 2. The coordinator checks that A owns E at e and that no decision for X or later exists,
//!    then sends `Prepare{X, state, e+1}` to B (repeated until B answers).
//! 3. B keeps an inactive copy and answers `Prepared{X, ok}`. B never throws the copy away
//!    before it hears the decision; while waiting it asks (`Query{X}`).
//! 4. On `ok` the coordinator writes `E → (B, e+1, last = X committed)` durably: **the commit
//!    point**. Only then does it tell B (activate the copy) and A (drop E, re-route the player).
//! 5. Before the commit, a refusal, a timeout ([`PREPARE_TIMEOUT`]), a dead zone or an unknown
//!    saga after a coordinator restart *aborts*: `last = X aborted` is written durably first,
//!    so no late or duplicated `Begin{X}` can ever start X again, and A unfreezes E.
//!
//! After the commit, A's epoch is stale: persistence refuses its writes (stamps carry the
//! epoch) and the coordinator answers anything it says about E with `Fenced`, so a partitioned
//! A can neither resurrect nor duplicate E. Handoff ids are ordered (epoch, then attempt), so
//! "X or later already decided" is one comparison against the row.
//!
//! # Failover and re-sync
//!
//! When a zone's lease expires the coordinator moves each entity it owned to a survivor at a
//! new epoch and sends `Restore`; the survivor activates its prepared copy if it has one (a
//! handoff that committed while the source died) or loads the last checkpoint. A zone that
//! (re)connects sends `Holding` (what it simulates); the coordinator answers with `Restore` for
//! what it should hold but does not, and `Revoke` for what it holds but must not. That is also
//! how a restarted coordinator, which lost its in-memory sagas, gets every entity back in play.
//!
//! The caller must make each [`Action::Write`] durable before performing the actions after it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use worldmesh_protocol::ids::{EntityId, Epoch, ZoneId};

/// A source that hears nothing repeats itself after this long; so does the coordinator.
/// Round trips on a cluster network are ~1 ms, so 200 ms only fires on real loss.
pub const RESEND_AFTER: Duration = Duration::from_millis(200);

/// A saga whose target has not prepared after this long aborts: the entity has been frozen for
/// 20 ticks, which players notice; better to unfreeze it and let the source try again.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(1);

/// Identifies one handoff attempt of one entity. Ordered: a later epoch, or a later attempt
/// within an epoch, is a later handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandoffId {
    pub epoch: Epoch,
    pub attempt: u32,
}

/// As logs and spans show it: `epoch.attempt`.
impl std::fmt::Display for HandoffId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.attempt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
    /// The sender is not the entity's authority (at that epoch): it must drop the entity.
    Fenced,
}

/// The durable record of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Owning zone; 0 when nobody simulates it (logged out).
    pub zone: ZoneId,
    pub epoch: Epoch,
    /// The latest decided handoff of this entity and its outcome (committed or aborted).
    pub last: Option<(HandoffId, Outcome)>,
}

/// Zone → coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCoordinator {
    Begin {
        id: HandoffId,
        entity: EntityId,
        to: ZoneId,
        state: Bytes,
        /// W3C traceparent of the handoff's trace, carried opaquely ("" when not traced).
        trace: String,
    },
    Prepared {
        id: HandoffId,
        entity: EntityId,
        ok: bool,
        /// W3C traceparent of the handoff's trace, carried opaquely ("" when not traced).
        trace: String,
    },
    Query {
        id: HandoffId,
        entity: EntityId,
    },
    /// Grant me authority over this entity (a login), above the epoch persistence holds.
    Acquire {
        entity: EntityId,
        min_epoch: Epoch,
    },
    /// The entity left the world (logout) and its final state is saved.
    Release {
        entity: EntityId,
        epoch: Epoch,
    },
    Restored {
        entity: EntityId,
        epoch: Epoch,
    },
    /// Answer to `Revoke`: this zone no longer simulates the entity below `epoch`.
    Revoked {
        entity: EntityId,
        epoch: Epoch,
    },
    /// Everything this zone simulates, sent when it (re)connects.
    Holding {
        entities: Vec<(EntityId, Epoch)>,
    },
}

/// Coordinator → zone.
#[derive(Debug, Clone, PartialEq)]
pub enum ToZone {
    Prepare {
        id: HandoffId,
        entity: EntityId,
        epoch: Epoch,
        from: ZoneId,
        state: Bytes,
        /// W3C traceparent of the handoff's trace, carried opaquely ("" when not traced).
        trace: String,
    },
    Decided {
        id: HandoffId,
        entity: EntityId,
        outcome: Outcome,
        /// W3C traceparent of the handoff's trace, carried opaquely ("" when not traced).
        trace: String,
    },
    Granted {
        entity: EntityId,
        epoch: Epoch,
    },
    /// You own this entity now at `epoch` (failover or re-sync): activate it.
    Restore {
        entity: EntityId,
        epoch: Epoch,
        /// The handoff whose commit created `epoch`, if one did: a copy prepared for exactly
        /// that handoff may be activated; anything else restores from persistence.
        committed: Option<HandoffId>,
    },
    /// You no longer own this entity: drop it without saving.
    Revoke {
        entity: EntityId,
        epoch: Epoch,
    },
    HoldingAck,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make this row durable before performing any later action.
    Write {
        entity: EntityId,
        row: Authority,
    },
    Send(ZoneId, ToZone),
}

struct Saga {
    id: HandoffId,
    from: ZoneId,
    to: ZoneId,
    state: Bytes,
    trace: String,
    started: Instant,
    resend_at: Instant,
}

/// A login elsewhere waiting for the owner to let go (see [`Coordinator::on_message`],
/// `Acquire`): granted once the owner answers `Revoked`, or at once if it dies.
struct Takeover {
    /// The zone that asked (`Acquire`) and gets the entity.
    to: ZoneId,
    /// The owner told to let go.
    from: ZoneId,
    /// The epoch the owner was revoked below: the new owner's epoch.
    epoch: Epoch,
    resend_at: Instant,
}

/// The coordinator's side: authority rows, live zones, sagas in flight.
pub struct Coordinator {
    rows: BTreeMap<EntityId, Authority>,
    live: BTreeSet<ZoneId>,
    sagas: BTreeMap<EntityId, Saga>,
    /// Takeovers waiting for the owner's `Revoked`, by entity.
    takeovers: BTreeMap<EntityId, Takeover>,
    /// Restores not yet confirmed: (zone, epoch, next resend).
    restoring: BTreeMap<EntityId, (ZoneId, Epoch, Instant)>,
    /// The world's NPCs are `EntityId::npc(0 .. npcs)` (see [`Coordinator::with_npcs`]).
    npcs: u64,
}

impl Coordinator {
    /// Starts from the durable rows and the zones whose leases are live (a restart).
    pub fn new(
        rows: impl IntoIterator<Item = (EntityId, Authority)>,
        live: impl IntoIterator<Item = ZoneId>,
    ) -> Self {
        Self {
            rows: rows.into_iter().collect(),
            live: live.into_iter().collect(),
            sagas: BTreeMap::new(),
            takeovers: BTreeMap::new(),
            restoring: BTreeMap::new(),
            npcs: 0,
        }
    }

    /// The world has `n` NPCs, `EntityId::npc(0 .. n)`. Nobody logs them in, so the
    /// coordinator keeps them in play itself: an NPC nobody holds (never placed yet, or its
    /// zone stopped) is an orphan like one whose zone died, and goes to a live zone with
    /// `Restore` (which spawns it afresh, or from its checkpoint if its kind is persisted).
    /// NPCs beyond `n` (the world was shrunk) are retired: never restored, revoked where held.
    pub fn with_npcs(mut self, n: u64) -> Self {
        self.npcs = n;
        for i in 0..n {
            self.rows.entry(EntityId::npc(i)).or_insert(Authority {
                zone: ZoneId::NONE,
                epoch: Epoch(0),
                last: None,
            });
        }
        self
    }

    /// One of the world's NPCs (always kept in play).
    fn is_world_npc(&self, entity: EntityId) -> bool {
        entity.npc_index().is_some_and(|i| i < self.npcs)
    }

    /// An NPC of a larger world than this one: kept out of play.
    fn is_retired_npc(&self, entity: EntityId) -> bool {
        entity.npc_index().is_some_and(|i| i >= self.npcs)
    }

    pub fn row(&self, entity: EntityId) -> Option<&Authority> {
        self.rows.get(&entity)
    }

    pub fn rows(&self) -> impl Iterator<Item = (&EntityId, &Authority)> {
        self.rows.iter()
    }

    pub fn live(&self) -> &BTreeSet<ZoneId> {
        &self.live
    }

    pub fn sagas_in_flight(&self) -> usize {
        self.sagas.len()
    }

    /// Replaces a row with what the durable store holds (after a failed write).
    pub fn reload(&mut self, entity: EntityId, row: Option<Authority>) {
        self.sagas.remove(&entity);
        match row {
            Some(r) => self.rows.insert(entity, r),
            None => self.rows.remove(&entity),
        };
    }

    /// A zone joined: it also takes entities orphaned while no zone was alive.
    pub fn zone_up(
        &mut self,
        zone: ZoneId,
        now: Instant,
        survivor: impl Fn(EntityId) -> Option<ZoneId>,
    ) -> Vec<Action> {
        self.live.insert(zone);
        self.reassign_orphans(now, survivor)
    }

    /// A zone's lease expired: abort its sagas and move its entities to survivors.
    pub fn zone_down(
        &mut self,
        zone: ZoneId,
        now: Instant,
        survivor: impl Fn(EntityId) -> Option<ZoneId>,
    ) -> Vec<Action> {
        self.live.remove(&zone);
        let mut out = Vec::new();
        self.forget_zone(zone, &mut out);
        out.extend(self.reassign_orphans(now, survivor));
        out
    }

    /// Takeovers from `zone` (gone: it simulates nothing any more) are granted; takeovers
    /// for it are dropped.
    fn settle_takeovers(&mut self, zone: ZoneId, out: &mut Vec<Action>) {
        self.takeovers.retain(|_, t| t.to != zone);
        let mut from: Vec<EntityId> = self
            .takeovers
            .iter()
            .filter(|(_, t)| t.from == zone)
            .map(|(e, _)| *e)
            .collect();
        from.sort_unstable();
        for entity in from {
            self.grant_takeover(entity, out);
        }
    }

    /// The owner let go (or is gone): the entity is the requester's, at the revoked epoch.
    fn grant_takeover(&mut self, entity: EntityId, out: &mut Vec<Action>) {
        let Some(t) = self.takeovers.remove(&entity) else {
            return;
        };
        if !self.live.contains(&t.to) {
            return;
        }
        if self.sagas.contains_key(&entity) {
            self.abort(entity, out);
        }
        let row = self.rows.entry(entity).or_insert(Authority {
            zone: ZoneId::NONE,
            epoch: Epoch(0),
            last: None,
        });
        row.zone = t.to;
        row.epoch = row.epoch.max(t.epoch.prev()).next();
        let epoch = row.epoch;
        out.push(Action::Write {
            entity,
            row: row.clone(),
        });
        self.restoring.remove(&entity);
        out.push(Action::Send(t.to, ToZone::Granted { entity, epoch }));
    }

    /// Aborts every saga a zone takes part in and forgets its pending restores.
    fn forget_zone(&mut self, zone: ZoneId, out: &mut Vec<Action>) {
        let touched: Vec<EntityId> = self
            .sagas
            .iter()
            .filter(|(_, s)| s.from == zone || s.to == zone)
            .map(|(e, _)| *e)
            .collect();
        for entity in touched {
            self.abort(entity, out);
        }
        self.restoring.retain(|_, (z, _, _)| *z != zone);
        self.settle_takeovers(zone, out);
    }

    /// A zone stopped cleanly, every entity saved: its sagas abort and its characters become
    /// nobody's (the next login loads them from persistence), instead of failing over. Its
    /// NPCs, which nobody logs in, go to survivors.
    pub fn zone_stopped(
        &mut self,
        zone: ZoneId,
        now: Instant,
        survivor: impl Fn(EntityId) -> Option<ZoneId>,
    ) -> Vec<Action> {
        self.live.remove(&zone);
        let mut out = Vec::new();
        self.forget_zone(zone, &mut out);
        for (&entity, row) in self.rows.iter_mut() {
            if row.zone == zone {
                row.zone = ZoneId::NONE;
                out.push(Action::Write {
                    entity,
                    row: row.clone(),
                });
            }
        }
        out.extend(self.reassign_orphans(now, survivor));
        out
    }

    /// Moves entities owned by zones that are not live to survivors: after `zone_down`, and
    /// after a restart (the coordinator may have died halfway through a failover).
    pub fn reassign_orphans(
        &mut self,
        now: Instant,
        survivor: impl Fn(EntityId) -> Option<ZoneId>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let orphans: Vec<EntityId> = self
            .rows
            .iter()
            .filter(|(e, r)| {
                if r.zone == ZoneId::NONE {
                    self.is_world_npc(**e)
                } else {
                    !self.live.contains(&r.zone)
                }
            })
            .map(|(e, _)| *e)
            .collect();
        // (A BTreeMap's keys come sorted: the same rows give the same messages in order.)
        for entity in orphans {
            if self.is_retired_npc(entity) {
                let row = self.rows.get_mut(&entity).expect("orphan row");
                row.zone = ZoneId::NONE;
                out.push(Action::Write {
                    entity,
                    row: row.clone(),
                });
                continue;
            }
            let Some(to) = survivor(entity).filter(|z| self.live.contains(z)) else {
                continue;
            };
            let row = self.rows.get_mut(&entity).expect("orphan row");
            row.zone = to;
            row.epoch = row.epoch.next();
            let epoch = row.epoch;
            out.push(Action::Write {
                entity,
                row: row.clone(),
            });
            out.push(Action::Send(to, restore(row, entity)));
            self.restoring
                .insert(entity, (to, epoch, now + RESEND_AFTER));
        }
        out
    }

    pub fn on_message(&mut self, now: Instant, from: ZoneId, msg: ToCoordinator) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.live.contains(&from) {
            // A zone without a lease holds nothing; it learns so from its heartbeat.
            return out;
        }
        match msg {
            ToCoordinator::Begin {
                id,
                entity,
                to,
                state,
                trace,
            } => self.begin(now, from, id, entity, to, state, trace, &mut out),
            ToCoordinator::Prepared {
                id,
                entity,
                ok,
                trace,
            } => {
                let ours = self
                    .sagas
                    .get(&entity)
                    .is_some_and(|s| s.id == id && s.to == from);
                if !ours {
                    self.answer(now, from, id, entity, &trace, &mut out);
                } else if ok {
                    self.commit(entity, &mut out);
                } else {
                    self.abort(entity, &mut out);
                }
            }
            ToCoordinator::Query { id, entity } => self.answer(now, from, id, entity, "", &mut out),
            ToCoordinator::Acquire { .. } | ToCoordinator::Release { .. }
                if self.is_world_npc(msg_entity(&msg)) =>
            {
                // NPCs are the world's, never a login's: no zone acquires or releases one
                // (persistence never gives a login an NPC's row; this is the second lock).
            }
            ToCoordinator::Acquire { entity, min_epoch } => {
                // A repeat from the zone that already owns it (its Granted was lost): grant the
                // same epoch again, so resending is harmless.
                if let Some(row) = self.rows.get(&entity)
                    && row.zone == from
                    && row.epoch > min_epoch
                    && !self.sagas.contains_key(&entity)
                    && !self.takeovers.contains_key(&entity)
                {
                    out.push(Action::Send(
                        from,
                        ToZone::Granted {
                            entity,
                            epoch: row.epoch,
                        },
                    ));
                    return out;
                }
                if self.sagas.contains_key(&entity) {
                    self.abort(entity, &mut out);
                }
                let row = self.rows.entry(entity).or_insert(Authority {
                    zone: ZoneId::NONE,
                    epoch: Epoch(0),
                    last: None,
                });
                let epoch = row.epoch.max(min_epoch).next();
                if row.zone != ZoneId::NONE && row.zone != from && self.live.contains(&row.zone) {
                    // Simulated elsewhere (a login through another gateway): the owner lets go
                    // first, and only then is the entity granted here. Granting at once would
                    // have both zones simulate it until the owner heard of it.
                    let old = row.zone;
                    let epoch = self
                        .takeovers
                        .get(&entity)
                        .filter(|t| t.from == old)
                        .map_or(epoch, |t| t.epoch.max(epoch));
                    self.takeovers.insert(
                        entity,
                        Takeover {
                            to: from,
                            from: old,
                            epoch,
                            resend_at: now + RESEND_AFTER,
                        },
                    );
                    // The revoke's epoch is durable before the revoke is sent. The owner
                    // forgets everything below it when it lets go; a coordinator that
                    // restarts meanwhile (and forgets the takeover) must then give the entity
                    // back at that epoch or later, or the owner would ignore it as stale.
                    if row.epoch < epoch {
                        row.epoch = epoch;
                        out.push(Action::Write {
                            entity,
                            row: row.clone(),
                        });
                    }
                    out.push(Action::Send(old, ToZone::Revoke { entity, epoch }));
                    return out;
                }
                row.zone = from;
                row.epoch = epoch;
                out.push(Action::Write {
                    entity,
                    row: row.clone(),
                });
                self.takeovers.remove(&entity);
                self.restoring.remove(&entity);
                out.push(Action::Send(from, ToZone::Granted { entity, epoch }));
            }
            ToCoordinator::Revoked { entity, epoch } => {
                if self
                    .takeovers
                    .get(&entity)
                    .is_some_and(|t| t.from == from && t.epoch == epoch)
                {
                    self.grant_takeover(entity, &mut out);
                }
            }
            ToCoordinator::Release { entity, epoch } => {
                if let Some(row) = self.rows.get_mut(&entity)
                    && row.zone == from
                    && row.epoch == epoch
                    && !self.sagas.contains_key(&entity)
                {
                    row.zone = ZoneId::NONE;
                    out.push(Action::Write {
                        entity,
                        row: row.clone(),
                    });
                }
            }
            ToCoordinator::Restored { entity, epoch } => {
                if self
                    .restoring
                    .get(&entity)
                    .is_some_and(|&(z, e, _)| z == from && e == epoch)
                {
                    self.restoring.remove(&entity);
                }
            }
            ToCoordinator::Holding { entities } => {
                let held: BTreeMap<EntityId, Epoch> = entities.iter().copied().collect();
                let mut stale = Vec::new();
                for &(entity, epoch) in &entities {
                    if self.is_retired_npc(entity)
                        && let Some(row) = self.rows.get_mut(&entity)
                        && row.zone == from
                    {
                        row.zone = ZoneId::NONE;
                        out.push(Action::Write {
                            entity,
                            row: row.clone(),
                        });
                    }
                    let current = self.rows.get(&entity);
                    if let Some(r) = current
                        && r.zone == from
                    {
                        // Mid-takeover the row's epoch is the revoke's: not a restore.
                        if r.epoch != epoch && !self.takeovers.contains_key(&entity) {
                            // Ours at a newer epoch (a failover gave it back): restore it.
                            stale.push(entity);
                        }
                    } else {
                        let newer = current.map_or(epoch.next(), |r| r.epoch.max(epoch.next()));
                        out.push(Action::Send(
                            from,
                            ToZone::Revoke {
                                entity,
                                epoch: newer,
                            },
                        ));
                    }
                }
                let mut missing: Vec<(EntityId, Epoch)> = self
                    .rows
                    .iter()
                    .filter(|(e, r)| r.zone == from && (!held.contains_key(e) || stale.contains(e)))
                    .filter(|(e, _)| {
                        // Entities being handed in are not expected to be held yet, nor those
                        // being taken away (the owner may have let go already).
                        self.sagas.get(e).is_none_or(|s| s.to != from)
                            && !self.takeovers.contains_key(e)
                    })
                    .map(|(e, r)| (*e, r.epoch))
                    .collect();
                missing.sort_unstable();
                for (entity, epoch) in missing {
                    out.push(Action::Send(from, restore(&self.rows[&entity], entity)));
                    self.restoring
                        .insert(entity, (from, epoch, now + RESEND_AFTER));
                }
                out.push(Action::Send(from, ToZone::HoldingAck));
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        now: Instant,
        from: ZoneId,
        id: HandoffId,
        entity: EntityId,
        to: ZoneId,
        state: Bytes,
        trace: String,
        out: &mut Vec<Action>,
    ) {
        let Some(row) = self.rows.get(&entity) else {
            return decide(out, from, id, entity, Outcome::Fenced, &trace);
        };
        if row.zone == from && self.takeovers.contains_key(&entity) {
            // Being taken over by a login elsewhere (the row's epoch already moved to the
            // revoke's): this handoff never starts, durably (a resent Begin after a restart
            // must not start it either); the revoke that follows drops the entity.
            if let Some(outcome) = already_decided(row, id) {
                return decide(out, from, id, entity, outcome, &trace);
            }
            let row = self.rows.get_mut(&entity).expect("row checked above");
            row.last = Some((id, Outcome::Aborted));
            out.push(Action::Write {
                entity,
                row: row.clone(),
            });
            return decide(out, from, id, entity, Outcome::Aborted, &trace);
        }
        if row.zone != from || row.epoch != id.epoch {
            let outcome = if row.last == Some((id, Outcome::Committed)) {
                Outcome::Committed
            } else {
                Outcome::Fenced
            };
            return decide(out, from, id, entity, outcome, &trace);
        }
        if let Some(outcome) = already_decided(row, id) {
            return decide(out, from, id, entity, outcome, &trace);
        }
        if let Some(s) = self.sagas.get_mut(&entity) {
            if s.id == id {
                // A repeat: the Prepare or its answer may have been lost.
                s.resend_at = now + RESEND_AFTER;
                out.push(Action::Send(s.to, prepare(s, entity)));
            }
            return;
        }
        if to == from || !self.live.contains(&to) {
            self.sagas.insert(
                entity,
                Saga {
                    id,
                    from,
                    to,
                    state,
                    trace,
                    started: now,
                    resend_at: now,
                },
            );
            return self.abort(entity, out);
        }
        let saga = Saga {
            id,
            from,
            to,
            state,
            trace,
            started: now,
            resend_at: now + RESEND_AFTER,
        };
        out.push(Action::Send(to, prepare(&saga, entity)));
        self.sagas.insert(entity, saga);
    }

    /// Answers a question about handoff `id` of `entity` from a zone with no saga to match.
    fn answer(
        &mut self,
        now: Instant,
        from: ZoneId,
        id: HandoffId,
        entity: EntityId,
        trace: &str,
        out: &mut Vec<Action>,
    ) {
        if let Some(s) = self.sagas.get_mut(&entity) {
            if s.id == id && s.to == from {
                // The target asks while we wait for its Prepared: it was lost; ask again.
                s.resend_at = now + RESEND_AFTER;
                out.push(Action::Send(s.to, prepare(s, entity)));
            } else if s.id > id {
                decide(out, from, id, entity, Outcome::Aborted, trace);
            }
            return;
        }
        let Some(row) = self.rows.get_mut(&entity) else {
            return decide(out, from, id, entity, Outcome::Aborted, trace);
        };
        if let Some(outcome) = already_decided(row, id) {
            return decide(out, from, id, entity, outcome, trace);
        }
        if row.epoch == id.epoch {
            // Nobody decided X and no saga runs (the coordinator restarted): decide now,
            // durably, so that a late Begin{X} cannot start it again.
            row.last = Some((id, Outcome::Aborted));
            out.push(Action::Write {
                entity,
                row: row.clone(),
            });
        }
        // Either just aborted, or the entity moved on through another path (failover,
        // login): X never committed, since its commit would be recorded as `last`.
        decide(out, from, id, entity, Outcome::Aborted, trace);
    }

    fn commit(&mut self, entity: EntityId, out: &mut Vec<Action>) {
        let s = self.sagas.remove(&entity).expect("saga to commit");
        self.restoring.remove(&entity);
        let row = self.rows.get_mut(&entity).expect("row of a saga");
        row.zone = s.to;
        row.epoch = s.id.epoch.next();
        row.last = Some((s.id, Outcome::Committed));
        out.push(Action::Write {
            entity,
            row: row.clone(),
        });
        decide(out, s.to, s.id, entity, Outcome::Committed, &s.trace);
        decide(out, s.from, s.id, entity, Outcome::Committed, &s.trace);
    }

    fn abort(&mut self, entity: EntityId, out: &mut Vec<Action>) {
        let s = self.sagas.remove(&entity).expect("saga to abort");
        let row = self.rows.get_mut(&entity).expect("row of a saga");
        if row.last.is_none_or(|(l, _)| l < s.id) {
            row.last = Some((s.id, Outcome::Aborted));
        }
        out.push(Action::Write {
            entity,
            row: row.clone(),
        });
        for z in [s.to, s.from] {
            if self.live.contains(&z) {
                decide(out, z, s.id, entity, Outcome::Aborted, &s.trace);
            }
        }
    }

    /// Timeouts and resends; call every few milliseconds.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let mut expired: Vec<EntityId> = self
            .sagas
            .iter()
            .filter(|(_, s)| now >= s.started + PREPARE_TIMEOUT)
            .map(|(e, _)| *e)
            .collect();
        expired.sort_unstable();
        for entity in expired {
            self.abort(entity, &mut out);
        }
        for (&entity, s) in self.sagas.iter_mut() {
            if now >= s.resend_at {
                s.resend_at = now + RESEND_AFTER;
                out.push(Action::Send(s.to, prepare(s, entity)));
            }
        }
        for (&entity, t) in self.takeovers.iter_mut() {
            if now >= t.resend_at {
                t.resend_at = now + RESEND_AFTER;
                out.push(Action::Send(
                    t.from,
                    ToZone::Revoke {
                        entity,
                        epoch: t.epoch,
                    },
                ));
            }
        }
        let rows = &self.rows;
        self.restoring.retain(|e, (zone, epoch, _)| {
            rows.get(e)
                .is_some_and(|r| r.zone == *zone && r.epoch == *epoch)
        });
        for (&entity, (zone, epoch, resend_at)) in self.restoring.iter_mut() {
            if now >= *resend_at {
                *resend_at = now + RESEND_AFTER;
                let _ = epoch;
                out.push(Action::Send(*zone, restore(&self.rows[&entity], entity)));
            }
        }
        out
    }
}

/// The entity a login message (`Acquire`, `Release`) is about.
fn msg_entity(msg: &ToCoordinator) -> EntityId {
    match msg {
        ToCoordinator::Begin { entity, .. }
        | ToCoordinator::Prepared { entity, .. }
        | ToCoordinator::Query { entity, .. }
        | ToCoordinator::Acquire { entity, .. }
        | ToCoordinator::Release { entity, .. }
        | ToCoordinator::Restored { entity, .. }
        | ToCoordinator::Revoked { entity, .. } => *entity,
        ToCoordinator::Holding { .. } => EntityId(0),
    }
}

/// The outcome of handoff `id` if it, or a later one, is already decided: ids are ordered, and
/// a new attempt only starts after the previous one is decided, so anything earlier than the
/// latest decided handoff was aborted.
fn already_decided(row: &Authority, id: HandoffId) -> Option<Outcome> {
    let (last, outcome) = row.last?;
    (last >= id).then(|| {
        if last == id {
            outcome
        } else {
            Outcome::Aborted
        }
    })
}

fn restore(row: &Authority, entity: EntityId) -> ToZone {
    let committed = match row.last {
        Some((id, Outcome::Committed)) if id.epoch.next() == row.epoch => Some(id),
        _ => None,
    };
    ToZone::Restore {
        entity,
        epoch: row.epoch,
        committed,
    }
}

fn prepare(s: &Saga, entity: EntityId) -> ToZone {
    ToZone::Prepare {
        id: s.id,
        entity,
        epoch: s.id.epoch.next(),
        from: s.from,
        state: s.state.clone(),
        trace: s.trace.clone(),
    }
}

fn decide(
    out: &mut Vec<Action>,
    to: ZoneId,
    id: HandoffId,
    entity: EntityId,
    outcome: Outcome,
    trace: &str,
) {
    out.push(Action::Send(
        to,
        ToZone::Decided {
            id,
            entity,
            outcome,
            trace: trace.to_owned(),
        },
    ));
}

// ---------------------------------------------------------------------------------------------
// Zone side

/// What a zone holds of one entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// Simulated here. `attempts` numbers this epoch's handoff attempts.
    Active { epoch: Epoch, attempts: u32 },
    /// Frozen here while handoff `id` to `to` is undecided.
    Frozen {
        id: HandoffId,
        to: ZoneId,
        state: Bytes,
        trace: String,
        resend_at: Instant,
    },
    /// An inactive copy, prepared for handoff `id`, waiting for the decision.
    Prepared {
        id: HandoffId,
        epoch: Epoch,
        state: Bytes,
        resend_at: Instant,
    },
}

/// What the zone must do after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start simulating the entity at `epoch`: from `state`, or from persistence when `None`.
    Activate {
        entity: EntityId,
        epoch: Epoch,
        state: Option<Bytes>,
    },
    /// Handed off: despawn it and route its player to `to`.
    HandedOff {
        entity: EntityId,
        to: ZoneId,
    },
    /// The handoff failed: simulate it again.
    Unfreeze {
        entity: EntityId,
    },
    /// Not ours any more: despawn it without saving.
    Dropped {
        entity: EntityId,
    },
    Granted {
        entity: EntityId,
        epoch: Epoch,
    },
}

/// A zone's side: what it holds and which handoffs it waits on.
/// How long a zone remembers that an entity left it at some epoch, to ignore late messages
/// (a `Restore` or `Prepare` delayed behind the decision that moved the entity on). Far longer
/// than any message stays in flight on a live gRPC stream.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Participant {
    held: BTreeMap<EntityId, Held>,
    /// Entities that left: the epoch they left at (anything at or below it is stale).
    gone: BTreeMap<EntityId, (Epoch, Instant)>,
}

impl Participant {
    pub fn held(&self, entity: EntityId) -> Option<&Held> {
        self.held.get(&entity)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&EntityId, &Held)> {
        self.held.iter()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The epoch of an entity simulated here.
    pub fn active_epoch(&self, entity: EntityId) -> Option<Epoch> {
        match self.held.get(&entity) {
            Some(Held::Active { epoch, .. }) => Some(*epoch),
            _ => None,
        }
    }

    /// Forgets an entity persistence fenced (a newer epoch wrote it): anything about it at
    /// the epoch held here, or older, is stale from now on. Returns whether it was held.
    pub fn forget_fenced(&mut self, now: Instant, entity: EntityId) -> bool {
        let epoch = match self.held.remove(&entity) {
            Some(Held::Active { epoch, .. }) => epoch,
            Some(Held::Frozen { id, .. }) => id.epoch,
            Some(Held::Prepared { epoch, .. }) => epoch,
            None => return false,
        };
        self.mark_gone(entity, epoch, now);
        true
    }

    /// Forgets everything (the zone lost its lease: someone else owns it all now).
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// Holds `entity` as active (granted at login, restored).
    pub fn adopt(&mut self, entity: EntityId, epoch: Epoch) {
        self.held
            .insert(entity, Held::Active { epoch, attempts: 0 });
    }

    /// Forgets an entity that left the world; returns the `Release` to send.
    pub fn release(&mut self, now: Instant, entity: EntityId) -> Option<ToCoordinator> {
        match self.held.remove(&entity) {
            Some(Held::Active { epoch, .. }) => {
                // A `Restore` at this epoch the coordinator sent before it heard the release is
                // late: the coordinator gives the entity out again only at a later epoch.
                self.mark_gone(entity, epoch, now);
                Some(ToCoordinator::Release { entity, epoch })
            }
            Some(other) => {
                // Mid-handoff: the saga decides; keep waiting for it.
                self.held.insert(entity, other);
                None
            }
            None => None,
        }
    }

    /// Freezes an active entity and starts handing it to `to`. `None` if it is not active.
    /// `trace` (a W3C traceparent, or "") travels with every message of this handoff.
    pub fn begin(
        &mut self,
        now: Instant,
        entity: EntityId,
        to: ZoneId,
        state: Bytes,
        trace: String,
    ) -> Option<ToCoordinator> {
        let Some(Held::Active { epoch, attempts }) = self.held.get(&entity).cloned() else {
            return None;
        };
        let id = HandoffId {
            epoch,
            attempt: attempts + 1,
        };
        self.held.insert(
            entity,
            Held::Frozen {
                id,
                to,
                state: state.clone(),
                trace: trace.clone(),
                resend_at: now + RESEND_AFTER,
            },
        );
        Some(ToCoordinator::Begin {
            id,
            entity,
            to,
            state,
            trace,
        })
    }

    /// Handles a coordinator message. `accept` says whether a prepared entity may come here.
    pub fn on_message(
        &mut self,
        now: Instant,
        msg: ToZone,
        accept: impl FnOnce(EntityId, &Bytes) -> bool,
    ) -> (Vec<Event>, Vec<ToCoordinator>) {
        let mut events = Vec::new();
        let mut replies = Vec::new();
        match msg {
            ToZone::Prepare {
                id,
                entity,
                epoch,
                state,
                trace,
                ..
            } => {
                let ok = match self.held.get(&entity) {
                    _ if self.is_gone(entity, id.epoch) => false,
                    Some(Held::Prepared { id: p, .. }) if *p == id => true,
                    Some(Held::Prepared { id: p, .. }) if *p > id => false,
                    Some(
                        Held::Active { epoch: e, .. }
                        | Held::Frozen {
                            id: HandoffId { epoch: e, .. },
                            ..
                        },
                    ) if *e >= epoch => false,
                    _ => {
                        let ok = accept(entity, &state);
                        if ok {
                            // A copy still frozen here for an older handoff: that handoff was
                            // decided (the entity is a later epoch now) and its answer lost.
                            // Whatever it was, the frozen copy is not the entity any more.
                            if let Some(Held::Frozen { to, .. }) = self.held.get(&entity) {
                                events.push(Event::HandedOff { entity, to: *to });
                            }
                            self.held.insert(
                                entity,
                                Held::Prepared {
                                    id,
                                    epoch,
                                    state,
                                    resend_at: now + RESEND_AFTER,
                                },
                            );
                        }
                        ok
                    }
                };
                replies.push(ToCoordinator::Prepared {
                    id,
                    entity,
                    ok,
                    trace,
                });
            }
            ToZone::Decided {
                id,
                entity,
                outcome,
                ..
            } => match self.held.get(&entity).cloned() {
                Some(Held::Frozen { id: f, to, .. }) if f == id => match outcome {
                    Outcome::Committed => {
                        self.held.remove(&entity);
                        self.mark_gone(entity, id.epoch, now);
                        events.push(Event::HandedOff { entity, to });
                    }
                    Outcome::Aborted => {
                        self.held.insert(
                            entity,
                            Held::Active {
                                epoch: id.epoch,
                                attempts: id.attempt,
                            },
                        );
                        events.push(Event::Unfreeze { entity });
                    }
                    Outcome::Fenced => {
                        self.held.remove(&entity);
                        self.mark_gone(entity, id.epoch, now);
                        events.push(Event::Dropped { entity });
                    }
                },
                Some(Held::Prepared {
                    id: p,
                    epoch,
                    state,
                    ..
                }) if p == id => {
                    if outcome == Outcome::Committed {
                        self.held
                            .insert(entity, Held::Active { epoch, attempts: 0 });
                        events.push(Event::Activate {
                            entity,
                            epoch,
                            state: Some(state),
                        });
                    } else {
                        self.held.remove(&entity);
                    }
                }
                _ => {}
            },
            ToZone::Granted { entity, epoch } => {
                // Only a grant newer than what is held counts; a repeated one must not undo a
                // handoff in progress (Frozen) or a newer epoch.
                let newer = match self.held.get(&entity) {
                    // A grant overtaken by the revoke of that very epoch (a takeover elsewhere)
                    // is stale.
                    None => !self.is_gone(entity, epoch),
                    Some(Held::Active { epoch: e, .. }) => *e < epoch,
                    Some(_) => false,
                };
                if newer {
                    self.gone.remove(&entity);
                    self.adopt(entity, epoch);
                    events.push(Event::Granted { entity, epoch });
                }
            }
            ToZone::Restore {
                entity,
                epoch,
                committed,
            } => {
                if self.is_gone(entity, epoch) {
                    return (events, replies);
                }
                match self.held.get(&entity).cloned() {
                    Some(Held::Active { epoch: e, .. }) if e >= epoch => {}
                    Some(Held::Frozen { id, .. }) if id.epoch >= epoch => {}
                    Some(Held::Prepared { id, state, .. }) if Some(id) == committed => {
                        self.adopt(entity, epoch);
                        events.push(Event::Activate {
                            entity,
                            epoch,
                            state: Some(state),
                        });
                    }
                    _ => {
                        self.adopt(entity, epoch);
                        events.push(Event::Activate {
                            entity,
                            epoch,
                            state: None,
                        });
                    }
                }
                replies.push(ToCoordinator::Restored { entity, epoch });
            }
            ToZone::Revoke { entity, epoch } => {
                let older = match self.held.get(&entity) {
                    Some(Held::Active { epoch: e, .. }) => *e < epoch,
                    Some(Held::Frozen { id, .. }) => id.epoch < epoch,
                    Some(Held::Prepared { epoch: e, .. }) => *e < epoch,
                    None => false,
                };
                if older || !self.held.contains_key(&entity) {
                    self.mark_gone(entity, epoch.prev(), now);
                }
                if older {
                    let was_simulated =
                        !matches!(self.held.remove(&entity), Some(Held::Prepared { .. }));
                    if was_simulated {
                        events.push(Event::Dropped { entity });
                    }
                }
                if !self.held.contains_key(&entity) {
                    // Nothing simulated here below `epoch`: a takeover may proceed.
                    replies.push(ToCoordinator::Revoked { entity, epoch });
                }
            }
            ToZone::HoldingAck => {}
        }
        (events, replies)
    }

    /// Records that `entity` left at `epoch`. Only ever raised: a late message (a revoke of
    /// an older epoch, delivered after the entity left at a newer one) must not lower it, or
    /// a restore of an epoch already handed on would be taken as new (found by the seeded
    /// simulation: a zone restored an NPC it had handed off three epochs before).
    fn mark_gone(&mut self, entity: EntityId, epoch: Epoch, now: Instant) {
        let e = self.gone.entry(entity).or_insert((epoch, now));
        if e.0 <= epoch {
            *e = (epoch, now);
        }
    }

    /// Whether a message about `entity` at `epoch` is older than its leaving this zone.
    fn is_gone(&self, entity: EntityId, epoch: Epoch) -> bool {
        self.gone.get(&entity).is_some_and(|&(e, _)| epoch <= e)
    }

    /// Resends for handoffs still undecided; call every few milliseconds.
    pub fn on_tick(&mut self, now: Instant) -> Vec<ToCoordinator> {
        let mut out = Vec::new();
        self.gone
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
        for (&entity, held) in self.held.iter_mut() {
            match held {
                Held::Frozen {
                    id,
                    to,
                    state,
                    trace,
                    resend_at,
                } if now >= *resend_at => {
                    *resend_at = now + RESEND_AFTER;
                    out.push(ToCoordinator::Begin {
                        id: *id,
                        entity,
                        to: *to,
                        state: state.clone(),
                        trace: trace.clone(),
                    });
                }
                Held::Prepared { id, resend_at, .. } if now >= *resend_at => {
                    *resend_at = now + RESEND_AFTER;
                    out.push(ToCoordinator::Query { id: *id, entity });
                }
                _ => {}
            }
        }
        out
    }

    /// The `Holding` report: every entity simulated or frozen here, with its epoch.
    pub fn holding(&self) -> ToCoordinator {
        let mut entities: Vec<(EntityId, Epoch)> = self
            .held
            .iter()
            .filter_map(|(e, h)| match h {
                Held::Active { epoch, .. } => Some((*e, *epoch)),
                Held::Frozen { id, .. } => Some((*e, id.epoch)),
                Held::Prepared { .. } => None,
            })
            .collect();
        entities.sort_unstable();
        ToCoordinator::Holding { entities }
    }
}

/// Scripted cases of the coordinator's side, one per rule a bug once broke or a deliberate
/// mutation must be caught by (the randomised search for everything else is
/// `zone-server/tests/simulation.rs`).
#[cfg(test)]
mod tests {
    use super::*;

    const E: EntityId = EntityId(7);
    const A: ZoneId = ZoneId(1);
    const B: ZoneId = ZoneId(2);

    /// What a durable store holds after the actions are carried out: every write, in order.
    fn persist(store: &mut BTreeMap<EntityId, Authority>, actions: &[Action]) {
        for a in actions {
            if let Action::Write { entity, row } = a {
                store.insert(*entity, row.clone());
            }
        }
    }

    fn begin(attempt: u32) -> ToCoordinator {
        ToCoordinator::Begin {
            id: HandoffId {
                epoch: Epoch(1),
                attempt,
            },
            entity: E,
            to: B,
            state: Bytes::new(),
            trace: String::new(),
        }
    }

    fn prepares(out: &[Action]) -> bool {
        out.iter()
            .any(|a| matches!(a, Action::Send(_, ToZone::Prepare { .. })))
    }

    fn aborted_to(out: &[Action], zone: ZoneId) -> bool {
        out.iter().any(|a| {
            matches!(a, Action::Send(z, ToZone::Decided { outcome: Outcome::Aborted, .. }) if *z == zone)
        })
    }

    /// A's entity at epoch 1, both zones live; the store as it starts.
    fn start() -> (Coordinator, BTreeMap<EntityId, Authority>) {
        let row = Authority {
            zone: A,
            epoch: Epoch(1),
            last: None,
        };
        let store = BTreeMap::from([(E, row)]);
        (Coordinator::new(store.clone(), [A, B]), store)
    }

    /// Times attempt `attempt` out (the target never prepares), carrying out the actions.
    fn begin_and_time_out(
        c: &mut Coordinator,
        store: &mut BTreeMap<EntityId, Authority>,
        at: Instant,
        attempt: u32,
    ) -> Vec<Action> {
        let out = c.on_message(at, A, begin(attempt));
        assert!(prepares(&out), "attempt {attempt} starts: {out:?}");
        persist(store, &out);
        let out = c.on_tick(at + PREPARE_TIMEOUT);
        persist(store, &out);
        out
    }

    /// Restores sent, as (zone, entity, epoch).
    fn restores(out: &[Action]) -> Vec<(ZoneId, EntityId, Epoch)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send(z, ToZone::Restore { entity, epoch, .. }) => {
                    Some((*z, *entity, *epoch))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_late_revoke_does_not_make_a_restore_of_a_handed_on_epoch_look_new() {
        // The seeded simulation's seed 401: the zone holds E at epoch 5 and hands it on
        // (committed), then a revoke of epoch 4 sent long before arrives, then a restore of
        // epoch 5 sent long before. The restore is stale: E is simulated elsewhere at 6.
        let now = Instant::now();
        let mut p = Participant::default();
        p.adopt(E, Epoch(5));
        let begin = p.begin(now, E, B, Bytes::new(), String::new());
        let Some(ToCoordinator::Begin { id, .. }) = begin else {
            panic!("an active entity begins a handoff: {begin:?}");
        };
        let decided = ToZone::Decided {
            id,
            entity: E,
            outcome: Outcome::Committed,
            trace: String::new(),
        };
        p.on_message(now, decided, |_, _| false);
        assert!(p.held(E).is_none());
        let (_, replies) = p.on_message(
            now,
            ToZone::Revoke {
                entity: E,
                epoch: Epoch(4),
            },
            |_, _| false,
        );
        assert_eq!(
            replies,
            [ToCoordinator::Revoked {
                entity: E,
                epoch: Epoch(4)
            }]
        );
        let (events, replies) = p.on_message(
            now,
            ToZone::Restore {
                entity: E,
                epoch: Epoch(5),
                committed: None,
            },
            |_, _| false,
        );
        assert!(
            events.is_empty() && replies.is_empty(),
            "{events:?} {replies:?}"
        );
        assert!(p.held(E).is_none());
    }

    #[test]
    fn the_worlds_npcs_are_placed_kept_in_play_and_never_acquired() {
        let now = Instant::now();
        let home = |e: EntityId| Some(if e.0.is_multiple_of(2) { A } else { B });
        let mut c = Coordinator::new([], []).with_npcs(3);
        // No zone yet: nowhere to put them.
        assert!(c.reassign_orphans(now, home).is_empty());
        let out = c.zone_up(A, now, |_| Some(A));
        let (n0, n1, n2) = (EntityId::npc(0), EntityId::npc(1), EntityId::npc(2));
        assert_eq!(
            restores(&out),
            [(A, n0, Epoch(1)), (A, n1, Epoch(1)), (A, n2, Epoch(1))],
            "placed in the only zone, written first: {out:?}"
        );
        assert!(matches!(out[0], Action::Write { .. }));
        c.zone_up(B, now, home);
        // A login can never take an NPC, nor release one.
        for msg in [
            ToCoordinator::Acquire {
                entity: n0,
                min_epoch: Epoch(0),
            },
            ToCoordinator::Release {
                entity: n0,
                epoch: Epoch(1),
            },
        ] {
            assert!(c.on_message(now, B, msg).is_empty());
        }
        assert_eq!(c.row(n0).unwrap().zone, A);
        // A stops cleanly: its NPCs go to B (characters would become nobody's).
        let out = c.zone_stopped(A, now, |_| Some(B));
        assert_eq!(
            restores(&out),
            [(B, n0, Epoch(2)), (B, n1, Epoch(2)), (B, n2, Epoch(2))]
        );
        // And when B dies with no zone left, they wait for the next zone.
        let out = c.zone_down(B, now, |_| None);
        assert!(restores(&out).is_empty());
        let out = c.zone_up(A, now, |_| Some(A));
        assert_eq!(restores(&out).len(), 3);
        assert!(
            restores(&out)
                .iter()
                .all(|&(z, _, e)| z == A && e == Epoch(3))
        );
    }

    #[test]
    fn npcs_beyond_a_shrunk_world_are_retired() {
        let now = Instant::now();
        let row = |zone| Authority {
            zone,
            epoch: Epoch(4),
            last: None,
        };
        let (kept, retired, dead) = (EntityId::npc(0), EntityId::npc(5), EntityId::npc(6));
        // The world had 7 NPCs; now 1. Zone A still simulates NPC 5; NPC 6's zone C is dead.
        let rows = [(kept, row(A)), (retired, row(A)), (dead, row(ZoneId(3)))];
        let mut c = Coordinator::new(rows, [A]).with_npcs(1);
        let out = c.reassign_orphans(now, |_| Some(A));
        assert!(restores(&out).is_empty(), "nothing to restore: {out:?}");
        assert_eq!(c.row(dead).unwrap().zone, ZoneId::NONE);
        let out = c.on_message(
            now,
            A,
            ToCoordinator::Holding {
                entities: vec![(kept, Epoch(4)), (retired, Epoch(4))],
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Send(z, ToZone::Revoke { entity, .. }) if *z == A && *entity == retired
        )));
        assert_eq!(c.row(retired).unwrap().zone, ZoneId::NONE);
        assert!(!out.iter().any(
            |a| matches!(a, Action::Send(_, ToZone::Revoke { entity, .. }) if *entity == kept)
        ));
    }

    /// Mutations caught: skipping the durable write of an abort, or writing it after the
    /// zones are told.
    #[test]
    fn an_abort_is_written_before_it_is_told_and_survives_a_restart() {
        let t0 = Instant::now();
        let (mut c, mut store) = start();
        let out = begin_and_time_out(&mut c, &mut store, t0, 1);
        let written = out
            .iter()
            .position(|a| matches!(a, Action::Write { row, .. } if row.last.is_some_and(|(_, o)| o == Outcome::Aborted)))
            .expect("the abort is written");
        let told = out
            .iter()
            .position(|a| matches!(a, Action::Send(_, ToZone::Decided { .. })))
            .expect("the zones are told");
        assert!(written < told, "written before told: {out:?}");
        assert!(aborted_to(&out, A), "the source unfreezes: {out:?}");
        // A restarted coordinator knows only what was written. A late copy of the aborted
        // Begin (the source resent it before it heard the abort) must not start it again:
        // the source is simulating the entity again.
        let mut c = Coordinator::new(store.clone(), [A, B]);
        let out = c.on_message(t0 + 2 * PREPARE_TIMEOUT, A, begin(1));
        assert!(
            !prepares(&out),
            "an aborted handoff never restarts: {out:?}"
        );
        assert!(
            aborted_to(&out, A),
            "the sender hears the decision again: {out:?}"
        );
        assert_eq!(c.sagas_in_flight(), 0);
    }

    /// Mutation caught: `already_decided` recognising only the exact handoff id, which lets a
    /// late Begin of an earlier attempt start after a later attempt was aborted.
    #[test]
    fn a_late_begin_of_an_earlier_attempt_is_aborted() {
        let t0 = Instant::now();
        let (mut c, mut store) = start();
        begin_and_time_out(&mut c, &mut store, t0, 1);
        begin_and_time_out(&mut c, &mut store, t0 + 2 * PREPARE_TIMEOUT, 2);
        let out = c.on_message(t0 + 4 * PREPARE_TIMEOUT, A, begin(1));
        assert!(!prepares(&out), "{out:?}");
        assert!(aborted_to(&out, A), "{out:?}");
    }

    /// Mutation caught: telling the zones of a commit before it is durable.
    #[test]
    fn a_commit_is_written_before_anyone_hears_it() {
        let t0 = Instant::now();
        let (mut c, mut store) = start();
        let out = c.on_message(t0, A, begin(1));
        persist(&mut store, &out);
        let id = HandoffId {
            epoch: Epoch(1),
            attempt: 1,
        };
        let out = c.on_message(
            t0,
            B,
            ToCoordinator::Prepared {
                id,
                entity: E,
                ok: true,
                trace: String::new(),
            },
        );
        let written = out
            .iter()
            .position(|a| matches!(a, Action::Write { row, .. } if row.zone == B && row.epoch == Epoch(2)))
            .expect("the commit is written");
        let first_told = out
            .iter()
            .position(|a| matches!(a, Action::Send(..)))
            .expect("the zones are told");
        assert!(written < first_told, "{out:?}");
        persist(&mut store, &out);
        assert_eq!(store[&E].last, Some((id, Outcome::Committed)));
    }
}
