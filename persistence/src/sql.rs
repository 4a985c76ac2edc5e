//! The durable tier: PostgreSQL or SQLite through sqlx's `Any` driver, so one set of
//! runtime-checked queries serves both (no database is needed at build time). Migrations are
//! kept in two folders in step, because DDL types differ.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::Error;
use crate::store::Character;

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Migrations whose text changed after they shipped, with the SHA-384 of the text databases
/// recorded when they ran. Migrations 2 and 3 created the coordinator's tables until the
/// coordinator took over its own (world-coordinator/migrations/, which adopt those tables);
/// their text no longer does, so a fresh database gets the coordinator's tables only from the
/// coordinator, in whichever order the two services start. sqlx refuses to start when an
/// applied migration's checksum differs from its text's, so the original checksums are pinned
/// here: databases where they ran keep starting. Fresh databases record the pinned value too.
const PINNED_CHECKSUMS: &[(Backend, i64, &str)] = &[
    (
        Backend::Postgres,
        20_261_124_000_002,
        "cd61e5f6a683671f5740c45d132ccb410572338f7c6b589e39f537dc3aae2d8e2c627d25e3f341b8a019c11ab6e501e4",
    ),
    (
        Backend::Postgres,
        20_261_124_000_003,
        "4b294388b5ffb351df709811cd33891c39da825bf0c33cb392e82bfcfa7ea40c56acb0281a792d877b00a482465fb4a7",
    ),
    (
        Backend::Sqlite,
        20_261_124_000_002,
        "553c801c477bbb9c7f38e630dbd3729cc0f2c08381d0bb1299f960d9df159ccd54e8c08abc225273388baf6e7af1cfbc",
    ),
    (
        Backend::Sqlite,
        20_261_124_000_003,
        "4b294388b5ffb351df709811cd33891c39da825bf0c33cb392e82bfcfa7ea40c56acb0281a792d877b00a482465fb4a7",
    ),
];

/// The backend's migrations, with [`PINNED_CHECKSUMS`] applied.
fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    let source = match backend {
        Backend::Postgres => &PG_MIGRATIONS,
        Backend::Sqlite => &SQLITE_MIGRATIONS,
    };
    let migrations = source
        .iter()
        .cloned()
        .map(|mut m| {
            if let Some((_, _, hex)) = PINNED_CHECKSUMS
                .iter()
                .find(|(b, v, _)| *b == backend && *v == m.version)
            {
                m.checksum = std::borrow::Cow::Owned(from_hex(hex));
            }
            m
        })
        .collect();
    sqlx::migrate::Migrator::with_migrations(migrations)
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Rows per upsert statement: 8 parameters each, 8,000 in all, under PostgreSQL's 65,535 and
/// SQLite's 32,766 bound-parameter limits, and large enough that per-statement overhead is
/// small next to per-row work.
pub const UPSERT_CHUNK: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct Sql {
    pool: AnyPool,
    backend: Backend,
}

/// `SELECT` of every character column with the given `WHERE` clause, as one literal
/// (sqlx wants `&'static str`).
macro_rules! select_characters {
    ($where:literal) => {
        concat!(
            "SELECT id, name, x, y, heading, epoch, version, game FROM characters ",
            $where
        )
    };
}

fn row_to_character(row: &AnyRow) -> Result<Character, sqlx::Error> {
    Ok(Character {
        id: row.try_get::<i64, _>("id")? as u64,
        name: row.try_get("name")?,
        x: row.try_get::<f64, _>("x")? as f32,
        y: row.try_get::<f64, _>("y")? as f32,
        heading: row.try_get::<f64, _>("heading")? as f32,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        version: row.try_get::<i64, _>("version")? as u64,
        game: row.try_get::<Vec<u8>, _>("game")?,
    })
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub id: u64,
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub token_generation: u64,
}

fn row_to_account(row: &AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: row.try_get::<i64, _>("id")? as u64,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        token_generation: row.try_get::<i64, _>("token_generation")? as u64,
    })
}

