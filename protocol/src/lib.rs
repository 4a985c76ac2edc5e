//! The worldmesh wire protocol: everything two worldmesh processes, or a game client and a
//! gateway, need to agree on. No I/O happens here.
//!
//! # Layout
//!
//! - [`ids`]: typed ids ([`PlayerId`], [`EntityId`], [`ZoneId`], [`LinkId`], [`Epoch`],
//!   [`ActionKind`], [`EventKind`], [`ComponentKind`]).
//! - [`messages`]: every client ↔ gateway message as a Rust type ([`ClientMessage`],
//!   [`ServerMessage`]), with the validation rules the server applies to them.
//! - [`codec`]: the *only* place that knows the byte encoding (bincode 2, varint, little endian)
//!   and the frame layout (`version: u8`, `length: u32 LE`, payload). Swapping the codec means
//!   changing this one module. Decoding is bounded: the length is checked against
//!   [`codec::MAX_FRAME_PAYLOAD`] before anything is allocated.
//! - [`snapshot`]: delta-compressed snapshots: the server's per-observer encoder and the
//!   client's decoder, shared so bots and third-party Rust clients decode exactly as tested.
//! - [`grpc`]: the internal services (coordinator, zone link, persistence), generated at build
//!   time from `proto/*.proto` with protox (no system `protoc`).
//!
//! `PROTOCOL.md` at the repository root documents the same wire format byte by byte for client
//! authors in other languages; keep the two in step.

pub mod codec;
pub mod grpc;
pub mod ids;
pub mod messages;
pub mod snapshot;

pub use codec::{DecodeError, EncodeError, FrameHeader};
pub use ids::{ActionKind, ComponentKind, EntityId, Epoch, EventKind, LinkId, PlayerId, ZoneId};
pub use messages::*;

/// The version carried in every frame header and in [`Hello::protocol_version`].
pub const PROTOCOL_VERSION: u8 = 1;

/// The TLS ALPN protocol name a client must offer. It names the protocol version, so a client
/// speaking another version fails the TLS handshake instead of sending frames we cannot read.
pub const ALPN: &[u8] = b"worldmesh/1";
