//! The flusher: moves acknowledged checkpoints from the Redis stream into SQL.
//!
//! It reads the stream as a member of the consumer group [`GROUP`], in batches: first its own
//! pending entries (read but never acknowledged: it crashed, or SQL failed), then entries
//! other consumers left pending for longer than [`CLAIM_IDLE`] (they crashed), then new ones.
//! Each batch is deduplicated (newest stamp per character), upserted into SQL in one
//! transaction where the stamp is newer, committed, and only then acknowledged and deleted
//! from the stream. A crash anywhere replays the pending entries; the upsert's stamp condition
//! makes replays harmless.
//!
//! While SQL is down the flusher backs off (doubling to [`MAX_BACKOFF`]) and the stream grows;
//! the checkpoint script refuses new batches once it holds `max_backlog` entries.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::hot::parse_stream_entry;
use crate::sql::Sql;
use crate::store::Character;

/// The consumer group every flusher joins.
pub const GROUP: &str = "flushers";
/// Stream entries (batches) read at a time: up to a few tens of thousands of characters,
/// a few SQL statements.
pub const READ_COUNT: usize = 64;
/// Entries pending this long on another consumer are taken over: longer than any healthy
/// SQL commit, short enough to bound the lag a crashed flusher adds.
pub const CLAIM_IDLE: Duration = Duration::from_secs(5);
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `WORLDMESH_TEST_FLUSH_ACK_DELAY_MS`: a pause between SQL commit and stream ack, for crash
/// tests only.
static ACK_DELAY: std::sync::LazyLock<Option<Duration>> = std::sync::LazyLock::new(|| {
    std::env::var("WORLDMESH_TEST_FLUSH_ACK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
});

pub struct Flusher {
    conn: MultiplexedConnection,
    stream: String,
    consumer: String,
    sql: Sql,
}

impl Flusher {
    /// Joins the consumer group (creating the stream and group if needed).
    pub async fn new(
        redis_url: &str,
        stream: String,
        consumer: String,
        sql: Sql,
    ) -> Result<Self, Error> {
        // Its own connection: blocking reads must not stall the checkpoint path's commands.
        let mut conn = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await?;
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created
            && !e.to_string().contains("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Self {
            conn,
            stream,
            consumer,
            sql,
        })
    }

    /// Runs until `shutdown`, then makes one last pass over what is already in the stream.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let stopping = shutdown.is_cancelled();
            match self.pass(!stopping).await {
                Ok(0) if stopping => return,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "flush failed; backing off");
                    metrics::counter!("worldmesh_persistence_flush_errors_total").increment(1);
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One read-upsert-ack round; returns the number of entries flushed.
    pub async fn pass(&mut self, block: bool) -> Result<usize, Error> {
        let mut entries = self.read_group("0", false).await?;
        if entries.is_empty() {
            entries = self.claim_stale().await?;
        }
        if entries.is_empty() {
            entries = self.read_group(">", block).await?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut newest: HashMap<u64, Character> = HashMap::new();
        let mut oldest_ms = u64::MAX;
        for e in &entries {
            oldest_ms = oldest_ms.min(entry_ms(&e.id));
            let Some(c) = e.get::<String>("c") else {
                continue;
            };
            match parse_stream_entry(&c) {
                Ok(chars) => {
                    for ch in chars {
                        match newest.get(&ch.id) {
                            Some(old) if old.stamp() >= ch.stamp() => {}
                            _ => {
                                newest.insert(ch.id, ch);
                            }
                        }
                    }
                }
                // Only this service writes the stream; a bad entry is a bug, logged and skipped
                // rather than blocking every later checkpoint.
                Err(why) => {
                    tracing::error!(entry = %e.id, %why, "unreadable checkpoint entry skipped")
                }
            }
        }
        let batch: Vec<Character> = newest.into_values().collect();
        self.sql.upsert_batch(&batch).await?;
        if let Some(delay) = *ACK_DELAY {
            // Crash tests widen the window between the SQL commit and the stream ack, so that a
            // kill lands there often (see tests/crash.rs). Never set in production.
            tokio::time::sleep(delay).await;
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let (backlog,): (u64,) = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&ids)
            .ignore()
            .cmd("XLEN")
            .arg(&self.stream)
            .query_async(&mut self.conn)
            .await?;
        // Acked but not yet durable, in batches: the gap between the two watermarks.
        metrics::gauge!("worldmesh_persistence_backlog_batches").set(backlog as f64);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        metrics::histogram!("worldmesh_persistence_flush_lag_seconds")
            .record(now_ms.saturating_sub(oldest_ms) as f64 / 1000.0);
        metrics::counter!("worldmesh_persistence_checkpoints_durable_total")
            .increment(batch.len() as u64);
        Ok(entries.len())
    }

    async fn read_group(&mut self, from: &str, block: bool) -> Result<Vec<StreamId>, Error> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(READ_COUNT);
        if block {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut self.conn).await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .filter(|id| !id.map.is_empty())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn claim_stale(&mut self) -> Result<Vec<StreamId>, Error> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(CLAIM_IDLE.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(&mut self.conn)
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                entries = reply.claimed.len(),
                "took over checkpoints left pending by a stopped flusher"
            );
        }
        Ok(reply.claimed)
    }
}

/// The millisecond timestamp of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}
