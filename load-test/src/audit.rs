//! Loss and duplicate audits: while the bots play, each bot's character must be in exactly one
//! zone, and each of the world's NPCs too.
//!
//! Every zone publishes, at the same ticks (those divisible by a fixed period), the characters
//! it simulates and those it holds frozen mid-handoff. [`AuditCounter`] judges rounds of these
//! audits against the bots' characters, without I/O; [`RemoteAuditor`] fetches the rounds from
//! a deployed cluster (`ZoneLink.Audit` on every zone in the coordinator's map), and
//! `worldmesh local` reads them from its zones in process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, coordinator_client::CoordinatorClient,
};
use worldmesh_protocol::grpc::zone::{AuditRequest, zone_link_client::ZoneLinkClient};
use worldmesh_runtime::Channel;

use crate::Stats;

/// One zone's audit at one tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneAudit {
    /// The tick it was taken at; 0: the zone has not audited yet.
    pub tick: u32,
    /// Characters simulated and shown to players.
    pub simulated: Vec<u64>,
    /// Characters frozen for a handoff in flight.
    pub frozen: Vec<u64>,
    /// The world's NPCs simulated here.
    pub npcs: Vec<u64>,
    /// NPCs held here but not simulated: frozen mid-handoff, or defeated and waiting to come
    /// back. Present, never duplicates.
    pub npcs_held: Vec<u64>,
}

/// What an audit found, over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audited {
    /// Distinct bots' characters lost (see [`AuditCounter`]).
    pub lost: u64,
    /// Distinct characters duplicated.
    pub duplicated: u64,
    /// The world's NPCs, alive or waiting to come back, in the last round judged.
    pub npcs: u64,
    /// Distinct NPCs simulated by two zones at once (two rounds in a row).
    pub npc_duplicates: u64,
}

/// Judges rounds of zone audits against the bots' characters. A round is every zone's audit
/// at one tick; a round whose zones disagree on the tick, or that repeats the last tick
/// judged, is ignored. A character simulated by two zones is duplicated; a bot's character in
/// no zone (not even frozen mid-handoff) is lost. Either must hold in two rounds in a row to
/// count, so a handoff completing between two zones' audits of the same tick is not mistaken
/// for either. Counts are of distinct characters. NPCs are judged for duplicates the same way,
/// and counted (the world must keep exactly its N).
#[derive(Debug, Default, Clone)]
pub struct AuditCounter {
    /// The tick of the last round judged; 0 (nothing published yet) is never judged.
    last_tick: u32,
    rounds: u64,
    prev_lost: BTreeSet<u64>,
    prev_dup: BTreeSet<u64>,
    lost: BTreeSet<u64>,
    duplicated: BTreeSet<u64>,
    prev_npc_dup: BTreeSet<u64>,
    npc_duplicated: BTreeSet<u64>,
    npcs: u64,
}

impl AuditCounter {
    /// Judges one round: `snaps` has one audit per zone, `bot_entities` the characters the
    /// bots are playing now.
    pub fn observe(&mut self, snaps: &[ZoneAudit], bot_entities: &[u64]) {
        let Some(tick) = snaps.first().map(|s| s.tick) else {
            return;
        };
        if tick == self.last_tick || snaps.iter().any(|s| s.tick != tick) {
            return;
        }
        self.last_tick = tick;
        self.rounds += 1;
        let (dup_now, present) = tally(snaps.iter().map(|s| (&s.simulated, &s.frozen)));
        let (npc_dup_now, npcs) = tally(snaps.iter().map(|s| (&s.npcs, &s.npcs_held)));
        self.npcs = npcs.len() as u64;
        self.npc_duplicated
            .extend(npc_dup_now.intersection(&self.prev_npc_dup).copied());
        self.prev_npc_dup = npc_dup_now;
        let lost_now: BTreeSet<u64> = bot_entities
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        self.duplicated
            .extend(dup_now.intersection(&self.prev_dup).copied());
        self.lost
            .extend(lost_now.intersection(&self.prev_lost).copied());
        self.prev_dup = dup_now;
        self.prev_lost = lost_now;
    }

    /// Distinct bots' characters found in no zone in two rounds in a row.
    pub fn lost(&self) -> u64 {
        self.lost.len() as u64
    }

    /// Distinct characters simulated by two zones at once in two rounds in a row.
    pub fn duplicated(&self) -> u64 {
        self.duplicated.len() as u64
    }

