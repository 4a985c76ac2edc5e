//! The economy's ledger in SQL: items, gold, inventory claims and request outcomes, written
//! through (the checkpoint flusher never touches these tables).
//!
//! Each method is the SQL form of one rule of [`worldmesh_economy::Ledger`], its model in
//! memory: same checks, same order, same outcome (a test runs both on the same random requests
//! and compares). The first outcome of every request is stored in `ledger` under the request's
//! id in the same transaction that applies it, so a retry answers what happened the first time
//! and nothing moves twice.
//!
//! Locks are taken in one order everywhere, wallets (by character id) before items (by item
//! id), so trades and changes do not deadlock one another; the one cycle left (two pick-ups of
//! two ground items in opposite orders) is retried when PostgreSQL reports it.

use sqlx::{Any, AnyPool, Row, Transaction};
use worldmesh_economy::ledger::{MAX_GOLD, gold_delta, trade_is_well_formed};
use worldmesh_economy::{
    AbortReason, Change, ChangeId, Commit, Inventory, Item, ItemId, ItemKind, Outcome, TradeId,
};

use crate::Error;

/// Most ids one [`SqlLedger::reserve_ids`] call hands out.
pub const MAX_ID_BLOCK: u64 = 1 << 20;

/// Attempts of a transaction PostgreSQL aborted as a deadlock or a serialization failure.
const ATTEMPTS: usize = 5;

/// The ledger tables behind a pool.
#[derive(Clone)]
pub struct SqlLedger {
    pool: AnyPool,
}

/// Why a request stopped before its commit: an outcome to record, or a failure.
enum Stop {
    Abort(AbortReason),
    Fail(Error),
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        Stop::Fail(Error::Sql(e))
    }
}

/// A request that moves things, run by [`SqlLedger::run`].
enum Request<'a> {
    Commit(&'a Commit),
    Change {
        who: u64,
        epoch: u64,
        delta: i64,
        changes: &'a [Change],
    },
}

