//! One task per client connection: login, relay, logout.
//!
//! The control stream is read by its own task (frame reads are not cancel-safe, so they never
//! sit in a `select!`) and written by another, fed by a bounded queue; the session task selects
//! over inbound control messages, datagrams, kicks and shutdown.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tracing::Instrument;
use worldmesh_protocol::codec::{self, DecodeError, FrameHeader, HEADER_LEN};
use worldmesh_protocol::grpc::coordinator::LocateZoneRequest;
use worldmesh_protocol::grpc::persistence as pb_persistence;
use worldmesh_protocol::grpc::zone::{self as pb, gateway_to_zone};
use worldmesh_protocol::{
    Auth, ChatChannel, ChatRefusal, ChatTo, ClientMessage, ErrorCode, Kick, ServerMessage,
    SessionToken, Welcome, WorldBounds, validate_name,
};

use crate::Gateway;
use crate::chat::{Audience, Kind as ChatKind};
use crate::zones::ZoneLink;
use worldmesh_protocol::grpc::persistence::event::Kind;
use worldmesh_protocol::ids::{EntityId, PlayerId};

/// Reliable frames queued towards one client. Chat is the only steady source; a client that
/// lets 64 frames pile up is not reading and is kicked.
const CONTROL_QUEUE: usize = 64;
/// How long a login may wait for the zone to spawn the character, or a logout for the save.
const ZONE_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new login waits for an older session of the same character to finish saving.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a player's inputs go and which snapshots reach it. Kept in one place (the watch
/// channel's lock) so that a change of zone and the frames forwarded around it are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The zone simulating the player's character: its snapshots pass, others' are dropped
    /// (a handoff's source still sending for a frozen character, a zombie zone).
    pub zone: u64,
    /// The newest snapshot tick forwarded to the client.
    pub last_tick: u32,
    /// The client's acks up to this tick name views an earlier zone (or an earlier spawn at
    /// this one) sent: they never reach the zone now simulating it, whose views of the same
    /// ticks differ.
    pub ack_floor: u32,
}

impl Route {
    pub fn new(zone: u64) -> Self {
        Self {
            zone,
            last_tick: 0,
            ack_floor: 0,
        }
    }

    /// The ack to pass on to the routed zone (0: none).
    pub fn ack(&self, ack_tick: u32) -> u32 {
        if ack_tick <= self.ack_floor {
            0
        } else {
            ack_tick
        }
    }

    /// Routes to `zone`, whose views are new to the client; true if the zone changed.
    pub fn reroute(&mut self, zone: u64) -> bool {
        let changed = self.zone != zone;
        self.zone = zone;
        self.ack_floor = self.last_tick;
        changed
    }

    /// Whether a snapshot of `tick` from `zone` may pass (and, if so, records it).
    pub fn admit_snapshot(&mut self, zone: u64, tick: u32) -> bool {
        if self.zone != zone {
            return false;
        }
        self.last_tick = self.last_tick.max(tick);
        true
    }
}

/// What the router needs to reach a session.
pub struct SessionHandle {
    pub connection: quinn::Connection,
    /// The route; changed by handoff (`Attached`), joins and relocation. Receivers (the
    /// session's relay loop) are woken only when the zone changes.
    pub route: watch::Sender<Route>,
    pub character_id: u64,
    pub name: String,
    /// Set while a relocation runs, so one loss starts one.
    pub relocating: std::sync::atomic::AtomicBool,
    /// When a snapshot last reached the client (ms since the gateway's clock origin; 0: not
    /// in play yet): a player left without snapshots has lost its route (see
    /// [`crate::zones::watch_starved`]).
    pub last_snapshot_ms: std::sync::atomic::AtomicU64,
    control: mpsc::Sender<Bytes>,
    /// Frames for the client that came before its `Welcome` went out (a world chat line, a
    /// zone's first `Inventory`): held here, so the client reads `Welcome` first (PROTOCOL.md
    /// § 5). `None` once it has been sent.
    early: std::sync::Mutex<Option<Vec<Bytes>>>,
    kick: mpsc::Sender<(ErrorCode, String)>,
    /// Players this one does not want to hear (names; this session only).
    muted: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The party this player is in (0: none).
    party: std::sync::atomic::AtomicU64,
    /// The latest invitations: (who, which party).
    invites: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
    /// An operator silenced this player until then (Unix seconds; 0: never).
    silenced_until: std::sync::atomic::AtomicU64,
    /// Where the zone changes are published (the read models' who's-online).
    events: worldmesh_runtime::events::EventSink,
}

/// Invitations a session remembers (the oldest go first).
const MAX_INVITES: usize = 8;

/// Most players one session may mute.
pub const MAX_MUTES: usize = 256;

