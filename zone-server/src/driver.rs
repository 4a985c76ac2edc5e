//! The tick thread: owns the [`Sim`], feeds it commands, steps it at the tick rate, ships its
//! frames to gateway links and its checkpoints to the saver.
//!
//! It is an OS thread rather than a task so a slow tick never stalls the async runtime that
//! serves the links, and so the tick deadline is kept with a plain sleep.
//!
//! Overrun policy: when a tick finishes after the next deadline the loop runs the next tick at
//! once, but it never runs more than [`MAX_CATCH_UP_TICKS`] late ticks back to back; beyond
//! that it drops the lost ticks (counted in `worldmesh_zone_tick_overruns_total`) and restarts
//! the schedule from now, so an overloaded zone slows down instead of spiralling.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::Input;
use worldmesh_protocol::grpc::persistence::Character;
use worldmesh_protocol::grpc::zone::{self as pb, zone_to_gateway::Msg};

use crate::link::Links;
use crate::saver::SaveJob;
use crate::sim::{Sim, SimConfig};

/// Commands queued for the tick thread. 16k holds well over one tick of inputs for a zone's
/// capacity (1,000 players × a few inputs each); beyond it inputs are dropped and counted.
pub const COMMAND_QUEUE: usize = 16 * 1024;

/// At most this many late ticks run back to back before the schedule resets (see module doc).
pub const MAX_CATCH_UP_TICKS: u32 = 3;

pub enum Command {
    Spawn {
        link: u32,
        player_id: u64,
        character: Character,
    },
    Leave {
        link: u32,
        player_id: u64,
    },
    Input {
        player_id: u64,
        input: Input,
    },
    Chat {
        player_id: u64,
        text: String,
    },
    LinkClosed {
        link: u32,
    },
}

/// Numbers the heartbeat reports.
#[derive(Default)]
pub struct Stats {
    pub entities: AtomicU32,
    pub players: AtomicU32,
}

pub struct DriverConfig {
    pub sim: SimConfig,
    pub checkpoint_interval: Duration,
    pub zone_id: u64,
    pub npcs: usize,
}

pub fn spawn(
    config: DriverConfig,
    commands: mpsc::Receiver<Command>,
    saves: mpsc::Sender<SaveJob>,
    links: Arc<Links>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("zone-{}-tick", config.zone_id))
        .spawn(move || {
            let mut sim = Sim::new(&config.sim);
            let b = config.sim.bounds;
            for i in 0..config.npcs {
                // Spread evenly by a low-discrepancy sequence: deterministic, no clumps.
                let (fx, fy) = (
                    (i as f32 * 0.618_034).fract(),
                    (i as f32 * 0.754_877_7).fract(),
                );
                let id = crate::sim::NPC_ID_BASE + (config.zone_id << 24) + i as u64;
                sim.spawn_npc(
                    id,
                    b.min_x + fx * (b.max_x - b.min_x),
                    b.min_y + fy * (b.max_y - b.min_y),
                );
            }
            let mut driver = Driver {
                sim,
                commands,
                saves,
                backlog: VecDeque::new(),
                links,
                stats,
                runtime,
            };
            driver.run(&config, &shutdown);
        })
}

struct Driver {
    sim: Sim,
    commands: mpsc::Receiver<Command>,
    saves: mpsc::Sender<SaveJob>,
    /// Save jobs the saver had no room for yet; retried every tick, never dropped.
    backlog: VecDeque<SaveJob>,
    links: Arc<Links>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
}