fn retryable(e: &Error) -> bool {
    matches!(e, Error::Sql(sqlx::Error::Database(d))
        if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

impl SqlLedger {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Reserves `count` (1…[`MAX_ID_BLOCK`]) consecutive ids for trades, changes and items;
    /// returns the first. Never the same id twice, across restarts of everything.
    pub async fn reserve_ids(&self, count: u64) -> Result<u64, Error> {
        let count = count.clamp(1, MAX_ID_BLOCK) as i64;
        let next: i64 = sqlx::query_scalar(
            "UPDATE id_blocks SET next = next + $1 WHERE name = 'ledger' RETURNING next",
        )
        .bind(count)
        .fetch_one(&self.pool)
        .await?;
        // Ids from ONCE_BASE up are derived, not reserved (`ChangeId::once`).
        if next as u64 > worldmesh_economy::ChangeId::ONCE_BASE {
            return Err(Error::Inconsistent("ledger ids exhausted".into()));
        }
        Ok((next - count) as u64)
    }

    /// A zone taking `who` over with authority `epoch` claims its inventory and reads it;
    /// claiming again with the same epoch only reads. `Err(Fenced)` when a later claim is in
    /// force.
    pub async fn claim(
        &self,
        who: u64,
        epoch: u64,
    ) -> Result<Result<Inventory, AbortReason>, Error> {
        let row = sqlx::query(
            "INSERT INTO wallets (character_id, epoch) VALUES ($1, $2) \
             ON CONFLICT (character_id) DO UPDATE SET epoch = excluded.epoch \
             WHERE wallets.epoch <= excluded.epoch RETURNING gold",
        )
        .bind(who as i64)
        .bind(epoch as i64)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(AbortReason::Fenced));
        };
        let gold = row.try_get::<i64, _>("gold")? as u64;
        Ok(Ok(Inventory {
            epoch,
            gold,
            items: self.items_of(who).await?,
        }))
    }

    /// `who`'s inventory as stored, without claiming it (`None`: never claimed).
    pub async fn inventory(&self, who: u64) -> Result<Option<Inventory>, Error> {
        let row = sqlx::query("SELECT gold, epoch FROM wallets WHERE character_id = $1")
            .bind(who as i64)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Inventory {
            epoch: row.try_get::<i64, _>("epoch")? as u64,
            gold: row.try_get::<i64, _>("gold")? as u64,
            items: self.items_of(who).await?,
        }))
    }

    async fn items_of(&self, who: u64) -> Result<Vec<Item>, Error> {
        let rows =
            sqlx::query("SELECT id, kind, count, version FROM items WHERE holder = $1 ORDER BY id")
                .bind(who as i64)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row_to_item).collect()
    }

    /// Items on the ground inside `[x0, x1) × [y0, y1)`, with their positions: the first
    /// [`worldmesh_economy::MAX_GROUND_READ`] by id.
    pub async fn ground_items(
        &self,
        [x0, y0, x1, y1]: [f32; 4],
    ) -> Result<Vec<(Item, [f32; 2])>, Error> {
        let rows = sqlx::query(
            "SELECT id, kind, count, version, x, y FROM items WHERE holder IS NULL \
             AND x >= $1 AND x < $2 AND y >= $3 AND y < $4 ORDER BY id LIMIT $5",
        )
        .bind(f64::from(x0))
        .bind(f64::from(x1))
        .bind(f64::from(y0))
        .bind(f64::from(y1))
        .bind(worldmesh_economy::MAX_GROUND_READ as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let at = [
                    r.try_get::<f64, _>("x")? as f32,
                    r.try_get::<f64, _>("y")? as f32,
                ];
                Ok((row_to_item(r)?, at))
            })
            .collect()
    }

    /// The first outcome of request `id`, if it has one.
    pub async fn outcome(&self, id: u64) -> Result<Option<Outcome>, Error> {
        let code: Option<i64> = sqlx::query_scalar("SELECT outcome FROM ledger WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        code.map(decode_outcome).transpose()
    }

    /// Ends trade `id` without moving anything unless it has an outcome: the first outcome.
    pub async fn abort(&self, id: TradeId, why: AbortReason) -> Result<Outcome, Error> {
        self.record(id.0, Outcome::Aborted(why)).await
    }

    /// Stores `outcome` for request `id` unless it has one; returns the one it has.
    async fn record(&self, id: u64, outcome: Outcome) -> Result<Outcome, Error> {
        sqlx::query("INSERT INTO ledger (id, outcome) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(id as i64)
            .bind(i64::from(outcome.code()))
            .execute(&self.pool)
            .await?;
        self.outcome(id)
            .await?
            .ok_or_else(|| Error::Inconsistent(format!("ledger row {id} vanished")))
    }

    /// Commits `trade` in one transaction if it has no outcome yet, both parties' claims are
    /// the ones it names and both still hold what they offered; otherwise records why not.
    /// Either way the trade's first outcome.
    pub async fn commit(&self, trade: &Commit) -> Result<Outcome, Error> {
        if !trade_is_well_formed(trade) {
            return self
                .record(trade.id.0, Outcome::Aborted(AbortReason::Invalid))
                .await;
        }
        self.run(trade.id.0, Request::Commit(trade)).await
    }

    /// Applies `changes` to `who`'s inventory, all or none, if request `id` has no outcome yet
    /// and `epoch` is the claim in force. Either way the request's first outcome.
    pub async fn change(
        &self,
        id: ChangeId,
        who: u64,
        epoch: u64,
        changes: &[Change],
    ) -> Result<Outcome, Error> {
        let Some(delta) = gold_delta(changes) else {
            return self
                .record(id.0, Outcome::Aborted(AbortReason::Invalid))
                .await;
        };
        self.run(
            id.0,
            Request::Change {
                who,
                epoch,
                delta,
                changes,
            },
        )
        .await
    }

    /// Runs `request` in a transaction that first claims its outcome row: commits it as
    /// `Committed`, or rolls back and records the abort it stopped at. Retries what
    /// PostgreSQL aborts as a deadlock.
    async fn run(&self, id: u64, request: Request<'_>) -> Result<Outcome, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_run(id, &request).await {
                Err(Stop::Fail(e)) if retryable(&e) && attempt < ATTEMPTS => {
                    metrics::counter!("worldmesh_persistence_ledger_retries_total").increment(1);
                }
                Err(Stop::Fail(e)) => return Err(e),
                Err(Stop::Abort(why)) => return self.record(id, Outcome::Aborted(why)).await,
                Ok(outcome) => return Ok(outcome),
            }
        }
    }

    async fn try_run(&self, id: u64, request: &Request<'_>) -> Result<Outcome, Stop> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query(
            "INSERT INTO ledger (id, outcome) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if first == 0 {
            tx.rollback().await?;
            return self.outcome(id).await.map_err(Stop::Fail)?.ok_or_else(|| {
                Stop::Fail(Error::Inconsistent(format!("ledger row {id} vanished")))
            });
        }
        // An early return drops `tx`, which rolls everything back, the outcome row with it.
        match *request {
            Request::Commit(t) => commit_in(&mut tx, t).await?,
            Request::Change {
                who,
                epoch,
                delta,
                changes,
            } => change_in(&mut tx, who, epoch, delta, changes).await?,
        }
        tx.commit().await?;
        Ok(Outcome::Committed)
    }
}

