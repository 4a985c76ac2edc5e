//! The chat bus every gateway publishes to and reads from, in one order.
//!
//! **In a cluster: one Redis stream** (`{prefix}chat`), trimmed to about [`HISTORY`] lines
//! (`XADD MAXLEN ~`). Each gateway reads all of it with plain `XREAD` from the id of the last
//! line it handed on, not through a consumer group: a consumer group shares a stream's entries
//! out among its consumers (work queues), while here every gateway needs every line (fan-out).
//! One group per gateway would do it too, but would leave a group and its pending list behind
//! in Redis for every gateway that ever ran (pods come and go), and needs an `XACK` per line
//! for nothing: a gateway's place in the stream is one id it keeps in memory. When its
//! connection drops, the reader reconnects and reads on from that id, so it catches up on what
//! it missed (as far back as the history goes) without repeating a line. A gateway that
//! starts reads from the stream's end: chat is live, not a mailbox.
//!
//! **In one process** (`worldmesh local`, tests): [`LocalBus`], a broadcast channel with the
//! same interface, shared by the process's gateways.
//!
//! One stream for all channels gives one order for everything; every gateway reads every line
//! and keeps those for its players. At the scale one Redis serves, a gateway reading lines
//! meant for other gateways' players (zone and whisper lines) costs less than the bookkeeping
//! of a stream per audience; the world channel, which every gateway needs anyway, is most of
//! the traffic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Audience, Kind, Line};

/// About this many lines stay in the Redis stream: how far back a reconnecting gateway can
/// catch up (minutes of a busy world's chat).
pub const HISTORY: usize = 10_000;

/// Lines read but not yet handed to sessions, per gateway.
const READ_QUEUE: usize = 4096;

/// How long one blocking read waits for new lines before asking again.
const BLOCK: Duration = Duration::from_millis(1000);

/// Where chat lines travel.
#[derive(Debug, Clone)]
pub enum ChatBus {
    /// In this process only.
    Local(Arc<LocalBus>),
    /// Through a Redis stream (`stream`); operators' silences in the hash `silences`.
    Redis {
        url: String,
        stream: String,
        silences: String,
    },
}

impl ChatBus {
    /// A new in-process bus (give the same one to every gateway of the process).
    pub fn local() -> Self {
        ChatBus::Local(Arc::new(LocalBus::new()))
    }

    /// The Redis stream `{prefix}chat` (and the hash `{prefix}chat:silenced`) at `url`.
    pub fn redis(url: &str, prefix: &str) -> Self {
        ChatBus::Redis {
            url: url.to_owned(),
            stream: format!("{prefix}chat"),
            silences: format!("{prefix}chat:silenced"),
        }
    }
}

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The in-process bus: one order, assigned under a lock as lines are sent.
#[derive(Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<Line>,
    seq: std::sync::Mutex<u64>,
    /// Name → silenced until (Unix seconds).
    silences: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(READ_QUEUE).0,
            seq: std::sync::Mutex::new(0),
            silences: Default::default(),
        }
    }

    fn publish(&self, line: &Line) {
        let mut seq = self
            .seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seq += 1;
        // No subscriber (no gateway yet) is not an error: nobody is there to hear it.
        let _ = self.tx.send(Line {
            seq: *seq,
            ..line.clone()
        });
    }
}

