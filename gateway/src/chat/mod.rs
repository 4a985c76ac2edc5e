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
//! - this file: what a line is and whom it reaches, the per-player rate limit.
//! - [`bus`]: the bus: Redis streams in a cluster, an in-process bus for one process, one
//!   interface; the reader that catches up after a lost connection without repeats.
//! - [`deliver`]: the gateway's fan-out of the lines it reads to its sessions.

pub mod bus;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use worldmesh_protocol::{
    CHAT_BURST, CHAT_RATE_PER_S, ChatChannel, ChatLine, ChatRefusal, ServerMessage, codec,
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
}

/// One line of chat as the bus carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The bus's order: grows with every line.
    pub seq: u64,
    pub to: Audience,
    pub from: String,
    pub text: String,
}

impl Line {
    /// Whether the player `name`, routed to `zone`, hears this line (mutes aside). The speaker
    /// of a whisper hears it too: the echo tells it the line went out.
    pub fn reaches(&self, name: &str, zone: u64) -> bool {
        match &self.to {
            Audience::World => true,
            Audience::Zone(z) => *z == zone,
            Audience::Whisper(to) => to == name || self.from == name,
        }
    }

    /// The message a client receives.
    pub fn message(&self) -> ServerMessage {
        ServerMessage::ChatLine(ChatLine {
            channel: match &self.to {
                Audience::Zone(_) => ChatChannel::Zone,
                Audience::World => ChatChannel::World,
                Audience::Whisper(to) => ChatChannel::Whisper(to.clone()),
            },
            seq: self.seq,
            from: self.from.clone(),
            text: self.text.clone(),
        })
    }
}

/// A player's chat allowance: [`CHAT_RATE_PER_S`] lines a second, bursts of [`CHAT_BURST`].
pub struct ChatLimiter {
    tokens: f64,
    last: Instant,
}

impl ChatLimiter {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: CHAT_BURST,
            last: now,
        }
    }

    /// Whether a line may go out at `now` (and, if so, it is counted).
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * CHAT_RATE_PER_S).min(CHAT_BURST);
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
    pub to: Audience,
    pub from: String,
    pub text: String,
}

/// Lines waiting for the bus, per gateway; beyond, lines are refused as `Unavailable`.
pub const PUBLISH_QUEUE: usize = 1024;

/// Publishes the lines sessions send, one at a time in the order they were sent (so one
/// player's lines keep their order); a line the bus refuses is answered `Unavailable` to its
/// speaker.
pub async fn publish(
    gateway: Arc<Gateway>,
    publisher: bus::Publisher,
    mut out: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(o) = out.recv().await {
        match publisher.publish(&o.to, &o.from, &o.text).await {
            Ok(()) => metrics::counter!("worldmesh_gateway_chat_sent_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "chat line not published");
                refuse(&gateway, o.player_id, ChatRefusal::Unavailable);
            }
        }
    }
}

/// Tells a player its line was not sent, and counts why.
pub fn refuse(gateway: &Gateway, player_id: u64, why: ChatRefusal) {
    let reason = match why {
        ChatRefusal::Length => "length",
        ChatRefusal::RateLimited => "rate_limited",
        ChatRefusal::BadRecipient => "bad_recipient",
        ChatRefusal::Unavailable => "unavailable",
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
        let Ok(frame) = codec::encode_to_vec(&line.message()) else {
            continue;
        };
        let frame = Bytes::from(frame);
        let mut delivered = 0u64;
        for session in gateway.sessions.iter() {
            if line.reaches(&session.name, session.zone_id()) && !session.mutes(&line.from) {
                session.send_chat(frame.clone());
                delivered += 1;
            }
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
            from: "ann".into(),
            text: "hi".into(),
        }
    }

    #[test]
    fn a_line_reaches_its_channel_only() {
        assert!(line(Audience::World).reaches("bob", 3));
        assert!(line(Audience::Zone(3)).reaches("bob", 3));
        assert!(!line(Audience::Zone(3)).reaches("bob", 4));
        let w = line(Audience::Whisper("bob".into()));
        assert!(
            w.reaches("bob", 9) && w.reaches("ann", 1),
            "the recipient and the echo"
        );
        assert!(!w.reaches("cid", 9));
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
