//! Items lying on the ground: dropped by players, picked up once, held by the zone that owns
//! the spot where they lie.
//!
//! The ledger (persistence, SQL) is the only truth of where an item is; the entities a zone
//! shows (`sim/ground.rs`) are its view of the ledger's ground in its cells. So:
//!
//! - **Drop**: the player's zone records `Change::Drop` (the item, at the version it holds,
//!   at the player's feet) against the player's claimed inventory. Once recorded, the item
//!   lies in the world: the zone owning that spot shows it — this one at once, or a
//!   neighbour (a player stands up to 5 m inside a neighbour's cell before being handed over)
//!   told by a hint in the next border batches.
//! - **Pick-up**: the player's zone records `Change::PickUp` at the version it was shown
//!   (its own entity, or a neighbour's ghost of it). The ledger moves it only from the ground
//!   at that version, so of everyone who tries, on any zone, one gets it; the others are
//!   refused [`ItemRefusalReason::Gone`]. The zone holding it takes it away at once (this
//!   one), or on a hint (a neighbour).
//! - **Loading**: every [`LOAD_EVERY`], and at once when the zone's cells change (start,
//!   failover, a drain), the zone reads the ledger's ground in its cells and brings its view
//!   in line: what a zone that failed held, what a lost hint missed, what another zone
//!   changed. An item whose spot is no longer this zone's is let go (its new owner loads it).
//!   Items changed here after a read was asked are skipped when its answer comes (this zone's
//!   view of them is newer).
//!
//! So "handed off" for an item is its cell changing hands, with the ledger in between:
//! nothing is carried zone to zone that could be lost or doubled, and an item shown twice
//! for a moment (a zombie zone, a late hint) can still be picked up only once.
//!
//! [`Ground`] is sans-IO: requests, ledger answers, loads and hints in; [`Action`]s out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use worldmesh_economy::{Change, ChangeId, Item, ItemId, Outcome};
use worldmesh_protocol::grpc::zone as pb;
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId, ZoneId};
use worldmesh_protocol::{
    GroundItemView, ItemRefusal, ItemRefusalReason, ItemRequest, PICKUP_RANGE,
};

use crate::inventory::Inventories;
use crate::sim::Sim;

/// How often a zone reads the ledger's ground in its cells.
pub const LOAD_EVERY: Duration = Duration::from_secs(2);

/// A read unanswered this long is given up (and asked again).
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Border batches a hint rides in (batches are lossy; the next load heals a lost one).
const HINT_REPEATS: u8 = 3;

/// Most requests under way at once; beyond, refused `Busy`.
const MAX_PENDING: usize = 10_000;

/// What the zone is asked to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record a change with the ledger; answer with [`Ground::changed`].
    Change {
        id: ChangeId,
        entity: EntityId,
        epoch: Epoch,
        changes: Vec<Change>,
    },
    /// Tell a player a request changed nothing.
    Refuse {
        link: LinkId,
        player_id: PlayerId,
        refusal: ItemRefusal,
    },
    /// Read the ledger's ground in `[x0, y0, x1, y1)`; answer with [`Ground::loaded`].
    Load { rect: [f32; 4] },
}

#[derive(Debug, Clone, Copy)]
struct Asker {
    link: LinkId,
    player_id: PlayerId,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Drop {
        asker: Asker,
        item: Item,
        at: [f32; 2],
    },
    PickUp {
        asker: Asker,
        item: u64,
        /// The version it was shown at.
        version: u64,
        /// The neighbour that showed it (a ghost), if not this zone.
        from: Option<ZoneId>,
    },
}

/// A hint for one neighbour, and how many more batches it rides in.
#[derive(Debug, Clone)]
struct Hint {
    zone: ZoneId,
    hint: pb::GroundHint,
    left: u8,
}

/// The zone's side of the items on the ground (see the module doc).
#[derive(Debug, Default)]
pub struct Ground {
    pending: HashMap<ChangeId, Pending>,
    /// Items with a request under way here.
    busy: HashSet<u64>,
    /// Items this zone changed since the read under way was asked.
    touched: HashSet<u64>,
    /// When the read under way was asked.
    loading: Option<Instant>,
    /// When the next read is due (`None`: at once).
    next_load: Option<Instant>,
    hints: Vec<Hint>,
}

