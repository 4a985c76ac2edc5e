//! The handoff core's messages to and from their protobuf form.

use worldmesh_protocol::grpc::coordinator::{self as pb, coordinator_event, zone_event};

use crate::handoff::{HandoffId, Outcome, ToCoordinator, ToZone};
use worldmesh_protocol::ids::{EntityId, Epoch, ZoneId};

fn id_pb(id: HandoffId) -> Option<pb::HandoffId> {
    Some(pb::HandoffId {
        epoch: id.epoch.into(),
        attempt: id.attempt,
    })
}

fn id_core(id: Option<pb::HandoffId>) -> Option<HandoffId> {
    id.map(|i| HandoffId {
        epoch: Epoch(i.epoch),
        attempt: i.attempt,
    })
}

/// A traceparent is 55 characters; anything much longer is not one and is not carried.
fn trace_core(t: String) -> String {
    if t.len() <= 128 { t } else { String::new() }
}

fn outcome_pb(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Committed => pb::Outcome::Committed,
        Outcome::Aborted => pb::Outcome::Aborted,
        Outcome::Fenced => pb::Outcome::Fenced,
    }
}

/// A message for a zone, as sent on its session stream.
pub fn to_zone_pb(m: ToZone) -> coordinator_event::Msg {
    use coordinator_event::Msg;
    match m {
        ToZone::Prepare {
            id,
            entity,
            epoch,
            from,
            state,
            trace,
        } => Msg::Prepare(pb::Prepare {
            id: id_pb(id),
            entity_id: entity.into(),
            epoch: epoch.into(),
            from_zone: from.into(),
            state,
            trace_parent: trace,
        }),
        ToZone::Decided {
            id,
            entity,
            outcome,
            trace,
        } => Msg::Decided(pb::Decided {
            id: id_pb(id),
            entity_id: entity.into(),
            outcome: outcome_pb(outcome) as i32,
            trace_parent: trace,
        }),
        ToZone::Granted { entity, epoch } => Msg::Granted(pb::Granted {
            entity_id: entity.into(),
            epoch: epoch.into(),
        }),
        ToZone::Restore {
            entity,
            epoch,
            committed,
        } => Msg::Restore(pb::Restore {
            entity_id: entity.into(),
            epoch: epoch.into(),
            committed: committed.and_then(id_pb),
        }),
        ToZone::Revoke { entity, epoch } => Msg::Revoke(pb::Revoke {
            entity_id: entity.into(),
            epoch: epoch.into(),
        }),
        ToZone::HoldingAck => Msg::HoldingAck(pb::HoldingAck {}),
    }
}

/// A zone-side decode: `None` for a malformed message (missing ids).
pub fn to_zone_core(m: coordinator_event::Msg) -> Option<ToZone> {
    use coordinator_event::Msg;
    Some(match m {
        Msg::Prepare(p) => ToZone::Prepare {
            id: id_core(p.id)?,
            entity: EntityId(p.entity_id),
            epoch: Epoch(p.epoch),
            from: ZoneId(p.from_zone),
            state: p.state,
            trace: trace_core(p.trace_parent),
        },
        Msg::Decided(d) => ToZone::Decided {
            id: id_core(d.id)?,
            entity: EntityId(d.entity_id),
            outcome: match pb::Outcome::try_from(d.outcome).ok()? {
                pb::Outcome::Committed => Outcome::Committed,
                pb::Outcome::Aborted => Outcome::Aborted,
                pb::Outcome::Fenced => Outcome::Fenced,
                pb::Outcome::Unspecified => return None,
            },
            trace: trace_core(d.trace_parent),
        },
        Msg::Granted(g) => ToZone::Granted {
            entity: EntityId(g.entity_id),
            epoch: Epoch(g.epoch),
        },
        Msg::Restore(r) => ToZone::Restore {
            entity: EntityId(r.entity_id),
            epoch: Epoch(r.epoch),
            committed: id_core(r.committed),
        },
        Msg::Revoke(r) => ToZone::Revoke {
            entity: EntityId(r.entity_id),
            epoch: Epoch(r.epoch),
        },
        Msg::HoldingAck(_) => ToZone::HoldingAck,
    })
}

