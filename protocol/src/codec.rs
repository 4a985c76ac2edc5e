//! The frame codec: the one module that knows how messages become bytes.
//!
//! A frame is `version: u8`, `length: u32` little endian, then `length` bytes of payload: one
//! [`ClientMessage`](crate::ClientMessage) or [`ServerMessage`](crate::ServerMessage) encoded
//! with bincode 2's standard configuration (little endian, variable-length integers). The same
//! layout is used on the control stream, where frames follow each other, and in datagrams,
//! where each datagram holds exactly one frame.
//!
//! Decoding untrusted bytes is bounded twice: the header's length is checked against
//! [`MAX_FRAME_PAYLOAD`] before the payload is read or allocated, and bincode runs with the same
//! limit so that no length field inside the payload can make it allocate more.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

use crate::{ErrorCode, PROTOCOL_VERSION};

/// Bytes of frame header: version (1) and payload length (4).
pub const HEADER_LEN: usize = 5;

/// Largest payload a frame may carry. 16 KiB holds the largest legal message (a full
/// snapshot is capped far below by the datagram size; chat lines are 256 bytes) with room to
/// grow, while keeping what one hostile peer can make us buffer small.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_PAYLOAD>>;

fn config() -> Config {
    config::standard().with_limit::<MAX_FRAME_PAYLOAD>()
}

/// A parsed, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    /// Payload length in bytes, at most [`MAX_FRAME_PAYLOAD`].
    pub len: usize,
}

impl FrameHeader {
    /// Checks a header read off the wire: the version must be ours and the length within the
    /// limit. Called before the payload is read, so an oversized frame costs nothing.
    pub fn parse(bytes: [u8; HEADER_LEN]) -> Result<Self, DecodeError> {
        let version = bytes[0];
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion { got: version });
        }
        let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(DecodeError::TooLarge {
                len,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        Ok(Self { version, len })
    }
}

/// Why bytes could not be decoded. Each maps to the [`ErrorCode`] the peer is kicked with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported protocol version {got} (this server speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { got: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("{extra} bytes left over after the message")]
    TrailingBytes { extra: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The error code a client is kicked with for sending these bytes.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::Malformed(_) => ErrorCode::Malformed,
        }
    }
}

/// Why a message could not be encoded: only a message larger than the frame limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message does not fit in a frame: {0}")]
    TooLarge(String),
}

/// Appends one frame holding `msg` to `out` and returns the frame's length. On error `out` is
/// left as it was.
pub fn encode_frame<M: Encode>(msg: &M, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[PROTOCOL_VERSION, 0, 0, 0, 0]);
    match bincode::encode_into_std_write(msg, out, config()) {
        Ok(len) if len <= MAX_FRAME_PAYLOAD => {
            out[start + 1..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
            Ok(HEADER_LEN + len)
        }
        Ok(len) => {
            out.truncate(start);
            Err(EncodeError::TooLarge(format!(
                "{len} bytes, limit {MAX_FRAME_PAYLOAD}"
            )))
        }
        Err(e) => {
            out.truncate(start);
            Err(EncodeError::TooLarge(e.to_string()))
        }
    }
}

/// One frame holding `msg`, in a new buffer.
pub fn encode_to_vec<M: Encode>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode_frame(msg, &mut out)?;
    Ok(out)
}

/// Decodes a buffer that holds exactly one frame (a datagram).
pub fn decode_frame<M: Decode<()>>(buf: &[u8]) -> Result<M, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            expected: HEADER_LEN,
            got: buf.len(),
        });
    };
    let header = FrameHeader::parse(*header)?;
    let payload = &buf[HEADER_LEN..];
    if payload.len() < header.len {
        return Err(DecodeError::Truncated {
            expected: HEADER_LEN + header.len,
            got: buf.len(),
        });
    }
    if payload.len() > header.len {
        return Err(DecodeError::TrailingBytes {
            extra: payload.len() - header.len,
        });
    }
    decode_payload(payload)
}