impl Ground {
    /// A player's request.
    pub fn request(
        &mut self,
        sim: &mut Sim,
        inventories: &mut Inventories,
        link: LinkId,
        player_id: PlayerId,
        request: ItemRequest,
    ) -> Vec<Action> {
        let asker = Asker { link, player_id };
        let item = request.item();
        tracing::debug!(player = player_id.0, ?request, "item request");
        let refuse = |why| refuse(asker, item, why);
        // Not in play here (yet, or any more): the gateway's route is moving; try again.
        let Some((entity, at)) = sim.player_at(player_id) else {
            return refuse(ItemRefusalReason::NotReady);
        };
        let (Some(inventory), Some(epoch)) =
            (inventories.get(entity), inventories.claimed_epoch(entity))
        else {
            return refuse(ItemRefusalReason::NotReady);
        };
        if self.busy.contains(&item) || self.pending.len() >= MAX_PENDING {
            return refuse(ItemRefusalReason::Busy);
        }
        let (change, pending) = match request {
            ItemRequest::Drop { .. } => {
                let Some(held) = inventory.items.iter().find(|i| i.id == ItemId(item)) else {
                    return refuse(ItemRefusalReason::NotHeld);
                };
                (
                    Change::Drop {
                        item: held.id,
                        version: held.version,
                        at,
                    },
                    Pending::Drop {
                        asker,
                        item: *held,
                        at,
                    },
                )
            }
            ItemRequest::PickUp { .. } => {
                let Some(seen) = sim.seen_item(item) else {
                    return refuse(ItemRefusalReason::TooFar);
                };
                let (dx, dy) = (seen.at[0] - at[0], seen.at[1] - at[1]);
                if dx * dx + dy * dy > PICKUP_RANGE * PICKUP_RANGE {
                    return refuse(ItemRefusalReason::TooFar);
                }
                (
                    Change::PickUp {
                        item: ItemId(item),
                        version: seen.view.version,
                    },
                    Pending::PickUp {
                        asker,
                        item,
                        version: seen.view.version,
                        from: seen.from,
                    },
                )
            }
        };
        let Some(id) = inventories.take_id() else {
            return refuse(ItemRefusalReason::NotReady);
        };
        let id = ChangeId(id);
        self.busy.insert(item);
        self.pending.insert(id, pending);
        vec![Action::Change {
            id,
            entity,
            epoch,
            changes: vec![change],
        }]
    }

    /// Whether change `id` is one of ours.
    pub fn owns(&self, id: ChangeId) -> bool {
        self.pending.contains_key(&id)
    }

    /// The ledger's answer to one of our changes. `owner_of` says which zone owns a spot
    /// (`None`: this one).
    pub fn changed(
        &mut self,
        sim: &mut Sim,
        id: ChangeId,
        outcome: Outcome,
        owner_of: impl Fn([f32; 2]) -> Option<ZoneId>,
    ) -> Vec<Action> {
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        tracing::debug!(change = id.0, ?pending, ?outcome, "item change answered");
        let (asker, item) = match pending {
            Pending::Drop { asker, item, .. } => (asker, item.id.0),
            Pending::PickUp { asker, item, .. } => (asker, item),
        };
        self.busy.remove(&item);
        self.touched.insert(item);
        let committed = outcome == Outcome::Committed;
        metrics::counter!("worldmesh_zone_items_total",
            "op" => if matches!(pending, Pending::Drop { .. }) { "drop" } else { "pick_up" },
            "outcome" => outcome.name())
        .increment(1);
        match pending {
            Pending::Drop { item, at, .. } if committed => {
                let view = GroundItemView {
                    kind: item.kind.0,
                    count: item.count,
                    version: item.version + 1,
                };
                match owner_of(at) {
                    None => {
                        sim.put_on_ground(item.id.0, view, at);
                    }
                    Some(zone) => self.hint(zone, dropped(item.id.0, view, at)),
                }
                Vec::new()
            }
            Pending::PickUp {
                item,
                version,
                from,
                ..
            } if committed => {
                sim.take_from_ground(item);
                if let Some(zone) = from {
                    sim.forget_ground_ghost(item);
                    self.hint(zone, gone(item, version));
                }
                Vec::new()
            }
            // The player's claim was overtaken: it is another zone's now; asking again there
            // is what to do.
            _ if outcome == Outcome::Aborted(worldmesh_economy::AbortReason::Fenced) => {
                refuse(asker, item, ItemRefusalReason::NotReady)
            }
            Pending::Drop { .. } => refuse(asker, item, ItemRefusalReason::NotHeld),
            Pending::PickUp { .. } => {
                // Shown but not there at that version: this view is behind; read again soon.
                self.next_load = None;
                refuse(asker, item, ItemRefusalReason::Gone)
            }
        }
    }

    /// A read is due (every [`LOAD_EVERY`], or at once after [`Ground::cells_changed`]):
    /// the rectangle to read, if the zone owns any cells.
    pub fn poll(&mut self, now: Instant, rect: Option<[f32; 4]>) -> Option<Action> {
        if let Some(asked) = self.loading {
            if now.duration_since(asked) < LOAD_TIMEOUT {
                return None;
            }
            self.loading = None;
        }
        if self.next_load.is_some_and(|t| now < t) {
            return None;
        }
        let rect = rect?;
        self.loading = Some(now);
        self.next_load = Some(now + LOAD_EVERY);
        self.touched.clear();
        Some(Action::Load { rect })
    }

