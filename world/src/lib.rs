//! The shared world model: the vocabulary the coordinator and the zones agree on, without I/O.
//!
//! The zone server and the world coordinator both build on this crate and neither depends on
//! the other: the coordinator's durable authority and the zones' side of the handoff are the
//! two halves of one saga, and they must read a position's cell the same way.
//!
//! # Layout
//!
//! - [`geometry`]: the world's rectangle and cells; the cell and owning zone of a position in
//!   a published map; the zones near each cell (border visibility). The one place a position
//!   becomes a cell.
//! - [`handoff`]: entity authority and the handoff saga, both sides — [`handoff::Coordinator`]
//!   (driven by the coordinator's state task) and [`handoff::Participant`] (inside the zone
//!   core). Sans-IO: every call takes `now` and returns what to send and write.
//! - [`convert`]: the saga's messages to and from their protobuf form, at the gRPC edge.

pub mod convert;
pub mod geometry;
pub mod handoff;

pub use geometry::Geometry;
