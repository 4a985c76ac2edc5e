//! The read models (CQRS), projected from the event stream ([`crate::events`]) and served as
//! JSON on the admin port:
//!
//! - `/leaderboard`: the top 100 characters by the game's score (the arena: XP), with their
//!   level, kills and trades;
//! - `/online`: who plays now, counted per zone and per gateway.
//!
//! One projector per persistence process reads the stream from where its last checkpoint left
//! off, applies each event, and every [`CHECKPOINT_EVERY`] writes the models and their stream
//! position to SQL (`read_models`). After a restart it loads the checkpoint and replays the
//! stream after it, so both models are rebuilt exactly; if the stream no longer holds the
//! checkpoint's position (trimmed, or an embedded process that started anew) who is online is
//! unknowable from it and starts empty — players are counted again as they log in — while the
//! leaderboard, a sum of durable facts, keeps what the checkpoint had.
//!
//! Metrics: `worldmesh_persistence_projection_lag_seconds` (the age of the newest event applied,
//! 0 when caught up), `worldmesh_persistence_events_total{kind}`,
//! `worldmesh_persistence_events_malformed_total`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::persistence::{Event, event::Kind};

use crate::Error;
use crate::events::{EventLog, Reader, START};
use crate::sql::Sql;

/// How often the models are written to SQL.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Entries `/leaderboard` shows.
pub const TOP: usize = 100;

/// One character on the leaderboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub character: u64,
    pub name: String,
    pub score: u64,
    pub level: u32,
    pub kills: u64,
    pub trades: u64,
}

/// A player online.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Player {
    pub name: String,
    pub gateway: String,
    /// The gateway's player id of the session.
    pub session: u64,
    /// The zone simulating its character (0 until a zone said so).
    pub zone: u64,
}

/// Both models and the stream position they include.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Models {
    pub position: String,
    pub standings: HashMap<u64, Standing>,
    pub online: HashMap<u64, Player>,
}

impl Models {
    /// Applies one event.
    pub fn apply(&mut self, event: &Event) {
        let Some(kind) = &event.kind else { return };
        match kind {
            Kind::Online(o) => {
                self.online.insert(
                    o.character,
                    Player {
                        name: o.name.clone(),
                        gateway: o.gateway.clone(),
                        session: o.session,
                        zone: self.online.get(&o.character).map_or(0, |p| p.zone),
                    },
                );
            }
            Kind::Offline(o) => {
                // Only the session's own end ends it: a new login (through this gateway or
                // another) may have taken the character over before the old session let go.
                if self
                    .online
                    .get(&o.character)
                    .is_some_and(|p| p.gateway == o.gateway && p.session == o.session)
                {
                    self.online.remove(&o.character);
                }
            }
            Kind::Entered(e) => {
                if let Some(p) = self.online.get_mut(&e.character) {
                    p.zone = e.zone;
                }
            }
            Kind::Scored(s) => {
                let st = self.standing(s.character);
                st.name.clone_from(&s.name);
                st.score = s.score;
                st.level = s.level;
            }
            Kind::Killed(k) => {
                if !worldmesh_protocol::EntityId(k.killer).is_npc() {
                    self.standing(k.killer).kills += 1;
                }
            }
            Kind::Traded(t) => {
                if t.outcome == 0 {
                    self.standing(t.a).trades += 1;
                    self.standing(t.b).trades += 1;
                }
            }
        }
    }

    fn standing(&mut self, character: u64) -> &mut Standing {
        self.standings.entry(character).or_insert_with(|| Standing {
            character,
            ..Default::default()
        })
    }

    /// The top [`TOP`] by score (then kills, then id), as JSON.
    #[must_use]
    pub fn leaderboard(&self) -> String {
        let mut top: Vec<&Standing> = self
            .standings
            .values()
            .filter(|s| !s.name.is_empty())
            .collect();
        top.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then(b.kills.cmp(&a.kills))
                .then(a.character.cmp(&b.character))
        });
        top.truncate(TOP);
        serde_json::json!({ "position": self.position, "top": top }).to_string()
    }

    /// Who is online, per zone and per gateway, as JSON.
    #[must_use]
    pub fn who_is_online(&self) -> String {
        let mut by_zone: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_gateway: BTreeMap<String, u64> = BTreeMap::new();
        for p in self.online.values() {
            *by_zone.entry(p.zone.to_string()).or_default() += 1;
            *by_gateway.entry(p.gateway.clone()).or_default() += 1;
        }
        serde_json::json!({
            "position": self.position,
            "players": self.online.len(),
            "by_zone": by_zone,
            "by_gateway": by_gateway,
        })
        .to_string()
    }
}

/// The models as the admin port reads them.
pub type Shared = Arc<RwLock<Models>>;

/// Registers `/leaderboard` and `/online` on the admin port.
pub fn serve_views(models: &Shared) {
    let m = models.clone();
    worldmesh_runtime::admin::view("/leaderboard", move || {
        m.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .leaderboard()
    });
    let m = models.clone();
    worldmesh_runtime::admin::view("/online", move || {
        m.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .who_is_online()
    });
}