    /// Rounds judged so far. Zero means the counts say nothing.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Everything found so far.
    pub fn audited(&self) -> Audited {
        Audited {
            lost: self.lost(),
            duplicated: self.duplicated(),
            npcs: self.npcs,
            npc_duplicates: self.npc_duplicated.len() as u64,
        }
    }
}

/// Over one round's zones, each giving (simulated, otherwise held): the ids simulated by more
/// than one zone, and every id present anywhere.
fn tally<'a>(
    zones: impl Iterator<Item = (&'a Vec<u64>, &'a Vec<u64>)>,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    let mut present = BTreeSet::new();
    for (simulated, held) in zones {
        for &id in simulated {
            *count.entry(id).or_default() += 1;
            present.insert(id);
        }
        present.extend(held.iter().copied());
    }
    let dup = count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(id, _)| id)
        .collect();
    (dup, present)
}

/// How often [`RemoteAuditor`] asks. Zones publish once a second; asking ten times as often
/// catches each publication soon after it, while every zone still shows it.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// The longest wait for one answer. A zone slower than that has no audit for this round, and
/// the round is skipped.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// Why a remote audit cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid coordinator URL {0:?}")]
    InvalidUrl(String),
    #[error("the cluster secret must be visible ASCII")]
    InvalidSecret,
}

/// Shown in logs in place of an address when the coordinator does not answer.
const COORDINATOR: &str = "the coordinator";

/// Audits a cluster in other processes (or on Kubernetes) over gRPC, feeding an
/// [`AuditCounter`]: every [`POLL_EVERY`], the coordinator's map, then `Audit` on every zone in
/// it, draining ones included (their characters are still theirs until handed off).
pub struct RemoteAuditor {
    coordinator: CoordinatorClient<Channel>,
    cluster_secret: Option<String>,
    /// One client per zone address, kept across rounds (its channel reconnects by itself).
    zones: HashMap<String, ZoneLinkClient<Channel>>,
    /// What did not answer last time, so that an outage is logged once, not ten times a
    /// second.
    failing: BTreeSet<String>,
    counter: AuditCounter,
    /// Rounds with an answer missing.
    skipped: u64,
}

impl RemoteAuditor {
    /// `coordinator_url` is `http://host:port`: its map lists the zones to audit. Zones refuse
    /// `Audit` without their `cluster_secret`, as they refuse every other call. Checks the URL
    /// and the secret; connects on the first round. Must be called within a Tokio runtime (a
    /// lazy tonic channel spawns its worker at once).
    pub fn new(coordinator_url: &str, cluster_secret: Option<String>) -> Result<Self, AuditError> {
        worldmesh_runtime::Outgoing::new(cluster_secret.as_deref())
            .map_err(|_| AuditError::InvalidSecret)?;
        let channel =
            worldmesh_runtime::grpc_channel_with_secret(coordinator_url, cluster_secret.as_deref())
                .map_err(|_| AuditError::InvalidUrl(coordinator_url.to_owned()))?;
        Ok(Self {
            coordinator: CoordinatorClient::new(channel),
            cluster_secret,
            zones: HashMap::new(),
            failing: BTreeSet::new(),
            counter: AuditCounter::default(),
            skipped: 0,
        })
    }