/// Decodes a frame's payload, whose header has already been checked with
/// [`FrameHeader::parse`]. Every byte must belong to the message.
pub fn decode_payload<M: Decode<()>>(payload: &[u8]) -> Result<M, DecodeError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(DecodeError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_PAYLOAD,
        });
    }
    let (msg, used) = bincode::decode_from_slice(payload, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Encodes a game's value (an action's arguments, an event's fields) the way messages are
/// encoded, refusing one longer than `max` bytes.
pub fn encode_value<T: Encode>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let out = bincode::encode_to_vec(value, config())
        .map_err(|e| EncodeError::TooLarge(e.to_string()))?;
    if out.len() > max {
        return Err(EncodeError::TooLarge(format!(
            "{} bytes, limit {max}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a game's value from untrusted bytes: at most `max` bytes, every one used.
pub fn decode_value<T: Decode<()>>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max.min(MAX_FRAME_PAYLOAD) {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    decode_payload(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn header_rejects_wrong_version_and_oversize_before_payload() {
        assert_eq!(
            FrameHeader::parse([2, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedVersion { got: 2 })
        );
        let too_big = ((MAX_FRAME_PAYLOAD + 1) as u32).to_le_bytes();
        assert!(matches!(
            FrameHeader::parse([1, too_big[0], too_big[1], too_big[2], too_big[3]]),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn known_bytes_for_protocol_md() {
        // The worked example in PROTOCOL.md: Hello { protocol_version: 1, name: "ann" }.
        let frame = encode_to_vec(&ClientMessage::Hello(Hello {
            protocol_version: 1,
            name: "ann".into(),
        }))
        .unwrap();
        assert_eq!(frame, [1, 6, 0, 0, 0, 0, 1, 3, b'a', b'n', b'n']);
        // Input { seq: 300, ack_tick: 7, heading: 0.0, speed: 1.5, actions: 0 }.
        let frame = encode_to_vec(&ClientMessage::Input(Input {
            seq: 300,
            ack_tick: 7,
            heading: 0.0,
            speed: 1.5,
            actions: 0,
        }))
        .unwrap();
        assert_eq!(
            frame,
            [
                1, 14, 0, 0, 0, 1, 251, 0x2c, 0x01, 7, 0, 0, 0, 0, 0, 0, 0xc0, 0x3f, 0
            ]
        );
    }

    #[test]
    fn known_snapshot_bytes_for_protocol_md() {
        // A full update (no baseline) with one new entity: id 1, Player, at (625, 1000) in a
        // world starting at (0, 0), heading 0, speed 0.
        let q = crate::snapshot::Quantizer::new(WorldBounds {
            min_x: 0.0,
            min_y: 0.0,
            max_x: 2000.0,
            max_y: 2000.0,
        });
        let mut enc = crate::snapshot::ObserverEncoder::default();
        let e = q.quantize(1, EntityKind::Player, 625.0, 1000.0, 0.0, 0.0);
        let (snapshot, _) = enc.snapshot(
            1,
            0,
            &[crate::snapshot::Visible::new(e, 1.0)],
            crate::snapshot::no_fields,
            1100,
        );
        let frame = encode_to_vec(&ServerMessage::Snapshot(snapshot)).unwrap();
        assert_eq!(
            frame,
            [
                1, 14, 0, 0, 0, // header
                1, 1, 0, 0, 9, // Snapshot, tick 1, baseline 0, last_input_seq 0, 9 body bytes
                0xac, 0x0c, 0x09, 0xc4, 0x00, 0xfa, 0x00, 0x00,
                0x01, // body (71 bits, then the empty fields section: 1 bit)
            ]
        );
        let kick = encode_to_vec(&ServerMessage::Kick(Kick {
            code: ErrorCode::ServerFull,
            message: "full".into(),
        }))
        .unwrap();
        assert_eq!(kick, [1, 7, 0, 0, 0, 3, 5, 4, b'f', b'u', b'l', b'l']);
    }

    #[test]
    fn known_action_and_event_bytes_for_protocol_md() {
        // Action { seq: 3, kind: 1, target: Some(42), payload: [7] }.
        let frame = encode_to_vec(&ClientMessage::Action(ActionRequest {
            seq: 3,
            kind: ActionKind(1),
            target: Some(EntityId(42)),
            payload: vec![7],
        }))
        .unwrap();
        assert_eq!(frame, [1, 7, 0, 0, 0, 5, 3, 1, 1, 42, 1, 7]);
        // ActionDone { seq: 3, refused: Some(Rule(2)) }.
        let frame = encode_to_vec(&ServerMessage::ActionDone(ActionOutcome {
            seq: 3,
            refused: Some(ActionRefusal::Rule(2)),
        }))
        .unwrap();
        assert_eq!(frame, [1, 5, 0, 0, 0, 5, 3, 1, 7, 2]);
        // Event { kind: 1, entity: 42, payload: [9, 9] }.
        let frame = encode_to_vec(&ServerMessage::Event(GameEvent {
            kind: EventKind(1),
            entity: EntityId(42),
            payload: vec![9, 9],
        }))
        .unwrap();
        assert_eq!(frame, [1, 6, 0, 0, 0, 6, 1, 42, 2, 9, 9]);
    }

    #[test]
    fn game_values_are_bounded_both_ways() {
        assert_eq!(encode_value(&(1u8, 2u32), 8).unwrap(), [1, 2]);
        assert!(encode_value(&vec![0u8; 300], 256).is_err());
        assert_eq!(decode_value::<(u8, u32)>(&[1, 2], 8), Ok((1, 2)));
        assert!(matches!(
            decode_value::<Vec<u8>>(&[0; 300], 256),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_value::<u8>(&[1, 2], 8),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn known_login_bytes_for_protocol_md() {
        // Login { protocol_version: 1, name: "ann", auth: Password("hunter22") }.
        let frame = encode_to_vec(&ClientMessage::Login(crate::Login {
            protocol_version: 1,
            name: "ann".into(),
            auth: crate::Auth::Password("hunter22".into()),
        }))
        .unwrap();
        assert_eq!(
            frame,
            [
                1, 16, 0, 0, 0, 4, 1, 3, b'a', b'n', b'n', 0, 8, b'h', b'u', b'n', b't', b'e',
                b'r', b'2', b'2'
            ]
        );
        // Session { token: [0xaa, 0xbb], expires_unix_s: 300 }.
        let frame = encode_to_vec(&ServerMessage::Session(crate::SessionToken {
            token: vec![0xaa, 0xbb],
            expires_unix_s: 300,
        }))
        .unwrap();
        assert_eq!(frame, [1, 7, 0, 0, 0, 4, 2, 0xaa, 0xbb, 251, 0x2c, 0x01]);
    }

    #[test]
    fn trailing_and_truncated_are_errors() {
        let mut frame = encode_to_vec(&ClientMessage::Bye).unwrap();
        assert_eq!(
            decode_frame::<ClientMessage>(&frame),
            Ok(ClientMessage::Bye)
        );
        frame.push(0);
        assert!(matches!(
            decode_frame::<ClientMessage>(&frame),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            decode_frame::<ClientMessage>(&frame[..3]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