    /// This zone's cells changed: read the ground at the next poll.
    pub fn cells_changed(&mut self) {
        self.next_load = None;
    }

    /// The ledger's ground in the rectangle asked for (or `None`: the read failed). Brings
    /// the view in line, except for items changed here since it was asked.
    pub fn loaded(
        &mut self,
        sim: &mut Sim,
        items: Option<Vec<(Item, [f32; 2])>>,
        mine: impl Fn([f32; 2]) -> bool,
    ) {
        self.loading = None;
        let Some(items) = items else {
            self.next_load = None;
            return;
        };
        // A cut answer does not list everything lying there: add, take nothing away.
        let whole = items.len() < worldmesh_economy::MAX_GROUND_READ;
        let mut lying = HashSet::with_capacity(items.len());
        for (item, at) in items {
            lying.insert(item.id.0);
            if self.touched.contains(&item.id.0) || !mine(at) {
                continue;
            }
            let view = GroundItemView {
                kind: item.kind.0,
                count: item.count,
                version: item.version,
            };
            if sim
                .seen_item(item.id.0)
                .is_none_or(|s| s.from.is_some() || s.view != view || s.at != at)
            {
                sim.put_on_ground(item.id.0, view, at);
            }
        }
        for (item, _, at) in sim.ground_items() {
            if !self.touched.contains(&item) && ((whole && !lying.contains(&item)) || !mine(at)) {
                sim.take_from_ground(item);
            }
        }
        metrics::gauge!("worldmesh_zone_ground_items").set(sim.ground_count() as f64);
    }

    /// Hints from a neighbour's border batch.
    pub fn hinted(
        &mut self,
        sim: &mut Sim,
        hints: &[pb::GroundHint],
        mine: impl Fn([f32; 2]) -> bool,
    ) {
        for h in hints {
            let item = h.item;
            if self.busy.contains(&item) {
                continue;
            }
            if h.gone {
                if sim
                    .seen_item(item)
                    .is_some_and(|s| s.from.is_none() && s.view.version <= h.version)
                {
                    sim.take_from_ground(item);
                    self.touched.insert(item);
                }
                continue;
            }
            let at = [h.x, h.y];
            let Ok(kind) = u16::try_from(h.kind) else {
                continue;
            };
            if !mine(at) || !at.iter().all(|c| c.is_finite()) {
                continue;
            }
            let newer = sim
                .seen_item(item)
                .is_none_or(|s| s.from.is_some() || s.view.version < h.version);
            if newer {
                let view = GroundItemView {
                    kind,
                    count: h.count,
                    version: h.version,
                };
                sim.put_on_ground(item, view, at);
                self.touched.insert(item);
            }
        }
    }

    /// The hints due to `zone` in this tick's batch.
    pub fn hints_for(&mut self, zone: ZoneId) -> Vec<pb::GroundHint> {
        let mut out = Vec::new();
        for h in self.hints.iter_mut().filter(|h| h.zone == zone) {
            out.push(h.hint);
            h.left -= 1;
        }
        self.hints.retain(|h| h.left > 0);
        out
    }

    /// The neighbours hints are due to.
    pub fn hinted_zones(&self) -> Vec<ZoneId> {
        let mut zones: Vec<ZoneId> = self.hints.iter().map(|h| h.zone).collect();
        zones.sort_unstable();
        zones.dedup();
        zones
    }

    fn hint(&mut self, zone: ZoneId, hint: pb::GroundHint) {
        self.hints.push(Hint {
            zone,
            hint,
            left: HINT_REPEATS,
        });
    }
}

fn refuse(asker: Asker, item: u64, why: ItemRefusalReason) -> Vec<Action> {
    metrics::counter!("worldmesh_zone_item_refusals_total", "why" => why.name()).increment(1);
    vec![Action::Refuse {
        link: asker.link,
        player_id: asker.player_id,
        refusal: ItemRefusal { item, why },
    }]
}

fn dropped(item: u64, view: GroundItemView, at: [f32; 2]) -> pb::GroundHint {
    pb::GroundHint {
        item,
        gone: false,
        kind: u32::from(view.kind),
        count: view.count,
        version: view.version,
        x: at[0],
        y: at[1],
    }
}

/// Picked up at `version`: the holder takes it away if it shows that version or an older
/// one (not if it was dropped again since).
fn gone(item: u64, version: u64) -> pb::GroundHint {
    pb::GroundHint {
        item,
        gone: true,
        kind: 0,
        count: 0,
        version,
        x: 0.0,
        y: 0.0,
    }
}

/// An item as the ledger's ground read returns it (the driver's conversion).
#[must_use]
pub fn item_from_pb(
    g: &worldmesh_protocol::grpc::persistence::GroundItem,
) -> Option<(Item, [f32; 2])> {
    let item = worldmesh_economy::wire::item_from_pb(g.item.as_ref()?).ok()?;
    Some((item, [g.x, g.y]))
}