/// Loads the checkpoint, then projects the stream into `models` until `shutdown`, writing a
/// checkpoint every [`CHECKPOINT_EVERY`] and at the end.
pub async fn project(sql: Sql, log: EventLog, models: Shared, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    // Connect and load, retried: the service serves meanwhile, the views show what they have.
    let mut reader = loop {
        match start(&sql, &log, &models).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "read models cannot start; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut checkpointed = Instant::now();
    let mut dirty = false;
    loop {
        let position = read(&models).position.clone();
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = reader.read_after(&position, 1000, Duration::from_millis(500)) => b,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {
                metrics::gauge!("worldmesh_persistence_projection_lag_seconds").set(0.0);
            }
            Ok(batch) => {
                backoff = Duration::from_millis(200);
                dirty = true;
                let mut m = models
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut newest = 0;
                for (id, event) in batch {
                    match event {
                        Ok(e) => {
                            metrics::counter!("worldmesh_persistence_events_total", "kind" => kind_name(&e))
                                .increment(1);
                            newest = newest.max(e.at_ms);
                            m.apply(&e);
                        }
                        Err(error) => {
                            tracing::warn!(%id, %error, "undecodable event skipped");
                            metrics::counter!("worldmesh_persistence_events_malformed_total")
                                .increment(1);
                        }
                    }
                    m.position = id;
                }
                drop(m);
                let lag = worldmesh_runtime::events::now_ms().saturating_sub(newest);
                metrics::gauge!("worldmesh_persistence_projection_lag_seconds")
                    .set(lag as f64 / 1000.0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the event stream failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if dirty && checkpointed.elapsed() >= CHECKPOINT_EVERY {
            let snapshot = read(&models).clone();
            match save(&sql, &snapshot).await {
                Ok(()) => {
                    dirty = false;
                    checkpointed = Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "read models checkpoint failed"),
            }
        }
    }
    if dirty {
        let snapshot = read(&models).clone();
        if let Err(e) = save(&sql, &snapshot).await {
            tracing::warn!(error = %e, "last read models checkpoint failed");
        }
    }
}

fn read(models: &Shared) -> std::sync::RwLockReadGuard<'_, Models> {
    models
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads the checkpoint into `models` and opens a reader after it.
async fn start(sql: &Sql, log: &EventLog, models: &Shared) -> Result<Reader, Error> {
    let mut reader = log.reader().await?;
    let mut loaded = load(sql).await?.unwrap_or_else(|| Models {
        position: START.into(),
        ..Default::default()
    });
    if !reader.holds(&loaded.position).await? {
        tracing::warn!(
            position = %loaded.position,
            "the event stream no longer holds the read models' checkpoint; who is online starts empty"
        );
        loaded.online.clear();
        loaded.position = START.into();
    }
    tracing::info!(
        position = %loaded.position,
        standings = loaded.standings.len(),
        online = loaded.online.len(),
        "read models loaded"
    );
    *models
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
    Ok(reader)
}

async fn load(sql: &Sql) -> Result<Option<Models>, Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT position, body FROM read_models WHERE name = 'models'")
            .fetch_optional(sql.pool())
            .await?;
    let Some((position, body)) = row else {
        return Ok(None);
    };
    let mut m: Models = serde_json::from_str(&body)
        .map_err(|e| Error::Inconsistent(format!("read models checkpoint: {e}")))?;
    m.position = position;
    Ok(Some(m))
}

async fn save(sql: &Sql, m: &Models) -> Result<(), Error> {
    let body = serde_json::to_string(m)
        .map_err(|e| Error::Inconsistent(format!("read models checkpoint: {e}")))?;
    sqlx::query(
        "INSERT INTO read_models (name, position, body) VALUES ('models', $1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, body = excluded.body",
    )
    .bind(&m.position)
    .bind(body)
    .execute(sql.pool())
    .await?;
    Ok(())
}

fn kind_name(e: &Event) -> &'static str {
    match e.kind {
        Some(Kind::Online(_)) => "online",
        Some(Kind::Offline(_)) => "offline",
        Some(Kind::Entered(_)) => "entered",
        Some(Kind::Scored(_)) => "scored",
        Some(Kind::Killed(_)) => "killed",
        Some(Kind::Traded(_)) => "traded",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worldmesh_protocol::grpc::persistence::{Entered, Killed, Offline, Online, Scored};

    fn ev(kind: Kind) -> Event {
        Event {
            at_ms: 1,
            kind: Some(kind),
        }
    }

    #[test]
    fn logins_moves_and_scores_make_the_models() {
        let mut m = Models::default();
        let online = |c: u64, gw: &str| {
            ev(Kind::Online(Online {
                character: c,
                name: format!("c{c}"),
                gateway: gw.into(),
                session: c,
            }))
        };
        m.apply(&online(1, "g0"));
        m.apply(&online(2, "g1"));
        m.apply(&ev(Kind::Entered(Entered {
            character: 1,
            zone: 7,
        })));
        // A takeover through another gateway, then the old gateway's late logout.
        m.apply(&online(2, "g0"));
        m.apply(&ev(Kind::Offline(Offline {
            character: 2,
            gateway: "g1".into(),
            session: 2,
        })));
        let who: serde_json::Value = serde_json::from_str(&m.who_is_online()).unwrap();
        assert_eq!(who["players"], 2);
        assert_eq!(who["by_gateway"]["g0"], 2);
        assert_eq!(who["by_zone"]["7"], 1);
        for (c, score) in [(1, 50), (2, 80), (1, 90)] {
            m.apply(&ev(Kind::Scored(Scored {
                character: c,
                name: format!("c{c}"),
                score,
                level: 2,
            })));
        }
        m.apply(&ev(Kind::Killed(Killed {
            killer: 1,
            victim: 2,
        })));
        let top: serde_json::Value = serde_json::from_str(&m.leaderboard()).unwrap();
        assert_eq!(top["top"][0]["name"], "c1");
        assert_eq!(top["top"][0]["score"], 90);
        assert_eq!(top["top"][0]["kills"], 1);
        assert_eq!(top["top"][1]["score"], 80);
    }
}
