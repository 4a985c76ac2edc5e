//! The coordinator's durable state in SQL: zones with their ids and lease generations, one
//! authority row per entity, and the world's tick origin. PostgreSQL or SQLite through sqlx's
//! `Any` driver (runtime-checked queries: no database at build time). The coordinator owns
//! these tables and their migrations (`world-coordinator/migrations/`, recorded in
//! `_coordinator_migrations`), so it may share persistence's database or have its own.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use worldmesh_world::handoff::{Authority, EntityId, Epoch, HandoffId, Outcome, ZoneId};

/// A registered zone as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRow {
    pub id: ZoneId,
    pub name: String,
    pub address: String,
    pub capacity: u32,
    pub lease_generation: u64,
    pub draining: bool,
}

/// Everything a restarted coordinator resumes from.
#[derive(Debug, Default)]
pub struct Loaded {
    pub zones: Vec<ZoneRow>,
    pub rows: Vec<(EntityId, Authority)>,
    pub tick_origin_unix_ms: u64,
    /// The balancer's ranges (zones in curve order, cuts), when it stored any.
    pub ranges: Option<(Vec<ZoneId>, Vec<usize>)>,
    /// Cells pinned by operators: (row-major cell, zone name).
    pub pins: Vec<(u32, String)>,
}

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Where the coordinator records its applied migrations: not sqlx's default table, which
/// persistence's migrations use when the two share a database.
const MIGRATIONS_TABLE: &str = "_coordinator_migrations";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

type Result<T> = std::result::Result<T, sqlx::Error>;

/// An authority row from `coordinator_authority`.
fn authority(r: &sqlx::any::AnyRow) -> Result<Authority> {
    let last = match (
        r.try_get::<Option<i64>, _>("last_epoch")?,
        r.try_get::<Option<i64>, _>("last_attempt")?,
        r.try_get::<Option<i64>, _>("last_outcome")?,
    ) {
        (Some(e), Some(a), Some(o)) => Some((
            HandoffId {
                epoch: Epoch(e as u64),
                attempt: a as u32,
            },
            if o == 1 {
                Outcome::Committed
            } else {
                Outcome::Aborted
            },
        )),
        _ => None,
    };
    Ok(Authority {
        zone: ZoneId(r.try_get::<i64, _>("zone_id")? as u64),
        epoch: Epoch(r.try_get::<i64, _>("epoch")? as u64),
        last,
    })
}

