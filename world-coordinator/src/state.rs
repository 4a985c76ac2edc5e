//! The coordinator's one task that owns all mutable state: the [`WorldMap`] (zones, leases,
//! cells), the handoff [`Coordinator`] core (authority rows, sagas) and the zone sessions.
//!
//! gRPC handlers send it [`Request`]s. It works in batches: take every request waiting, feed
//! them to the cores, write all resulting authority rows to SQL in **one transaction**, and
//! only then send the resulting messages, so nothing is announced before it is durable (the
//! commit point of the saga). A failed write resyncs those rows from SQL and drops the sends;
//! zones repeat themselves until answered, so nothing is lost by dropping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use worldmesh_protocol::grpc::coordinator as pb;

use crate::Error;
use crate::map::{WorldMap, Zone};
use crate::store::{Store, ZoneRow};
use worldmesh_world::handoff::{
    self, Action, Coordinator, EntityId, Epoch, ToCoordinator, ToZone, ZoneId,
};

/// Requests waiting for the state task. Zone messages dominate; 16k is many ticks of
/// handoffs for a large cluster, and a full queue slows senders rather than dropping.
pub const REQUEST_QUEUE: usize = 16 * 1024;

/// Messages queued towards one zone's session stream. A zone that falls this far behind is
/// cut off and re-syncs when it reconnects.
pub const SESSION_QUEUE: usize = 4096;

/// Attempts at an authority write before memory is resynced from SQL (100 ms apart).
const WRITE_ATTEMPTS: u32 = 30;

/// How often leases, saga timeouts and resends are checked.
pub const HOUSEKEEPING: Duration = Duration::from_millis(20);

pub type SessionSender = mpsc::Sender<Result<pb::CoordinatorEvent, Status>>;

pub enum Request {
    Register {
        name: String,
        address: String,
        capacity: u32,
        reply: oneshot::Sender<Result<Zone, Status>>,
    },
    Heartbeat {
        zone: ZoneId,
        generation: u64,
        load: crate::map::Load,
        time_dilation: f32,
        reply: oneshot::Sender<bool>,
    },
    /// An operator pins `cell` to the zone named `zone` (`None`: unpins it); the answer is
    /// every pin now in force, or `None` when the map does not balance.
    Pin {
        cell: (u32, u32),
        zone: Option<String>,
        reply: oneshot::Sender<Option<Vec<CellPin>>>,
    },
    Drain {
        zone: ZoneId,
        generation: u64,
        reply: oneshot::Sender<bool>,
    },
    Deregister {
        zone: ZoneId,
        generation: u64,
        reply: oneshot::Sender<bool>,
    },
    OpenSession {
        zone: ZoneId,
        generation: u64,
        tx: SessionSender,
        reply: oneshot::Sender<bool>,
    },
    SessionClosed {
        zone: ZoneId,
        tx: SessionSender,
    },
    FromZone {
        zone: ZoneId,
        generation: u64,
        msg: ToCoordinator,
    },
    LocateEntity {
        entity: EntityId,
        reply: oneshot::Sender<Option<(Zone, Epoch)>>,
    },
}

/// A cell `(x, y)` pinned to the zone of that name.
pub type CellPin = ((u32, u32), String);

/// Ranges (zones in curve order, cuts) and pins (cell, zone name), as stored.
type StoredBalance = ((Vec<ZoneId>, Vec<usize>), Vec<(u32, String)>);

/// What readers see without asking the task: the published map.
pub struct Published {
    pub map: pb::WorldMap,
}

pub struct State {
    map: WorldMap,
    core: Coordinator,
    store: Option<Store>,
    sessions: HashMap<ZoneId, SessionSender>,
    published: watch::Sender<Arc<Published>>,
    tick_origin_unix_ms: u64,
    published_version: u64,
    balance: crate::BalanceSettings,
    next_rebalance: Instant,
    /// The ranges and pins last written to SQL.
    stored_balance: Option<StoredBalance>,
    /// Spans of the traced handoff messages in the current batch: they end once the batch's
    /// rows are durable and its messages sent, so they cover the commit point.
    spans: Vec<tracing::Span>,
}