    /// Audits until `stop`. Returns what it found, or `None` when not one round could be
    /// judged: zero would claim a check that never happened.
    pub async fn run(mut self, bots: Arc<Stats>, stop: CancellationToken) -> Option<Audited> {
        let mut every = tokio::time::interval(POLL_EVERY);
        // A slow round (a zone timing out) is followed by the usual pause, not by a burst of
        // catch-up rounds.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let round = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.round() => r,
            };
            match round {
                Some(snaps) => self.counter.observe(&snaps, &bots.entities()),
                None => self.skipped += 1,
            }
        }
        let (rounds, skipped) = (self.counter.rounds(), self.skipped);
        if rounds == 0 {
            tracing::warn!(
                skipped,
                "audit: no round had every zone's audit at one tick; lost and duplicated characters are not reported"
            );
            return None;
        }
        if skipped > 0 {
            tracing::warn!(
                rounds,
                skipped,
                "audit: some rounds were skipped while a zone or the coordinator did not answer"
            );
        }
        Some(self.counter.audited())
    }

    /// One round: the map, then every zone in it, all at once. `None` when anything did not
    /// answer: without one zone's characters the others' say nothing about loss.
    async fn round(&mut self) -> Option<Vec<ZoneAudit>> {
        let asked =
            tokio::time::timeout(CALL_TIMEOUT, self.coordinator.get_world(GetWorldRequest {}));
        let map = match asked.await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                self.failed(
                    COORDINATOR,
                    &format!("{:?}: {}", status.code(), status.message()),
                );
                return None;
            }
            Err(_) => {
                self.failed(COORDINATOR, "timed out");
                return None;
            }
        };
        self.answered(COORDINATOR);
        // Zones that left the map (drained, failed over) need no client any more.
        let in_map = |address: &String| map.zones.iter().any(|z| z.address == *address);
        self.zones.retain(|address, _| in_map(address));
        self.failing
            .retain(|source| source == COORDINATOR || in_map(source));
        let mut calls = JoinSet::new();
        for zone in &map.zones {
            let mut client = self.client(&zone.address)?;
            let address = zone.address.clone();
            calls.spawn(async move {
                let reply = tokio::time::timeout(CALL_TIMEOUT, client.audit(AuditRequest {})).await;
                (address, reply)
            });
        }
        let mut snaps = Vec::with_capacity(map.zones.len());
        let mut complete = true;
        while let Some(joined) = calls.join_next().await {
            // Only a panicking call task gets here without its address.
            let Ok((address, reply)) = joined else {
                complete = false;
                continue;
            };
            match reply {
                Ok(Ok(reply)) => {
                    self.answered(&address);
                    let a = reply.into_inner();
                    let mut npcs_held = a.npcs_frozen;
                    npcs_held.extend(a.npcs_waiting);
                    snaps.push(ZoneAudit {
                        tick: a.tick,
                        simulated: a.simulated,
                        frozen: a.frozen,
                        npcs: a.npcs,
                        npcs_held,
                    });
                }
                Ok(Err(status)) => {
                    self.failed(
                        &address,
                        &format!("{:?}: {}", status.code(), status.message()),
                    );
                    complete = false;
                }
                Err(_) => {
                    self.failed(&address, "timed out");
                    complete = false;
                }
            }
        }
        complete.then_some(snaps)
    }

    /// The client for a zone, made on first use; `None` for an address that is no URL.
    fn client(&mut self, address: &str) -> Option<ZoneLinkClient<Channel>> {
        if let Some(client) = self.zones.get(address) {
            return Some(client.clone());
        }
        // The secret was checked in `new`: only the address can be wrong.
        let channel =
            worldmesh_runtime::grpc_channel_with_secret(address, self.cluster_secret.as_deref());
        match channel {
            Ok(channel) => {
                let client = ZoneLinkClient::new(channel);
                self.zones.insert(address.to_owned(), client.clone());
                Some(client)
            }
            Err(_) => {
                self.failed(address, "the coordinator lists it at an invalid URL");
                None
            }
        }
    }

    fn failed(&mut self, source: &str, reason: &str) {
        if self.failing.insert(source.to_owned()) {
            tracing::warn!(
                %source,
                %reason,
                "audit: no answer; rounds are skipped until it answers (or, a zone, leaves the map)"
            );
        }
    }

    fn answered(&mut self, source: &str) {
        if self.failing.remove(source) {
            tracing::info!(%source, "audit: answering again");
        }
    }
}

