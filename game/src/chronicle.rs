//! What a game tells the world's read models (the leaderboard, docs/read-models.md): a
//! character's score and level when they change, and who downed whom. The engine publishes
//! each to the cluster's event stream after the tick, with the character's name; a game that
//! records nothing simply has no leaderboard.
//!
//! ```
//! # use bevy_ecs::prelude::*;
//! # use worldmesh_game::prelude::*;
//! fn on_xp(mut chronicle: ResMut<Chronicle>, changed: Query<(&Id, &Xp), Changed<Xp>>) {
//!     for (id, xp) in &changed {
//!         chronicle.score(id.0, u64::from(xp.0), 1);
//!     }
//! }
//! # #[derive(Component)] struct Xp(u32);
//! ```

use bevy_ecs::prelude::*;
use worldmesh_protocol::ids::EntityId;

/// Most records waiting for the engine; beyond, new ones are dropped (counted).
pub const MAX_PENDING: usize = 10_000;

/// One thing a game records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `who`'s score (the leaderboard's order) and level are now these.
    Score {
        who: EntityId,
        score: u64,
        level: u32,
    },
    /// `killer` downed `victim` (either may be an NPC).
    Kill { killer: EntityId, victim: EntityId },
}

/// The records of a tick (a resource every world has).
#[derive(Resource, Debug, Default)]
pub struct Chronicle {
    records: Vec<Record>,
    dropped: u64,
}

impl Chronicle {
    /// `who`'s score and level are now `score` and `level`.
    pub fn score(&mut self, who: EntityId, score: u64, level: u32) {
        self.push(Record::Score { who, score, level });
    }

    /// `killer` downed `victim`.
    pub fn kill(&mut self, killer: EntityId, victim: EntityId) {
        self.push(Record::Kill { killer, victim });
    }

    fn push(&mut self, r: Record) {
        if self.records.len() < MAX_PENDING {
            self.records.push(r);
        } else {
            self.dropped += 1;
        }
    }

    /// The records since the last call, and how many were dropped (the engine's).
    pub fn take(&mut self) -> (Vec<Record>, u64) {
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.dropped),
        )
    }
}
