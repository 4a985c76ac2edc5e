//! The tick thread: the I/O around the zone core ([`Zone`]). It keeps the tick schedule,
//! feeds the core the commands from the tasks around it and the coordinator's messages, and
//! carries out what the core returns: frames and control messages onto gateway links,
//! messages onto the coordinator session, checkpoints to the saver, loads from persistence,
//! ghost batches to neighbours. No rule of the zone lives here.
//!
//! It is an OS thread rather than a task so a slow tick never stalls the async runtime that
//! serves the links, and so the tick deadline is kept with a plain sleep.
//!
//! Overrun policy: time dilation ([`crate::pacer`]). A tick that ends after the next one was
//! due is followed at once by the next, numbered by the wall clock; late ticks are never run
//! back to back to catch up, so an overloaded zone's world slows down (down to the floor)
//! instead of spiralling, and no input is dropped for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::grpc::persistence::{
    AbortTradeRequest, ChangeInventoryRequest, ClaimInventoryRequest, GroundItemsRequest,
    LoadCharacterRequest, ReserveIdsRequest, persistence_client::PersistenceClient,
};
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};
use worldmesh_runtime::Channel;
use worldmesh_world::handoff::{ToCoordinator, ToZone};

use worldmesh_protocol::ids::{EntityId, Epoch, LinkId, ZoneId};

use crate::character::Character;
use crate::command::Command;
use crate::link::Links;
use crate::pacer::Pacer;
use crate::saver::SaveJob;
use crate::sim::SimConfig;
use crate::zone::{GhostsOut, Now, Output, Stats, Zone, ZoneConfig};

/// Commands queued for the tick thread. 16k holds well over one tick of inputs for a zone's
/// capacity (1,000 players × a few inputs each); beyond it inputs are dropped and counted.
pub const COMMAND_QUEUE: usize = 16 * 1024;

/// Messages queued towards the coordinator. Handoff messages are resent until answered, so a
/// full queue only delays them.
pub const TO_COORDINATOR_QUEUE: usize = 8192;

pub struct DriverConfig {
    pub sim: SimConfig,
    pub checkpoint_interval: Duration,
    pub zone_id: Arc<AtomicU64>,
    pub tick_origin_unix_ms: u64,
    pub capacity: u32,
    /// How far across a border a neighbour's characters are shown (the view radius plus its
    /// hysteresis: as far as any observer here can see).
    pub border_margin: f32,
}

pub struct Channels {
    pub commands: mpsc::Receiver<Command>,
    /// Coordinator messages, handled as they arrive, also between ticks: each step of the
    /// handoff saga that waited for the next tick would add up to a tick of latency.
    pub from_coordinator: std::sync::mpsc::Receiver<ToZone>,
    /// For posting back results of work done off the tick thread (loads).
    pub commands_tx: mpsc::Sender<Command>,
    pub saves: mpsc::Sender<SaveJob>,
    pub to_coordinator: mpsc::Sender<ToCoordinator>,
    pub persistence: PersistenceClient<Channel>,
    /// Border characters for neighbour zones (see [`crate::peers`]).
    pub ghosts: mpsc::Sender<GhostsOut>,
    /// Game events for the read models.
    pub events: worldmesh_runtime::events::EventSink,
}

