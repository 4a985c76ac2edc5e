//! What a client may send, and when: the gateway's per-message checks as pure functions (no
//! I/O, no state). The session task applies them; the fuzz targets in `fuzz/` and the corpus
//! replay test drive them directly, so what is fuzzed is what runs.

use worldmesh_protocol::codec::{self, DecodeError};
use worldmesh_protocol::{
    ActionRequest, Auth, ChatChannel, ChatRefusal, ChatTo, ClientMessage, ErrorCode, Input,
    MAX_CHAT_LEN, MAX_GAME_PAYLOAD, MAX_PASSWORD_LEN, MAX_TOKEN_LEN, MIN_PASSWORD_LEN, Mute,
    PROTOCOL_VERSION, validate_name,
};

/// Why a client is cut off: the code it is kicked with and a message for it and the log.
pub type Rejection = (ErrorCode, String);

fn reject(code: ErrorCode, why: impl Into<String>) -> Rejection {
    (code, why.into())
}

/// Who a new connection says it is.
#[derive(Debug, PartialEq)]
pub struct Greeting {
    /// Character name (and account name, for an account login).
    pub name: String,
    /// `None`: a guest ([`worldmesh_protocol::Hello`]).
    pub auth: Option<Auth>,
}

/// The first control message: a Hello (guest) or a Login of our protocol version with a valid
/// name and a proof within its limits. Tokens are only checked for size here; their
/// signature needs the cluster key ([`crate::token`]).
pub fn check_hello(msg: Result<ClientMessage, DecodeError>) -> Result<Greeting, Rejection> {
    let (version, name, auth) = match msg {
        Err(e) => return Err((e.code(), e.to_string())),
        Ok(ClientMessage::Hello(h)) => (h.protocol_version, h.name, None),
        Ok(ClientMessage::Login(l)) => (l.protocol_version, l.name, Some(l.auth)),
        Ok(_) => {
            return Err(reject(
                ErrorCode::UnexpectedMessage,
                "expected Hello or Login",
            ));
        }
    };
    if version != PROTOCOL_VERSION {
        return Err(reject(
            ErrorCode::UnsupportedVersion,
            format!("protocol {version} not supported; this gateway speaks {PROTOCOL_VERSION}"),
        ));
    }
    if !validate_name(&name) {
        return Err(reject(
            ErrorCode::InvalidName,
            "names are 1-32 ASCII letters, digits, '_' or '-'",
        ));
    }
    match &auth {
        Some(Auth::Register(p)) if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&p.len()) => {
            return Err(reject(
                ErrorCode::InvalidPassword,
                format!("passwords are {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} bytes"),
            ));
        }
        Some(Auth::Password(p)) if p.len() > MAX_PASSWORD_LEN => {
            return Err(reject(ErrorCode::WrongPassword, "wrong password"));
        }
        Some(Auth::Token(t)) if t.len() > MAX_TOKEN_LEN => {
            return Err(reject(ErrorCode::InvalidToken, "token too long"));
        }
        _ => {}
    }
    Ok(Greeting { name, auth })
}

/// A datagram in play: only a valid Input.
pub fn check_datagram(bytes: &[u8]) -> Result<Input, Rejection> {
    match codec::decode_frame::<ClientMessage>(bytes) {
        Err(e) => Err((e.code(), e.to_string())),
        Ok(ClientMessage::Input(i)) => {
            i.validate()
                .map_err(|why| reject(ErrorCode::InvalidInput, why))?;
            Ok(i)
        }
        Ok(_) => Err(reject(
            ErrorCode::UnexpectedMessage,
            "only Input may be sent as a datagram",
        )),
    }
}

/// What a control-stream message in play asks for.
#[derive(Debug, PartialEq)]
pub enum InPlay {
    Chat(String),
    /// A line to a channel; its length and recipient are checked by [`check_chat_to`], and
    /// answered with a refusal rather than a kick.
    ChatTo(ChatTo),
    Mute(Mute),
    PartyInvite(String),
    PartyAccept(String),
    PartyLeave,
    Action(ActionRequest),
    Trade(worldmesh_protocol::TradeRequest),
    Item(worldmesh_protocol::ItemRequest),
    Bye,
}

/// A control-stream message in play: Chat (1-256 bytes), an Action (payload within
/// [`MAX_GAME_PAYLOAD`]; the zone checks the rest) or Bye.
pub fn check_in_play(msg: Result<ClientMessage, DecodeError>) -> Result<InPlay, Rejection> {
    match msg {
        Err(e) => Err((e.code(), e.to_string())),
        Ok(ClientMessage::Bye) => Ok(InPlay::Bye),
        Ok(ClientMessage::Chat(c)) => {
            if c.text.is_empty() || c.text.len() > MAX_CHAT_LEN {
                Err(reject(ErrorCode::Malformed, "chat lines are 1-256 bytes"))
            } else {
                Ok(InPlay::Chat(c.text))
            }
        }
        Ok(ClientMessage::ChatTo(c)) => Ok(InPlay::ChatTo(c)),
        Ok(ClientMessage::Mute(m)) => Ok(InPlay::Mute(m)),
        Ok(ClientMessage::PartyInvite(name)) => Ok(InPlay::PartyInvite(name)),
        Ok(ClientMessage::PartyAccept(from)) => Ok(InPlay::PartyAccept(from)),
        Ok(ClientMessage::PartyLeave) => Ok(InPlay::PartyLeave),
        Ok(ClientMessage::Trade(t)) => Ok(InPlay::Trade(t)),
        Ok(ClientMessage::Item(i)) => Ok(InPlay::Item(i)),
        Ok(ClientMessage::Action(a)) => {
            if a.payload.len() > MAX_GAME_PAYLOAD {
                Err(reject(
                    ErrorCode::Malformed,
                    "action payloads are at most 256 bytes",
                ))
            } else {
                Ok(InPlay::Action(a))
            }
        }
        Ok(_) => Err(reject(
            ErrorCode::UnexpectedMessage,
            "Hello and Input are not valid here",
        )),
    }
}

