//! One bot: logs in, walks (a random walk that turns gently) or fights (the example game),
//! chats now and then, measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::{
    Auth, ChatChannel, EntityState, ErrorCode, Input, ServerMessage, TradeRequest,
};

use crate::fight::Fighter;
use crate::trade::Trader;

use crate::stats::Stats;
use worldmesh_client::predict::{Motion, Predictor};
use worldmesh_client::{ClientEndpoint, ClientError, Session};

/// Travel speed, m/s: a run, under the server's 10 m/s limit.
pub const TRAVEL_SPEED: f32 = 9.0;

/// Inputs remembered for RTT matching: 256 inputs at 20 Hz is 12.8 s, far beyond any RTT we
/// would still call a round trip.
const SENT_RING: usize = 256;

/// How a bot moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// A random walk that turns gently.
    #[default]
    Wander,
    /// Long straight runs back and forth along x around where it started (spawn points sit
    /// on zone borders in travel runs): every run crosses a border.
    Travel,
    /// Stands still (inputs keep flowing).
    Idle,
    /// Mills around within 15 m of where it started, at a walk: spawn points become dense
    /// crowds, the worst case for snapshot size and interest management.
    Crowd,
    /// Per bot, by its seed: 30 % travel, 30 % wander, 20 % fight, 10 % crowd, 10 % idle
    /// (fighters with no game to play wander).
    Mixed,
    /// Plays the example game (`--game arena`): seeks the nearest standing monster or
    /// player it sees, walks up and strikes it (or shoots it from up to 25 m), backs off when
    /// badly hurt, lies still while down (see `fight.rs`).
    Fight,
    /// Trades in pairs (bot 2k opens, 2k + 1 answers), near zone borders: walk up, offer a gem
    /// or gold, sometimes counter, accept; now and then cancel or walk away (see `trade.rs`).
    /// Needs a game that gives characters something (`arena`'s starter kit).
    Trade,
    /// Heads for one region of the world ([`BotConfig::converge_at`], default the middle):
    /// each bot walks to its own point within [`CONVERGE_RADIUS`] of it over about
    /// [`CONVERGE_SECS`] (faster from further, up to the speed limit), then mills around
    /// there, moving: the load piles up in one place, the case cells assigned by load are for.
    Converge,
}

/// Where converging bots end up: within this many metres of the region's centre.
pub const CONVERGE_RADIUS: f32 = 60.0;
/// About how long converging bots take to get there, seconds.
pub const CONVERGE_SECS: f32 = 20.0;

