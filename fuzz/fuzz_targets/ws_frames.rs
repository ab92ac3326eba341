//! Bytes from a client's socket, after the handshake: frame headers, masks, fragments, control frames, UTF-8 and
//! close payloads, compressed messages, as the gateway's session reads them (a small message limit so limits are hit
//! too). The first byte says whether the connection negotiated permessage-deflate.
#![no_main]

use herald_protocol::ws::{Assembler, decode_header, unmask};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let deflate = flags & 1 != 0;
    let mut buf = data.to_vec();
    let mut assembler = Assembler::default();
    let mut used = 0;
    while let Ok(Some(header)) = decode_header(&buf[used..], LIMIT, deflate) {
        if buf.len() - used < header.frame_len() {
            break;
        }
        let payload = &mut buf[used + header.header_len..used + header.frame_len()];
        unmask(payload, header.mask);
        used += header.frame_len();
        let outcome = assembler
            .on_frame(&header, payload, LIMIT)
            .map(|message| message.is_some());
        assembler.release();
        if outcome.is_err() {
            break;
        }
    }
});