impl SessionHandle {
    /// Whether this player muted `name`.
    pub fn mutes(&self, name: &str) -> bool {
        self.muted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// Mutes or unmutes `name`; `false` when the mute list is full.
    pub fn set_muted(&self, name: &str, muted: bool) -> bool {
        let mut list = self
            .muted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !muted {
            list.remove(name);
            return true;
        }
        if list.len() >= MAX_MUTES && !list.contains(name) {
            return false;
        }
        list.insert(name.to_owned());
        true
    }

    /// An operator silenced this player until `until` (Unix seconds).
    pub fn silence(&self, until: u64) {
        self.silenced_until.store(until, Ordering::Relaxed);
    }

    /// Whether the player is silenced now.
    pub fn is_silenced(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.silenced_until.load(Ordering::Relaxed) > now
    }

    /// The party this player is in (0: none).
    pub fn party(&self) -> u64 {
        self.party.load(Ordering::Relaxed)
    }

    /// Puts the player in `party` (0: none); returns the one it was in.
    pub fn set_party(&self, party: u64) -> u64 {
        self.party.swap(party, Ordering::Relaxed)
    }

    /// `from` invited this player into `party`.
    pub fn invited(&self, from: &str, party: u64) {
        let mut invites = self
            .invites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        invites.retain(|(who, _)| who != from);
        if invites.len() >= MAX_INVITES {
            invites.pop_front();
        }
        invites.push_back((from.to_owned(), party));
    }

    /// Takes `from`'s invitation, if there is one.
    pub fn take_invite(&self, from: &str) -> Option<u64> {
        let mut invites = self
            .invites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = invites.iter().position(|(who, _)| who == from)?;
        invites.remove(at).map(|(_, party)| party)
    }

    /// Queues a frame on the control stream, or holds it until `Welcome` is out; `Err` when
    /// there is no room.
    fn queue(&self, frame: Bytes) -> Result<(), ()> {
        let mut early = self
            .early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = early.as_mut() {
            if held.len() >= CONTROL_QUEUE / 2 {
                return Err(());
            }
            held.push(frame);
            return Ok(());
        }
        drop(early);
        self.control.try_send(frame).map_err(|_| ())
    }

    /// Sends `first` (`Welcome`, and `Session` for an account: what a client reads first on
    /// its control stream, PROTOCOL.md § 5), then what came for the client meanwhile.
    pub fn welcome(&self, first: Vec<Bytes>) {
        let mut early = self
            .early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = early.take().unwrap_or_default();
        // The queue is empty until now (everything else was held), and holds more than
        // the frames held: none of these is dropped.
        for f in first.into_iter().chain(held) {
            if self.control.try_send(f).is_err() {
                metrics::counter!("worldmesh_gateway_reliable_dropped_total").increment(1);
            }
        }
    }

    /// Queues a chat frame; a client not reading its stream misses the line (counted), and
    /// is not kicked for it: chat is the one reliable message others decide the volume of.
    pub fn send_chat(&self, frame: Bytes) {
        if self.queue(frame).is_err() {
            metrics::counter!("worldmesh_gateway_chat_dropped_total").increment(1);
        }
    }

    pub fn zone_id(&self) -> u64 {
        self.route.borrow().zone
    }

    /// Routes the player to `zone`, whose views are new to the client (a handoff arrived
    /// there, or a join spawned or attached the character there).
    pub fn reroute(&self, zone: u64) {
        if self.route.send_if_modified(|r| r.reroute(zone)) {
            self.events.publish(Kind::Entered(pb_persistence::Entered {
                character: self.character_id,
                zone,
            }));
        }
    }

    /// Forwards one snapshot datagram of `tick` from `zone` if the player is routed there.
    pub fn forward_snapshot(&self, zone: u64, tick: u32, frame: Bytes, now_ms: u64) -> bool {
        let mut sent = false;
        self.route.send_if_modified(|r| {
            sent = r.admit_snapshot(zone, tick);
            // Not a change the relay loop needs to hear of.
            false
        });
        if sent {
            crate::zones::send_datagram(&self.connection, frame);
            self.fed_at(now_ms);
        }
        sent
    }

    /// Starts the starvation watch's count anew at `now_ms` (a snapshot went out, or the
    /// player was just routed and its zone's first snapshot may take a tick).
    pub fn fed_at(&self, now_ms: u64) {
        self.last_snapshot_ms
            .store(now_ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn send_reliable(&self, frame: Bytes) {
        if self.queue(frame).is_err() {
            metrics::counter!("worldmesh_gateway_reliable_dropped_total").increment(1);
            self.kick(ErrorCode::RateLimited, "not reading the control stream");
        }
    }

    pub fn kick(&self, code: ErrorCode, why: &str) {
        let _ = self.kick.try_send((code, why.to_owned()));
    }
}

/// Who holds a character name, and how to tell when they let go.
pub struct NameClaim {
    player_id: u64,
    kick: mpsc::Sender<(ErrorCode, String)>,
    released: watch::Receiver<()>,
}

/// Releases a name claim when the session ends (after its character is saved).
struct NameGuard {
    gateway: Arc<Gateway>,
    name: String,
    player_id: u64,
    _release: watch::Sender<()>,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.gateway
            .names
            .remove_if(&self.name, |_, c| c.player_id == self.player_id);
    }
}

/// A typed refusal: sent to the client as a Kick, then the connection closes.
struct Refusal(ErrorCode, String);

impl Refusal {
    fn new(code: ErrorCode, why: impl Into<String>) -> Self {
        Self(code, why.into())
    }
}

impl From<crate::checks::Rejection> for Refusal {
    fn from((code, why): crate::checks::Rejection) -> Self {
        Self(code, why)
    }
}

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        Self(e.code(), e.to_string())
    }
}