/// Audits a cluster through its coordinator until `stop`: [`RemoteAuditor::new`], then
/// [`RemoteAuditor::run`].
pub async fn run_remote(
    coordinator_url: String,
    cluster_secret: Option<String>,
    bots: Arc<Stats>,
    stop: CancellationToken,
) -> Result<Option<Audited>, AuditError> {
    Ok(RemoteAuditor::new(&coordinator_url, cluster_secret)?
        .run(bots, stop)
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(tick: u32, simulated: &[u64], frozen: &[u64]) -> ZoneAudit {
        ZoneAudit {
            tick,
            simulated: simulated.to_vec(),
            frozen: frozen.to_vec(),
            ..ZoneAudit::default()
        }
    }

    #[test]
    fn npcs_are_counted_waiting_ones_too_and_doubles_found() {
        let npcs = |tick, simulated: &[u64], held: &[u64]| ZoneAudit {
            tick,
            npcs: simulated.to_vec(),
            npcs_held: held.to_vec(),
            ..ZoneAudit::default()
        };
        let mut c = AuditCounter::default();
        // 100 simulated in zone 1, 101 waiting there, 102 mid-handoff (frozen in 2, live in 1).
        for tick in [20, 40] {
            c.observe(
                &[npcs(tick, &[100, 102], &[101]), npcs(tick, &[], &[102])],
                &[],
            );
        }
        assert_eq!(c.audited().npcs, 3);
        assert_eq!(c.audited().npc_duplicates, 0);
        // 100 simulated by both zones, two rounds in a row: one duplicate.
        for tick in [60, 80] {
            c.observe(&[npcs(tick, &[100], &[]), npcs(tick, &[100], &[])], &[]);
        }
        assert_eq!(c.audited().npcs, 1);
        assert_eq!(c.audited().npc_duplicates, 1);
    }

    #[test]
    fn a_character_in_two_zones_twice_in_a_row_is_duplicated_once() {
        let mut c = AuditCounter::default();
        for tick in [20, 40, 60] {
            c.observe(&[zone(tick, &[7], &[]), zone(tick, &[7], &[])], &[7]);
        }
        assert_eq!((c.duplicated(), c.lost(), c.rounds()), (1, 0, 3));
    }

    #[test]
    fn a_character_in_two_zones_in_rounds_not_in_a_row_is_not_duplicated() {
        // What a handoff completing between two zones' audits of one tick looks like.
        let mut c = AuditCounter::default();
        c.observe(&[zone(20, &[7], &[]), zone(20, &[7], &[])], &[7]);
        c.observe(&[zone(40, &[], &[]), zone(40, &[7], &[])], &[7]);
        c.observe(&[zone(60, &[7], &[]), zone(60, &[7], &[])], &[7]);
        assert_eq!((c.duplicated(), c.lost(), c.rounds()), (0, 0, 3));
    }

    #[test]
    fn a_bots_character_in_no_zone_twice_in_a_row_is_lost() {
        let mut c = AuditCounter::default();
        c.observe(&[zone(20, &[1], &[]), zone(20, &[], &[])], &[1, 9]);
        c.observe(&[zone(40, &[1], &[]), zone(40, &[], &[])], &[1, 9]);
        assert_eq!((c.lost(), c.duplicated()), (1, 0));
    }

    #[test]
    fn a_bots_character_missing_from_one_round_is_not_lost() {
        let mut c = AuditCounter::default();
        c.observe(&[zone(20, &[1], &[])], &[1, 9]);
        c.observe(&[zone(40, &[1, 9], &[])], &[1, 9]);
        c.observe(&[zone(60, &[1], &[])], &[1, 9]);
        assert_eq!((c.lost(), c.rounds()), (0, 3));
    }

    #[test]
    fn frozen_counts_as_present_but_not_as_a_duplicate() {
        // 5: frozen at the source, simulated at the target (mid-handoff); 6: frozen only.
        let mut c = AuditCounter::default();
        for tick in [20, 40, 60] {
            c.observe(&[zone(tick, &[5], &[6]), zone(tick, &[], &[5])], &[5, 6]);
        }
        assert_eq!((c.lost(), c.duplicated(), c.rounds()), (0, 0, 3));
    }

    #[test]
    fn rounds_whose_zones_disagree_on_the_tick_are_ignored() {
        let mut c = AuditCounter::default();
        c.observe(&[zone(20, &[7], &[]), zone(40, &[7], &[])], &[9]);
        c.observe(&[zone(40, &[7], &[]), zone(60, &[7], &[])], &[9]);
        assert_eq!((c.lost(), c.duplicated(), c.rounds()), (0, 0, 0));
    }

    #[test]
    fn a_tick_seen_again_is_one_round() {
        // The remote auditor asks about ten times per publication.
        let mut c = AuditCounter::default();
        for _ in 0..3 {
            c.observe(&[zone(20, &[7], &[]), zone(20, &[7], &[])], &[9]);
        }
        assert_eq!((c.lost(), c.duplicated(), c.rounds()), (0, 0, 1));
    }

    #[test]
    fn no_zone_or_nothing_published_yet_is_no_round() {
        let mut c = AuditCounter::default();
        c.observe(&[], &[9]);
        c.observe(&[zone(0, &[], &[]), zone(0, &[], &[])], &[9]);
        c.observe(&[], &[9]);
        assert_eq!((c.lost(), c.rounds()), (0, 0));
    }
}
