//! Client ↔ gateway messages.
//!
//! Reliable messages ([`Hello`], [`Welcome`], [`Chat`], [`Kick`], [`ClientMessage::Bye`]) travel
//! on the client's control stream; [`Input`] and [`Snapshot`] travel as QUIC datagrams, where a
//! lost one is simply replaced by the next. The field order of every type here *is* the wire
//! format (see `PROTOCOL.md`): append new fields and variants, never reorder them.

use bincode::{Decode, Encode};

use crate::ids::{ActionKind, EntityId, EventKind, PlayerId};

/// Longest player name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 32;
/// Longest chat line, in bytes of UTF-8.
pub const MAX_CHAT_LEN: usize = 256;
/// Fastest a client may ask to move, in metres per second; faster requests are clamped.
pub const MAX_SPEED: f32 = 10.0;
/// Chat lines a player may send per second on the zone, world and whisper channels, sustained.
pub const CHAT_RATE_PER_S: f64 = 2.0;
/// Chat lines a player may send at once above [`CHAT_RATE_PER_S`].
pub const CHAT_BURST: f64 = 8.0;
/// Largest game payload of an [`ActionRequest`] or a [`GameEvent`], bytes.
pub const MAX_GAME_PAYLOAD: usize = 256;

/// Everything a client may send.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ClientMessage {
    /// First message on the control stream.
    Hello(Hello),
    /// Movement intent; sent as a datagram every client tick.
    Input(Input),
    /// A line of chat, heard by players near the speaker.
    Chat(ChatSay),
    /// Clean logout: the character is saved where it stands.
    Bye,
    /// First message on the control stream when logging in to an account (instead of
    /// [`Hello`], which is a guest login without a password).
    Login(Login),
    /// Something the player asks the game to do (attack, use, open…), on the control stream:
    /// applied at most once, answered by [`ServerMessage::ActionDone`].
    Action(ActionRequest),
    /// A line of chat on a channel. Accepted lines come back on their channel (the speaker is
    /// in its audience); refused ones are answered by [`ServerMessage::ChatRefused`].
    ChatTo(ChatTo),
    /// Stop (or start again) hearing a player on every channel, for this session.
    Mute(Mute),
    /// Invites a player (by character name) into this player's party, making one if needed.
    PartyInvite(String),
    /// Joins the party of a player who invited this one (leaving any other).
    PartyAccept(String),
    /// Leaves the party.
    PartyLeave,
    /// A step of a trade with another player (PROTOCOL.md § Trades): answered by
    /// [`ServerMessage::Trade`].
    Trade(TradeRequest),
    /// Drops an item from the inventory at the player's feet, or picks one up from the
    /// ground (PROTOCOL.md § Items on the ground). Done: the inventory comes again
    /// ([`ServerMessage::Inventory`]) and the item appears or vanishes in snapshots;
    /// refused: [`ServerMessage::ItemRefused`].
    Item(ItemRequest),
}

/// Everything the server may send.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ServerMessage {
    /// The answer to a successful [`Hello`].
    Welcome(Welcome),
    /// The world as this player sees it at one tick; sent as a datagram every server tick.
    Snapshot(Snapshot),
    /// A line of chat from a nearby player.
    Chat(ChatHeard),
    /// A typed error. The server closes the connection right after sending it.
    Kick(Kick),
    /// Sent right after [`Welcome`] to an account login: a session token that resumes the
    /// character on any gateway of the cluster until it expires or is revoked.
    Session(SessionToken),
    /// The answer to one [`ClientMessage::Action`]: applied, or refused and why.
    ActionDone(ActionOutcome),
    /// Something the game tells this player (a hit landed, a door opened), about one entity.
    /// On the control stream or as a datagram, as the game chose for the event's kind.
    Event(GameEvent),
    /// A line of chat on a zone, world or whisper channel (`say` lines come as [`Chat`]).
    ///
    /// [`Chat`]: ServerMessage::Chat
    ChatLine(ChatLine),
    /// A [`ClientMessage::ChatTo`] that was not sent, and why.
    ChatRefused(ChatRefusal),
    /// A player invites this one into its party (answer with [`ClientMessage::PartyAccept`]).
    PartyInvite(String),
    /// Someone joined (`joined`) or left this player's party; this player included.
    PartyMember(PartyMember),
    /// What this player's character holds: after it comes into play on a zone (a login, a
    /// crossing into another zone, a failover), and after every change.
    Inventory(InventoryView),
    /// A trade this player is in: its state after every change, its end, or a refused step.
    Trade(TradeNews),
    /// A [`ClientMessage::Item`] that changed nothing, and why.
    ItemRefused(ItemRefusal),
}