pub async fn handle(
    gateway: Arc<Gateway>,
    incoming: quinn::Incoming,
    permit: Option<OwnedSemaphorePermit>,
) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            let reason = handshake_failure(&e);
            tracing::debug!(%peer, error = %e, reason, "handshake failed");
            metrics::counter!("worldmesh_gateway_handshake_failures_total", "reason" => reason)
                .increment(1);
            return;
        }
    };
    metrics::counter!("worldmesh_gateway_connections_total").increment(1);
    let Ok(Ok((send, recv))) =
        tokio::time::timeout(gateway.config.login_timeout, connection.accept_bi()).await
    else {
        close(
            &connection,
            None,
            Refusal::new(ErrorCode::Timeout, "no control stream"),
            peer,
        )
        .await;
        return;
    };
    let (inbound_tx, mut inbound) = mpsc::channel(16);
    tokio::spawn(read_control(recv, inbound_tx));
    let (control_tx, control_rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let writer = tokio::spawn(write_control(send, control_rx));

    if permit.is_none() {
        metrics::counter!("worldmesh_gateway_refusals_total", "reason" => "server_full")
            .increment(1);
        close(
            &connection,
            Some((control_tx, writer)),
            Refusal::new(ErrorCode::ServerFull, "gateway at its connection limit"),
            peer,
        )
        .await;
        return;
    }
    metrics::gauge!("worldmesh_gateway_connections").increment(1.0);
    let outcome = session(
        &gateway,
        &connection,
        &mut inbound,
        control_tx.clone(),
        peer,
    )
    .await;
    metrics::gauge!("worldmesh_gateway_connections").decrement(1.0);
    match outcome {
        Ok(()) => {
            drop(control_tx);
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
            connection.close(0u32.into(), b"bye");
        }
        Err(refusal) => close(&connection, Some((control_tx, writer)), refusal, peer).await,
    }
    drop(permit);
}

/// Why a handshake failed, as a metric label. A client of another protocol version fails here:
/// TLS alert 120 (`no_application_protocol`), because ALPN carries the version.
fn handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    match e {
        quinn::ConnectionError::TransportError(t)
            if t.code == quinn::TransportErrorCode::crypto(120) =>
        {
            "alpn"
        }
        quinn::ConnectionError::TransportError(_) => "transport",
        quinn::ConnectionError::TimedOut => "timeout",
        _ => "other",
    }
}

/// Sends a Kick on the control stream (when there is one), lets it drain briefly, and closes
/// the connection with the error code as the QUIC application close code.
async fn close(
    connection: &quinn::Connection,
    control: Option<(mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>)>,
    Refusal(code, why): Refusal,
    peer: SocketAddr,
) {
    tracing::info!(%peer, %code, %why, "disconnecting client");
    metrics::counter!("worldmesh_gateway_kicks_total", "reason" => code.to_string()).increment(1);
    if let Some((tx, writer)) = control {
        if let Ok(frame) = codec::encode_to_vec(&ServerMessage::Kick(Kick {
            code,
            message: why.clone(),
        })) {
            let _ =
                tokio::time::timeout(Duration::from_millis(500), tx.send(Bytes::from(frame))).await;
        }
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }
    connection.close(code.as_u32().into(), why.as_bytes());
}

async fn session(
    gateway: &Arc<Gateway>,
    connection: &quinn::Connection,
    inbound: &mut mpsc::Receiver<Result<ClientMessage, DecodeError>>,
    control: mpsc::Sender<Bytes>,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    // 1. Hello.
    let hello = match tokio::time::timeout(gateway.config.login_timeout, inbound.recv()).await {
        Err(_) => return Err(Refusal::new(ErrorCode::Timeout, "no Hello in time")),
        Ok(None) => return Ok(()),
        Ok(Some(m)) => m,
    };
    let greeting = crate::checks::check_hello(hello)?;
    let player_id = gateway.next_player.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", player = player_id, name = %greeting.name, %peer);
    play(gateway, connection, inbound, control, greeting, player_id)
        .instrument(span)
        .await
}

/// Turns a greeting into the persistence login it asks for: guests only where allowed,
/// tokens verified here (signature, expiry, name), with no database call.
fn proof(
    gateway: &Gateway,
    greeting: &crate::checks::Greeting,
) -> Result<pb_persistence::login_request::Auth, Refusal> {
    use pb_persistence::login_request::Auth as P;
    Ok(match &greeting.auth {
        None if gateway.config.allow_guests => P::Guest(true),
        None => {
            return Err(Refusal::new(
                ErrorCode::AccountRequired,
                "this gateway accepts account logins only",
            ));
        }
        Some(Auth::Password(p)) => P::Password(p.clone()),
        Some(Auth::Register(p)) => P::RegisterPassword(p.clone()),
        Some(Auth::Token(t)) => {
            let claims = gateway
                .tokens
                .verify(t, crate::token::now_unix_s())
                .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            if claims.name != greeting.name {
                return Err(Refusal::new(
                    ErrorCode::InvalidToken,
                    "token belongs to another account",
                ));
            }
            P::Token(pb_persistence::TokenClaim {
                account_id: claims.account_id,
                generation: claims.generation,
            })
        }
    })
}

