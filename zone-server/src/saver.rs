//! The checkpoint writer: sends checkpoints to persistence, in order, retrying until they are
//! acknowledged, then tells gateways which leaving players are saved.
//!
//! Failure policy: nothing is dropped. While persistence refuses (down, or its backlog is full
//! and it answers `RESOURCE_EXHAUSTED`), the saver backs off (doubling to
//! [`MAX_BACKOFF`]) and keeps retrying. Jobs queued meanwhile are *coalesced* into one batch
//! holding the newest state of each character, so a long outage costs memory bounded by the
//! number of characters, not by its length. Players leaving during an outage are answered
//! `Left` once their state is in; the gateway's own wait for that answer is bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use worldmesh_protocol::grpc::persistence::{
    self as persistence_pb, SaveCharactersRequest, persistence_client::PersistenceClient,
};
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};
use worldmesh_runtime::Channel;

use worldmesh_protocol::ids::EntityId;

use crate::character::Character;
use crate::link::Links;

/// Save jobs waiting for the saver. The tick thread keeps its own backlog beyond this bound.
pub const SAVE_QUEUE: usize = 256;

/// Longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct SaveJob {
    pub characters: Vec<Character>,
    /// Players to answer with `Left` once this job is saved.
    pub leaving: Vec<crate::sim::Player>,
}

pub async fn run(
    mut persistence: PersistenceClient<Channel>,
    mut jobs: mpsc::Receiver<SaveJob>,
    links: Arc<Links>,
    commands: mpsc::Sender<crate::command::Command>,
) {
    let runtime = tokio::runtime::Handle::current();
    while let Some(first) = jobs.recv().await {
        // Coalesce everything already queued: newest stamp per character wins.
        let mut newest: HashMap<EntityId, Character> = HashMap::new();
        let mut leaving = Vec::new();
        let mut absorb = |job: SaveJob, newest: &mut HashMap<EntityId, Character>| {
            for c in job.characters {
                match newest.get(&c.id) {
                    Some(old) if !c.newer_than(old) => {}
                    _ => {
                        newest.insert(c.id, c);
                    }
                }
            }
            leaving.extend(job.leaving);
        };
        absorb(first, &mut newest);
        while let Ok(job) = jobs.try_recv() {
            absorb(job, &mut newest);
        }
        let batch: Vec<Character> = newest.into_values().collect();
        let rejected = save_until_acked(&mut persistence, &batch).await;
        if !rejected.is_empty() {
            let ids = batch
                .iter()
                .filter(|c| rejected.contains(&c.id.0))
                .map(|c| (c.id, c.epoch))
                .collect();
            let _ = commands.send(crate::command::Command::Fenced { ids }).await;
        }
        for crate::sim::Player { link, player_id } in leaving {
            crate::link::send_control(
                &links,
                &runtime,
                link,
                Msg::Left(pb::Left {
                    player_id: player_id.0,
                    saved: true,
                }),
            );
        }
    }
}

/// Returns the ids persistence refused as stale.
async fn save_until_acked(
    persistence: &mut PersistenceClient<Channel>,
    batch: &[Character],
) -> Vec<u64> {
    let wire: Vec<persistence_pb::Character> = batch.iter().cloned().map(Into::into).collect();
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match persistence
            .save_characters(SaveCharactersRequest {
                characters: wire.clone(),
            })
            .await
        {
            Ok(reply) => {
                let rejected = &reply.get_ref().rejected;
                if !rejected.is_empty() {
                    // Stale: a newer owner (epoch) or a newer version is stored; ours is moot.
                    tracing::warn!(?rejected, "persistence refused stale character states");
                    metrics::counter!("worldmesh_zone_saves_rejected_total")
                        .increment(rejected.len() as u64);
                }
                metrics::counter!("worldmesh_zone_saves_total").increment(batch.len() as u64);
                return reply.into_inner().rejected;
            }
            Err(e) => {
                // Log the first failure and then every tenth, not every retry.
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempt, characters = batch.len(), "checkpoint failed; retrying");
                }
                metrics::counter!("worldmesh_zone_save_errors_total", "code" => format!("{:?}", e.code())).increment(1);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