async fn commit_in(tx: &mut Transaction<'static, Any>, t: &Commit) -> Result<(), Stop> {
    let mut sides = [(&t.a, t.b.1.gold), (&t.b, t.a.1.gold)];
    sides.sort_by_key(|((p, _), _)| p.who);
    for ((party, offer), got) in sides {
        let done = sqlx::query(
            "UPDATE wallets SET gold = gold - $1 + $2 WHERE character_id = $3 AND epoch = $4 \
             AND gold >= $1 AND gold - $1 + $2 <= $5",
        )
        .bind(offer.gold as i64)
        .bind(got as i64)
        .bind(party.who.0 as i64)
        .bind(party.epoch as i64)
        .bind(MAX_GOLD as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(Stop::Abort(classify_trade(tx, t).await?));
        }
    }
    let mut moves: Vec<(ItemId, u64, u64, u64)> = Vec::new();
    for ((from, offer), to) in [(&t.a, t.b.0.who), (&t.b, t.a.0.who)] {
        for (item, version) in &offer.items {
            moves.push((*item, *version, from.who.0, to.0));
        }
    }
    moves.sort_unstable();
    for (item, version, from, to) in moves {
        let done = sqlx::query(
            "UPDATE items SET holder = $1, version = version + 1 \
             WHERE id = $2 AND holder = $3 AND version = $4",
        )
        .bind(to as i64)
        .bind(item.0 as i64)
        .bind(from as i64)
        .bind(version as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(Stop::Abort(AbortReason::Stale));
        }
    }
    Ok(())
}

/// Why a trade's purse update matched nothing, in the model's order: a claim overtaken, then
/// not enough gold, then too much.
async fn classify_trade(
    tx: &mut Transaction<'static, Any>,
    t: &Commit,
) -> Result<AbortReason, Stop> {
    let mut purses = Vec::new();
    for (party, _) in [&t.a, &t.b] {
        let row = sqlx::query("SELECT gold, epoch FROM wallets WHERE character_id = $1")
            .bind(party.who.0 as i64)
            .fetch_optional(&mut **tx)
            .await?;
        let (gold, epoch) = match row {
            Some(r) => (
                r.try_get::<i64, _>("gold")? as u64,
                r.try_get::<i64, _>("epoch")? as u64,
            ),
            None => (0, 0),
        };
        purses.push((gold, epoch));
    }
    let parties = [(&t.a, purses[0], t.b.1.gold), (&t.b, purses[1], t.a.1.gold)];
    Ok(if parties.iter().any(|((p, _), (_, e), _)| *e != p.epoch) {
        AbortReason::Stale
    } else if parties.iter().any(|((_, o), (g, _), _)| *g < o.gold) {
        AbortReason::NotEnoughGold
    } else {
        AbortReason::Invalid
    })
}

