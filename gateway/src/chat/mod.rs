//! Chat beyond `say`: zone, world and whisper lines, fanned out to every gateway through one
//! bus, then by each gateway to its own players.
//!
//! `say` stays in the zone (it needs positions: the zone hears it and sends it to the players
//! in range). The other channels need no positions, only who is where: the speaker's gateway
//! checks the line (length, rate, recipient's name) and publishes it on the [`bus`]; every
//! gateway reads every line, in the bus's one order, and hands it to those of its players the
//! line reaches ([`Line::reaches`]) and who have not muted the speaker. One order for all
//! lines means one order within every channel, the same for every recipient, and the `seq`
//! each line carries lets a client (or a bot's audit) see a repeat or a gap.
//!
//! # Layout
//!
//! - this file: what a line is and whom it reaches, the per-player rate limit, the fan-out.
//!
//! Parties ride the same bus: an invitation is a line to one player, joining and leaving are
//! lines to the party, and each session remembers its party's id and the invitations it got.
//! A party lives as long as its members play: it is not stored, and a member who logs out
//! leaves it.
//!
//! An operator's silence (`worldmesh chat silence`) is stored with the bus (a Redis hash, or
//! the in-process bus), read at every login, and announced on the bus to the gateway where
//! the player plays now: a silenced player's lines on every channel, `say` included, are
//! refused (`Silenced`) until it ends.
//! - [`bus`]: the bus: Redis streams in a cluster, an in-process bus for one process, one
//!   interface; the reader that catches up after a lost connection without repeats.

pub mod bus;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use worldmesh_protocol::{
    CHAT_BURST, CHAT_RATE_PER_S, ChatChannel, ChatLine, ChatRefusal, PartyMember, ServerMessage,
    codec,
};

use crate::Gateway;

/// Whom a line on the bus is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The players a zone simulates.
    Zone(u64),
    World,
    /// One player by character name.
    Whisper(String),
    /// The members of a party, by its id.
    Party(u64),
}

/// What a line on the bus says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Chat: its `text`.
    Text,
    /// `from` invites the `Whisper` audience into party `.0`.
    Invite(u64),
    /// `from` joined the `Party` audience.
    Joined,
    /// `from` left the `Party` audience.
    Left,
    /// An operator silenced `from` until `.0` (Unix seconds; a time past lifts it). To the
    /// `World` audience: the gateway where `from` plays applies it; no client is told.
    Silence(u64),
}

/// One line as the bus carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The bus's order: grows with every line (0 until the bus gives it one).
    pub seq: u64,
    pub to: Audience,
    pub kind: Kind,
    pub from: String,
    pub text: String,
}

impl Line {
    /// Whether the player `name`, routed to `zone`, in party `party` (0: none), is this
    /// line's audience (mutes aside). The speaker of a whisper hears it too (the echo tells it
    /// the line went out), and one who left a party hears its own leaving.
    pub fn reaches(&self, name: &str, zone: u64, party: u64) -> bool {
        match (&self.to, self.kind) {
            (Audience::World, _) => true,
            (Audience::Zone(z), _) => *z == zone,
            (Audience::Whisper(to), Kind::Text) => to == name || self.from == name,
            (Audience::Whisper(to), _) => to == name,
            (Audience::Party(p), Kind::Left) => *p == party || self.from == name,
            (Audience::Party(p), _) => *p == party,
        }
    }

    /// The message a client receives for a [`Kind::Text`] line.
    pub fn message(&self) -> ServerMessage {
        ServerMessage::ChatLine(ChatLine {
            channel: match &self.to {
                Audience::Zone(_) => ChatChannel::Zone,
                Audience::World => ChatChannel::World,
                Audience::Whisper(to) => ChatChannel::Whisper(to.clone()),
                Audience::Party(_) => ChatChannel::Party,
            },
            seq: self.seq,
            from: self.from.clone(),
            text: self.text.clone(),
        })
    }
}

/// A player's allowance (a token bucket): chat lines, or trade requests.
pub struct ChatLimiter {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl ChatLimiter {
    /// Chat lines: [`CHAT_RATE_PER_S`], bursts of [`CHAT_BURST`].
    pub fn new(now: Instant) -> Self {
        Self::with(now, CHAT_RATE_PER_S, CHAT_BURST)
    }

    /// Trade requests: [`worldmesh_protocol::TRADE_RATE_PER_S`], bursts of
    /// [`worldmesh_protocol::TRADE_BURST`].
    pub fn trades(now: Instant) -> Self {
        Self::with(
            now,
            worldmesh_protocol::TRADE_RATE_PER_S,
            worldmesh_protocol::TRADE_BURST,
        )
    }

    /// The item requests limiter (`ITEM_RATE_PER_S`, `ITEM_BURST`).
    pub fn items(now: Instant) -> Self {
        Self::with(
            now,
            worldmesh_protocol::ITEM_RATE_PER_S,
            worldmesh_protocol::ITEM_BURST,
        )
    }

