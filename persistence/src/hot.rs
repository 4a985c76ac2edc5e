//! The hot tier: the newest state of every character, checked and written atomically per
//! batch. Redis in a cluster; an in-process map in embedded mode.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use redis::aio::ConnectionManager;

use crate::store::Character;
use crate::Error;

/// Writes each character of a batch unless its stored `(epoch, version)` is newer; returns one
/// 1 (written) or 0 (stale) per character. One script call per batch: atomic and one round trip.
const SAVE_IF_NEWER: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 6
  local epoch = tonumber(ARGV[base + 1])
  local version = tonumber(ARGV[base + 2])
  local cur = redis.call('HMGET', key, 'epoch', 'version')
  local ok = 1
  if cur[1] then
    local ce = tonumber(cur[1])
    local cv = tonumber(cur[2])
    if epoch < ce or (epoch == ce and version < cv) then ok = 0 end
  end
  if ok == 1 then
    redis.call('HSET', key, 'epoch', ARGV[base + 1], 'version', ARGV[base + 2], 'name', ARGV[base + 3],
      'x', ARGV[base + 4], 'y', ARGV[base + 5], 'heading', ARGV[base + 6])
  end
  out[i] = ok
end
return out
"#;

#[derive(Clone)]
pub enum HotTier {
    Memory(Arc<DashMap<u64, Character>>),
    Redis { conn: ConnectionManager, prefix: String, save_script: Arc<redis::Script> },
}

impl HotTier {
    pub async fn connect(url: Option<&str>, prefix: &str) -> Result<Self, Error> {
        match url {
            None => Ok(HotTier::Memory(Arc::default())),
            Some(url) => {
                let client = redis::Client::open(url)?;
                let conn = client.get_connection_manager().await?;
                Ok(HotTier::Redis { conn, prefix: prefix.to_owned(), save_script: Arc::new(redis::Script::new(SAVE_IF_NEWER)) })
            }
        }
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
                let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(Self::key(prefix, id)).query_async(&mut conn).await?;
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
            HotTier::Redis { conn, prefix, save_script } => {
                let mut conn = conn.clone();
                let mut inv = save_script.prepare_invoke();
                for c in batch {
                    inv.key(Self::key(prefix, c.id))
                        .arg(c.epoch)
                        .arg(c.version)
                        .arg(&c.name)
                        .arg(c.x.to_string())
                        .arg(c.y.to_string())
                        .arg(c.heading.to_string());
                }
                let written: Vec<i64> = inv.invoke_async(&mut conn).await?;
                Ok(written.into_iter().map(|w| w == 1).collect())
            }
        }
    }
}

fn parse_record(id: u64, f: &HashMap<String, String>) -> Result<Character, Error> {
    let get = |k: &str| f.get(k).ok_or_else(|| Error::CorruptHotRecord { id, why: format!("missing field {k}") });
    let num = |k: &str| -> Result<f32, Error> {
        get(k)?.parse().map_err(|_| Error::CorruptHotRecord { id, why: format!("field {k} is not a number") })
    };
    let int = |k: &str| -> Result<u64, Error> {
        get(k)?.parse().map_err(|_| Error::CorruptHotRecord { id, why: format!("field {k} is not an integer") })
    };
    Ok(Character { id, name: get("name")?.clone(), x: num("x")?, y: num("y")?, heading: num("heading")?, epoch: int("epoch")?, version: int("version")? })
}