impl Store {
    /// Opens a pool on `url` (`postgres://…` or `sqlite:…`) and brings the coordinator's
    /// tables up to date.
    pub async fn connect(url: &str) -> std::result::Result<Self, crate::Error> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let migrations = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            &PG_MIGRATIONS
        } else if sqlite {
            &SQLITE_MIGRATIONS
        } else {
            return Err(crate::Error::UnsupportedDatabase(url.to_owned()));
        };
        // The coordinator writes from one task, one transaction at a time: two connections
        // (one writing, one for a read-back after a failed write) are all it uses. SQLite
        // allows one writer anyway.
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 2 })
            // Fail fast while SQL is down: the state task reports the error and the caller
            // decides; the default 30 s would stall every saga behind it.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        let mut migrator = Migrator::with_migrations(migrations.iter().cloned().collect());
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Loads the state; the first start also fixes the tick origin at `now_unix_ms`.
    pub async fn load(&self, now_unix_ms: u64) -> Result<Loaded> {
        let pool = &self.pool;
        sqlx::query(
            "INSERT INTO coordinator_meta (key, value) VALUES ('tick_origin_unix_ms', $1) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(now_unix_ms as i64)
        .execute(pool)
        .await?;
        let origin: i64 =
            sqlx::query("SELECT value FROM coordinator_meta WHERE key = 'tick_origin_unix_ms'")
                .fetch_one(pool)
                .await?
                .try_get("value")?;
        let zones = sqlx::query(
            "SELECT zone_id, name, address, capacity, lease_generation, draining \
             FROM coordinator_zones ORDER BY zone_id",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ZoneRow {
                id: ZoneId(r.try_get::<i64, _>("zone_id")? as u64),
                name: r.try_get("name")?,
                address: r.try_get("address")?,
                capacity: r.try_get::<i64, _>("capacity")? as u32,
                lease_generation: r.try_get::<i64, _>("lease_generation")? as u64,
                draining: r.try_get::<i64, _>("draining")? != 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT entity_id, zone_id, epoch, last_epoch, last_attempt, last_outcome \
             FROM coordinator_authority",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                EntityId(r.try_get::<i64, _>("entity_id")? as u64),
                authority(r)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        // Range k is zone k's: it starts at `start` along the curve (0 for the first).
        let ranges: Vec<(ZoneId, usize)> = sqlx::query(
            "SELECT zone_id, range_start FROM coordinator_cell_ranges ORDER BY range_index",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                ZoneId(r.try_get::<i64, _>("zone_id")? as u64),
                r.try_get::<i64, _>("range_start")? as usize,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let ranges = (!ranges.is_empty()).then(|| {
            (
                ranges.iter().map(|r| r.0).collect(),
                ranges.iter().skip(1).map(|r| r.1).collect(),
            )
        });
        let pins = sqlx::query("SELECT cell, zone_name FROM coordinator_cell_pins ORDER BY cell")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("cell")? as u32, r.try_get("zone_name")?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Loaded {
            zones,
            rows,
            tick_origin_unix_ms: origin as u64,
            ranges,
            pins,
        })
    }

    /// Replaces the balancer's ranges and the pins, in one transaction.
    pub async fn put_balance(
        &self,
        zones: &[ZoneId],
        cuts: &[usize],
        pins: &[(u32, String)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM coordinator_cell_ranges")
            .execute(&mut *tx)
            .await?;
        for (k, zone) in zones.iter().enumerate() {
            let start = if k == 0 { 0 } else { cuts[k - 1] };
            sqlx::query(
                "INSERT INTO coordinator_cell_ranges (range_index, zone_id, range_start) VALUES ($1, $2, $3)",
            )
            .bind(k as i64)
            .bind(zone.0 as i64)
            .bind(start as i64)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM coordinator_cell_pins")
            .execute(&mut *tx)
            .await?;
        for (cell, name) in pins {
            sqlx::query("INSERT INTO coordinator_cell_pins (cell, zone_name) VALUES ($1, $2)")
                .bind(i64::from(*cell))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Writes authority rows in one transaction.
    pub async fn write_rows(&self, rows: &[(EntityId, Authority)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (entity, row) in rows {
            let (le, la, lo) = match row.last {
                Some((id, outcome)) => (
                    Some(id.epoch.0 as i64),
                    Some(id.attempt as i64),
                    Some(if outcome == Outcome::Committed {
                        1i64
                    } else {
                        2
                    }),
                ),
                None => (None, None, None),
            };
            sqlx::query(
                "INSERT INTO coordinator_authority \
                 (entity_id, zone_id, epoch, last_epoch, last_attempt, last_outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (entity_id) DO UPDATE SET zone_id = excluded.zone_id, \
                 epoch = excluded.epoch, last_epoch = excluded.last_epoch, \
                 last_attempt = excluded.last_attempt, last_outcome = excluded.last_outcome",
            )
            .bind(entity.0 as i64)
            .bind(row.zone.0 as i64)
            .bind(row.epoch.0 as i64)
            .bind(le)
            .bind(la)
            .bind(lo)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Reads one authority row back (after a failed write, to resync memory with SQL).
    pub async fn read_row(&self, entity: EntityId) -> Result<Option<Authority>> {
        let loaded = sqlx::query(
            "SELECT zone_id, epoch, last_epoch, last_attempt, last_outcome \
             FROM coordinator_authority WHERE entity_id = $1",
        )
        .bind(entity.0 as i64)
        .fetch_optional(&self.pool)
        .await?;
        loaded.as_ref().map(authority).transpose()
    }

    pub async fn put_zone(&self, z: &ZoneRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO coordinator_zones \
             (zone_id, name, address, capacity, lease_generation, draining) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (zone_id) DO UPDATE SET name = excluded.name, \
             address = excluded.address, capacity = excluded.capacity, \
             lease_generation = excluded.lease_generation, draining = excluded.draining",
        )
        .bind(z.id.0 as i64)
        .bind(&z.name)
        .bind(&z.address)
        .bind(z.capacity as i64)
        .bind(z.lease_generation as i64)
        .bind(z.draining as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_zone(&self, id: ZoneId) -> Result<()> {
        sqlx::query("DELETE FROM coordinator_zones WHERE zone_id = $1")
            .bind(id.0 as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
