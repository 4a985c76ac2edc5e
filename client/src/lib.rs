//! The worldmesh game-client library: what a game client does, in Rust. Log in to a gateway
//! over QUIC, send inputs as datagrams, decode delta snapshots, chat, predict your own
//! character and reconcile it with the server. The load-test bots and the cluster tests are
//! built on it; a client in another language follows the same steps from `PROTOCOL.md`.
//!
//! It depends on the protocol crate (re-exported as [`protocol`]) and on quinn and rustls:
//! not on any server crate.
//!
//! # Example
//!
//! Log in as a guest, walk east for five seconds while predicting, and leave:
//!
//! ```no_run
//! use worldmesh_client::predict::{Motion, Predictor};
//! use worldmesh_client::protocol::{ALPN, Input};
//! use worldmesh_client::{ClientEndpoint, ClientError, Session};
//!
//! # async fn play() -> Result<(), ClientError> {
//! let endpoint = ClientEndpoint::new(ALPN)?;
//! let gateway = "127.0.0.1:7000".parse().expect("an address");
//! let mut session = Session::login(&endpoint, gateway, "ada").await?;
//! let me = session.welcome.entity_id;
//! let mut predictor = Predictor::new(session.welcome.tick_rate_hz, session.welcome.world);
//! for seq in 1..=100 {
//!     let input = Input { seq, ack_tick: session.ack_tick(), heading: 0.0, speed: 3.0, actions: 0 };
//!     session.send_input(input)?;
//!     predictor.on_input(seq, input.heading, input.speed);
//!     // One snapshot per server tick (20 Hz); it carries everything this player sees.
//!     let view = session.recv_snapshot().await?;
//!     if let Some(mine) = view.entities.iter().find(|e| e.id == me) {
//!         let server = Motion { x: mine.x, y: mine.y, speed: mine.speed };
//!         let _snap_metres = predictor.on_snapshot(view.last_input_seq, server);
//!     }
//! }
//! session.bye().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`ClientEndpoint`], [`Session`], [`View`]: the connection and the logged-in session
//!   (guest or account login, token resume, inputs, snapshots, chat, control messages, Bye).
//! - [`predict`]: client-side prediction and reconciliation, no I/O.
//! - [`conditioner`]: loss, latency and jitter on a session's datagrams, to meet the network
//!   as it is rather than loopback.

pub mod conditioner;
pub mod predict;
mod session;

pub use session::{ClientEndpoint, ClientError, Session, View};
pub use worldmesh_protocol as protocol;
