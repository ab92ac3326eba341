//! The HTTP request head on the WebSocket listener (the first bytes any client sends).
#![no_main]

use herald_gateway::handshake::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let upgrade_at_root = data.first().is_some_and(|b| b & 1 == 1);
    let _ = parse_head(data, upgrade_at_root);
});