impl Behaviour {
    /// What a bot with this seed does (resolves `Mixed`).
    pub fn for_seed(self, seed: u64) -> Behaviour {
        match self {
            Behaviour::Mixed => match seed % 10 {
                0..=1 => Behaviour::Travel,
                2..=3 => Behaviour::Wander,
                4..=5 => Behaviour::Fight,
                // A pair: 10k + 6 opens, 10k + 7 answers.
                6..=7 => Behaviour::Trade,
                8 => Behaviour::Crowd,
                _ => Behaviour::Idle,
            },
            b => b,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BotConfig {
    pub behaviour: Behaviour,
    pub name: String,
    pub gateway: SocketAddr,
    /// Inputs per second (the client tick).
    pub input_rate_hz: u32,
    /// Walking speed, m/s.
    pub speed: f32,
    /// Mean seconds between chat lines; 0 = never.
    pub chat_every_s: f64,
    pub seed: u64,
    /// Log in to an account (register it on first use) rather than as a guest.
    pub accounts: bool,
    /// Loss, latency and jitter on the bot's datagrams.
    pub link: worldmesh_client::conditioner::LinkConditions,
    /// A trading bot's partner (the bot whose index differs in the lowest bit).
    pub partner: Option<String>,
    /// Where converging bots go (`None`: the middle of the world).
    pub converge_at: Option<(f32, f32)>,
}

/// A bot's password: derived from its name, so a later run logs the same bots in again.
pub fn bot_password(name: &str) -> String {
    format!("{name}-password")
}

/// Attempts per login before a bot gives up: like a game client, a bot retries a connection
/// that failed below the protocol (a handshake lost to packet loss), never a refusal.
const LOGIN_ATTEMPTS: usize = 3;

async fn login_retrying(
    endpoint: &ClientEndpoint,
    config: &BotConfig,
    stats: &Stats,
) -> Result<Session, ClientError> {
    let mut attempt = 1;
    loop {
        match login(endpoint, config.gateway, &config.name, config.accounts).await {
            Err(
                e @ (ClientError::Connection(_) | ClientError::Connect(_) | ClientError::Timeout),
            ) if attempt < LOGIN_ATTEMPTS => {
                tracing::info!(bot = %config.name, error = %e, attempt, "login failed below the protocol; retrying");
                stats.record_error(format!("login_retry_{}", e.reason()));
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Logs a bot in: as a guest, or to its account, registering it when it does not exist yet.
pub async fn login(
    endpoint: &ClientEndpoint,
    gateway: SocketAddr,
    name: &str,
    accounts: bool,
) -> Result<Session, ClientError> {
    if !accounts {
        return Session::login(endpoint, gateway, name).await;
    }
    let password = bot_password(name);
    match Session::login_with(
        endpoint,
        gateway,
        name,
        Some(Auth::Register(password.clone())),
    )
    .await
    {
        Err(ClientError::Kicked {
            code: ErrorCode::NameTaken,
            ..
        }) => Session::login_with(endpoint, gateway, name, Some(Auth::Password(password))).await,
        other => other,
    }
}

/// Runs one bot until `stop` fires, then logs out cleanly.
pub async fn run(
    endpoint: ClientEndpoint,
    config: BotConfig,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut session = match login_retrying(&endpoint, &config, &stats).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(bot = %config.name, error = %e, "login failed");
            stats.record_error(e.reason());
            return;
        }
    };
    session.set_link(config.link);
    stats.logins.fetch_add(1, Ordering::Relaxed);
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stats.entity_seen(&config.name, session.welcome.entity_id.into());
    stats.trade.online(&config.name, session.welcome.entity_id);
    let chatter = stats.chat.online(&config.name);
    let since = Instant::now();
    let result = play(&mut session, &config, &stats, &stop, chatter).await;
    stats.chat.offline(chatter);
    stats.entity_gone(&config.name);
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    stats
        .connected_us
        .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    match result {
        Ok(()) => {
            let _ = session.bye().await;
        }
        Err(e) => {
            tracing::warn!(bot = %config.name, error = %e, "bot disconnected");
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            stats.record_error(e.reason());
        }
    }
}

async fn play(
    session: &mut Session,
    config: &BotConfig,
    stats: &Stats,
    stop: &CancellationToken,
    chatter: usize,
) -> Result<(), ClientError> {
    let mut fighter = Fighter::new(Instant::now());
    let behaviour = config.behaviour.for_seed(config.seed);
    let mut trader = match (&config.partner, behaviour) {
        (Some(partner), Behaviour::Trade) => Some(Trader::new(
            &config.name,
            config.seed,
            partner.clone(),
            (session.welcome.x, session.welcome.y),
            Instant::now(),
        )),
        _ => None,
    };
    let result = play_with(
        session,
        config,
        stats,
        stop,
        &mut fighter,
        trader.as_mut(),
        chatter,
    )
    .await;
    if result.is_ok()
        && let Some(trader) = trader.as_mut()
    {
        wind_down(session, trader, stats).await;
    }
    fighter.finish(Instant::now(), result.is_err(), stats);
    result
}

async fn play_with(
    session: &mut Session,
    config: &BotConfig,
    stats: &Stats,
    stop: &CancellationToken,
    fighter: &mut Fighter,
    mut trader: Option<&mut Trader>,
    chatter: usize,
) -> Result<(), ClientError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let behaviour = config.behaviour.for_seed(config.seed);
    let mut predictor = Predictor::new(session.welcome.tick_rate_hz, session.welcome.world);
    let tick = Duration::from_secs_f64(1.0 / f64::from(session.welcome.tick_rate_hz.max(1)));
    let mut last_snapshot_at: Option<Instant> = None;
    let mut full_updates = 0u64;
    let start_y = session.welcome.y;
    let mut y_now = start_y;
    let mut sent_at = [None::<(u32, Instant)>; SENT_RING];
    let mut seq: u32 = 0;
    let mut acked: u32 = 0;
    let mut heading: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let me = session.welcome.entity_id;
    // Travel: runs of 70-120 m along x centred on the start, at a small random slant.
    let start_x = session.welcome.x;
    let span = rng.random_range(35.0..60.0f32);
    let slant = rng.random_range(-0.15..0.15f32);
    let mut eastward = rng.random_bool(0.5);
    let mut x_now = start_x;
    // Converge: a point of its own near the region, and the pace that gets it there in time.
    let goal = {
        let w = session.welcome.world;
        let (cx, cy) = config
            .converge_at
            .unwrap_or(((w.min_x + w.max_x) / 2.0, (w.min_y + w.max_y) / 2.0));
        let (a, r) = (
            rng.random_range(0.0..std::f32::consts::TAU),
            CONVERGE_RADIUS * rng.random_range(0.0..1.0f32).sqrt(),
        );
        (
            (cx + r * a.cos()).clamp(w.min_x, w.max_x),
            (cy + r * a.sin()).clamp(w.min_y, w.max_y),
        )
    };
    let pace = {
        let (dx, dy) = (goal.0 - start_x, goal.1 - session.welcome.y);
        ((dx * dx + dy * dy).sqrt() / CONVERGE_SECS).clamp(1.5, worldmesh_protocol::MAX_SPEED)
    };
    let mut arrived = false;
    let period = Duration::from_secs_f64(1.0 / config.input_rate_hz.max(1) as f64);
    // Welcome is sent right after a server tick, so a clock started at Welcome would send every
    // input just after the server drained its inputs, and every input would wait a whole tick.
    // Real clients' frame clocks have no such relation to the server's: start at a random phase.
    tokio::time::sleep(period.mul_f64(rng.random_range(0.0..1.0))).await;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_chat = next_chat_at(&mut rng, config.chat_every_s);
    let mut lines_said = 0u64;
    // What a fighting bot saw in the newest snapshot.
    let mut seen: Vec<EntityState> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                if let Some(last) = last_snapshot_at {
                    stats.record_snapshot_gap(last.elapsed());
                }
                return Ok(());
            }
            _ = ticker.tick() => {
                seq = seq.wrapping_add(1);
                let mut action = None;
                let speed = match behaviour {
                    Behaviour::Fight => {
                        heading += rng.random_range(-0.3..0.3);
                        match seen.iter().find(|e| e.id == me) {
                            Some(mine) => {
                                let d = fighter.decide(
                                    Instant::now(),
                                    mine,
                                    session.fields(me),
                                    seen.iter().map(|e| (e, session.fields(e.id))),
                                    heading,
                                    stats,
                                );
                                heading = d.heading;
                                action = d.action;
                                d.speed
                            }
                            None => config.speed,
                        }
                    }
                    Behaviour::Wander => {
                        heading += rng.random_range(-0.3..0.3);
                        config.speed
                    }
                    Behaviour::Travel => {
                        if eastward && x_now > start_x + span {
                            eastward = false;
                        } else if !eastward && x_now < start_x - span {
                            eastward = true;
                        }
                        heading = if eastward { slant } else { std::f32::consts::PI + slant };
                        TRAVEL_SPEED
                    }
                    Behaviour::Trade => match trader.as_deref_mut() {
                        Some(t) => {
                            let step = t.decide(Instant::now(), (x_now, y_now), &seen, &stats.trade);
                            heading = step.heading;
                            if let Some(r) = step.request {
                                session.trade(r).await?;
                            }
                            step.speed
                        }
                        None => 0.0,
                    },
                    Behaviour::Idle | Behaviour::Mixed => 0.0,
                    Behaviour::Converge => {
                        let (dx, dy) = (goal.0 - x_now, goal.1 - y_now);
                        let d2 = dx * dx + dy * dy;
                        arrived |= d2 < 4.0 * 4.0;
                        if !arrived || d2 > 15.0 * 15.0 {
                            heading = dy.atan2(dx);
                        } else {
                            heading += rng.random_range(-0.5..0.5);
                        }
                        if arrived { 1.5 } else { pace }
                    }
                    Behaviour::Crowd => {
                        let (dx, dy) = (start_x - x_now, start_y - y_now);
                        if dx * dx + dy * dy > 15.0 * 15.0 {
                            heading = dy.atan2(dx);
                        } else {
                            heading += rng.random_range(-0.5..0.5);
                        }
                        1.5
                    }
                };
                let input = Input { seq, ack_tick: session.ack_tick(), heading, speed, actions: 0 };
                session.send_input(input)?;
                predictor.on_input(seq, heading, speed);
                stats.bytes_up.fetch_add(24, Ordering::Relaxed);
                sent_at[seq as usize % SENT_RING] = Some((seq, Instant::now()));
                if let Some(action) = action {
                    session.act(action).await?;
                }
                if next_chat.is_some_and(|at| Instant::now() >= at) {
                    // On the world channel, audited: unique text, recorded before it is sent.
                    lines_said += 1;
                    let text = format!("{} #{lines_said}", config.name);
                    stats.chat.sent(&text, Instant::now());
                    session.chat(ChatChannel::World, &text).await?;
                    next_chat = next_chat_at(&mut rng, config.chat_every_s);
                }
                while let Some(msg) = session.try_control() {
                    if let Some(t) = trader.as_deref_mut()
                        && let Some(r) = t.on_message(Instant::now(), &msg, &stats.trade)
                    {
                        session.trade(r).await?;
                    }
                    match msg {
                        ServerMessage::Chat(_) => { stats.chats_heard.fetch_add(1, Ordering::Relaxed); }
                        ServerMessage::ChatLine(l) => {
                            stats.chats_heard.fetch_add(1, Ordering::Relaxed);
                            if l.channel == ChatChannel::World {
                                stats.chat.heard(chatter, &l.text, Instant::now());
                            }
                        }
                        ServerMessage::ChatRefused(why) => stats.record_error(format!("chat_refused_{why:?}")),
                        ServerMessage::ActionDone(outcome) => fighter.answered(&outcome, stats),
                        ServerMessage::Kick(k) => return Err(ClientError::Kicked { code: k.code, message: k.message }),
                        _ => {}
                    }
                }
            }
            view = session.recv_snapshot() => {
                let view = match view {
                    Ok(v) => v,
                    // A snapshot that cannot be decoded is counted and skipped; the next full
                    // or delta update recovers.
                    Err(ClientError::Protocol(why)) => {
                        tracing::debug!(bot = %config.name, %why, "undecodable snapshot");
                        stats.record_error("snapshot_decode".into());
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                stats.bytes_down.fetch_add(view.bytes as u64, Ordering::Relaxed);
                stats.snapshots.fetch_add(1, Ordering::Relaxed);
                if view.full {
                    full_updates += 1;
                    if full_updates > 1 {
                        stats.handoffs_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if view.newest {
                    let now = Instant::now();
                    if let Some(last) = last_snapshot_at.replace(now) {
                        let gap = now - last;
                        stats.record_snapshot_gap(gap);
                        let off = gap.abs_diff(tick);
                        stats.record_jitter_us(off.as_micros() as u64);
                    }
                    if matches!(behaviour, Behaviour::Fight | Behaviour::Trade) {
                        seen.clone_from(&view.entities);
                    }
                    if let Some(e) = view.entities.iter().find(|e| e.id == me) {
                        x_now = e.x;
                        y_now = e.y;
                        let server = Motion { x: e.x, y: e.y, speed: e.speed };
                        if let Some(err) = predictor.on_snapshot(view.last_input_seq, server) {
                            stats.record_correction_m(err);
                        }
                    }
                }
                // The first snapshot acknowledging a newer input closes that input's round trip.
                if view.newest && view.last_input_seq != acked {
                    acked = view.last_input_seq;
                    if let Some((_, at)) = sent_at[acked as usize % SENT_RING].filter(|(s, _)| *s == acked) {
                        stats.record_rtt(at.elapsed().as_micros() as u64);
                        sent_at[acked as usize % SENT_RING] = None;
                    }
                }
            }
        }
    }
}

/// At the end of a run a trading bot cancels the trade it is in and listens a moment for
/// the outcome and its holdings after it, so the audit reads every bot's last inventory.
async fn wind_down(session: &mut Session, trader: &mut Trader, stats: &Stats) {
    if let Some(trade) = trader.open_trade() {
        let _ = session.trade(TradeRequest::Cancel { trade }).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, session.next_control()).await {
        trader.on_message(Instant::now(), &msg, &stats.trade);
    }
}

fn next_chat_at(rng: &mut impl Rng, mean_s: f64) -> Option<Instant> {
    (mean_s > 0.0)
        .then(|| Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean_s))
}
