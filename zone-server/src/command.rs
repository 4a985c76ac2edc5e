//! Everything the tick thread is asked to do, from every task around it (gateway links, the
//! coordinator session, the map watch, the saver, persistence loads), as one enum on one
//! channel: the tick thread handles them in order, between ticks.

use std::sync::Arc;

use worldmesh_protocol::grpc::coordinator as coord_pb;
use worldmesh_protocol::grpc::zone as pb;
use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, PlayerId, ZoneId};
use worldmesh_protocol::{ActionRequest, Input};
use worldmesh_world::handoff::ToZone;

use crate::character::Character;

pub enum Command {
    Spawn {
        link: LinkId,
        player_id: PlayerId,
        character: Character,
    },
    Leave {
        link: LinkId,
        player_id: PlayerId,
    },
    Input {
        player_id: PlayerId,
        input: Input,
    },
    Chat {
        player_id: PlayerId,
        text: String,
    },
    /// A game action, answered on `link`.
    Action {
        link: LinkId,
        player_id: PlayerId,
        request: ActionRequest,
    },
    LinkOpened {
        link: LinkId,
        gateway: String,
    },
    LinkClosed {
        link: LinkId,
    },
    /// A message from the coordinator's session stream.
    Coordinator(ToZone),
    /// The session stream (re)connected: report what this zone holds.
    SessionUp,
    /// The session stream broke: start no handoff until it is back.
    SessionDown,
    Map(Arc<coord_pb::WorldMap>),
    /// A restored character loaded from persistence (`None`: it could not be loaded).
    Loaded {
        entity: EntityId,
        epoch: Epoch,
        character: Option<Character>,
    },
    /// The ledger's answer to [`crate::zone::Output::ClaimInventory`]: the inventory, or
    /// `None` when a later claim is in force.
    InventoryClaimed {
        entity: EntityId,
        epoch: Epoch,
        inventory: Option<worldmesh_economy::Inventory>,
    },
    /// The ledger reserved ids `[first, first + count)` for this zone.
    IdsReserved {
        first: u64,
        count: u64,
    },
    /// The ledger's answer to [`crate::zone::Output::ChangeInventory`].
    InventoryChanged {
        id: worldmesh_economy::ChangeId,
        entity: EntityId,
        epoch: Epoch,
        outcome: worldmesh_economy::Outcome,
    },
    /// A player's trade step (the gateway checked its size; the trades check the rest).
    Trade {
        player_id: PlayerId,
        request: worldmesh_protocol::TradeRequest,
    },
    /// A player drops or picks up an item (`crate::ground`), answered on `link` if refused.
    Item {
        link: LinkId,
        player_id: PlayerId,
        request: worldmesh_protocol::ItemRequest,
    },
    /// The ledger's ground in the rectangle [`crate::zone::Output::LoadGround`] asked for
    /// (`None`: it could not be read).
    GroundLoaded {
        items: Option<Vec<(worldmesh_economy::Item, [f32; 2])>>,
    },
    /// The ledger's answer to [`crate::zone::Output::CommitTrade`] or
    /// [`crate::zone::Output::AbortTrade`].
    TradeDecided {
        trade: worldmesh_economy::TradeId,
        outcome: worldmesh_economy::Outcome,
    },
    /// Persistence refused these characters' states as stale: a newer authority exists.
    Fenced {
        /// Each with the epoch its refused state was written at.
        ids: Vec<(EntityId, Epoch)>,
    },
    /// The lease was lost and the zone registered again under a new id: everything it held
    /// belongs to others now.
    LeaseLost {
        zone_id: ZoneId,
    },
    /// A neighbour's border characters, to show as read-only copies.
    Ghosts(pb::GhostBatch),
}
