//! A compressed client message (permessage-deflate), as the gateway inflates it: arbitrary bytes must inflate or be
//! refused, never panic, hang or go past the limit; and whatever herald compresses must inflate back to itself.
#![no_main]

use herald_protocol::deflate::{InflateError, deflate, inflate};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    match inflate(data, LIMIT) {
        Ok(inflated) => assert!(inflated.len() <= LIMIT),
        Err(InflateError::TooBig { limit }) => assert_eq!(limit, LIMIT),
        Err(InflateError::BadData) => {}
    }
    let level = data.first().map_or(1, |b| b % 9 + 1);
    let compressed = deflate(data, level);
    assert_eq!(inflate(&compressed, data.len()).as_deref(), Ok(data));
});
