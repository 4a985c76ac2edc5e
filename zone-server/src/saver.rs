//! The checkpoint writer: sends save jobs to persistence one at a time, in order, with bounded
//! retries, then tells gateways which leaving players are saved.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use worldmesh_protocol::grpc::persistence::{persistence_client::PersistenceClient, Character, SaveCharactersRequest};
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};

use crate::link::Links;

/// Save jobs waiting for the saver. The tick thread keeps its own backlog beyond this bound.
pub const SAVE_QUEUE: usize = 256;

/// Attempts per job: with the backoff below (50 ms doubling to 2 s) about 10 s in all, longer
/// than a persistence restart on loopback, short enough that a leaving player is answered.
const MAX_ATTEMPTS: u32 = 9;

pub struct SaveJob {
    pub characters: Vec<Character>,
    /// (link, player) pairs to answer with `Left` once this job is saved.
    pub leaving: Vec<(u32, u64)>,
}

pub async fn run(mut persistence: PersistenceClient<Channel>, mut jobs: mpsc::Receiver<SaveJob>, links: Arc<Links>) {
    let runtime = tokio::runtime::Handle::current();
    while let Some(job) = jobs.recv().await {
        let saved = save_with_retry(&mut persistence, &job.characters).await;
        for (link, player_id) in job.leaving {
            crate::link::send_control(&links, &runtime, link, Msg::Left(pb::Left { player_id, saved }));
        }
    }
}

async fn save_with_retry(persistence: &mut PersistenceClient<Channel>, batch: &[Character]) -> bool {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=MAX_ATTEMPTS {
        match persistence.save_characters(SaveCharactersRequest { characters: batch.to_vec() }).await {
            Ok(reply) => {
                let rejected = &reply.get_ref().rejected;
                if !rejected.is_empty() {
                    tracing::warn!(?rejected, "persistence refused stale character states");
                    metrics::counter!("worldmesh_zone_saves_rejected_total").increment(rejected.len() as u64);
                }
                metrics::counter!("worldmesh_zone_saves_total").increment(batch.len() as u64);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, characters = batch.len(), "checkpoint failed; retrying");
                metrics::counter!("worldmesh_zone_save_errors_total").increment(1);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    tracing::error!(characters = batch.len(), "checkpoint failed after {MAX_ATTEMPTS} attempts; state since the last checkpoint is lost");
    false
}