/// See [`ServerMessage::Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InventoryView {
    pub gold: u64,
    pub items: Vec<ItemView>,
}

/// One item instance a character holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ItemView {
    /// Unique in the world for ever.
    pub id: u64,
    /// The game's item kind.
    pub kind: u16,
    /// A stack's size.
    pub count: u32,
}

/// How close (metres) to an item on the ground a player must stand to pick it up.
pub const PICKUP_RANGE: f32 = 5.0;
/// Item requests a player may send per second, and at once above it; beyond, refused
/// [`ItemRefusalReason::RateLimited`].
pub const ITEM_RATE_PER_S: f64 = 10.0;
pub const ITEM_BURST: f64 = 20.0;

/// See [`ClientMessage::Item`]. Item ids are the ones [`InventoryView`] shows, or (on the
/// ground) the entity id minus [`crate::EntityId::ITEM_BASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ItemRequest {
    /// 0: puts the item (all of a stack) on the ground where the player stands.
    Drop { item: u64 },
    /// 1: takes the item from the ground, within [`PICKUP_RANGE`]. Of everyone who tries,
    /// one gets it; the others are refused [`ItemRefusalReason::Gone`].
    PickUp { item: u64 },
}

impl ItemRequest {
    #[must_use]
    pub fn item(self) -> u64 {
        match self {
            ItemRequest::Drop { item } | ItemRequest::PickUp { item } => item,
        }
    }
}

/// See [`ServerMessage::ItemRefused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ItemRefusal {
    pub item: u64,
    pub why: ItemRefusalReason,
}

/// Why an item request changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ItemRefusalReason {
    /// 0: a drop of an item this player does not hold.
    NotHeld,
    /// 1: a pick-up of an item further than [`PICKUP_RANGE`], or not seen at all.
    TooFar,
    /// 2: someone else picked it up first (or it is no longer where it was shown).
    Gone,
    /// 3: a request about this item is already under way.
    Busy,
    /// 4: the inventory is not read yet (right after arriving in a zone); try again.
    NotReady,
    /// 5: more requests than [`ITEM_RATE_PER_S`] allows.
    RateLimited,
}

impl ItemRefusalReason {
    /// A short name for metrics and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ItemRefusalReason::NotHeld => "not_held",
            ItemRefusalReason::TooFar => "too_far",
            ItemRefusalReason::Gone => "gone",
            ItemRefusalReason::Busy => "busy",
            ItemRefusalReason::NotReady => "not_ready",
            ItemRefusalReason::RateLimited => "rate_limited",
        }
    }
}

/// What an item on the ground is: the value of its [`crate::ComponentKind::GROUND_ITEM`]
/// field in snapshots (bincode, like every field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct GroundItemView {
    /// The game's item kind.
    pub kind: u16,
    /// A stack's size.
    pub count: u32,
    /// The item's version in the ledger (a pick-up names it).
    pub version: u64,
}

/// How close (metres) two players stand to open a trade.
pub const TRADE_RANGE: f32 = 10.0;
/// How far (metres) the parties of an open trade may drift apart before it is cancelled as
/// walked away (and a party handed to another zone walks away too).
pub const TRADE_LEAVE_RANGE: f32 = 30.0;
/// Largest encoded [`TradeRequest`], bytes (an offer of [`MAX_TRADE_ITEMS`] fits well).
pub const MAX_TRADE_REQUEST: usize = 256;
/// Most items one side puts in one offer.
pub const MAX_TRADE_ITEMS: usize = 16;
/// Trade requests a player may send per second, and at once above it; beyond, refused
/// [`TradeRefusal::RateLimited`].
pub const TRADE_RATE_PER_S: f64 = 10.0;
pub const TRADE_BURST: f64 = 20.0;

