//! The event stream: game events (logins, logouts, zone changes, scores, kills, trades) as
//! gateways and zones publish them (`PublishEvents`), in one order, bounded. The read models
//! ([`crate::read_models`]) are projected from it.
//!
//! With Redis it is the stream `{prefix}events` (`XADD MAXLEN ~` [`HISTORY`]), each entry one
//! protobuf-encoded `Event`: it outlives a restart of this service, so a projector that
//! restarts replays what it missed. Embedded, it is an in-process ring of the same bound: a
//! restart of the process starts it empty (and nobody is online then anyway).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use worldmesh_protocol::grpc::persistence::Event;

use crate::Error;

/// Events the stream keeps (roughly, with Redis): hours of a busy cluster's logins and
/// trades, far more than a projector restart needs.
pub const HISTORY: usize = 100_000;

/// The position before every event.
pub const START: &str = "0-0";

#[derive(Default)]
pub struct Ring {
    /// (sequence, encoded event); sequences start at 1 and grow.
    entries: VecDeque<(u64, Vec<u8>)>,
    next: u64,
}

/// Where events are appended and read from.
#[derive(Clone)]
pub enum EventLog {
    Memory(Arc<(Mutex<Ring>, Notify)>),
    Redis {
        /// Appends (non-blocking commands, shared with the hot tier).
        conn: ConnectionManager,
        /// Blocking reads need a connection of their own.
        url: String,
        key: String,
    },
}

impl EventLog {
    /// The in-process log.
    #[must_use]
    pub fn memory() -> Self {
        EventLog::Memory(Arc::default())
    }

    /// The Redis stream `{prefix}events`.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, Error> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(EventLog::Redis {
            conn,
            url: url.to_owned(),
            key: format!("{prefix}events"),
        })
    }

    /// Appends events in order.
    pub async fn append(&self, events: &[Event]) -> Result<(), Error> {
        match self {
            EventLog::Memory(m) => {
                let mut ring =
                    m.0.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in events {
                    ring.next += 1;
                    let seq = ring.next;
                    ring.entries.push_back((seq, e.encode_to_vec()));
                    if ring.entries.len() > HISTORY {
                        ring.entries.pop_front();
                    }
                }
                drop(ring);
                m.1.notify_waiters();
                Ok(())
            }
            EventLog::Redis { conn, key, .. } => {
                let mut pipe = redis::pipe();
                for e in events {
                    pipe.cmd("XADD")
                        .arg(key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(HISTORY)
                        .arg("*")
                        .arg("e")
                        .arg(e.encode_to_vec())
                        .ignore();
                }
                let mut conn = conn.clone();
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            }
        }
    }

    /// A reader of this log, for one projector.
    pub async fn reader(&self) -> Result<Reader, Error> {
        Ok(match self {
            EventLog::Memory(m) => Reader::Memory(m.clone()),
            EventLog::Redis { url, key, .. } => Reader::Redis {
                // A blocking read holds its reply for up to its wait: the client's default
                // response timeout (500 ms) would cut every idle read short.
                conn: redis::Client::open(url.as_str())?
                    .get_connection_manager_with_config(
                        redis::aio::ConnectionManagerConfig::new()
                            .set_response_timeout(Some(READ_TIMEOUT)),
                    )
                    .await?,
                key: key.clone(),
            },
        })
    }
}

/// The longest a read waits for events.
pub const MAX_READ_WAIT: Duration = Duration::from_secs(2);

/// How long a blocking read's reply may take: its wait and a margin.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a log from a position on.
pub enum Reader {
    Memory(Arc<(Mutex<Ring>, Notify)>),
    Redis {
        conn: ConnectionManager,
        key: String,
    },
}

/// Events read after a position, each with its own position.
pub type Read = Vec<(String, Result<Event, prost::DecodeError>)>;

impl Reader {
    /// Whether the log still holds the event at `position` (or `position` is [`START`]): if
    /// not, events after the projector's checkpoint may be gone (the stream was trimmed, or
    /// started anew).
    pub async fn holds(&mut self, position: &str) -> Result<bool, Error> {
        if position == START {
            return Ok(true);
        }
        match self {
            Reader::Memory(m) => {
                let seq = memory_seq(position);
                let ring =
                    m.0.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(seq.is_some_and(|s| ring.entries.iter().any(|(q, _)| *q == s)))
            }
            Reader::Redis { conn, key } => {
                let found: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&*key)
                    .arg(position)
                    .arg(position)
                    .query_async(conn)
                    .await?;
                Ok(!found.ids.is_empty())
            }
        }
    }

    /// Up to `count` events after `position`, waiting up to `wait` (at most
    /// [`MAX_READ_WAIT`]) for the first.
    pub async fn read_after(
        &mut self,
        position: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Read, Error> {
        match self {
            Reader::Memory(m) => {
                let after = memory_seq(position).unwrap_or(0);
                let take = |ring: &Ring| -> Read {
                    ring.entries
                        .iter()
                        .filter(|(s, _)| *s > after)
                        .take(count)
                        .map(|(s, b)| (format!("mem-{s}"), Event::decode(b.as_slice())))
                        .collect()
                };
                let notified = m.1.notified();
                {
                    let ring =
                        m.0.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let got = take(&ring);
                    if !got.is_empty() {
                        return Ok(got);
                    }
                }
                let _ = tokio::time::timeout(wait, notified).await;
                let ring =
                    m.0.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(take(&ring))
            }
            Reader::Redis { conn, key } => {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(wait.min(MAX_READ_WAIT).as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&*key)
                    .arg(position)
                    .query_async(conn)
                    .await?;
                Ok(reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(|entry| {
                        let bytes: Vec<u8> = entry.get("e").unwrap_or_default();
                        (entry.id.clone(), Event::decode(bytes.as_slice()))
                    })
                    .collect())
            }
        }
    }
}

/// The sequence of an in-process position (`mem-N`).
fn memory_seq(position: &str) -> Option<u64> {
    position.strip_prefix("mem-")?.parse().ok()
}