/// A channel line's text and recipient: 1-256 bytes, a whisper to a well-formed name.
pub fn check_chat_to(c: &ChatTo) -> Result<(), ChatRefusal> {
    if c.text.is_empty() || c.text.len() > MAX_CHAT_LEN {
        return Err(ChatRefusal::Length);
    }
    match &c.channel {
        ChatChannel::Whisper(name) if !validate_name(name) => Err(ChatRefusal::BadRecipient),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worldmesh_protocol::{ChatSay, Hello};

    fn frame(m: &ClientMessage) -> Vec<u8> {
        codec::encode_to_vec(m).unwrap()
    }

    #[test]
    fn hello_rules() {
        let ok = Hello {
            protocol_version: PROTOCOL_VERSION,
            name: "ann".into(),
        };
        assert_eq!(
            check_hello(Ok(ClientMessage::Hello(ok.clone()))).unwrap(),
            Greeting {
                name: "ann".into(),
                auth: None
            }
        );
        let login = |auth| {
            check_hello(Ok(ClientMessage::Login(worldmesh_protocol::Login {
                protocol_version: PROTOCOL_VERSION,
                name: "ann".into(),
                auth,
            })))
        };
        assert_eq!(
            login(Auth::Password("secret!!".into())).unwrap().auth,
            Some(Auth::Password("secret!!".into()))
        );
        assert_eq!(
            login(Auth::Register("short".into())).unwrap_err().0,
            ErrorCode::InvalidPassword
        );
        assert_eq!(
            login(Auth::Register("x".repeat(MAX_PASSWORD_LEN + 1)))
                .unwrap_err()
                .0,
            ErrorCode::InvalidPassword
        );
        assert_eq!(
            login(Auth::Token(vec![0; MAX_TOKEN_LEN + 1]))
                .unwrap_err()
                .0,
            ErrorCode::InvalidToken
        );
        let old = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            ..ok.clone()
        };
        assert_eq!(
            check_hello(Ok(ClientMessage::Hello(old))).unwrap_err().0,
            ErrorCode::UnsupportedVersion
        );
        let bad = Hello {
            name: "a b".into(),
            ..ok
        };
        assert_eq!(
            check_hello(Ok(ClientMessage::Hello(bad))).unwrap_err().0,
            ErrorCode::InvalidName
        );
        assert_eq!(
            check_hello(Ok(ClientMessage::Bye)).unwrap_err().0,
            ErrorCode::UnexpectedMessage
        );
    }

    #[test]
    fn datagram_and_control_rules() {
        let input = Input {
            seq: 1,
            ack_tick: 0,
            heading: 0.5,
            speed: 3.0,
            actions: 0,
        };
        assert_eq!(
            check_datagram(&frame(&ClientMessage::Input(input))).unwrap(),
            input
        );
        assert_eq!(
            check_datagram(&frame(&ClientMessage::Bye)).unwrap_err().0,
            ErrorCode::UnexpectedMessage
        );
        assert!(check_datagram(&[1, 255, 255, 255, 255]).is_err());
        let nan = Input {
            speed: f32::NAN,
            ..input
        };
        assert_eq!(
            check_datagram(&frame(&ClientMessage::Input(nan)))
                .unwrap_err()
                .0,
            ErrorCode::InvalidInput
        );
        let long = ClientMessage::Chat(ChatSay {
            text: "x".repeat(MAX_CHAT_LEN + 1),
        });
        assert_eq!(check_in_play(Ok(long)).unwrap_err().0, ErrorCode::Malformed);
        assert_eq!(check_in_play(Ok(ClientMessage::Bye)).unwrap(), InPlay::Bye);
    }

    #[test]
    fn actions_pass_with_a_payload_within_the_limit() {
        let action = |n| {
            ClientMessage::Action(worldmesh_protocol::ActionRequest {
                seq: 1,
                kind: worldmesh_protocol::ActionKind(1),
                target: None,
                payload: vec![0; n],
            })
        };
        assert!(matches!(
            check_in_play(Ok(action(MAX_GAME_PAYLOAD))),
            Ok(InPlay::Action(_))
        ));
        assert_eq!(
            check_in_play(Ok(action(MAX_GAME_PAYLOAD + 1)))
                .unwrap_err()
                .0,
            ErrorCode::Malformed
        );
    }
}