/// See [`ClientMessage::Trade`]. Ids are the numbers the server showed: entity ids from
/// snapshots, trade ids from [`TradeView`], item ids from [`InventoryView`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TradeRequest {
    /// 0: asks the player `with` (within [`TRADE_RANGE`]) to trade: both are shown a
    /// [`TradeView`] with empty offers at revision 1.
    Open { with: u64 },
    /// 1: puts these items (whole stacks, at most [`MAX_TRADE_ITEMS`], each once) and gold on
    /// the table, replacing this player's last offer: a new revision, both acceptances
    /// cleared.
    Offer {
        trade: u64,
        items: Vec<u64>,
        gold: u64,
    },
    /// 2: agrees to the trade exactly as it stood at `revision`; when both parties accepted
    /// the same revision it is committed.
    Accept { trade: u64, revision: u32 },
    /// 3: walks away from an open trade (too late once both accepted).
    Cancel { trade: u64 },
}

/// See [`ServerMessage::Trade`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TradeNews {
    /// 0: the trade as it is now.
    View(TradeView),
    /// 1: the trade is over; when committed, an [`ServerMessage::Inventory`] with the new
    /// holdings follows.
    Done { trade: u64, outcome: TradeOutcome },
    /// 2: a step was refused; nothing changed.
    Refused { trade: u64, why: TradeRefusal },
}

/// One trade as its parties see it, from this player's side.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TradeView {
    pub trade: u64,
    /// The other party's entity id.
    pub with: u64,
    /// Grows with every change of either offer; an accept names it.
    pub revision: u32,
    pub mine: OfferView,
    pub theirs: OfferView,
    /// Whether this player, and the other, accepted this revision.
    pub accepted: bool,
    pub they_accepted: bool,
}

/// What one side offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct OfferView {
    pub items: Vec<ItemView>,
    pub gold: u64,
}

/// How a trade ended (the ledger's outcome: the same for both parties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TradeOutcome {
    /// 0: both sides' items and gold changed hands.
    Committed,
    /// 1: a party cancelled.
    Cancelled,
    /// 2: nobody changed or accepted it for 60 s.
    TimedOut,
    /// 3: the zone hosting it went silent (a crash); nothing moved.
    HostLost,
    /// 4: at commit, an offered item had changed or a party had moved on to another zone.
    Stale,
    /// 5: at commit, a party had less gold than it offered.
    NotEnoughGold,
    /// 6: the trade was malformed (an amount out of range).
    Invalid,
    /// 7: a party was taken over by another zone.
    Fenced,
    /// 8: the parties drifted out of range, or one crossed into another zone, logged out or
    /// was disconnected.
    WalkedAway,
}

/// Why a trade step was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TradeRefusal {
    /// 0: no such open trade with this player in it.
    NoSuchTrade,
    /// 1: a trade with oneself.
    WithSelf,
    /// 2: the other player is not within [`TRADE_RANGE`] (or not a player at all).
    OutOfRange,
    /// 3: this player, or the other, is already in a trade.
    Busy,
    /// 4: an offered item is not in this player's inventory, or is listed twice, or more
    /// than [`MAX_TRADE_ITEMS`] are offered.
    NotHeld,
    /// 5: more gold offered than this player holds.
    NotEnoughGold,
    /// 6: the accept names a revision that is not the current one (an offer changed, or the
    /// accept was replayed).
    StaleRevision,
    /// 7: both accepted: the trade is being committed and can no longer change.
    Closed,
    /// 8: the inventory is not read yet (right after arriving in a zone); try again.
    NotReady,
    /// 9: more requests than [`TRADE_RATE_PER_S`] allows.
    RateLimited,
}

