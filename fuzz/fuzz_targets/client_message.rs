//! A client's text message: `{"type":..,"id":..,"data":{"room":..}}`, and the replies built from it.
#![no_main]

use herald_protocol::client;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(message) = client::parse(text) {
        if let Some(id) = message.id {
            let _ = client::ack(id);
            let _ = client::pong(Some(id));
        }
    }
});