/// Sends lines onto the bus.
pub struct Publisher {
    bus: ChatBus,
    /// The Redis connection, made on first use and again after a failure.
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Publisher {
    pub fn new(bus: &ChatBus) -> Self {
        Self {
            bus: bus.clone(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Puts a line on the bus (its `seq` is the bus's to give); it comes back to every
    /// gateway's reader, this one's included.
    pub async fn publish(&self, line: &Line) -> Result<(), BusError> {
        let (url, stream) = match &self.bus {
            ChatBus::Local(bus) => {
                bus.publish(line);
                return Ok(());
            }
            ChatBus::Redis { url, stream, .. } => (url, stream),
        };
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(connect(url).await?);
        }
        let Some(conn) = guard.as_mut() else {
            unreachable!("connected above");
        };
        let sent: Result<String, _> = redis::cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(HISTORY)
            .arg("*")
            .arg("to")
            .arg(encode_audience(&line.to))
            .arg("k")
            .arg(encode_kind(line.kind))
            .arg("f")
            .arg(&line.from)
            .arg("t")
            .arg(&line.text)
            .query_async(conn)
            .await;
        if let Err(e) = sent {
            *guard = None;
            return Err(e.into());
        }
        Ok(())
    }
}

impl Publisher {
    /// An operator silences `name` until `until` (Unix seconds; a time past lifts it): stored
    /// for the player's later logins on any gateway, and announced on the bus to the gateway
    /// it plays on now.
    pub async fn silence(&self, name: &str, until: u64) -> Result<(), BusError> {
        match &self.bus {
            ChatBus::Local(bus) => {
                bus.silences
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), until);
            }
            ChatBus::Redis { url, silences, .. } => {
                let mut conn = connect(url).await?;
                let _: () = redis::cmd("HSET")
                    .arg(silences)
                    .arg(name)
                    .arg(until)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        self.publish(&Line {
            seq: 0,
            to: Audience::World,
            kind: Kind::Silence(until),
            from: name.to_owned(),
            text: String::new(),
        })
        .await
    }

    /// Until when `name` is silenced (Unix seconds; 0: never was).
    pub async fn silenced_until(&self, name: &str) -> Result<u64, BusError> {
        match &self.bus {
            ChatBus::Local(bus) => Ok(bus
                .silences
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
                .copied()
                .unwrap_or(0)),
            ChatBus::Redis { silences, .. } => {
                let mut guard = self.conn.lock().await;
                let conn = match guard.as_mut() {
                    Some(c) => c,
                    None => guard.insert(connect(self.url()).await?),
                };
                let until: Option<u64> = redis::cmd("HGET")
                    .arg(silences)
                    .arg(name)
                    .query_async(conn)
                    .await
                    .inspect_err(|_| *guard = None)?;
                Ok(until.unwrap_or(0))
            }
        }
    }

    fn url(&self) -> &str {
        match &self.bus {
            ChatBus::Redis { url, .. } => url,
            ChatBus::Local(_) => "",
        }
    }
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, BusError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than a blocking read waits.
        .set_response_timeout(Some(BLOCK + Duration::from_secs(4)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn encode_audience(to: &Audience) -> String {
    match to {
        Audience::World => "w".into(),
        Audience::Zone(z) => format!("z:{z}"),
        Audience::Whisper(name) => format!("p:{name}"),
        Audience::Party(id) => format!("g:{id}"),
    }
}

fn encode_kind(kind: Kind) -> String {
    match kind {
        Kind::Text => "t".into(),
        Kind::Invite(party) => format!("i:{party}"),
        Kind::Joined => "j".into(),
        Kind::Left => "l".into(),
        Kind::Silence(until) => format!("s:{until}"),
    }
}

fn decode_kind(s: &str) -> Option<Kind> {
    match s {
        "t" => Some(Kind::Text),
        "j" => Some(Kind::Joined),
        "l" => Some(Kind::Left),
        _ => match s.split_once(':')? {
            ("i", party) => party.parse().ok().filter(|p| *p != 0).map(Kind::Invite),
            ("s", until) => until.parse().ok().map(Kind::Silence),
            _ => None,
        },
    }
}

fn decode_audience(s: &str) -> Option<Audience> {
    match s.split_once(':') {
        None if s == "w" => Some(Audience::World),
        Some(("z", z)) => z.parse().ok().map(Audience::Zone),
        Some(("g", g)) => g.parse().ok().filter(|g| *g != 0).map(Audience::Party),
        Some(("p", name)) if worldmesh_protocol::validate_name(name) => {
            Some(Audience::Whisper(name.to_owned()))
        }
        _ => None,
    }
}

/// A stream id `ms-n` as one growing number: the milliseconds above 20 bits of `n`.
fn seq_of(id: &str) -> Option<u64> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    Some((ms << 20) | n.min((1 << 20) - 1))
}

/// Reads every line from the bus, in order, from now on, until `shutdown`; a lost Redis
/// connection is made again and reading goes on where it stopped.
pub fn subscribe(bus: &ChatBus, shutdown: CancellationToken) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel(READ_QUEUE);
    match bus {
        ChatBus::Local(bus) => {
            let mut lines = bus.tx.subscribe();
            tokio::spawn(async move {
                loop {
                    let line = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        l = lines.recv() => l,
                    };
                    match line {
                        Ok(line) => {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(lines = n, "chat reader fell behind; lines lost");
                            metrics::counter!("worldmesh_gateway_chat_lost_total").increment(n);
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        ChatBus::Redis { url, stream, .. } => {
            tokio::spawn(read_redis(url.clone(), stream.clone(), tx, shutdown));
        }
    }
    rx
}

async fn read_redis(
    url: String,
    stream: String,
    tx: mpsc::Sender<Line>,
    shutdown: CancellationToken,
) {
    // The id of the last line handed on; resolved to the stream's end on first contact.
    let mut last: Option<String> = None;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(connect(&url).await?),
            };
            if last.is_none() {
                let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(c)
                    .await?;
                last = Some(
                    newest
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone()),
                );
            }
            let from = last.clone().unwrap_or_else(|| "0-0".to_owned());
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from);
            let reply: Option<redis::streams::StreamReadReply> = tokio::select! {
                _ = shutdown.cancelled() => return Ok::<_, BusError>(None),
                r = read.query_async(c) => r?,
            };
            Ok(Some(reply))
        }
        .await;
        match result {
            Ok(None) => return,
            Ok(Some(reply)) => {
                backoff = Duration::from_millis(100);
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = Some(entry.id.clone());
                    let field = |k: &str| entry.get::<String>(k);
                    let to = field("to").as_deref().and_then(decode_audience);
                    let kind = field("k").as_deref().and_then(decode_kind);
                    let line = match (seq_of(&entry.id), to, kind, field("f"), field("t")) {
                        (Some(seq), Some(to), Some(kind), Some(from), Some(text)) => Line {
                            seq,
                            to,
                            kind,
                            from,
                            text,
                        },
                        _ => {
                            tracing::warn!(id = %entry.id, "malformed chat entry skipped");
                            metrics::counter!("worldmesh_gateway_chat_malformed_total")
                                .increment(1);
                            continue;
                        }
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "chat bus read failed; reconnecting");
                metrics::counter!("worldmesh_gateway_chat_reconnects_total").increment(1);
                conn = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_and_ids_round_trip_and_junk_is_refused() {
        for a in [
            Audience::World,
            Audience::Zone(7),
            Audience::Whisper("bob_1".into()),
            Audience::Party(u64::MAX),
        ] {
            assert_eq!(decode_audience(&encode_audience(&a)), Some(a));
        }
        for junk in ["", "x", "z:", "z:-1", "p:", "p:a b", "w:1", "g:0", "g:x"] {
            assert_eq!(decode_audience(junk), None, "{junk:?}");
        }
        for k in [
            Kind::Text,
            Kind::Invite(9),
            Kind::Joined,
            Kind::Left,
            Kind::Silence(1_800_000_000),
        ] {
            assert_eq!(decode_kind(&encode_kind(k)), Some(k));
        }
        for junk in ["", "i:", "i:0", "x", "tt"] {
            assert_eq!(decode_kind(junk), None, "{junk:?}");
        }
        assert!(seq_of("1700000000000-0") < seq_of("1700000000000-1"));
        assert!(seq_of("1700000000000-99999999") < seq_of("1700000000001-0"));
        assert_eq!(seq_of("nope"), None);
    }
}