pub fn spawn(
    config: DriverConfig,
    channels: Channels,
    links: Arc<Links>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, crate::Error> {
    let runtime = tokio::runtime::Handle::current();
    let zone_id = ZoneId(config.zone_id.load(Ordering::Relaxed));
    let period = Duration::from_secs_f64(1.0 / config.sim.tick_rate_hz.max(1) as f64);
    // Built here, so that a game whose registrations conflict stops the zone before it starts.
    let zone = Zone::new(
        &ZoneConfig {
            sim: config.sim.clone(),
            zone_id,
            checkpoint_every: (config.checkpoint_interval.as_secs_f64() / period.as_secs_f64())
                .round()
                .max(1.0) as u32,
            capacity: config.capacity,
            border_margin: config.border_margin,
        },
        stats.clone(),
    )?;
    let thread = std::thread::Builder::new()
        .name(format!("zone-{zone_id}-tick"))
        .spawn(move || {
            let mut driver = Driver {
                zone,
                ch: channels,
                backlog: VecDeque::new(),
                links,
                stats,
                runtime,
                tick_us: Vec::with_capacity(64),
            };
            driver.run(&config, period, &shutdown);
        })?;
    Ok(thread)
}

struct Driver {
    zone: Zone,
    ch: Channels,
    /// Save jobs the saver had no room for yet; retried every tick, never dropped.
    backlog: VecDeque<SaveJob>,
    links: Arc<Links>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
    /// Tick durations since the last p99 was published, microseconds.
    tick_us: Vec<u32>,
}

impl Driver {
    fn run(&mut self, config: &DriverConfig, period: Duration, shutdown: &CancellationToken) {
        // The Instant of tick 0, from the world's tick origin in wall-clock time.
        let since_origin = Duration::from_millis(
            (Now::system().unix_us / 1000).saturating_sub(config.tick_origin_unix_ms),
        );
        let origin = Instant::now()
            .checked_sub(since_origin)
            .unwrap_or_else(Instant::now);
        let mut pacer = Pacer::new(period, origin, Instant::now());
        let mut last_p99 = 0;
        let mut dilated = false;
        while !shutdown.is_cancelled() {
            let deadline = pacer.deadline();
            if Instant::now() < deadline {
                self.wait_until(deadline);
            }
            let started = Instant::now();
            let step = pacer.start(started);
            let tick = step.tick;
            if step.skipped > 0 {
                metrics::counter!("worldmesh_zone_tick_overruns_total")
                    .increment(step.skipped as u64);
            }
            let dilation = pacer.dilation();
            // Logged when it starts and ends, with hysteresis so the log does not chatter.
            if !dilated && dilation < 0.9 {
                dilated = true;
                tracing::warn!(
                    dilation = format!("{dilation:.2}"),
                    tick_ms = format!(
                        "{:.1}",
                        self.tick_us.last().copied().unwrap_or(0) as f32 / 1000.0
                    ),
                    "the tick cannot keep up: this zone's world clock is dilated"
                );
            } else if dilated && dilation > 0.97 {
                dilated = false;
                tracing::info!("the tick keeps up again: real time");
            }
            metrics::gauge!("worldmesh_zone_time_dilation").set(dilation as f64);
            self.stats
                .time_dilation_milli
                .store((dilation * 1000.0).round() as u32, Ordering::Relaxed);
            self.drain_commands();
            self.zone.set_time_scale(step.time_scale);
            self.zone.tick(Now::system(), tick);
            self.dispatch();
            self.flush_backlog();
            if tick.wrapping_sub(last_p99) >= config.sim.tick_rate_hz {
                last_p99 = tick;
                self.publish_tick_p99();
            }
            let took = started.elapsed();
            metrics::histogram!("worldmesh_zone_tick_duration_seconds").record(took.as_secs_f64());
            self.tick_us
                .push(took.as_micros().min(u32::MAX as u128) as u32);
        }
        self.drain_commands();
        self.zone.stop(Now::system());
        self.dispatch();
        for job in self.backlog.drain(..) {
            if self.ch.saves.blocking_send(job).is_err() {
                tracing::error!("saver stopped before the final save");
            }
        }
    }

    /// Sleeps until `deadline`, handling coordinator messages as they come.
    fn wait_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.ch.from_coordinator.recv_timeout(deadline - now) {
                Ok(msg) => {
                    self.zone.handle(Now::system(), Command::Coordinator(msg));
                    self.dispatch();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(deadline - now);
                    return;
                }
            }
        }
    }

    fn drain_commands(&mut self) {
        while let Ok(msg) = self.ch.from_coordinator.try_recv() {
            self.zone.handle(Now::system(), Command::Coordinator(msg));
        }
        while let Ok(cmd) = self.ch.commands.try_recv() {
            self.zone.handle(Now::system(), cmd);
        }
        self.dispatch();
    }

    /// Carries out what the zone decided, in order.
    fn dispatch(&mut self) {
        while let Some(out) = self.zone.poll_output() {
            match out {
                Output::Frames { link, frames } => self.send_frames(link, frames),
                Output::Control { link, msg } => self.send_control(link, msg),
                Output::ToCoordinator(m) => {
                    if self.ch.to_coordinator.try_send(m).is_err() {
                        metrics::counter!("worldmesh_zone_coordinator_dropped_total").increment(1);
                    }
                }
                Output::Save(job) => {
                    self.backlog.push_back(job);
                    self.flush_backlog();
                }
                Output::Load { entity, epoch } => self.load(entity, epoch),
                Output::ClaimInventory { entity, epoch } => self.claim_inventory(entity, epoch),
                Output::ReserveIds { count } => self.reserve_ids(count),
                Output::ChangeInventory {
                    id,
                    entity,
                    epoch,
                    changes,
                } => self.change_inventory(id, entity, epoch, changes),
                Output::LoadGround { rect } => self.load_ground(rect),
                Output::Publish(events) => {
                    for e in events {
                        self.ch.events.publish(e);
                    }
                }
                Output::CommitTrade(c) => self.decide_trade(c.id, Some(c), None),
                Output::AbortTrade(id, why) => self.decide_trade(id, None, Some(why)),
                Output::Ghosts(g) => {
                    if self.ch.ghosts.try_send(g).is_err() {
                        metrics::counter!("worldmesh_zone_ghost_batches_dropped_total")
                            .increment(1);
                    }
                }
            }
        }
    }

    /// Reads a checkpoint off the tick thread; the result comes back as a command. Retried
    /// until persistence answers: the zone holds the character's authority meanwhile, and a
    /// load given up would leave it held but simulated nowhere.
    fn load(&self, entity: EntityId, epoch: Epoch) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        self.runtime.spawn(async move {
            let mut delay = Duration::from_millis(100);
            let character = loop {
                match persistence
                    .load_character(LoadCharacterRequest { id: entity.0 })
                    .await
                {
                    Ok(r) => break r.into_inner().character.map(Character::from),
                    Err(e) if tx.is_closed() => {
                        tracing::warn!(entity = entity.0, error = %e, "checkpoint load abandoned: zone stopping");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(entity = entity.0, error = %e, "checkpoint load failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let _ = tx
                .send(Command::Loaded {
                    entity,
                    epoch,
                    character,
                })
                .await;
        });
    }

    /// Claims an inventory off the tick thread; the answer comes back as a command. Retried
    /// until the ledger answers (a claim is idempotent at one epoch), given up when the zone
    /// stops.
    fn claim_inventory(&self, entity: EntityId, epoch: Epoch) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        self.runtime.spawn(async move {
            let mut delay = Duration::from_millis(100);
            let request = ClaimInventoryRequest {
                character: entity.0,
                epoch: epoch.0,
            };
            let inventory = loop {
                match persistence.claim_inventory(request).await {
                    Ok(r) => match worldmesh_economy::wire::inventory_from_pb(&r.into_inner()) {
                        Ok(inventory) => break inventory,
                        Err(e) => {
                            tracing::error!(entity = entity.0, error = %e, "unreadable inventory; not shown");
                            return;
                        }
                    },
                    Err(_) if tx.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(entity = entity.0, error = %e, "inventory claim failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let _ = tx
                .send(Command::InventoryClaimed {
                    entity,
                    epoch,
                    inventory,
                })
                .await;
        });
    }

    /// Reserves ids off the tick thread, retried until the ledger answers.
    fn reserve_ids(&self, count: u64) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        self.runtime.spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match persistence.reserve_ids(ReserveIdsRequest { count }).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let _ = tx
                            .send(Command::IdsReserved {
                                first: r.first,
                                count: r.count,
                            })
                            .await;
                        return;
                    }
                    Err(_) if tx.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "id reservation failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// Reads the ledger's ground in `rect` off the tick thread, once (the ground reads again
    /// on its schedule).
    fn load_ground(&self, [x0, y0, x1, y1]: [f32; 4]) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        self.runtime.spawn(async move {
            let request = GroundItemsRequest { x0, y0, x1, y1 };
            let items = match persistence.ground_items(request).await {
                Ok(r) => Some(
                    r.into_inner()
                        .items
                        .iter()
                        .filter_map(crate::ground::item_from_pb)
                        .collect(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the ground failed");
                    None
                }
            };
            let _ = tx.send(Command::GroundLoaded { items }).await;
        });
    }

    /// Records a change with the ledger off the tick thread, sent again with the same id until
    /// answered (the ledger applies an id once).
    fn change_inventory(
        &self,
        id: worldmesh_economy::ChangeId,
        entity: EntityId,
        epoch: Epoch,
        changes: Vec<worldmesh_economy::Change>,
    ) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        let request = ChangeInventoryRequest {
            id: id.0,
            character: entity.0,
            epoch: epoch.0,
            steps: worldmesh_economy::wire::steps_to_pb(&changes),
        };
        self.runtime.spawn(async move {
            let mut delay = Duration::from_millis(100);
            let outcome = loop {
                match persistence.change_inventory(request.clone()).await {
                    Ok(r) => match worldmesh_economy::wire::outcome_from_pb(&r.into_inner()) {
                        Ok(Some(o)) => break o,
                        other => {
                            tracing::error!(entity = entity.0, ?other, "unreadable ledger answer");
                            return;
                        }
                    },
                    Err(_) if tx.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(entity = entity.0, error = %e, "inventory change failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let _ = tx
                .send(Command::InventoryChanged {
                    id,
                    entity,
                    epoch,
                    outcome,
                })
                .await;
        });
    }

    /// Asks the ledger to commit (`commit`) or abort (`abort`) a trade, once, off the tick
    /// thread: the trade asks again every second until an answer comes back as a command.
    fn decide_trade(
        &self,
        id: worldmesh_economy::TradeId,
        commit: Option<worldmesh_economy::Commit>,
        abort: Option<worldmesh_economy::AbortReason>,
    ) {
        let mut persistence = self.ch.persistence.clone();
        let tx = self.ch.commands_tx.clone();
        self.runtime.spawn(async move {
            let reply = match (commit, abort) {
                (Some(c), _) => {
                    persistence
                        .commit_trade(worldmesh_economy::wire::commit_to_pb(&c))
                        .await
                }
                (None, Some(why)) => {
                    persistence
                        .abort_trade(AbortTradeRequest {
                            id: id.0,
                            reason: worldmesh_economy::wire::reason_code(why),
                        })
                        .await
                }
                (None, None) => return,
            };
            match reply.map(|r| worldmesh_economy::wire::outcome_from_pb(&r.into_inner())) {
                Ok(Ok(Some(outcome))) => {
                    let _ = tx.send(Command::TradeDecided { trade: id, outcome }).await;
                }
                Ok(other) => {
                    tracing::error!(trade = id.0, ?other, "unreadable ledger answer");
                }
                Err(e) => {
                    tracing::warn!(trade = id.0, error = %e, "trade decision not answered; the trade asks again");
                }
            }
        });
    }

    /// One message per link per tick. A link whose queue is full loses this tick's batch
    /// (counted): snapshots are superseded next tick anyway.
    fn send_frames(&self, link: LinkId, frames: pb::Frames) {
        let Some(tx) = self.links.get(link) else {
            return;
        };
        let n = frames.frames.len() as u64;
        let msg = pb::ZoneToGateway {
            msg: Some(Msg::Frames(frames)),
        };
        match tx.try_send(Ok(msg)) {
            Ok(()) => metrics::counter!("worldmesh_zone_frames_sent_total").increment(n),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("worldmesh_zone_frames_dropped_total", "reason" => "link_full")
                    .increment(n);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Control messages (joined, left) must arrive: when the link's queue is full they wait
    /// on the runtime instead of being dropped.
    fn send_control(&self, link: LinkId, msg: Msg) {
        crate::link::send_control(&self.links, &self.runtime, link, msg);
    }

    fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        while let Some(job) = self.backlog.pop_front() {
            match self.ch.saves.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    metrics::gauge!("worldmesh_zone_save_backlog").set(self.backlog.len() as f64);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    tracing::error!("saver stopped; checkpoint lost");
                    return;
                }
            }
        }
        // Drained: the gauge (and its alert) must come back down.
        metrics::gauge!("worldmesh_zone_save_backlog").set(0.0);
    }

    /// Once a second: the p99 tick duration the heartbeat reports.
    fn publish_tick_p99(&mut self) {
        if self.tick_us.is_empty() {
            return;
        }
        self.tick_us.sort_unstable();
        let i = (self.tick_us.len() * 99 / 100).min(self.tick_us.len() - 1);
        self.stats
            .tick_p99_us
            .store(self.tick_us[i], Ordering::Relaxed);
        self.tick_us.clear();
    }
}