fn login_refusal(outcome: pb_persistence::LoginOutcome) -> Refusal {
    use pb_persistence::LoginOutcome as O;
    let (code, why) = match outcome {
        O::LoginOk => (ErrorCode::Unavailable, "login outcome mix-up"),
        O::LoginUnknownAccount => (ErrorCode::UnknownAccount, "no account with this name"),
        O::LoginWrongPassword => (ErrorCode::WrongPassword, "wrong password"),
        O::LoginNameTaken => (ErrorCode::NameTaken, "name already taken"),
        O::LoginTokenRevoked => (ErrorCode::TokenRevoked, "token revoked; log in again"),
        O::LoginAccountRequired => (
            ErrorCode::AccountRequired,
            "this character belongs to an account",
        ),
        O::LoginInvalidPassword => (ErrorCode::InvalidPassword, "password length out of range"),
    };
    Refusal::new(code, why)
}

async fn play(
    gateway: &Arc<Gateway>,
    connection: &quinn::Connection,
    inbound: &mut mpsc::Receiver<Result<ClientMessage, DecodeError>>,
    control: mpsc::Sender<Bytes>,
    greeting: crate::checks::Greeting,
    player_id: u64,
) -> Result<(), Refusal> {
    // 2. Prove who it is and load the character. Before the name is claimed: a wrong password
    //    must never kick the character's rightful player.
    let proof = proof(gateway, &greeting)?;
    let name = greeting.name;
    // One login is one trace: persistence, the coordinator and the zone continue this span
    // (gRPC headers; the zone's Join carries it). Its own root, not the session's, which
    // lasts as long as the player stays.
    let login_span =
        tracing::info_span!(parent: None, "gateway.login", player = player_id, name = %name);
    login_span.follows_from(tracing::Span::current());
    let world = gateway
        .world()
        .instrument(login_span.clone())
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Unavailable,
                format!("coordinator: {}", e.message()),
            )
        })?
        .clone();
    let spawn = spawn_point(&world.spawn_points, world.spawn_spread, &name);
    let login = gateway
        .persistence
        .clone()
        .login(pb_persistence::LoginRequest {
            name: name.clone(),
            auth: Some(proof),
            spawn_x: spawn.0,
            spawn_y: spawn.1,
        })
        .instrument(login_span.clone())
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Unavailable,
                format!("persistence: {}", e.message()),
            )
        })?
        .into_inner();
    if login.outcome() != pb_persistence::LoginOutcome::LoginOk {
        return Err(login_refusal(login.outcome()));
    }
    let mut character = login
        .character
        .ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "persistence returned no character"))?;

    // 3. Claim the character name, taking it over from an older session if needed; after a
    //    takeover, reload: the older session saved the character where it left it.
    let (kick_tx, mut kick_rx) = mpsc::channel(1);
    let (_guard, took_over) = claim_name(gateway, &name, player_id, kick_tx.clone())
        .instrument(login_span.clone())
        .await?;
    if took_over
        && let Ok(reply) = gateway
            .persistence
            .clone()
            .load_character(pb_persistence::LoadCharacterRequest { id: character.id })
            .instrument(login_span.clone())
            .await
        && let Some(c) = reply.into_inner().character
    {
        character = c;
    }

    // 4. Find the character's zone and join it there.
    let zone = gateway
        .coordinator
        .clone()
        .locate_zone(LocateZoneRequest {
            x: character.x,
            y: character.y,
        })
        .instrument(login_span.clone())
        .await
        .map_err(|e| Refusal::new(ErrorCode::NoZoneAvailable, e.message().to_owned()))?
        .into_inner()
        .zone
        .ok_or_else(|| Refusal::new(ErrorCode::NoZoneAvailable, "no zone for this position"))?;
    let link = gateway
        .zones
        .get_or_connect(gateway, zone.zone_id, &zone.address)
        .instrument(login_span.clone())
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Unavailable,
                format!("zone link: {}", e.message()),
            )
        })?;

    let (route_tx, mut route_rx) = watch::channel(Route::new(zone.zone_id));
    gateway.sessions.insert(
        player_id,
        SessionHandle {
            connection: connection.clone(),
            route: route_tx,
            character_id: character.id,
            name: name.clone(),
            relocating: false.into(),
            last_snapshot_ms: 0.into(),
            control: control.clone(),
            early: std::sync::Mutex::new(Some(Vec::new())),
            kick: kick_tx,
            muted: Default::default(),
            party: 0.into(),
            invites: Default::default(),
            silenced_until: 0.into(),
            events: gateway.events.clone(),
        },
    );
    // An operator's silence outlives sessions: look it up, without holding up the login.
    tokio::spawn({
        let (gateway, name) = (gateway.clone(), name.clone());
        async move {
            let lookup = gateway.chat.silenced_until(&name);
            match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                Ok(Ok(until)) if until > 0 => {
                    if let Some(s) = gateway.sessions.get(&player_id) {
                        s.silence(until);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot look up a chat silence"),
                Err(_) => tracing::warn!("chat silence lookup timed out"),
            }
        }
    });
    let joined = join(gateway, &link, player_id, character.id, &name)
        .instrument(login_span.clone())
        .await;
    drop(login_span);
    let joined = match joined {
        Ok(j) => j,
        Err(r) => {
            gateway.sessions.remove(&player_id);
            leave(gateway, &link, player_id).await;
            return Err(r);
        }
    };
    let welcome = ServerMessage::Welcome(Welcome {
        player_id: PlayerId(player_id),
        entity_id: EntityId(joined.entity_id),
        tick_rate_hz: world.tick_rate_hz as u16,
        world: WorldBounds {
            min_x: world.min_x,
            min_y: world.min_y,
            max_x: world.max_x,
            max_y: world.max_y,
        },
        x: joined.x,
        y: joined.y,
        heading: joined.heading,
    });
    let frame = codec::encode_to_vec(&welcome)
        .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
    let mut first = vec![Bytes::from(frame)];
    if login.account_id != 0 {
        let expires_unix_s = crate::token::now_unix_s() + gateway.config.token_ttl.as_secs();
        let token = gateway.tokens.sign(&crate::token::Claims {
            account_id: login.account_id,
            generation: login.token_generation,
            expires_unix_s,
            name: name.clone(),
        });
        if let Ok(frame) = codec::encode_to_vec(&ServerMessage::Session(SessionToken {
            token,
            expires_unix_s,
        })) {
            first.push(Bytes::from(frame));
        }
    }
    match gateway.sessions.get(&player_id) {
        Some(s) => s.welcome(first),
        None => return Err(Refusal::new(ErrorCode::Unavailable, "session ended")),
    }
    tracing::info!(
        account = login.account_id,
        zone = zone.zone_id,
        entity = joined.entity_id,
        "player logged in"
    );
    metrics::counter!("worldmesh_gateway_logins_total").increment(1);
    gateway.events.publish(Kind::Online(pb_persistence::Online {
        character: character.id,
        name: name.clone(),
        gateway: gateway.config.name.clone(),
        session: player_id,
    }));
    gateway
        .events
        .publish(Kind::Entered(pb_persistence::Entered {
            character: character.id,
            zone: zone.zone_id,
        }));

    // 5. Relay until the client leaves, misbehaves, or we shut down. From here on a player
    // without snapshots is looked after by the starvation watch.
    route_rx.mark_unchanged();
    if let Some(s) = gateway.sessions.get(&player_id) {
        s.fed_at(gateway.clock_ms());
    }
    let mut link = link;
    let result = relay(
        gateway,
        connection,
        inbound,
        &mut kick_rx,
        &mut route_rx,
        &mut link,
        player_id,
    )
    .await;

    // 6. Logout: leave the party, stop routing, save the character, then release the name.
    if let Some((_, session)) = gateway.sessions.remove(&player_id) {
        let party = session.party();
        if party != 0 {
            crate::chat::party_news(gateway, player_id, party, ChatKind::Left, &session.name);
        }
    }
    leave(gateway, &link, player_id).await;
    gateway
        .events
        .publish(Kind::Offline(pb_persistence::Offline {
            character: character.id,
            gateway: gateway.config.name.clone(),
            session: player_id,
        }));
    tracing::info!("player logged out");
    result
}