impl State {
    /// Resumes from the store (or starts empty without one).
    pub async fn load(
        mut map: WorldMap,
        store: Option<Store>,
        npcs: u64,
        balance: crate::BalanceSettings,
        published: watch::Sender<Arc<Published>>,
    ) -> Result<Self, Error> {
        let now_ms = unix_ms();
        let (rows, origin) = match &store {
            Some(s) => {
                let loaded = s.load(now_ms).await?;
                map.resume(&loaded.zones, Instant::now());
                if map.is_balancing() {
                    // The configured pins are already set; stored ones (the operator's
                    // latest word) override them cell by cell.
                    for (cell, name) in &loaded.pins {
                        let w = map.geometry().cells_x().max(1);
                        map.pin((cell % w, cell / w), Some(name));
                    }
                    if let Some((zones, cuts)) = loaded.ranges.clone()
                        && !map.restore_ranges(zones, cuts)
                    {
                        tracing::warn!("stored cell ranges do not fit the grid; starting afresh");
                    }
                }
                if !loaded.zones.is_empty() || !loaded.rows.is_empty() {
                    tracing::info!(
                        zones = loaded.zones.len(),
                        entities = loaded.rows.len(),
                        "resumed from SQL"
                    );
                }
                (loaded.rows, loaded.tick_origin_unix_ms)
            }
            None => (Vec::new(), now_ms),
        };
        let live: Vec<ZoneId> = map.zones().map(|z| z.id).collect();
        let mut state = Self {
            map,
            core: Coordinator::new(rows, live).with_npcs(npcs),
            store,
            sessions: HashMap::new(),
            published,
            tick_origin_unix_ms: origin,
            published_version: 0,
            next_rebalance: Instant::now() + balance.every,
            balance,
            stored_balance: None,
            spans: Vec::new(),
        };
        // A coordinator that died halfway through a failover finishes it now.
        let actions = state
            .core
            .reassign_orphans(Instant::now(), state.survivor_fn());
        state.perform(actions).await?;
        state.publish();
        Ok(state)
    }

    pub fn tick_origin_unix_ms(&self) -> u64 {
        self.tick_origin_unix_ms
    }

    /// Picks who inherits an orphaned entity: spread over live zones that are not draining.
    /// The heir hands the entity on if it stands elsewhere, so any live zone is correct; an
    /// NPC goes straight to the zone owning its spawn point (where a restored NPC stands),
    /// saving that handoff.
    fn survivor_fn(&self) -> impl Fn(EntityId) -> Option<ZoneId> + use<> {
        let mut heirs: Vec<ZoneId> = self
            .map
            .zones()
            .filter(|z| !z.draining)
            .map(|z| z.id)
            .collect();
        if heirs.is_empty() {
            heirs = self.map.zones().map(|z| z.id).collect();
        }
        let geometry = self.map.geometry().clone();
        let homes: HashMap<(u32, u32), ZoneId> = {
            let (cx, cy) = (geometry.cells_x(), geometry.cells_y());
            (0..cy)
                .flat_map(|y| (0..cx).map(move |x| (x, y)))
                .filter_map(|(x, y)| {
                    let (z, _) = self.map.locate(
                        geometry.min_x + (x as f32 + 0.5) * geometry.cell_size,
                        geometry.min_y + (y as f32 + 0.5) * geometry.cell_size,
                    )?;
                    (!z.draining && heirs.contains(&z.id)).then_some(((x, y), z.id))
                })
                .collect()
        };
        move |e| {
            if let Some(i) = e.npc_index() {
                let (x, y) = geometry.npc_home(i);
                if let Some(&z) = homes.get(&geometry.cell_of(x, y)) {
                    return Some(z);
                }
            }
            (!heirs.is_empty()).then(|| heirs[e.0 as usize % heirs.len()])
        }
    }

