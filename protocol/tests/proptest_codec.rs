//! Property tests of the codec: every message round-trips, and no byte string panics the
//! decoder (it may only return a typed error).

use proptest::prelude::*;
use worldmesh_protocol::codec::{self, HEADER_LEN, MAX_FRAME_PAYLOAD};
use worldmesh_protocol::*;

fn finite() -> impl Strategy<Value = f32> {
    -1.0e6f32..1.0e6f32
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{0,40}"
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u8>(), name()).prop_map(|(v, name)| ClientMessage::Hello(Hello {
            protocol_version: v,
            name
        })),
        (any::<u32>(), any::<u32>(), finite(), finite(), any::<u32>()).prop_map(
            |(seq, ack_tick, heading, speed, actions)| {
                ClientMessage::Input(Input {
                    seq,
                    ack_tick,
                    heading,
                    speed,
                    actions,
                })
            }
        ),
        ".{0,300}".prop_map(|text| ClientMessage::Chat(ChatSay { text })),
        Just(ClientMessage::Bye),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Malformed),
        Just(ErrorCode::FrameTooLarge),
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::UnexpectedMessage),
        Just(ErrorCode::InvalidName),
        Just(ErrorCode::ServerFull),
        Just(ErrorCode::NoZoneAvailable),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::LoggedInElsewhere),
        Just(ErrorCode::ShuttingDown),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::InvalidInput),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            finite(),
            finite(),
            finite()
        )
            .prop_map(|(player_id, entity_id, tick_rate_hz, x, y, heading)| {
                ServerMessage::Welcome(Welcome {
                    player_id: PlayerId(player_id),
                    entity_id: EntityId(entity_id),
                    tick_rate_hz,
                    world: WorldBounds {
                        min_x: -x,
                        min_y: -y,
                        max_x: x,
                        max_y: y,
                    },
                    x,
                    y,
                    heading,
                })
            }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..1200)
        )
            .prop_map(
                |(tick, baseline, last_input_seq, data)| ServerMessage::Snapshot(Snapshot {
                    tick,
                    baseline,
                    last_input_seq,
                    data
                })
            ),
        (name(), ".{0,300}").prop_map(|(from, text)| ServerMessage::Chat(ChatHeard { from, text })),
        (error_code(), ".{0,100}")
            .prop_map(|(code, message)| ServerMessage::Kick(Kick { code, message })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(msg in client_message()) {
        let frame = codec::encode_to_vec(&msg).unwrap();
        prop_assert!(frame.len() <= HEADER_LEN + MAX_FRAME_PAYLOAD);
        prop_assert_eq!(codec::decode_frame::<ClientMessage>(&frame), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip(msg in server_message()) {
        let frame = codec::encode_to_vec(&msg).unwrap();
        prop_assert_eq!(codec::decode_frame::<ServerMessage>(&frame), Ok(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = codec::decode_frame::<ClientMessage>(&bytes);
        let _ = codec::decode_frame::<ServerMessage>(&bytes);
        let _ = codec::decode_payload::<ClientMessage>(&bytes);
    }

    #[test]
    fn valid_header_with_arbitrary_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = vec![PROTOCOL_VERSION];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        let _ = codec::decode_frame::<ClientMessage>(&frame);
        let _ = codec::decode_frame::<ServerMessage>(&frame);
    }

    #[test]
    fn huge_length_fields_inside_payload_do_not_allocate(len in 1u64 << 20..u64::MAX) {
        // A Chat whose string claims a gigantic length: bincode's limit must refuse it.
        let mut payload = vec![2u8, 253];
        payload.extend_from_slice(&len.to_le_bytes());
        prop_assert!(codec::decode_payload::<ClientMessage>(&payload).is_err());
    }
}
