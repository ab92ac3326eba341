//! A push-API body: go-push's form fields or JSON, to either endpoint, with or without a JSON content type.
#![no_main]

use bytes::Bytes;
use herald_protocol::api::{Endpoint, parse_push};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = if selector & 1 == 0 {
        Endpoint::Room
    } else {
        Endpoint::All
    };
    let content_type = match (selector >> 1) % 3 {
        0 => None,
        1 => Some("application/json"),
        _ => Some("application/x-www-form-urlencoded"),
    };
    let _ = parse_push(endpoint, content_type, Bytes::copy_from_slice(body));
});