async fn change_in(
    tx: &mut Transaction<'static, Any>,
    who: u64,
    epoch: u64,
    delta: i64,
    changes: &[Change],
) -> Result<(), Stop> {
    let done = sqlx::query(
        "UPDATE wallets SET gold = gold + $1 WHERE character_id = $2 AND epoch = $3 \
         AND gold + $1 >= 0 AND gold + $1 <= $4",
    )
    .bind(delta)
    .bind(who as i64)
    .bind(epoch as i64)
    .bind(MAX_GOLD as i64)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if done == 0 {
        let row = sqlx::query("SELECT gold, epoch FROM wallets WHERE character_id = $1")
            .bind(who as i64)
            .fetch_optional(&mut **tx)
            .await?;
        let why = match row {
            Some(r) if r.try_get::<i64, _>("epoch")? as u64 == epoch => {
                if r.try_get::<i64, _>("gold")? + delta < 0 {
                    AbortReason::NotEnoughGold
                } else {
                    AbortReason::Invalid
                }
            }
            _ => AbortReason::Fenced,
        };
        return Err(Stop::Abort(why));
    }
    for change in changes {
        let applied = match *change {
            Change::Gold(_) => 1,
            Change::Grant(item) => sqlx::query(
                "INSERT INTO items (id, kind, count, version, holder) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(item.id.0 as i64)
            .bind(i64::from(item.kind.0))
            .bind(i64::from(item.count))
            .bind(item.version as i64)
            .bind(who as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            Change::Consume {
                item,
                version,
                count,
            } => {
                let less = sqlx::query(
                    "UPDATE items SET count = count - $1, version = version + 1 \
                     WHERE id = $2 AND holder = $3 AND version = $4 AND count > $1",
                )
                .bind(i64::from(count))
                .bind(item.0 as i64)
                .bind(who as i64)
                .bind(version as i64)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let gone = if less == 0 {
                    sqlx::query(
                        "DELETE FROM items WHERE id = $1 AND holder = $2 AND version = $3 \
                         AND count = $4",
                    )
                    .bind(item.0 as i64)
                    .bind(who as i64)
                    .bind(version as i64)
                    .bind(i64::from(count))
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
                } else {
                    0
                };
                if less + gone == 0 {
                    // Held at that version but fewer than asked: a bad request, not a race.
                    let held: Option<i64> = sqlx::query_scalar(
                        "SELECT count FROM items WHERE id = $1 AND holder = $2 AND version = $3",
                    )
                    .bind(item.0 as i64)
                    .bind(who as i64)
                    .bind(version as i64)
                    .fetch_optional(&mut **tx)
                    .await?;
                    return Err(Stop::Abort(if held.is_some() {
                        AbortReason::Invalid
                    } else {
                        AbortReason::Stale
                    }));
                }
                1
            }
            Change::Drop { item, version, at } => sqlx::query(
                "UPDATE items SET holder = NULL, x = $1, y = $2, version = version + 1 \
                 WHERE id = $3 AND holder = $4 AND version = $5",
            )
            .bind(f64::from(at[0]))
            .bind(f64::from(at[1]))
            .bind(item.0 as i64)
            .bind(who as i64)
            .bind(version as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            Change::PickUp { item, version } => sqlx::query(
                "UPDATE items SET holder = $1, x = NULL, y = NULL, version = version + 1 \
                 WHERE id = $2 AND holder IS NULL AND version = $3",
            )
            .bind(who as i64)
            .bind(item.0 as i64)
            .bind(version as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        if applied == 0 {
            return Err(Stop::Abort(match change {
                Change::Grant(_) => AbortReason::Invalid,
                _ => AbortReason::Stale,
            }));
        }
    }
    Ok(())
}

fn row_to_item(row: &sqlx::any::AnyRow) -> Result<Item, Error> {
    let bad = |what: &str| Error::Inconsistent(format!("items row: {what} out of range"));
    Ok(Item {
        id: ItemId(row.try_get::<i64, _>("id")? as u64),
        kind: ItemKind(u16::try_from(row.try_get::<i64, _>("kind")?).map_err(|_| bad("kind"))?),
        count: u32::try_from(row.try_get::<i64, _>("count")?).map_err(|_| bad("count"))?,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

fn decode_outcome(code: i64) -> Result<Outcome, Error> {
    u8::try_from(code)
        .ok()
        .and_then(Outcome::from_code)
        .ok_or_else(|| Error::Inconsistent(format!("ledger outcome code {code}")))
}