impl Sql {
    pub async fn connect(url: &str) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::UnsupportedDatabase(url.to_owned()));
        };
        // SQLite allows one writer at a time; more connections only add lock contention.
        let max = if backend == Backend::Sqlite { 1 } else { 8 };
        // A short acquire timeout: while SQL is down the flusher should fail fast and back off,
        // not sit in the pool for the default 30 s.
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect(url)
            .await?;
        migrator(backend).run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// The pool, for queries of this crate's tables outside [`Sql`] (tests, tools).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Inserts the character if its name is new; returns the stored row and whether it was
    /// created by this call.
    pub async fn load_or_create(
        &self,
        name: &str,
        x: f32,
        y: f32,
    ) -> Result<(Character, bool), Error> {
        let inserted = sqlx::query(
            "INSERT INTO characters (name, x, y) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(x as f64)
        .bind(y as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let row = sqlx::query(select_characters!("WHERE name = $1"))
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok((row_to_character(&row)?, inserted == 1))
    }

    /// Like [`Sql::load_or_create`] for a guest: `None` when the name belongs to an account
    /// (a guest may not play an account's character).
    pub async fn load_or_create_guest(
        &self,
        name: &str,
        x: f32,
        y: f32,
    ) -> Result<Option<(Character, bool)>, Error> {
        let (character, created) = self.load_or_create(name, x, y).await?;
        let owner: Option<i64> = sqlx::query_scalar("SELECT owner FROM characters WHERE id = $1")
            .bind(character.id as i64)
            .fetch_one(&self.pool)
            .await?;
        Ok(owner.is_none().then_some((character, created)))
    }

    /// The account row by name: `(id, password hash, token generation)`.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>, Error> {
        let row = sqlx::query(
            "SELECT id, name, password_hash, token_generation FROM accounts WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(row_to_account).transpose()?)
    }

    pub async fn account_by_id(&self, id: u64) -> Result<Option<AccountRow>, Error> {
        let row = sqlx::query(
            "SELECT id, name, password_hash, token_generation FROM accounts WHERE id = $1",
        )
        .bind(id as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(row_to_account).transpose()?)
    }

    /// Creates an account and its character (same name) in one transaction. `None` when the
    /// name is taken by an account or by a guest character.
    pub async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        x: f32,
        y: f32,
    ) -> Result<Option<(AccountRow, Character)>, Error> {
        let mut tx = self.pool.begin().await?;
        let account: Option<i64> = sqlx::query_scalar(
            "INSERT INTO accounts (name, password_hash) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(account) = account else {
            return Ok(None);
        };
        let row = sqlx::query(
            "INSERT INTO characters (name, x, y, owner) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING \
             RETURNING id, name, x, y, heading, epoch, version, game",
        )
        .bind(name)
        .bind(x as f64)
        .bind(y as f64)
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // A guest character holds the name; dropping `tx` rolls the account back.
            return Ok(None);
        };
        let character = row_to_character(&row)?;
        tx.commit().await?;
        Ok(Some((
            AccountRow {
                id: account as u64,
                name: name.to_owned(),
                password_hash: password_hash.to_owned(),
                token_generation: 0,
            },
            character,
        )))
    }

    /// The character an account plays (one per account for now).
    pub async fn character_of(&self, account_id: u64) -> Result<Option<Character>, Error> {
        let row = sqlx::query(select_characters!("WHERE owner = $1 ORDER BY id LIMIT 1"))
            .bind(account_id as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_to_character).transpose()?)
    }

    /// Bumps the account's token generation, so every token issued before is refused.
    /// Returns the new generation, or `None` for an unknown account.
    pub async fn revoke_tokens(&self, name: &str) -> Result<Option<u64>, Error> {
        let generation: Option<i64> = sqlx::query_scalar(
            "UPDATE accounts SET token_generation = token_generation + 1 WHERE name = $1 \
             RETURNING token_generation",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(generation.map(|g| g as u64))
    }

    pub async fn load(&self, id: u64) -> Result<Option<Character>, Error> {
        let row = sqlx::query(select_characters!("WHERE id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_to_character).transpose()?)
    }

    /// Applies a batch in one transaction; a row is written only where its stamp is not older
    /// than the stored one, so replays and late writes are harmless. Returns the ids whose
    /// stamp was older (not written).
    pub async fn save(&self, batch: &[Character]) -> Result<Vec<u64>, Error> {
        let mut tx = self.pool.begin().await?;
        let mut stale = Vec::new();
        for c in batch {
            let done = sqlx::query(
                "UPDATE characters SET x = $1, y = $2, heading = $3, epoch = $4, version = $5, \
                 game = $7, updated_at = CURRENT_TIMESTAMP \
                 WHERE id = $6 AND (epoch < $4 OR (epoch = $4 AND version <= $5))",
            )
            .bind(c.x as f64)
            .bind(c.y as f64)
            .bind(c.heading as f64)
            .bind(c.epoch as i64)
            .bind(c.version as i64)
            .bind(c.id as i64)
            .bind(c.game.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                stale.push(c.id);
            }
        }
        tx.commit().await?;
        Ok(stale)
    }

    /// Writes a batch with multi-row upserts (one statement per [`UPSERT_CHUNK`] rows, one
    /// transaction), each row applied only where its stamp is newer than the stored one —
    /// so replaying a batch (after a crash between commit and stream ack) changes nothing.
    /// Ids must be unique within the batch.
    pub async fn upsert_batch(&self, batch: &[Character]) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in batch.chunks(UPSERT_CHUNK) {
            let mut sql = String::with_capacity(160 + chunk.len() * 40);
            sql.push_str(
                "INSERT INTO characters (id, name, x, y, heading, epoch, version, game) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 8;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${},${},${},${},${},${},${},${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8
                ));
            }
            sql.push_str(
                " ON CONFLICT (id) DO UPDATE SET x = excluded.x, y = excluded.y, heading = excluded.heading, \
                 game = excluded.game, epoch = excluded.epoch, version = excluded.version, updated_at = CURRENT_TIMESTAMP \
                 WHERE characters.epoch < excluded.epoch \
                 OR (characters.epoch = excluded.epoch AND characters.version < excluded.version)",
            );
            // Only placeholders are formatted into the statement; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for c in chunk {
                q = q
                    .bind(c.id as i64)
                    .bind(c.name.clone())
                    .bind(c.x as f64)
                    .bind(c.y as f64)
                    .bind(c.heading as f64)
                    .bind(c.epoch as i64)
                    .bind(c.version as i64)
                    .bind(c.game.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
