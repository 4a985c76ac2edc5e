//! The ledger's requests on the wire (persistence's gRPC messages) and back, in one place for
//! the zones that send them and the persistence service that answers.

use worldmesh_protocol::grpc::persistence as pb;
use worldmesh_protocol::ids::EntityId;

use crate::item::{Item, ItemId, ItemKind, Offer, Party, TradeId};
use crate::ledger::{AbortReason, Change, Commit, Inventory, Outcome};

/// Most steps in one inventory change.
pub const MAX_STEPS: usize = 64;

/// A message that does not describe a request (missing parts, numbers out of range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ledger request: {0}")]
pub struct Malformed(pub &'static str);

#[must_use]
pub fn item_to_pb(i: &Item) -> pb::Item {
    pb::Item {
        id: i.id.0,
        kind: u32::from(i.kind.0),
        count: i.count,
        version: i.version,
    }
}

/// # Errors
/// A kind past `u16`.
pub fn item_from_pb(i: &pb::Item) -> Result<Item, Malformed> {
    Ok(Item {
        id: ItemId(i.id),
        kind: ItemKind(u16::try_from(i.kind).map_err(|_| Malformed("item kind"))?),
        count: i.count,
        version: i.version,
    })
}

#[must_use]
pub fn inventory_to_pb(inv: &Inventory) -> pb::InventoryReply {
    pb::InventoryReply {
        fenced: false,
        epoch: inv.epoch,
        gold: inv.gold,
        items: inv.items.iter().map(item_to_pb).collect(),
    }
}

/// `None` when the reply says the claim was fenced.
///
/// # Errors
/// An item out of range.
pub fn inventory_from_pb(r: &pb::InventoryReply) -> Result<Option<Inventory>, Malformed> {
    if r.fenced {
        return Ok(None);
    }
    Ok(Some(Inventory {
        epoch: r.epoch,
        gold: r.gold,
        items: r.items.iter().map(item_from_pb).collect::<Result<_, _>>()?,
    }))
}

#[must_use]
pub fn steps_to_pb(changes: &[Change]) -> Vec<pb::InventoryStep> {
    use pb::inventory_step::Step;
    changes
        .iter()
        .map(|c| pb::InventoryStep {
            step: Some(match *c {
                Change::Grant(item) => Step::Grant(item_to_pb(&item)),
                Change::Gold(g) => Step::Gold(g),
                Change::Consume {
                    item,
                    version,
                    count,
                } => Step::Consume(pb::ConsumeItem {
                    item: item.0,
                    version,
                    count,
                }),
                Change::Drop { item, version, at } => Step::Drop(pb::DropItem {
                    item: item.0,
                    version,
                    x: at[0],
                    y: at[1],
                }),
                Change::PickUp { item, version } => Step::PickUp(pb::ItemRef {
                    item: item.0,
                    version,
                }),
            }),
        })
        .collect()
}

/// # Errors
/// Too many steps, a step without content, an item out of range.
pub fn steps_from_pb(steps: &[pb::InventoryStep]) -> Result<Vec<Change>, Malformed> {
    use pb::inventory_step::Step;
    if steps.len() > MAX_STEPS {
        return Err(Malformed("too many steps"));
    }
    steps
        .iter()
        .map(|s| {
            Ok(match s.step.as_ref().ok_or(Malformed("empty step"))? {
                Step::Grant(i) => Change::Grant(item_from_pb(i)?),
                Step::Gold(g) => Change::Gold(*g),
                Step::Consume(c) => Change::Consume {
                    item: ItemId(c.item),
                    version: c.version,
                    count: c.count,
                },
                Step::Drop(d) => Change::Drop {
                    item: ItemId(d.item),
                    version: d.version,
                    at: [d.x, d.y],
                },
                Step::PickUp(r) => Change::PickUp {
                    item: ItemId(r.item),
                    version: r.version,
                },
            })
        })
        .collect()
}

fn party_to_pb((p, o): &(Party, Offer)) -> pb::TradeParty {
    pb::TradeParty {
        character: p.who.0,
        epoch: p.epoch,
        items: o
            .items
            .iter()
            .map(|(i, v)| pb::ItemRef {
                item: i.0,
                version: *v,
            })
            .collect(),
        gold: o.gold,
    }
}

fn party_from_pb(p: &pb::TradeParty) -> Result<(Party, Offer), Malformed> {
    // Checked here, not only by the ledger rule, so a huge list is never copied.
    if p.items.len() > Offer::MAX_ITEMS {
        return Err(Malformed("too many items offered"));
    }
    Ok((
        Party {
            who: EntityId(p.character),
            epoch: p.epoch,
        },
        Offer {
            items: p
                .items
                .iter()
                .map(|r| (ItemId(r.item), r.version))
                .collect(),
            gold: p.gold,
        },
    ))
}

#[must_use]
pub fn commit_to_pb(c: &Commit) -> pb::CommitTradeRequest {
    pb::CommitTradeRequest {
        id: c.id.0,
        a: Some(party_to_pb(&c.a)),
        b: Some(party_to_pb(&c.b)),
    }
}

/// # Errors
/// A missing party, too many items offered.
pub fn commit_from_pb(r: &pb::CommitTradeRequest) -> Result<Commit, Malformed> {
    let a = r.a.as_ref().ok_or(Malformed("no party a"))?;
    let b = r.b.as_ref().ok_or(Malformed("no party b"))?;
    Ok(Commit {
        id: TradeId(r.id),
        a: party_from_pb(a)?,
        b: party_from_pb(b)?,
    })
}

/// A known outcome as a reply.
#[must_use]
pub fn outcome_to_pb(o: Outcome) -> pb::LedgerReply {
    pb::LedgerReply {
        known: true,
        outcome: u32::from(o.code()),
    }
}

/// `None` for "no outcome yet".
///
/// # Errors
/// An unknown code.
pub fn outcome_from_pb(r: &pb::LedgerReply) -> Result<Option<Outcome>, Malformed> {
    if !r.known {
        return Ok(None);
    }
    u8::try_from(r.outcome)
        .ok()
        .and_then(Outcome::from_code)
        .map(Some)
        .ok_or(Malformed("outcome code"))
}

/// An abort reason's code (1 … 8).
#[must_use]
pub fn reason_code(why: AbortReason) -> u32 {
    u32::from(Outcome::Aborted(why).code())
}

/// # Errors
/// Not an abort reason's code.
pub fn reason_from_code(code: u32) -> Result<AbortReason, Malformed> {
    match u8::try_from(code).ok().and_then(Outcome::from_code) {
        Some(Outcome::Aborted(why)) => Ok(why),
        _ => Err(Malformed("abort reason")),
    }
}
