//! The economy core of worldmesh, without I/O: who holds which item and how much gold, the
//! rule a trade commits by, and the trade saga that gets two players there.
//!
//! A trade never locks anything. Offers are proposals; when both players have accepted the
//! same revision of both offers, the host asks the [`ledger`] to commit it, and the ledger
//! moves ownership only if both sides still hold exactly what was offered, at the versions
//! offered. A trade's outcome is decided once, first writer wins: a commit and an abort (a
//! cancel, a timeout, a host that vanished) race for the same trade id, and whichever lands
//! first is the outcome everyone learns. So a retry after a crash or a lost reply is harmless,
//! and nothing needs undoing.
//!
//! # Layout
//!
//! - [`item`]: typed ids, an item instance (kind, count, version), an [`item::Offer`].
//! - [`ledger`]: the rules over holdings: a trade's commit, an inventory change (loot, gold,
//!   use, drop, pick up), the claim that fences a zombie zone, first-writer-wins outcomes.
//!   Persistence runs the same rules as SQL transactions; [`ledger::Ledger`] is their
//!   in-memory model, for the deterministic tests.
//! - [`trade`]: the saga: [`trade::Trade`] (the host's state machine: offers, revisions,
//!   acceptances, commit, timeouts) and [`trade::Guest`] (the other side's watch over a host it
//!   cannot see die). Every call takes `now` and returns what to send.
//! - [`wire`]: the ledger's requests as persistence's gRPC messages, and back.

pub mod item;
pub mod ledger;
pub mod trade;
pub mod wire;

pub use item::{ChangeId, Item, ItemId, ItemKind, Offer, Party, TradeId};
pub use ledger::{AbortReason, Change, Commit, Inventory, Ledger, MAX_GROUND_READ, Outcome, Place};
pub use trade::{Guest, Output, Side, Trade, TradeError, View};
