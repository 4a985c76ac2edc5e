//! The hot tier: the newest state of every character, checked and written atomically per
//! batch. Redis in a cluster (which also queues each accepted batch on a stream for the
//! [flusher](crate::flusher)); an in-process map in embedded mode.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use redis::aio::ConnectionManager;

use crate::Error;
use crate::store::Character;

/// The checkpoint script, run once per batch, atomically:
/// 1. refuses the whole batch when the stream already holds `max_backlog` batches (SQL is
///    behind; the caller must retry later) — nothing is dropped silently;
/// 2. writes each character unless its stored `(epoch, version)` is newer (0 = stale, 1 =
///    written);
/// 3. appends the written ones to the checkpoint stream as one entry, field `c`, one line per
///    character: `id epoch version x y heading game name`, `game` being the game's components
///    in hex (`-` when there are none; names never contain spaces).
///
/// KEYS[1] = the stream; ARGV[1] = key prefix; ARGV[2] = max backlog; then 8 values per
/// character. Character keys are derived inside the script, which is fine on a single Redis
/// (not Redis Cluster).
const CHECKPOINT: &str = r#"
local backlog = redis.call('XLEN', KEYS[1])
if backlog >= tonumber(ARGV[2]) then
  return redis.error_reply('BACKLOG ' .. backlog .. ' batches waiting for SQL')
end
local out = {}
local lines = {}
local n = (#ARGV - 2) / 8
for i = 1, n do
  local b = 2 + (i - 1) * 8
  local key = ARGV[1] .. 'char:' .. ARGV[b + 1]
  local epoch = tonumber(ARGV[b + 2])
  local version = tonumber(ARGV[b + 3])
  local cur = redis.call('HMGET', key, 'epoch', 'version')
  local ok = 1
  if cur[1] then
    local ce = tonumber(cur[1])
    local cv = tonumber(cur[2])
    if epoch < ce or (epoch == ce and version < cv) then ok = 0 end
  end
  if ok == 1 then
    redis.call('HSET', key, 'epoch', ARGV[b + 2], 'version', ARGV[b + 3], 'name', ARGV[b + 4],
      'x', ARGV[b + 5], 'y', ARGV[b + 6], 'heading', ARGV[b + 7], 'game', ARGV[b + 8])
    lines[#lines + 1] = ARGV[b + 1] .. ' ' .. ARGV[b + 2] .. ' ' .. ARGV[b + 3] .. ' ' .. ARGV[b + 5] .. ' ' ..
      ARGV[b + 6] .. ' ' .. ARGV[b + 7] .. ' ' .. ARGV[b + 8] .. ' ' .. ARGV[b + 4]
  end
  out[i] = ok
end
if #lines > 0 then
  redis.call('XADD', KEYS[1], '*', 'c', table.concat(lines, '\n'))
end
return out
"#;

/// The game bytes as the script stores them: hex, `-` for none (never an empty argument).
fn game_hex(game: &[u8]) -> String {
    if game.is_empty() {
        return "-".to_owned();
    }
    game.iter().map(|b| format!("{b:02x}")).collect()
}

fn game_from_hex(s: &str) -> Option<Vec<u8>> {
    if s == "-" {
        return Some(Vec::new());
    }
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Parses one stream entry's `c` field back into characters. Lines written before characters
/// had game components (7 fields, no `game`) still parse.
pub fn parse_stream_entry(c: &str) -> Result<Vec<Character>, String> {
    c.lines()
        .map(|line| {
            let mut f: Vec<&str> = line.splitn(8, ' ').collect();
            let game = match f.get(6).and_then(|g| game_from_hex(g)) {
                Some(game) if f.len() == 8 => {
                    f.remove(6);
                    game
                }
                _ => {
                    f = line.splitn(7, ' ').collect();
                    Vec::new()
                }
            };
            if f.len() != 7 {
                return Err(format!("bad checkpoint line {line:?}"));
            }
            let num = |s: &str| {
                s.parse::<f32>()
                    .map_err(|_| format!("bad number in {line:?}"))
            };
            let int = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| format!("bad integer in {line:?}"))
            };
            Ok(Character {
                id: int(f[0])?,
                epoch: int(f[1])?,
                version: int(f[2])?,
                x: num(f[3])?,
                y: num(f[4])?,
                heading: num(f[5])?,
                name: f[6].to_owned(),
                game,
            })
        })
        .collect()
}

#[derive(Clone)]
pub enum HotTier {
    Memory(Arc<DashMap<u64, Character>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
        save_script: Arc<redis::Script>,
        max_backlog: usize,
    },
}

impl HotTier {
    pub async fn connect(
        url: Option<&str>,
        prefix: &str,
        max_backlog: usize,
    ) -> Result<Self, Error> {
        match url {
            None => Ok(HotTier::Memory(Arc::default())),
            Some(url) => {
                let client = redis::Client::open(url)?;
                let conn = client.get_connection_manager().await?;
                Ok(HotTier::Redis {
                    conn,
                    prefix: prefix.to_owned(),
                    save_script: Arc::new(redis::Script::new(CHECKPOINT)),
                    max_backlog,
                })
            }
        }
    }

    /// The Redis stream checkpoints are appended to.
    pub fn stream_key(prefix: &str) -> String {
        format!("{prefix}checkpoints")
    }

    pub fn name(&self) -> &'static str {
        match self {
            HotTier::Memory(_) => "memory",
            HotTier::Redis { .. } => "redis",
        }
    }

    fn key(prefix: &str, id: u64) -> String {
        format!("{prefix}char:{id}")
    }

    pub async fn load(&self, id: u64) -> Result<Option<Character>, Error> {
        match self {
            HotTier::Memory(map) => Ok(map.get(&id).map(|c| c.clone())),
            HotTier::Redis { conn, prefix, .. } => {
                let mut conn = conn.clone();
                let fields: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(Self::key(prefix, id))
                    .query_async(&mut conn)
                    .await?;
                if fields.is_empty() {
                    return Ok(None);
                }
                parse_record(id, &fields).map(Some)
            }
        }
    }

    /// Writes the batch where stamps are not older; returns, per character, whether it was
    /// written.
    pub async fn save(&self, batch: &[Character]) -> Result<Vec<bool>, Error> {
        match self {
            HotTier::Memory(map) => Ok(batch
                .iter()
                .map(|c| {
                    let mut entry = map.entry(c.id).or_insert_with(|| c.clone());
                    if c.stamp() >= entry.stamp() {
                        *entry = c.clone();
                        true
                    } else {
                        false
                    }
                })
                .collect()),
            HotTier::Redis {
                conn,
                prefix,
                save_script,
                max_backlog,
            } => {
                let mut conn = conn.clone();
                let mut inv = save_script.prepare_invoke();
                inv.key(Self::stream_key(prefix))
                    .arg(prefix)
                    .arg(*max_backlog);
                for c in batch {
                    inv.arg(c.id)
                        .arg(c.epoch)
                        .arg(c.version)
                        .arg(&c.name)
                        .arg(c.x.to_string())
                        .arg(c.y.to_string())
                        .arg(c.heading.to_string())
                        .arg(game_hex(&c.game));
                }
                let written: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(|e| {
                    if e.to_string().contains("BACKLOG") {
                        Error::Backlog(e.to_string())
                    } else {
                        Error::Redis(e)
                    }
                })?;
                Ok(written.into_iter().map(|w| w == 1).collect())
            }
        }
    }
}

