//! Any bytes as a client frame: the decoder must return a value or a typed error, never
//! panic, never allocate beyond the frame limit; a decoded message re-encodes to a frame that
//! decodes to the same message (compared by re-encoding, since NaN != NaN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use worldmesh_protocol::ClientMessage;
use worldmesh_protocol::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = codec::decode_frame::<ClientMessage>(data) {
        let once = codec::encode_to_vec(&msg).expect("a decoded message encodes");
        let again = codec::decode_frame::<ClientMessage>(&once).expect("and decodes");
        assert_eq!(codec::encode_to_vec(&again).unwrap(), once, "round trip");
    }
});
