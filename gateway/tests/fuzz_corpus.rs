//! Replays the fuzz corpus (`fuzz/corpus/*`) on stable through exactly what the fuzz targets
//! drive: every input a fuzzer ever kept (and the hand-written seeds) stays a regression test.

use std::path::Path;

use worldmesh_gateway::checks;
use worldmesh_protocol::{ClientMessage, codec};

#[test]
fn the_fuzz_corpus_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut inputs = 0;
    for target in ["client_frame", "gateway_messages"] {
        let dir = root.join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            // client_frame: a decoded message re-encodes to a frame that decodes the same.
            if let Ok(msg) = codec::decode_frame::<ClientMessage>(&data) {
                let once = codec::encode_to_vec(&msg).unwrap();
                let again = codec::decode_frame::<ClientMessage>(&once).unwrap();
                assert_eq!(codec::encode_to_vec(&again).unwrap(), once);
            }
            // gateway_messages: every check accepts or rejects with a code, never panics.
            let _ = checks::check_hello(codec::decode_frame(&data));
            let _ = checks::check_datagram(&data);
            if let Ok(checks::InPlay::ChatTo(c)) = checks::check_in_play(codec::decode_frame(&data))
            {
                let _ = checks::check_chat_to(&c);
            }
            let _ = worldmesh_gateway::token::TokenKey::from_secret(b"fuzz").verify(&data, 0);
            inputs += 1;
        }
    }
    assert!(inputs >= 20, "the corpus is present ({inputs} inputs)");
}
