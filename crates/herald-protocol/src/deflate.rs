//! permessage-deflate's codec (RFC 7692 section 7.2): every message compressed on its own, with no context kept
//! between messages on either side (herald always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`; see [`crate::deflate_offer`]).
//!
//! The state each direction needs lives once per thread, not per connection: a compressor (about 300 KB, used by
//! the hub's workers, once per batch) and an inflater (about 11 KB, used when a client sends a compressed message).
//! A connection keeps nothing between its compressed messages.
//!
//! Written on `miniz_oxide` directly: it is pure Rust, already the engine behind `flate2`'s default backend, and
//! its inflater writes into a buffer the caller sizes, so the bound on an inflated message is checked as it grows.

use std::cell::RefCell;

use miniz_oxide::DataFormat;
use miniz_oxide::deflate::core::{CompressorOxide, TDEFLFlush, TDEFLStatus, compress_to_output};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};

/// The end of a sync flush (an empty stored block's lengths): the sender removes it from every message, the
/// receiver puts it back before inflating (section 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How herald compresses the frames it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// deflate level, 1 (fastest) to 9 (smallest).
    pub level: u8,
    /// Frames whose payload is shorter go out plain (RSV1 clear), as the RFC allows per message: deflate's own
    /// overhead outweighs what it saves on a short text.
    pub min_bytes: usize,
}

/// herald's defaults: `compression_level` and `compression_min_bytes` in crates/herald/src/config/defaults.toml (a
/// test there checks the two agree).
impl Default for Compression {
    fn default() -> Self {
        Self {
            level: 1,
            min_bytes: 128,
        }
    }
}

/// What a compressed client message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Inflated, it would be longer than the limit.
    #[error("inflated message over the {limit}-byte limit")]
    TooBig {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The bytes are not a deflate stream (or refer back past the message's start: no context is kept).
    #[error("invalid compressed data")]
    BadData,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<Box<CompressorOxide>>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Box<DecompressorOxide>>> = const { RefCell::new(None) };
}

/// Compresses one message's payload, with no context, at `level`; appends the compressed bytes (the sync flush's
/// tail removed) to `out`.
pub fn deflate_into(payload: &[u8], level: u8, out: &mut Vec<u8>) {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = slot.get_or_insert_with(|| Box::new(CompressorOxide::new(0)));
        compressor.reset();
        compressor.set_format_and_level(DataFormat::Raw, level.clamp(1, 9));
        let start = out.len();
        let (status, taken) = compress_to_output(compressor, payload, TDEFLFlush::Sync, |chunk| {
            out.extend_from_slice(chunk);
            true
        });
        // A sync flush of input held in memory, into a growing Vec, has nothing to fail on.
        debug_assert!(status == TDEFLStatus::Okay && taken == payload.len(), "{status:?}");
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty message compressed is a single empty block (section 7.2.3.6).
            out.push(0x00);
        }
    });
}

/// Compresses one message's payload (see [`deflate_into`]).
pub fn deflate(payload: &[u8], level: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 16);
    deflate_into(payload, level, &mut out);
    out
}

/// Inflates one compressed message, with no context, to at most `limit` bytes. The message must end where the
/// sender's sync flush ended a block (the tail put back closes an empty stored block), or end the stream (BFINAL):
/// a message cut inside a block is bad data, not the part of it that inflated.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    if compressed.is_empty() {
        // No block at all: taken as the empty message (section 7.2.3.6 sends one empty block, `00`, but a sender that
        // sends nothing means nothing else).
        return Ok(Vec::new());
    }
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(Box::default);
        inflater.init();
        // One byte past the limit: the inflater says it has more output whenever its buffer is full, so a message of
        // exactly `limit` bytes is told from a longer one by that byte.
        let cap = limit.saturating_add(1);
        let mut out = vec![0u8; (compressed.len() * 4).max(256).min(cap)];
        let mut written = 0;
        // Whether the last bytes read ended a block.
        let mut at_boundary = false;
        // The message, then the tail the sender removed. A message that ends its stream (BFINAL) is done before the
        // tail, which is then ignored.
        for input in [compressed, &TAIL[..]] {
            let mut input = input;
            loop {
                let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
                    | TINFL_FLAG_HAS_MORE_INPUT
                    | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
                let (status, taken, produced) = decompress(inflater, input, &mut out, written, flags);
                input = &input[taken..];
                written += produced;
                match status {
                    TINFLStatus::Done => return within(out, written, limit),
                    TINFLStatus::BlockBoundary => at_boundary = true,
                    TINFLStatus::NeedsMoreInput if input.is_empty() => {
                        if taken > 0 || produced > 0 {
                            // Inside a block when the input ran out.
                            at_boundary = false;
                        }
                        break;
                    }
                    // Input left but none taken and nothing made: it can go no further.
                    TINFLStatus::NeedsMoreInput if taken == 0 && produced == 0 => return Err(InflateError::BadData),
                    TINFLStatus::NeedsMoreInput => {}
                    TINFLStatus::HasMoreOutput => {
                        if out.len() >= cap {
                            return Err(InflateError::TooBig { limit });
                        }
                        let grown = (out.len() * 2).min(cap);
                        out.resize(grown, 0);
                    }
                    _ => return Err(InflateError::BadData),
                }
            }
        }
        if !at_boundary {
            return Err(InflateError::BadData);
        }
        within(out, written, limit)
    })
}

