//! Any bytes through the gateway's per-message checks, in every state a session can be in:
//! as the first control message (Hello), as a datagram in play, as a control message in play.
//! Each must accept or reject with a typed error code, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worldmesh_gateway::checks;
use worldmesh_protocol::codec;

fuzz_target!(|data: &[u8]| {
    let decoded = || codec::decode_frame(data);
    let _ = checks::check_hello(decoded());
    let _ = checks::check_datagram(data);
    if let Ok(checks::InPlay::ChatTo(c)) = checks::check_in_play(decoded()) {
        let _ = checks::check_chat_to(&c);
    }
    let _ = worldmesh_gateway::token::TokenKey::from_secret(b"fuzz").verify(data, 0);
});