/// Token bucket for a client's inputs, with a one-second window of drops for flood detection.
struct InputLimiter {
    tokens: f64,
    last: std::time::Instant,
    window_start: std::time::Instant,
    dropped_in_window: u32,
}

impl InputLimiter {
    fn new(burst: f64) -> Self {
        let now = std::time::Instant::now();
        Self {
            tokens: burst,
            last: now,
            window_start: now,
            dropped_in_window: 0,
        }
    }

    /// Ok(true): forward. Ok(false): drop (over the rate). Err: flooding, kick.
    fn admit(&mut self, config: &crate::Config) -> Result<bool, Refusal> {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * config.input_rate_hz)
            .min(config.input_burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(true);
        }
        if now - self.window_start > Duration::from_secs(1) {
            self.window_start = now;
            self.dropped_in_window = 0;
        }
        self.dropped_in_window += 1;
        metrics::counter!("worldmesh_gateway_inputs_dropped_total", "reason" => "rate_limit")
            .increment(1);
        if self.dropped_in_window > config.flood_kick_after {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!("input flood: over {} inputs/s", config.input_rate_hz),
            ));
        }
        Ok(false)
    }
}

async fn relay(
    gateway: &Arc<Gateway>,
    connection: &quinn::Connection,
    inbound: &mut mpsc::Receiver<Result<ClientMessage, DecodeError>>,
    kick_rx: &mut mpsc::Receiver<(ErrorCode, String)>,
    route: &mut watch::Receiver<Route>,
    link: &mut ZoneLink,
    player_id: u64,
) -> Result<(), Refusal> {
    let mut limiter = InputLimiter::new(gateway.config.input_burst);
    let mut chat_limiter = crate::chat::ChatLimiter::new(std::time::Instant::now());
    let mut trade_limiter = crate::chat::ChatLimiter::trades(std::time::Instant::now());
    let mut item_limiter = crate::chat::ChatLimiter::items(std::time::Instant::now());
    loop {
        tokio::select! {
            r = route.changed() => {
                if r.is_err() {
                    continue;
                }
                let zone = route.borrow_and_update().zone;
                match gateway.zones.get(zone) {
                    Some(l) => {
                        tracing::debug!(zone, "player re-routed");
                        *link = l;
                    }
                    None => tracing::warn!(zone, "re-routed to a zone without a link"),
                }
            }
            _ = gateway.shutdown.cancelled() => return Err(Refusal::new(ErrorCode::ShuttingDown, "gateway shutting down; reconnect")),
            k = kick_rx.recv() => if let Some((code, why)) = k { return Err(Refusal(code, why)) },
            d = connection.read_datagram() => {
                let Ok(bytes) = d else { return Ok(()) };
                metrics::counter!("worldmesh_gateway_datagrams_in_total").increment(1);
                let i = crate::checks::check_datagram(&bytes)?;
                if !limiter.admit(&gateway.config)? {
                    continue;
                }
                let ack_tick = route.borrow().ack(i.ack_tick);
                let input = pb::PlayerInput { player_id, seq: i.seq, ack_tick, heading: i.heading, speed: i.speed, actions: i.actions };
                if !link.try_send_input(input) {
                    metrics::counter!("worldmesh_gateway_inputs_dropped_total", "reason" => "zone_queue_full").increment(1);
                }
            }
            m = inbound.recv() => match m {
                None => return Ok(()),
                Some(m) => match crate::checks::check_in_play(m)? {
                    crate::checks::InPlay::Bye => return Ok(()),
                    crate::checks::InPlay::Chat(text) => {
                        if gateway.sessions.get(&player_id).is_some_and(|s| s.is_silenced()) {
                            crate::chat::refuse(gateway, player_id, ChatRefusal::Silenced);
                        } else if chat_limiter.admit(std::time::Instant::now()) {
                            link.send(gateway_to_zone::Msg::Chat(pb::PlayerChat { player_id, text })).await;
                        } else {
                            crate::chat::refuse(gateway, player_id, ChatRefusal::RateLimited);
                        }
                    }
                    crate::checks::InPlay::ChatTo(c) => {
                        chat_to(gateway, link, player_id, &mut chat_limiter, c).await;
                    }
                    crate::checks::InPlay::PartyInvite(name) => party_invite(gateway, player_id, &name),
                    crate::checks::InPlay::PartyAccept(from) => party_accept(gateway, player_id, &from),
                    crate::checks::InPlay::PartyLeave => {
                        if let Some(s) = gateway.sessions.get(&player_id) {
                            let old = s.set_party(0);
                            if old != 0 {
                                crate::chat::party_news(gateway, player_id, old, ChatKind::Left, &s.name);
                            }
                        }
                    }
                    crate::checks::InPlay::Mute(m) => {
                        let accepted = validate_name(&m.name)
                            && gateway.sessions.get(&player_id).is_some_and(|s| s.set_muted(&m.name, m.muted));
                        if !accepted {
                            crate::chat::refuse(gateway, player_id, ChatRefusal::BadRecipient);
                        }
                    }
                    crate::checks::InPlay::Trade(t) => {
                        let trade = trade_id(&t);
                        if let Some(request) = check_trade(gateway, player_id, &mut trade_limiter, t)
                            && !link.send(gateway_to_zone::Msg::Trade(pb::PlayerTrade { player_id, request })).await
                        {
                            // A link closed under a relocation: retry, not silence.
                            refuse_trade(gateway, player_id, trade, worldmesh_protocol::TradeRefusal::NotReady);
                        }
                    }
                    crate::checks::InPlay::Item(i) => {
                        if item_limiter.admit(std::time::Instant::now()) {
                            let (pick_up, item) = match i {
                                worldmesh_protocol::ItemRequest::Drop { item } => (false, item),
                                worldmesh_protocol::ItemRequest::PickUp { item } => (true, item),
                            };
                            // A link closed under a relocation: the player is told to retry
                            // rather than left without an answer.
                            if !link.send(gateway_to_zone::Msg::Item(pb::PlayerItem { player_id, pick_up, item })).await {
                                refuse_item(gateway, player_id, item, worldmesh_protocol::ItemRefusalReason::NotReady);
                            }
                        } else {
                            refuse_item(gateway, player_id, i.item(), worldmesh_protocol::ItemRefusalReason::RateLimited);
                        }
                    }
                    crate::checks::InPlay::Action(a) => {
                        let action = pb::PlayerAction {
                            player_id,
                            seq: a.seq,
                            kind: a.kind.0.into(),
                            target: a.target.map_or(0, |t| t.0),
                            payload: a.payload,
                        };
                        link.send(gateway_to_zone::Msg::Action(action)).await;
                    }
                },
            },
        }
    }
}

