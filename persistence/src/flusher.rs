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
//! While SQL or Redis is down the flusher backs off (doubling to [`MAX_BACKOFF`]) and the
//! stream grows; the checkpoint script refuses new batches once it holds `max_backlog` entries.
//! Its Redis connection is a [`ConnectionManager`], which reconnects after Redis restarts (a
//! plain multiplexed connection stays broken for good), and a consumer group lost with Redis's
//! data is created again.
//!
//! The backlog gauges are measured from the stream on every pass, whether or not the flush
//! succeeds: a flusher that cannot write must show a growing backlog, not the last good value.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
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
/// Longest pause between retries. Short: a restarted Redis or SQL is back within seconds, and
/// every second here is a second of checkpoints that are not yet durable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the backlog gauges are read from the stream.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// Failed tries of the final pass at shutdown before giving up (the stream keeps the rest).
const FINAL_PASS_RETRIES: u32 = 10;

/// `WORLDMESH_TEST_FLUSH_ACK_DELAY_MS`: a pause between SQL commit and stream ack, for crash
/// tests only.
static ACK_DELAY: std::sync::LazyLock<Option<Duration>> = std::sync::LazyLock::new(|| {
    std::env::var("WORLDMESH_TEST_FLUSH_ACK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
});

pub struct Flusher {
    conn: ConnectionManager,
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
        let conn = redis::Client::open(redis_url)?
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    // Above the longest blocking read, so a quiet stream is not an error.
                    .set_response_timeout(Some(BLOCK + Duration::from_secs(2)))
                    .set_max_delay(Duration::from_secs(1)),
            )
            .await?;
        let mut flusher = Self {
            conn,
            stream,
            consumer,
            sql,
        };
        flusher.create_group().await?;
        Ok(flusher)
    }

    /// Creates the stream and the consumer group unless they exist.
    async fn create_group(&mut self) -> Result<(), Error> {
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match created {
            Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Sets the backlog gauges from the stream itself: its length (batches acknowledged to
    /// zones but not yet in SQL) and the age of its oldest entry.
    async fn measure_backlog(&mut self) -> Result<u64, Error> {
        let (len, oldest): (u64, StreamRangeReply) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        metrics::gauge!("worldmesh_persistence_backlog_batches").set(len as f64);
        let age_s = oldest
            .ids
            .first()
            .map(|e| unix_ms().saturating_sub(entry_ms(&e.id)) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!("worldmesh_persistence_backlog_oldest_seconds").set(age_s);
        Ok(len)
    }

    /// Runs until `shutdown`, then makes one last pass over what is already in the stream
    /// (retried for up to [`FINAL_PASS_RETRIES`] failures, so a Redis that is just restarting
    /// does not leave the last batches for the next start).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut final_failures = 0;
        let mut measured_at: Option<std::time::Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            if measured_at.is_none_or(|t| t.elapsed() >= MEASURE_EVERY) {
                measured_at = Some(std::time::Instant::now());
                if let Err(e) = self.measure_backlog().await {
                    tracing::debug!(error = %e, "cannot measure the checkpoint backlog");
                }
            }
            match self.pass(!stopping).await {
                Ok(0) if stopping => return,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "flush failed; backing off");
                    metrics::counter!("worldmesh_persistence_flush_errors_total").increment(1);
                    if e.to_string().contains("NOGROUP") {
                        // Redis came back without its data (no AOF): the group is gone.
                        if let Err(e) = self.create_group().await {
                            tracing::warn!(error = %e, "cannot create the flushers' group again");
                        }
                    }
                    if stopping {
                        final_failures += 1;
                        if final_failures >= FINAL_PASS_RETRIES {
                            tracing::error!(
                                "giving up the final flush; the stream keeps the rest for the next start"
                            );
                            return;
                        }
                        tokio::time::sleep(backoff.min(Duration::from_millis(500))).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
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
                    tracing::error!(entry = %e.id, %why, "unreadable checkpoint entry skipped");
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
        let now_ms = unix_ms();
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The millisecond timestamp of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}