/// A message for the coordinator, as sent on the session stream.
pub fn to_coordinator_pb(m: ToCoordinator) -> zone_event::Msg {
    use zone_event::Msg;
    match m {
        ToCoordinator::Begin {
            id,
            entity,
            to,
            state,
            trace,
        } => Msg::Begin(pb::Begin {
            id: id_pb(id),
            entity_id: entity.into(),
            to_zone: to.into(),
            state,
            trace_parent: trace,
        }),
        ToCoordinator::Prepared {
            id,
            entity,
            ok,
            trace,
        } => Msg::Prepared(pb::Prepared {
            id: id_pb(id),
            entity_id: entity.into(),
            ok,
            trace_parent: trace,
        }),
        ToCoordinator::Query { id, entity } => Msg::Query(pb::Query {
            id: id_pb(id),
            entity_id: entity.into(),
        }),
        ToCoordinator::Acquire { entity, min_epoch } => Msg::Acquire(pb::Acquire {
            entity_id: entity.into(),
            min_epoch: min_epoch.into(),
        }),
        ToCoordinator::Release { entity, epoch } => Msg::Release(pb::Release {
            entity_id: entity.into(),
            epoch: epoch.into(),
        }),
        ToCoordinator::Restored { entity, epoch } => Msg::Restored(pb::Restored {
            entity_id: entity.into(),
            epoch: epoch.into(),
        }),
        ToCoordinator::Revoked { entity, epoch } => Msg::Revoked(pb::Revoked {
            entity_id: entity.into(),
            epoch: epoch.into(),
        }),
        ToCoordinator::Holding { entities } => Msg::Holding(pb::Holding {
            entities: entities
                .into_iter()
                .map(|(entity_id, epoch)| pb::HeldEntity {
                    entity_id: entity_id.into(),
                    epoch: epoch.into(),
                })
                .collect(),
        }),
    }
}

/// A coordinator-side decode: `None` for a malformed message.
pub fn to_coordinator_core(m: zone_event::Msg) -> Option<ToCoordinator> {
    use zone_event::Msg;
    Some(match m {
        Msg::Begin(b) => ToCoordinator::Begin {
            id: id_core(b.id)?,
            entity: EntityId(b.entity_id),
            to: ZoneId(b.to_zone),
            state: b.state,
            trace: trace_core(b.trace_parent),
        },
        Msg::Prepared(p) => ToCoordinator::Prepared {
            id: id_core(p.id)?,
            entity: EntityId(p.entity_id),
            ok: p.ok,
            trace: trace_core(p.trace_parent),
        },
        Msg::Query(q) => ToCoordinator::Query {
            id: id_core(q.id)?,
            entity: EntityId(q.entity_id),
        },
        Msg::Acquire(a) => ToCoordinator::Acquire {
            entity: EntityId(a.entity_id),
            min_epoch: Epoch(a.min_epoch),
        },
        Msg::Release(r) => ToCoordinator::Release {
            entity: EntityId(r.entity_id),
            epoch: Epoch(r.epoch),
        },
        Msg::Restored(r) => ToCoordinator::Restored {
            entity: EntityId(r.entity_id),
            epoch: Epoch(r.epoch),
        },
        Msg::Revoked(r) => ToCoordinator::Revoked {
            entity: EntityId(r.entity_id),
            epoch: Epoch(r.epoch),
        },
        Msg::Holding(h) => ToCoordinator::Holding {
            entities: h
                .entities
                .into_iter()
                .map(|e| (EntityId(e.entity_id), Epoch(e.epoch)))
                .collect(),
        },
    })
}