/// A trade step: limited and its size checked here (refused to the player, counted), the
/// rest by the zone. The request re-encoded for the zone link.
fn check_trade(
    gateway: &Gateway,
    player_id: u64,
    limiter: &mut crate::chat::ChatLimiter,
    t: worldmesh_protocol::TradeRequest,
) -> Option<Vec<u8>> {
    use worldmesh_protocol::{TradeRefusal, TradeRequest};
    let trade = trade_id(&t);
    let refused = if !limiter.admit(std::time::Instant::now()) {
        Some(TradeRefusal::RateLimited)
    } else if matches!(&t, TradeRequest::Offer { items, .. } if items.len() > worldmesh_protocol::MAX_TRADE_ITEMS)
    {
        Some(TradeRefusal::NotHeld)
    } else {
        None
    };
    let encoded = codec::encode_value(&t, worldmesh_protocol::MAX_TRADE_REQUEST);
    let why = match (refused, encoded) {
        (None, Ok(request)) => return Some(request),
        (Some(why), _) => why,
        (None, Err(_)) => TradeRefusal::NotHeld,
    };
    refuse_trade(gateway, player_id, trade, why);
    None
}

/// The trade a step is about (0 for an `Open`).
fn trade_id(t: &worldmesh_protocol::TradeRequest) -> u64 {
    use worldmesh_protocol::TradeRequest;
    match t {
        TradeRequest::Open { .. } => 0,
        TradeRequest::Offer { trade, .. }
        | TradeRequest::Accept { trade, .. }
        | TradeRequest::Cancel { trade } => *trade,
    }
}