    fn with(now: Instant, rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Whether a line may go out at `now` (and, if so, it is counted).
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A line a session asked to send, on its way to the bus.
pub struct Outgoing {
    pub player_id: u64,
    pub line: Line,
}

/// Lines waiting for the bus, per gateway; beyond, lines are refused as `Unavailable`.
pub const PUBLISH_QUEUE: usize = 1024;

/// Publishes the lines sessions send, one at a time in the order they were sent (so one
/// player's lines keep their order); a line the bus refuses is answered `Unavailable` to its
/// speaker.
pub async fn publish(
    gateway: Arc<Gateway>,
    publisher: Arc<bus::Publisher>,
    mut out: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(o) = out.recv().await {
        match publisher.publish(&o.line).await {
            Ok(()) => metrics::counter!("worldmesh_gateway_chat_sent_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "chat line not published");
                refuse(&gateway, o.player_id, ChatRefusal::Unavailable);
            }
        }
    }
}

/// Queues a line from `player_id` for the bus; a full queue refuses it (`Unavailable`).
pub fn send(gateway: &Gateway, player_id: u64, to: Audience, kind: Kind, from: &str, text: String) {
    let line = Line {
        seq: 0,
        to,
        kind,
        from: from.to_owned(),
        text,
    };
    if gateway
        .chat_out
        .try_send(Outgoing { player_id, line })
        .is_err()
    {
        refuse(gateway, player_id, ChatRefusal::Unavailable);
    }
}

/// Tells party `party`'s members (and, when leaving, `name` itself) that `name` joined or
/// left it.
pub fn party_news(gateway: &Gateway, player_id: u64, party: u64, kind: Kind, name: &str) {
    send(
        gateway,
        player_id,
        Audience::Party(party),
        kind,
        name,
        String::new(),
    );
}

/// Tells a player its line was not sent, and counts why.
pub fn refuse(gateway: &Gateway, player_id: u64, why: ChatRefusal) {
    let reason = match why {
        ChatRefusal::Length => "length",
        ChatRefusal::RateLimited => "rate_limited",
        ChatRefusal::BadRecipient => "bad_recipient",
        ChatRefusal::Unavailable => "unavailable",
        ChatRefusal::NoParty => "no_party",
        ChatRefusal::Silenced => "silenced",
    };
    metrics::counter!("worldmesh_gateway_chat_refused_total", "reason" => reason).increment(1);
    if let (Some(session), Ok(frame)) = (
        gateway.sessions.get(&player_id),
        codec::encode_to_vec(&ServerMessage::ChatRefused(why)),
    ) {
        session.send_chat(Bytes::from(frame));
    }
}

/// Hands every line the bus delivers to the sessions it reaches, until the bus ends.
pub async fn deliver(gateway: Arc<Gateway>, mut lines: tokio::sync::mpsc::Receiver<Line>) {
    while let Some(line) = lines.recv().await {
        let message = match line.kind {
            Kind::Silence(until) => {
                for session in gateway.sessions.iter().filter(|s| s.name == line.from) {
                    session.silence(until);
                }
                continue;
            }
            Kind::Text => line.message(),
            Kind::Invite(_) => ServerMessage::PartyInvite(line.from.clone()),
            Kind::Joined | Kind::Left => ServerMessage::PartyMember(PartyMember {
                name: line.from.clone(),
                joined: line.kind == Kind::Joined,
            }),
        };
        let Ok(frame) = codec::encode_to_vec(&message) else {
            continue;
        };
        let frame = Bytes::from(frame);
        let mut delivered = 0u64;
        for session in gateway.sessions.iter() {
            if !line.reaches(&session.name, session.zone_id(), session.party()) {
                continue;
            }
            if line.kind == Kind::Text && session.mutes(&line.from) {
                continue;
            }
            if let Kind::Invite(party) = line.kind {
                session.invited(&line.from, party);
            }
            session.send_chat(frame.clone());
            delivered += 1;
        }
        metrics::counter!("worldmesh_gateway_chat_delivered_total").increment(delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(to: Audience) -> Line {
        Line {
            seq: 1,
            to,
            kind: Kind::Text,
            from: "ann".into(),
            text: "hi".into(),
        }
    }

    #[test]
    fn a_line_reaches_its_channel_only() {
        assert!(line(Audience::World).reaches("bob", 3, 0));
        assert!(line(Audience::Zone(3)).reaches("bob", 3, 0));
        assert!(!line(Audience::Zone(3)).reaches("bob", 4, 0));
        let w = line(Audience::Whisper("bob".into()));
        assert!(
            w.reaches("bob", 9, 0) && w.reaches("ann", 1, 0),
            "the recipient and the echo"
        );
        assert!(!w.reaches("cid", 9, 0));
        let invite = Line {
            kind: Kind::Invite(5),
            ..w
        };
        assert!(
            invite.reaches("bob", 9, 0) && !invite.reaches("ann", 1, 0),
            "no echo"
        );
        let p = line(Audience::Party(5));
        assert!(p.reaches("bob", 1, 5) && !p.reaches("cid", 1, 6) && !p.reaches("dan", 1, 0));
        let left = Line {
            kind: Kind::Left,
            ..p
        };
        assert!(left.reaches("ann", 1, 0), "the one who left hears it");
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = ChatLimiter::new(t0);
        let burst = (0..20).filter(|_| l.admit(t0)).count();
        assert_eq!(burst, CHAT_BURST as usize);
        assert!(l.admit(t0 + Duration::from_millis(500)), "2 a second");
        assert!(!l.admit(t0 + Duration::from_millis(600)));
    }
}