fn parse_record(id: u64, f: &HashMap<String, String>) -> Result<Character, Error> {
    let get = |k: &str| {
        f.get(k).ok_or_else(|| Error::CorruptHotRecord {
            id,
            why: format!("missing field {k}"),
        })
    };
    let num = |k: &str| -> Result<f32, Error> {
        get(k)?.parse().map_err(|_| Error::CorruptHotRecord {
            id,
            why: format!("field {k} is not a number"),
        })
    };
    let int = |k: &str| -> Result<u64, Error> {
        get(k)?.parse().map_err(|_| Error::CorruptHotRecord {
            id,
            why: format!("field {k} is not an integer"),
        })
    };
    Ok(Character {
        id,
        name: get("name")?.clone(),
        x: num("x")?,
        y: num("y")?,
        heading: num("heading")?,
        epoch: int("epoch")?,
        version: int("version")?,
        // Records written before characters had game components have no `game`.
        game: match f.get("game") {
            None => Vec::new(),
            Some(g) => game_from_hex(g).ok_or_else(|| Error::CorruptHotRecord {
                id,
                why: "field game is not hex".to_owned(),
            })?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_carry_game_bytes_and_old_lines_still_parse() {
        let new = "7 2 9 1.5 -2 0.25 00ff10 ada\n8 1 1 0 0 0 - bob";
        let chars = parse_stream_entry(new).unwrap();
        assert_eq!(chars[0].game, vec![0x00, 0xff, 0x10]);
        assert_eq!((chars[0].id, chars[0].name.as_str()), (7, "ada"));
        assert_eq!((chars[1].game.len(), chars[1].name.as_str()), (0, "bob"));
        let old = parse_stream_entry("7 2 9 1.5 -2 0.25 ada").unwrap();
        assert_eq!((old[0].name.as_str(), old[0].game.len()), ("ada", 0));
        assert_eq!(
            game_from_hex(&game_hex(&[1, 2, 254])),
            Some(vec![1, 2, 254])
        );
        assert!(parse_stream_entry("7 2 9 x -2 0.25 - ada").is_err());
    }
}