/// A trade step refused by the gateway: told to the player, counted.
fn refuse_trade(
    gateway: &Gateway,
    player_id: u64,
    trade: u64,
    why: worldmesh_protocol::TradeRefusal,
) {
    use worldmesh_protocol::TradeNews;
    metrics::counter!("worldmesh_gateway_trade_refused_total", "why" => why.name()).increment(1);
    if let (Some(session), Ok(frame)) = (
        gateway.sessions.get(&player_id),
        codec::encode_to_vec(&ServerMessage::Trade(TradeNews::Refused { trade, why })),
    ) {
        session.send_chat(Bytes::from(frame));
    }
}

/// An item request refused by the gateway (over the rate, or no zone to take it): told to
/// the player, counted.
fn refuse_item(
    gateway: &Gateway,
    player_id: u64,
    item: u64,
    why: worldmesh_protocol::ItemRefusalReason,
) {
    use worldmesh_protocol::ItemRefusal;
    metrics::counter!("worldmesh_gateway_item_refused_total", "why" => why.name()).increment(1);
    if let (Some(session), Ok(frame)) = (
        gateway.sessions.get(&player_id),
        codec::encode_to_vec(&ServerMessage::ItemRefused(ItemRefusal { item, why })),
    ) {
        session.send_chat(Bytes::from(frame));
    }
}

/// A line to a channel: checked, limited, then to the zone (`say`) or onto the bus.
async fn chat_to(
    gateway: &Arc<Gateway>,
    link: &ZoneLink,
    player_id: u64,
    limiter: &mut crate::chat::ChatLimiter,
    c: ChatTo,
) {
    use crate::chat::refuse;
    if let Err(why) = crate::checks::check_chat_to(&c) {
        return refuse(gateway, player_id, why);
    }
    if !limiter.admit(std::time::Instant::now()) {
        return refuse(gateway, player_id, ChatRefusal::RateLimited);
    }
    let Some((from, zone, party, silenced)) = gateway
        .sessions
        .get(&player_id)
        .map(|s| (s.name.clone(), s.zone_id(), s.party(), s.is_silenced()))
    else {
        return;
    };
    if silenced {
        return refuse(gateway, player_id, ChatRefusal::Silenced);
    }
    let to = match c.channel {
        ChatChannel::Say => {
            let chat = pb::PlayerChat {
                player_id,
                text: c.text,
            };
            link.send(gateway_to_zone::Msg::Chat(chat)).await;
            return;
        }
        ChatChannel::Zone => Audience::Zone(zone),
        ChatChannel::World => Audience::World,
        ChatChannel::Whisper(name) => Audience::Whisper(name),
        ChatChannel::Party if party == 0 => {
            return refuse(gateway, player_id, ChatRefusal::NoParty);
        }
        ChatChannel::Party => Audience::Party(party),
    };
    crate::chat::send(gateway, player_id, to, ChatKind::Text, &from, c.text);
}

/// Invites `name` into the player's party, making one (with the player in it) if it has none.
fn party_invite(gateway: &Arc<Gateway>, player_id: u64, name: &str) {
    use crate::chat::{refuse, send};
    if !validate_name(name) {
        return refuse(gateway, player_id, ChatRefusal::BadRecipient);
    }
    let Some(session) = gateway.sessions.get(&player_id) else {
        return;
    };
    let mut party = session.party();
    if party == 0 {
        // Random: gateways make parties without asking anyone; 64 bits do not collide.
        party = rand::random::<u64>() | 1;
        session.set_party(party);
        crate::chat::party_news(gateway, player_id, party, ChatKind::Joined, &session.name);
    }
    let to = Audience::Whisper(name.to_owned());
    send(
        gateway,
        player_id,
        to,
        ChatKind::Invite(party),
        &session.name,
        String::new(),
    );
}

/// Joins the party `from` invited the player into, leaving the one it was in.
fn party_accept(gateway: &Arc<Gateway>, player_id: u64, from: &str) {
    use crate::chat::refuse;
    let Some(session) = gateway.sessions.get(&player_id) else {
        return;
    };
    let Some(party) = session.take_invite(from) else {
        return refuse(gateway, player_id, ChatRefusal::NoParty);
    };
    let old = session.set_party(party);
    if old == party {
        return;
    }
    if old != 0 {
        crate::chat::party_news(gateway, player_id, old, ChatKind::Left, &session.name);
    }
    crate::chat::party_news(gateway, player_id, party, ChatKind::Joined, &session.name);
}

async fn claim_name(
    gateway: &Arc<Gateway>,
    name: &str,
    player_id: u64,
    kick: mpsc::Sender<(ErrorCode, String)>,
) -> Result<(NameGuard, bool), Refusal> {
    let deadline = tokio::time::Instant::now() + TAKEOVER_TIMEOUT;
    let mut took_over = false;
    loop {
        let mut released = match gateway.names.entry(name.to_owned()) {
            dashmap::Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(());
                v.insert(NameClaim {
                    player_id,
                    kick: kick.clone(),
                    released: rx,
                });
                return Ok((
                    NameGuard {
                        gateway: gateway.clone(),
                        name: name.to_owned(),
                        player_id,
                        _release: tx,
                    },
                    took_over,
                ));
            }
            dashmap::Entry::Occupied(o) => {
                took_over = true;
                let _ = o.get().kick.try_send((
                    ErrorCode::LoggedInElsewhere,
                    "logged in from another connection".into(),
                ));
                o.get().released.clone()
            }
        };
        // Wait for the old session to save and let go (its sender drops), then try again.
        if tokio::time::timeout_at(deadline, released.changed())
            .await
            .is_err()
        {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "previous session of this character is still closing",
            ));
        }
    }
}