/// The `written` bytes of `out`, if they are within `limit`.
fn within(mut out: Vec<u8>, written: usize, limit: usize) -> Result<Vec<u8>, InflateError> {
    if written > limit {
        return Err(InflateError::TooBig { limit });
    }
    out.truncate(written);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(count: usize) -> Vec<u8> {
        let items: Vec<String> = (0..count)
            .map(|n| {
                format!(
                    r#"{{"user":"u{}","text":"message number {n} in the room","ts":{}}}"#,
                    n % 7,
                    1_700_000_000 + n
                )
            })
            .collect();
        format!(r#"{{"type":"PUSH","data":{{"items":[{}]}}}}"#, items.join(",")).into_bytes()
    }

    #[test]
    fn a_message_round_trips_at_every_level() {
        let payload = chat(50);
        for level in 1..=9 {
            let compressed = deflate(&payload, level);
            assert!(
                compressed.len() < payload.len() / 3,
                "level {level}: {}",
                compressed.len()
            );
            assert!(!compressed.ends_with(&TAIL), "the tail is removed");
            assert_eq!(inflate(&compressed, 1 << 20).unwrap(), payload);
        }
    }

    #[test]
    fn every_message_stands_alone() {
        // The same text twice compresses the same twice: nothing of the first is referred to by the second.
        let payload = chat(3);
        assert_eq!(deflate(&payload, 1), deflate(&payload, 1));
    }

    #[test]
    fn an_empty_message_is_one_empty_block() {
        assert_eq!(deflate(b"", 1), [0x00]);
        assert_eq!(inflate(&[0x00], 10).unwrap(), b"");
        assert_eq!(inflate(&[], 10).unwrap(), b"");
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let big = vec![b'a'; 100_000];
        let compressed = deflate(&big, 1);
        assert!(compressed.len() < 1000);
        assert_eq!(inflate(&compressed, 100_000).unwrap().len(), 100_000);
        assert_eq!(
            inflate(&compressed, 99_999),
            Err(InflateError::TooBig { limit: 99_999 })
        );
    }

    #[test]
    fn bad_data_and_references_before_the_message_are_refused() {
        // BTYPE 11 is reserved.
        assert_eq!(inflate(&[0x07], 1000), Err(InflateError::BadData));
        // A fixed-Huffman block whose first symbol is a match: it refers back before the start.
        assert_eq!(inflate(&[0x02, 0x02, 0x00], 1000), Err(InflateError::BadData));
    }

    #[test]
    fn a_message_cut_inside_a_block_is_bad_data() {
        let compressed = deflate(&chat(20), 1);
        for cut in 1..compressed.len() - 1 {
            assert_eq!(
                inflate(&compressed[..cut], 1 << 20),
                Err(InflateError::BadData),
                "cut at {cut}"
            );
        }
        // A stored block whose length runs past the message.
        assert_eq!(
            inflate(&[0x00, 0x10, 0x00, 0xef, 0xff, b'a'], 100),
            Err(InflateError::BadData)
        );
    }

    #[test]
    fn a_stream_that_ends_itself_is_taken() {
        // A sender may end the stream (BFINAL) instead of flushing; the tail then comes after its end.
        let mut whole = miniz_oxide::deflate::compress_to_vec(b"hello hello hello", 6);
        assert_eq!(inflate(&whole, 100).unwrap(), b"hello hello hello");
        whole.extend_from_slice(&TAIL);
        assert_eq!(inflate(&whole, 100).unwrap(), b"hello hello hello");
    }
}
