//! The storage core: one [`Store`] over the hot tier and SQL, used by the gRPC service and by
//! anything embedding persistence in-process.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::flusher::Flusher;
use crate::hot::HotTier;
use crate::sql::{Backend, Sql};
use crate::{Config, Error};

/// A character's persistent state.
#[derive(Debug, Clone, PartialEq)]
pub struct Character {
    pub id: u64,
    pub name: String,
    pub x: f32,
    pub y: f32,
    pub heading: f32,
    /// Authority epoch: bumped each time another zone takes the character over.
    pub epoch: u64,
    /// Bumped by the owning zone on every save within an epoch.
    pub version: u64,
    /// The game's persisted components, encoded by the zone; opaque here.
    pub game: Vec<u8>,
}

impl Character {
    /// The order in which writes supersede each other.
    pub fn stamp(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }
}

type FlusherTask = (CancellationToken, JoinHandle<()>);

#[derive(Clone)]
pub struct Store {
    hot: HotTier,
    sql: Sql,
    events: crate::events::EventLog,
    hasher: crate::accounts::Hasher,
    flusher: Arc<Mutex<Option<FlusherTask>>>,
}

impl Store {
    /// Connects both tiers, runs migrations, and (with Redis, unless disabled) starts the
    /// flusher that moves checkpoints from the Redis stream into SQL.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let sql = Sql::connect(&config.database_url).await?;
        let hot = HotTier::connect(
            config.redis_url.as_deref(),
            &config.redis_prefix,
            config.max_backlog,
        )
        .await?;
        let events = match &config.redis_url {
            Some(url) => crate::events::EventLog::redis(url, &config.redis_prefix).await?,
            None => crate::events::EventLog::memory(),
        };
        let mut flusher = None;
        if let (Some(url), true) = (&config.redis_url, config.run_flusher) {
            let consumer = format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "persistence".into()),
                std::process::id()
            );
            let f = Flusher::new(
                url,
                HotTier::stream_key(&config.redis_prefix),
                consumer,
                sql.clone(),
            )
            .await?;
            let token = CancellationToken::new();
            flusher = Some((token.clone(), tokio::spawn(f.run(token))));
        }
        Ok(Self {
            hot,
            sql,
            events,
            hasher: crate::accounts::Hasher::new(
                config.argon2_memory_kib,
                config.argon2_iterations,
            )?,
            flusher: Arc::new(Mutex::new(flusher)),
        })
    }

    pub fn sql_backend(&self) -> &'static str {
        match self.sql.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    pub fn hot_backend(&self) -> &'static str {
        self.hot.name()
    }

    /// Finds a character by name, creating it at `spawn` if new; the hot tier's copy wins
    /// when it is newer.
    pub async fn load_or_create(
        &self,
        name: &str,
        spawn: (f32, f32),
    ) -> Result<(Character, bool), Error> {
        let (durable, created) = self.sql.load_or_create(name, spawn.0, spawn.1).await?;
        let hot = self.hot.load(durable.id).await?;
        Ok((
            newest(hot, Some(durable)).expect("durable is Some"),
            created,
        ))
    }

    pub(crate) fn hasher(&self) -> &crate::accounts::Hasher {
        &self.hasher
    }

    /// The newer of a durable row and the hot tier's copy of the same character.
    pub(crate) async fn fresher(&self, durable: Character) -> Result<Character, Error> {
        let hot = self.hot.load(durable.id).await?;
        Ok(newest(hot, Some(durable)).expect("durable is Some"))
    }

    /// Hot tier first, SQL second; the newer stamp wins (SQL wins when Redis lost data).
    pub async fn load(&self, id: u64) -> Result<Option<Character>, Error> {
        let hot = self.hot.load(id).await?;
        let durable = self.sql.load(id).await?;
        Ok(newest(hot, durable))
    }

    /// Saves a batch; returns the ids refused as stale (an older stamp than the stored one).
    ///
    /// With Redis, the ack means: written to Redis and queued on the checkpoint stream, from
    /// which the flusher makes it durable in SQL (write-behind). Fails with
    /// [`Error::Backlog`] when SQL is so far behind that the stream is full.
    /// Embedded (in-process hot tier), the ack means: committed in SQLite (write-through).
    pub async fn save(&self, batch: &[Character]) -> Result<Vec<u64>, Error> {
        let written = self.hot.save(batch).await?;
        let mut rejected: Vec<u64> = batch
            .iter()
            .zip(&written)
            .filter(|(_, w)| !**w)
            .map(|(c, _)| c.id)
            .collect();
        if matches!(self.hot, HotTier::Memory(_)) {
            let fresh: Vec<Character> = batch
                .iter()
                .zip(&written)
                .filter(|(_, w)| **w)
                .map(|(c, _)| c.clone())
                .collect();
            rejected.extend(self.sql.save(&fresh).await?);
            metrics::counter!("worldmesh_persistence_checkpoints_durable_total")
                .increment(fresh.len() as u64);
        }
        metrics::counter!("worldmesh_persistence_checkpoints_acked_total")
            .increment((batch.len() - rejected.len()) as u64);
        metrics::counter!("worldmesh_persistence_checkpoints_rejected_total")
            .increment(rejected.len() as u64);
        Ok(rejected)
    }

    /// The SQL tier alone (tests and benchmarks compare against it).
    /// The economy's ledger (written through to SQL, whatever the hot tier).
    /// The event stream the read models are projected from.
    pub fn events(&self) -> &crate::events::EventLog {
        &self.events
    }

    pub fn ledger(&self) -> crate::ledger::SqlLedger {
        crate::ledger::SqlLedger::new(self.sql.pool().clone())
    }

    pub fn sql(&self) -> &Sql {
        &self.sql
    }

    /// Stops the flusher (after one last pass over what the stream holds) and closes SQL.
    pub async fn close(&self) {
        let task = self
            .flusher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((token, handle)) = task {
            token.cancel();
            let _ = handle.await;
        }
        self.sql.close().await;
    }
}

fn newest(a: Option<Character>, b: Option<Character>) -> Option<Character> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.stamp() >= b.stamp() { a } else { b }),
        (a, b) => a.or(b),
    }
}