async fn join(
    gateway: &Arc<Gateway>,
    link: &ZoneLink,
    player_id: u64,
    character_id: u64,
    name: &str,
) -> Result<pb::Joined, Refusal> {
    gateway
        .zones
        .join(link, player_id, character_id, name, ZONE_REPLY_TIMEOUT)
        .await
        .map_err(|why| Refusal::new(ErrorCode::Unavailable, why))
}

/// Tells the zone the player left and waits (bounded) until the character is saved.
async fn leave(gateway: &Arc<Gateway>, link: &ZoneLink, player_id: u64) {
    let saved = gateway.zones.expect_leave(player_id);
    if !link
        .send(gateway_to_zone::Msg::Leave(pb::Leave { player_id }))
        .await
    {
        return;
    }
    match tokio::time::timeout(ZONE_REPLY_TIMEOUT, saved).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(
            player = player_id,
            "zone could not save the character at logout"
        ),
        _ => tracing::warn!(
            player = player_id,
            "zone did not confirm the logout save in time"
        ),
    }
}

/// A new character's spawn point: one of the world's spawn points picked by the name, plus up
/// to ±20 m of offset, both stable for a given name.
fn spawn_point(
    points: &[worldmesh_protocol::grpc::coordinator::SpawnPoint],
    spread: f32,
    name: &str,
) -> (f32, f32) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let h = h.finish();
    let (x, y) = points
        .get((h % points.len().max(1) as u64) as usize)
        .map_or((0.0, 0.0), |p| (p.x, p.y));
    // 0 (a coordinator from before the field) or nonsense: the old fixed 20 m.
    let spread = if spread.is_finite() && spread > 0.0 {
        spread
    } else {
        20.0
    };
    // Two slices of the hash, each to -1..=1 in 4,000 steps (at the default 20 m, the
    // centimetre grid every name has always been placed on: the same name, the same place).
    let jx = ((h >> 16) % 4001) as f32 / 2000.0 - 1.0;
    let jy = ((h >> 32) % 4001) as f32 / 2000.0 - 1.0;
    (x + jx * spread, y + jy * spread)
}

/// Reads frames off the control stream: the header first, checked before the payload is read
/// (so an oversized frame costs nothing), then the payload. Stops at the first error.
async fn read_control(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<ClientMessage, DecodeError>>,
) {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let header = match FrameHeader::parse(header) {
            Ok(h) => h,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        payload.resize(header.len, 0);
        if recv.read_exact(&mut payload).await.is_err() {
            return;
        }
        let msg = codec::decode_payload::<ClientMessage>(&payload);
        let failed = msg.is_err();
        if tx.send(msg).await.is_err() || failed {
            return;
        }
    }
}

/// Writes queued frames to the control stream; finishes the stream when the queue closes.
async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    // Give the peer a moment to receive what was written (e.g. a Kick) before the caller closes.
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
}

#[cfg(test)]
mod tests {
    use super::{Route, spawn_point};
    use worldmesh_protocol::grpc::coordinator::SpawnPoint;

    /// The rule that keeps two zones' views of one tick apart: after a zone change, acks of
    /// ticks the client got before it never reach the new zone.
    #[test]
    fn acks_of_an_earlier_zones_views_are_not_passed_on() {
        let mut r = Route::new(1);
        assert!(r.admit_snapshot(1, 100));
        // The source, frozen, sent tick 100; the target attaches.
        assert!(r.reroute(2));
        assert!(
            !r.admit_snapshot(1, 101),
            "the source's later snapshots are dropped"
        );
        assert!(r.admit_snapshot(2, 101));
        assert_eq!(r.ack(100), 0, "tick 100 is the source's view");
        assert_eq!(r.ack(99), 0);
        assert_eq!(r.ack(101), 101, "the target's own views are acked as usual");
        assert_eq!(Route::new(1).ack(5), 5, "a fresh route passes every ack");
        // A join at the same zone (a fresh observer there) also starts a new history.
        assert!(!r.reroute(2));
        assert_eq!(r.ack(101), 0);
    }

    #[test]
    fn spawn_points_are_stable_and_near_a_spawn() {
        let points = [
            SpawnPoint { x: 100.0, y: 100.0 },
            SpawnPoint { x: 900.0, y: 100.0 },
        ];
        let a = spawn_point(&points, 0.0, "alice");
        assert_eq!(a, spawn_point(&points, 0.0, "alice"));
        let near = |a: (f32, f32), r: f32| {
            points
                .iter()
                .any(|p| (p.x - a.0).abs() <= r && (p.y - a.1).abs() <= r)
        };
        assert!(near(a, 20.0), "0 spread means the old 20 m");
        for name in ["alice", "bob", "carol", "dave", "eve"] {
            assert!(near(spawn_point(&points, 1.5, name), 1.5), "{name}");
        }
        assert!(near(spawn_point(&points, f32::NAN, "bob"), 20.0));
    }
}