impl TradeRefusal {
    /// A short name for metrics and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TradeRefusal::NoSuchTrade => "no_such_trade",
            TradeRefusal::WithSelf => "with_self",
            TradeRefusal::OutOfRange => "out_of_range",
            TradeRefusal::Busy => "busy",
            TradeRefusal::NotHeld => "not_held",
            TradeRefusal::NotEnoughGold => "not_enough_gold",
            TradeRefusal::StaleRevision => "stale_revision",
            TradeRefusal::Closed => "closed",
            TradeRefusal::NotReady => "not_ready",
            TradeRefusal::RateLimited => "rate_limited",
        }
    }
}

/// See [`ServerMessage::PartyMember`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct PartyMember {
    pub name: String,
    pub joined: bool,
}

/// Where a chat line goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ChatChannel {
    /// Players within 50 m of the speaker in the same zone (as [`ClientMessage::Chat`]).
    Say,
    /// Every player the speaker's zone simulates.
    Zone,
    /// Every player in the world.
    World,
    /// One player, by character name, on whichever gateway it plays (and the speaker).
    Whisper(String),
    /// The speaker's party.
    Party,
}

/// A line of chat to a channel (see [`ClientMessage::ChatTo`]).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ChatTo {
    pub channel: ChatChannel,
    /// 1..=[`MAX_CHAT_LEN`] bytes.
    pub text: String,
}

/// See [`ClientMessage::Mute`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Mute {
    pub name: String,
    /// `true` mutes, `false` unmutes.
    pub muted: bool,
}

/// See [`ServerMessage::ChatLine`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ChatLine {
    pub channel: ChatChannel,
    /// The line's place in the cluster's one order of chat: grows with every line, the same
    /// number for every recipient (a client drops a line whose `seq` it has seen).
    pub seq: u64,
    pub from: String,
    pub text: String,
}

/// Why a chat line was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ChatRefusal {
    /// 0: the text is empty or longer than [`MAX_CHAT_LEN`] bytes.
    Length,
    /// 1: more lines than the chat rate allows (2 per second, bursts of 8).
    RateLimited,
    /// 2: a whisper, mute or party invitation naming a name that breaks the naming rules (or
    /// a full mute list).
    BadRecipient,
    /// 3: the chat bus is unreachable; try again.
    Unavailable,
    /// 4: party chat without a party, or accepting an invitation nobody sent.
    NoParty,
    /// 5: an operator silenced this player for a while.
    Silenced,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u8,
    /// The character's name: 1..=[`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_` or `-`.
    pub name: String,
}

/// Longest password, in bytes of UTF-8 (argon2 hashes any length; the cap bounds the work a
/// client can ask for).
pub const MAX_PASSWORD_LEN: usize = 128;
/// Shortest password a new account may have.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest session token, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Login {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u8,
    /// Account name, which is also the character's name; the rules of [`Hello::name`].
    pub name: String,
    pub auth: Auth,
}

/// How a [`Login`] proves who it is.
#[derive(Clone, PartialEq, Encode, Decode)]
pub enum Auth {
    /// An existing account's password.
    Password(String),
    /// Creates the account (and its character) with this password:
    /// [`MIN_PASSWORD_LEN`]..=[`MAX_PASSWORD_LEN`] bytes.
    Register(String),
    /// A token from an earlier [`ServerMessage::Session`] (opaque bytes).
    Token(Vec<u8>),
}

impl std::fmt::Debug for Auth {
    /// Never prints secrets: logs and panics show only which kind of proof it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password(_) => f.write_str("Password(..)"),
            Auth::Register(_) => f.write_str("Register(..)"),
            Auth::Token(t) => write!(f, "Token({} bytes)", t.len()),
        }
    }
}