    /// Serves requests until `shutdown`. Ends early only with [`Error::AuthorityUnreadable`]:
    /// the caller stops the coordinator, and a restart resumes from SQL.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut actions = Vec::new();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = requests.recv() => {
                    let Some(r) = r else { return Ok(()) };
                    self.handle(r, &mut actions).await;
                    // Batch whatever else is already waiting into the same transaction.
                    for _ in 0..1024 {
                        match requests.try_recv() {
                            Ok(r) => self.handle(r, &mut actions).await,
                            Err(_) => break,
                        }
                    }
                }
                _ = housekeeping.tick() => self.housekeeping(&mut actions).await,
            }
            self.perform(actions).await?;
            self.spans.clear();
            self.publish();
        }
    }

    async fn housekeeping(&mut self, actions: &mut Vec<Action>) {
        let now = Instant::now();
        for zone in self.map.expire(now) {
            tracing::warn!(zone = zone.id.0, name = %zone.name, "zone lease expired; failing over its entities");
            metrics::counter!("worldmesh_coordinator_lease_expiries_total").increment(1);
            self.zone_gone(&zone, actions).await;
        }
        actions.extend(self.core.on_tick(now));
        if self.map.is_balancing() && now >= self.next_rebalance {
            self.next_rebalance = now + self.balance.every;
            self.rebalance().await;
        }
        metrics::gauge!("worldmesh_coordinator_load_imbalance")
            .set(self.map.load_imbalance() as f64);
        // Zones joining, leaving and draining change the ranges too.
        self.store_balance().await;
    }

    /// One rebalance step: cells move between neighbouring ranges towards even load; the
    /// zones hand the characters in them over when the new map reaches them.
    async fn rebalance(&mut self) {
        let moved = self.map.rebalance(&self.balance.config);
        if moved.is_empty() {
            return;
        }
        let w = self.map.geometry().cells_x();
        for m in &moved {
            tracing::info!(
                cell_x = m.cell % w,
                cell_y = m.cell / w,
                from = m.from.0,
                to = m.to.0,
                "cell reassigned by load"
            );
        }
        metrics::counter!("worldmesh_coordinator_cell_moves_total").increment(moved.len() as u64);
        self.store_balance().await;
    }

    /// Every pin now in force, by cell.
    fn pins(&self) -> Vec<CellPin> {
        let w = self.map.geometry().cells_x();
        self.map
            .pins()
            .iter()
            .map(|(&c, name)| ((c % w, c / w), name.clone()))
            .collect()
    }

    /// Writes the ranges and pins when they changed since the last write. A failed write is
    /// retried at the next housekeeping; the map in memory stays authoritative meanwhile
    /// (ranges only say where borders are: a restart with older ranges moves some cells back,
    /// and the zones hand characters over as for any map change).
    async fn store_balance(&mut self) {
        let Some(store) = &self.store else { return };
        let Some(ranges) = self.map.ranges() else {
            return;
        };
        let pins: Vec<(u32, String)> = self
            .map
            .pins()
            .iter()
            .map(|(&c, n)| (c, n.clone()))
            .collect();
        let now = (ranges, pins);
        if self.stored_balance.as_ref() == Some(&now) {
            return;
        }
        match store.put_balance(&now.0.0, &now.0.1, &now.1).await {
            Ok(()) => self.stored_balance = Some(now),
            Err(e) => tracing::error!(error = %e, "cannot store the cell ranges; retrying"),
        }
    }

    async fn zone_gone(&mut self, zone: &Zone, actions: &mut Vec<Action>) {
        self.sessions.remove(&zone.id);
        if let Some(s) = &self.store
            && let Err(e) = s.delete_zone(zone.id).await
        {
            tracing::error!(zone = zone.id.0, error = %e, "cannot delete zone row");
        }
        let survivor = self.survivor_fn();
        actions.extend(
            self.core
                .zone_down(ZoneId(zone.id.into()), Instant::now(), survivor),
        );
    }

    async fn handle(&mut self, r: Request, actions: &mut Vec<Action>) {
        match r {
            Request::Register {
                name,
                address,
                capacity,
                reply,
            } => {
                let (zone, replaced) =
                    self.map
                        .register_replacing(&name, &address, capacity, Instant::now());
                if let Some(old) = replaced {
                    tracing::info!(old = old.id.0, new = zone.id.0, %name, "zone re-registered; its previous incarnation is gone");
                    self.zone_gone(&old, actions).await;
                }
                if let Some(s) = &self.store
                    && let Err(e) = s.put_zone(&zone_row(&zone)).await
                {
                    tracing::error!(error = %e, "cannot store zone registration");
                    self.map.expire_now(zone.id);
                    let _ = reply.send(Err(Status::unavailable("coordinator storage failed")));
                    return;
                }
                tracing::info!(zone = zone.id.0, name = %zone.name, address = %zone.address, "zone registered");
                metrics::counter!("worldmesh_coordinator_zone_registrations_total").increment(1);
                let survivor = self.survivor_fn();
                actions.extend(self.core.zone_up(zone.id, Instant::now(), survivor));
                let _ = reply.send(Ok(zone));
            }
            Request::Pin { cell, zone, reply } => {
                let done = self.map.pin(cell, zone.as_deref());
                if done {
                    tracing::info!(
                        cell_x = cell.0,
                        cell_y = cell.1,
                        zone = zone.as_deref().unwrap_or("(unpinned)"),
                        "cell pin set by an operator"
                    );
                    self.store_balance().await;
                }
                let _ = reply.send(done.then(|| self.pins()));
            }
            Request::Heartbeat {
                zone,
                generation,
                load,
                time_dilation,
                reply,
            } => {
                let (entities, players, tick_p99_ms) =
                    (load.entities, load.players, load.tick_p99_ms);
                let ok = self.map.heartbeat(zone, generation, load, Instant::now());
                if ok {
                    // The load a zone reports: what a rebalancer (and ops) would act on.
                    let z = zone.to_string();
                    metrics::gauge!("worldmesh_coordinator_zone_players", "zone" => z.clone())
                        .set(players as f64);
                    metrics::gauge!("worldmesh_coordinator_zone_entities", "zone" => z.clone())
                        .set(entities as f64);
                    metrics::gauge!("worldmesh_coordinator_zone_tick_p99_ms", "zone" => z.clone())
                        .set(tick_p99_ms as f64);
                    let dilation = if time_dilation > 0.0 {
                        time_dilation
                    } else {
                        1.0
                    };
                    metrics::gauge!("worldmesh_coordinator_zone_time_dilation", "zone" => z)
                        .set(dilation as f64);
                }
                let _ = reply.send(ok);
            }
            Request::Drain {
                zone,
                generation,
                reply,
            } => {
                let ok = self.map.drain(zone, generation);
                if ok {
                    tracing::info!(zone = zone.0, "zone draining: its cells move to the others");
                    if let (Some(s), Some(z)) = (&self.store, self.map.zone(zone))
                        && let Err(e) = s.put_zone(&zone_row(z)).await
                    {
                        tracing::error!(error = %e, "cannot store drain flag");
                    }
                }
                let _ = reply.send(ok);
            }
            Request::Deregister {
                zone,
                generation,
                reply,
            } => {
                let known = self
                    .map
                    .zone(zone)
                    .is_some_and(|z| z.lease_generation == generation);
                if known && let Some(z) = self.map.expire_now(zone) {
                    tracing::info!(zone = zone.0, name = %z.name, "zone stopped and left the map");
                    self.sessions.remove(&zone);
                    if let Some(s) = &self.store
                        && let Err(e) = s.delete_zone(zone).await
                    {
                        tracing::error!(zone = zone.0, error = %e, "cannot delete zone row");
                    }
                    let survivor = self.survivor_fn();
                    actions.extend(self.core.zone_stopped(zone, Instant::now(), survivor));
                }
                let _ = reply.send(known);
            }
            Request::OpenSession {
                zone,
                generation,
                tx,
                reply,
            } => {
                let ok = self
                    .map
                    .zone(zone)
                    .is_some_and(|z| z.lease_generation == generation);
                if ok {
                    self.sessions.insert(zone, tx);
                }
                let _ = reply.send(ok);
            }
            Request::SessionClosed { zone, tx } => {
                if self
                    .sessions
                    .get(&zone)
                    .is_some_and(|s| s.same_channel(&tx))
                {
                    self.sessions.remove(&zone);
                }
            }
            Request::FromZone {
                zone,
                generation,
                msg,
            } => {
                if self
                    .map
                    .zone(zone)
                    .is_none_or(|z| z.lease_generation != generation)
                {
                    return;
                }
                if let Some(span) = handoff_span(zone, &msg) {
                    self.spans.push(span);
                }
                actions.extend(self.core.on_message(Instant::now(), zone, msg));
            }
            Request::LocateEntity { entity, reply } => {
                let found = self.core.row(entity).and_then(|r| {
                    self.map
                        .zone(r.zone)
                        .filter(|_| self.core.live().contains(&r.zone))
                        .map(|z| (z.clone(), r.epoch))
                });
                let _ = reply.send(found);
            }
        }
    }

    /// Writes first, in one transaction; then sends. See the module doc.
    async fn perform(&mut self, actions: Vec<Action>) -> Result<(), Error> {
        if actions.is_empty() {
            return Ok(());
        }
        let mut rows: BTreeMap<EntityId, handoff::Authority> = BTreeMap::new();
        let mut sends = Vec::new();
        for a in actions {
            match a {
                Action::Write { entity, row } => {
                    rows.insert(entity, row);
                }
                Action::Send(zone, msg) => sends.push((zone, msg)),
            }
        }
        if let Some(store) = &self.store
            && !rows.is_empty()
        {
            let batch: Vec<_> = rows.into_iter().collect();
            let started = Instant::now();
            // Memory already holds these rows: they must become durable before anything is
            // announced, or memory must go back to what SQL holds. Retry for a while (zones
            // keep ticking; only handoffs and logins wait), then resync from SQL; if SQL cannot
            // even be read, exit: a restarted coordinator resumes from SQL, which is safe.
            let mut attempt = 0;
            while let Err(e) = store.write_rows(&batch).await {
                attempt += 1;
                metrics::counter!("worldmesh_coordinator_sql_errors_total").increment(1);
                if attempt < WRITE_ATTEMPTS {
                    tracing::warn!(error = %e, attempt, rows = batch.len(), "authority write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                tracing::error!(error = %e, rows = batch.len(), "authority write keeps failing; resyncing from SQL and dropping the replies");
                for (entity, _) in &batch {
                    match store.read_row(*entity).await {
                        Ok(row) => self.core.reload(*entity, row),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read authority back; stopping so a restart resumes from SQL");
                            return Err(Error::AuthorityUnreadable(e));
                        }
                    }
                }
                return Ok(());
            }
            metrics::histogram!("worldmesh_coordinator_authority_write_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        for (zone, msg) in sends {
            if let ToZone::Decided {
                outcome: handoff::Outcome::Committed,
                ..
            } = &msg
            {
                metrics::counter!("worldmesh_coordinator_handoff_messages_total", "outcome" => "committed").increment(1);
            }
            let Some(tx) = self.sessions.get(&zone) else {
                continue;
            };
            let event = pb::CoordinatorEvent {
                msg: Some(worldmesh_world::convert::to_zone_pb(msg)),
            };
            if tx.try_send(Ok(event)).is_err() {
                tracing::warn!(
                    zone = zone.0,
                    "zone session queue full or closed; it will re-sync when it reconnects"
                );
                self.sessions.remove(&zone);
            }
        }
        Ok(())
    }

    fn publish(&mut self) {
        if self.map.version() == self.published_version {
            return;
        }
        self.published_version = self.map.version();
        metrics::gauge!("worldmesh_coordinator_zones").set(self.map.zones().count() as f64);
        let map = crate::service::world_map_pb(&self.map, self.tick_origin_unix_ms);
        self.published.send_replace(Arc::new(Published { map }));
    }
}

/// The coordinator's span for a handoff message, in the handoff's trace (the zones put its
/// traceparent on `Begin` and echo it on `Prepared`).
fn handoff_span(zone: ZoneId, msg: &ToCoordinator) -> Option<tracing::Span> {
    let (name, id, entity, trace) = match msg {
        ToCoordinator::Begin {
            id, entity, trace, ..
        } => ("begin", id, entity, trace),
        ToCoordinator::Prepared {
            id, entity, trace, ..
        } => ("prepared", id, entity, trace),
        _ => return None,
    };
    let span = tracing::info_span!(
        "coordinator.handoff",
        otel.name = %format_args!("coordinator.handoff.{name}"),
        handoff = %id,
        entity = entity.0,
        zone = zone.0,
    );
    worldmesh_runtime::telemetry::follow(&span, trace);
    Some(span)
}

fn zone_row(z: &Zone) -> ZoneRow {
    ZoneRow {
        id: ZoneId(z.id.into()),
        name: z.name.clone(),
        address: z.address.clone(),
        capacity: z.capacity,
        lease_generation: z.lease_generation,
        draining: z.draining,
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