impl Driver {
    fn run(&mut self, config: &DriverConfig, shutdown: &CancellationToken) {
        let period = Duration::from_secs_f64(1.0 / config.sim.tick_rate_hz as f64);
        let checkpoint_every = (config.checkpoint_interval.as_secs_f64() / period.as_secs_f64())
            .round()
            .max(1.0) as u32;
        let mut deadline = Instant::now() + period;
        let mut late_in_a_row = 0;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            self.drain_commands();
            self.sim.step();
            self.ship_frames();
            if self.sim.tick().is_multiple_of(checkpoint_every) {
                let batch = self.sim.checkpoint();
                if !batch.is_empty() {
                    self.save(SaveJob {
                        characters: batch,
                        leaving: Vec::new(),
                    });
                }
            }
            self.flush_backlog();
            self.stats
                .players
                .store(self.sim.player_count() as u32, Ordering::Relaxed);
            self.stats
                .entities
                .store(self.sim.entity_count() as u32, Ordering::Relaxed);
            metrics::histogram!("worldmesh_zone_tick_duration_seconds")
                .record(started.elapsed().as_secs_f64());

            let now = Instant::now();
            if now < deadline {
                late_in_a_row = 0;
                std::thread::sleep(deadline - now);
                deadline += period;
            } else {
                late_in_a_row += 1;
                deadline += period;
                if late_in_a_row > MAX_CATCH_UP_TICKS {
                    let lost = ((now - deadline).as_secs_f64() / period.as_secs_f64()) as u64;
                    metrics::counter!("worldmesh_zone_tick_overruns_total").increment(lost.max(1));
                    deadline = now + period;
                    late_in_a_row = 0;
                }
            }
        }
        self.drain_commands();
        self.stop();
    }

    fn drain_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Spawn {
                link,
                player_id,
                character,
            } => {
                let s = self.sim.spawn_player(link, player_id, &character);
                tracing::debug!(
                    player = player_id,
                    entity = s.entity_id,
                    x = s.x,
                    y = s.y,
                    "player spawned"
                );
                self.send_control(
                    link,
                    Msg::Joined(pb::Joined {
                        player_id,
                        entity_id: s.entity_id,
                        x: s.x,
                        y: s.y,
                        heading: s.heading,
                    }),
                );
            }
            Command::Leave { link, player_id } => match self.sim.despawn_player(player_id) {
                Some(c) => self.save(SaveJob {
                    characters: vec![c],
                    leaving: vec![(link, player_id)],
                }),
                None => self.send_control(
                    link,
                    Msg::Left(pb::Left {
                        player_id,
                        saved: true,
                    }),
                ),
            },
            Command::Input { player_id, input } => self.sim.push_input(player_id, input),
            Command::Chat { player_id, text } => self.sim.chat(player_id, text),
            Command::LinkClosed { link } => {
                let gone = self.sim.despawn_link(link);
                if !gone.is_empty() {
                    tracing::info!(
                        link,
                        players = gone.len(),
                        "gateway link closed; saving its players"
                    );
                    self.save(SaveJob {
                        characters: gone.into_iter().map(|(_, c)| c).collect(),
                        leaving: Vec::new(),
                    });
                }
            }
        }
    }

    /// Groups this tick's frames by link into one message per link. A link whose queue is full
    /// loses this tick's batch (counted): snapshots are superseded next tick anyway.
    fn ship_frames(&mut self) {
        let tick = self.sim.tick();
        let mut by_link: HashMap<u32, Vec<pb::PlayerFrame>> = HashMap::new();
        for f in self.sim.take_outbox() {
            by_link.entry(f.link).or_default().push(pb::PlayerFrame {
                player_id: f.player_id,
                frame: f.frame.into(),
                reliable: f.reliable,
            });
        }
        for (link, frames) in by_link {
            let Some(tx) = self.links.get(link) else {
                continue;
            };
            let n = frames.len() as u64;
            match tx.try_send(Ok(pb::ZoneToGateway { msg: Some(Msg::Frames(pb::Frames { tick, frames })) })) {
                Ok(()) => metrics::counter!("worldmesh_zone_frames_sent_total").increment(n),
                Err(TrySendError::Full(_)) => metrics::counter!("worldmesh_zone_frames_dropped_total", "reason" => "link_full").increment(n),
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Control messages (joined, left) must arrive: when the link's queue is full they wait
    /// on the runtime instead of being dropped.
    fn send_control(&self, link: u32, msg: Msg) {
        crate::link::send_control(&self.links, &self.runtime, link, msg);
    }

    fn save(&mut self, job: SaveJob) {
        self.backlog.push_back(job);
        self.flush_backlog();
    }

    fn flush_backlog(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            match self.saves.try_send(job) {
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
    }

    /// Shutdown: despawn and save everyone, waiting for room in the saver's queue.
    fn stop(&mut self) {
        let mut all = self.sim.checkpoint();
        all.extend(self.sim.despawn_all());
        if !all.is_empty() {
            self.backlog.push_back(SaveJob {
                characters: all,
                leaving: Vec::new(),
            });
        }
        for job in self.backlog.drain(..) {
            if self.saves.blocking_send(job).is_err() {
                tracing::error!("saver stopped before the final save");
            }
        }
    }
}