#[derive(Clone, PartialEq, Encode, Decode)]
pub struct SessionToken {
    /// Opaque; present it in [`Auth::Token`] to resume.
    pub token: Vec<u8>,
    /// When it stops being accepted, in seconds since the Unix epoch.
    pub expires_unix_s: u64,
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionToken")
            .field("token", &format_args!("{} bytes", self.token.len()))
            .field("expires_unix_s", &self.expires_unix_s)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct Input {
    /// Increases by one per input the client sends; wraps at `u32::MAX`.
    pub seq: u32,
    /// The newest snapshot tick the client has received (0 before the first).
    pub ack_tick: u32,
    /// Direction of movement, radians, counter-clockwise from +x.
    pub heading: f32,
    /// Requested speed in m/s; 0 stands still. Clamped to [`MAX_SPEED`].
    pub speed: f32,
    /// Action bits, reserved; must be 0 for now.
    pub actions: u32,
}

impl Input {
    /// Rejects values no honest client sends: non-finite floats, negative speed.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.heading.is_finite() || !self.speed.is_finite() {
            return Err("non-finite heading or speed");
        }
        if self.speed < 0.0 {
            return Err("negative speed");
        }
        Ok(())
    }
}

/// A game action. Which `kind`s exist, what their payload holds and how far their target may
/// be is the game's (see `worldmesh-game`); the server checks all three.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionRequest {
    /// Increases by one per action the client sends; the answer carries it back.
    pub seq: u32,
    pub kind: ActionKind,
    /// The entity acted on, if the kind takes one.
    pub target: Option<EntityId>,
    /// The kind's arguments, bincode-encoded by the game's client code; at most
    /// [`MAX_GAME_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// What became of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ActionOutcome {
    /// The [`ActionRequest::seq`] answered.
    pub seq: u32,
    /// `None`: applied.
    pub refused: Option<ActionRefusal>,
}

/// Why an action was not applied. The engine checks the first seven before the game sees the
/// action; a game's own rules (a cooldown, a dead actor, no line of sight) refuse with
/// [`ActionRefusal::Rule`] and a code the game documents. Append new reasons; never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ActionRefusal {
    /// 0: no action of this kind exists.
    UnknownKind,
    /// 1: the payload does not decode as the kind's arguments, or is too long.
    Malformed,
    /// 2: the kind needs a target and none was given, or the target does not exist (any more).
    NoTarget,
    /// 3: the target stands farther away than the kind reaches.
    OutOfReach,
    /// 4: more actions than the per-tick allowance; this one was dropped.
    Flood,
    /// 5: the player has no character in play to act with.
    NotInPlay,
    /// 6: the actor or the target is moving between zones right now; retry in a moment.
    Moving,
    /// 7: the game's own rule, by the game's code.
    Rule(u16),
}

impl ActionRefusal {
    /// A short name, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            ActionRefusal::UnknownKind => "unknown_kind",
            ActionRefusal::Malformed => "malformed",
            ActionRefusal::NoTarget => "no_target",
            ActionRefusal::OutOfReach => "out_of_reach",
            ActionRefusal::Flood => "flood",
            ActionRefusal::NotInPlay => "not_in_play",
            ActionRefusal::Moving => "moving",
            ActionRefusal::Rule(_) => "rule",
        }
    }
}

/// A game event (see [`ServerMessage::Event`]).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct GameEvent {
    pub kind: EventKind,
    /// The entity it is about (the one hit, the door opened).
    pub entity: EntityId,
    /// The kind's fields, bincode-encoded by the game; at most [`MAX_GAME_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ChatSay {
    /// 1..=[`MAX_CHAT_LEN`] bytes.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct WorldBounds {
    pub min_x: f32,
    pub min_y: f32,
    pub max_x: f32,
    pub max_y: f32,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Welcome {
    /// This connection's player id, unique within the gateway.
    pub player_id: PlayerId,
    /// The entity id of the player's own character in snapshots.
    pub entity_id: EntityId,
    /// Server ticks (and snapshots) per second.
    pub tick_rate_hz: u16,
    pub world: WorldBounds,
    /// Where the character stands now.
    pub x: f32,
    pub y: f32,
    pub heading: f32,
}

/// One tick of the world as one player sees it, delta-encoded (see [`crate::snapshot`] and
/// `PROTOCOL.md` § Snapshots).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Snapshot {
    /// The server tick this snapshot shows.
    pub tick: u32,
    /// The tick whose view this is a delta against; 0 = none (a full update).
    pub baseline: u32,
    /// The newest input `seq` the server has applied for this player, for client reconciliation.
    pub last_input_seq: u32,
    /// The bit-packed body: removals, then new and changed entities.
    pub data: Vec<u8>,
}

