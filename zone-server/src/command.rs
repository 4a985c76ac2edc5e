//! Everything the tick thread is asked to do, from every task around it (gateway links, the
//! coordinator session, the map watch, the saver, persistence loads), as one enum on one
//! channel: the tick thread handles them in order, between ticks.

use std::sync::Arc;

use worldmesh_protocol::Input;
use worldmesh_protocol::grpc::coordinator as coord_pb;
use worldmesh_protocol::grpc::persistence::Character;
use worldmesh_protocol::grpc::zone as pb;
use worldmesh_protocol::ids::{EntityId, Epoch};
use worldmesh_world::handoff::ToZone;

pub enum Command {
    Spawn {
        link: u32,
        player_id: u64,
        character: Character,
    },
    Leave {
        link: u32,
        player_id: u64,
    },
    Input {
        player_id: u64,
        input: Input,
    },
    Chat {
        player_id: u64,
        text: String,
    },
    LinkOpened {
        link: u32,
        gateway: String,
    },
    LinkClosed {
        link: u32,
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
        entity: u64,
        epoch: u64,
        character: Option<Character>,
    },
    /// Persistence refused these characters' states as stale: a newer authority exists.
    Fenced {
        /// Each with the epoch its refused state was written at.
        ids: Vec<(EntityId, Epoch)>,
    },
    /// The lease was lost and the zone registered again under a new id: everything it held
    /// belongs to others now.
    LeaseLost {
        zone_id: u64,
    },
    /// A neighbour's border characters, to show as read-only copies.
    Ghosts(pb::GhostBatch),
}