/// A decoded (dequantised) entity state, as a client shows it.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct EntityState {
    pub id: EntityId,
    pub kind: EntityKind,
    pub x: f32,
    pub y: f32,
    pub heading: f32,
    /// Current speed in m/s.
    pub speed: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum EntityKind {
    Player,
    Npc,
    /// An item lying on the ground (its [`GroundItemView`] says which).
    Item,
}

impl EntityKind {
    /// The kind of entity `id` names (the id ranges of [`EntityId`]).
    #[must_use]
    pub fn of(id: EntityId) -> EntityKind {
        if id.is_item() {
            EntityKind::Item
        } else if id.is_npc() {
            EntityKind::Npc
        } else {
            EntityKind::Player
        }
    }
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ChatHeard {
    pub from: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Kick {
    pub code: ErrorCode,
    /// Human-readable detail, for logs; clients must act on `code` only.
    pub message: String,
}

/// Why the server refused or closed a connection. The same number is used as the QUIC
/// application close code. Append new codes; never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorCode {
    /// 0: bytes that do not decode as a frame or message.
    Malformed,
    /// 1: a frame longer than the limit.
    FrameTooLarge,
    /// 2: a frame or Hello with a protocol version the server does not speak.
    UnsupportedVersion,
    /// 3: a valid message at the wrong time (e.g. Input before Hello, a second Hello).
    UnexpectedMessage,
    /// 4: a name that breaks the naming rules.
    InvalidName,
    /// 5: the gateway is at its connection limit.
    ServerFull,
    /// 6: no zone server can take the character right now; retry later.
    NoZoneAvailable,
    /// 7: a backend (coordinator, persistence, zone) failed; retry later.
    Unavailable,
    /// 8: the same character logged in on another connection.
    LoggedInElsewhere,
    /// 9: the gateway is shutting down; reconnect.
    ShuttingDown,
    /// 10: the client sent too much, too fast.
    RateLimited,
    /// 11: no Hello within the login deadline, or the connection went idle.
    Timeout,
    /// 12: an input with values no honest client sends (non-finite, negative speed).
    InvalidInput,
    /// 13: no account with this name.
    UnknownAccount,
    /// 14: the password does not match the account's.
    WrongPassword,
    /// 15: registering a name that is already an account or a character.
    NameTaken,
    /// 16: a token that is not one of ours (bad signature, wrong format).
    InvalidToken,
    /// 17: a token past its expiry; log in with the password.
    TokenExpired,
    /// 18: a token revoked since it was issued (e.g. all sessions were logged out).
    TokenRevoked,
    /// 19: this character belongs to an account (log in with [`Login`]), or this gateway
    /// does not accept guest logins.
    AccountRequired,
    /// 20: a password outside the length limits.
    InvalidPassword,
}

impl ErrorCode {
    /// The code's number on the wire and as a QUIC close code.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code with this number, if it is one (clients map QUIC close codes back).
    pub fn from_u32(n: u32) -> Option<Self> {
        use ErrorCode::*;
        const ALL: [ErrorCode; 21] = [
            Malformed,
            FrameTooLarge,
            UnsupportedVersion,
            UnexpectedMessage,
            InvalidName,
            ServerFull,
            NoZoneAvailable,
            Unavailable,
            LoggedInElsewhere,
            ShuttingDown,
            RateLimited,
            Timeout,
            InvalidInput,
            UnknownAccount,
            WrongPassword,
            NameTaken,
            InvalidToken,
            TokenExpired,
            TokenRevoked,
            AccountRequired,
            InvalidPassword,
        ];
        let code = ALL.get(n as usize).copied()?;
        debug_assert_eq!(code.as_u32(), n, "ALL lists the codes in order");
        Some(code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Checks a player name against the naming rules of [`Hello::name`].
pub fn validate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
