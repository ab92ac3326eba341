//! Frame boundaries in a compressing connection's byte stream, found as the bytes arrive.
//!
//! The plain read path ([`crate::scan`]) never parses frames: it looks for item markers in the raw bytes. A
//! compressed frame's payload has no markers to find, so a connection that negotiated permessage-deflate first
//! splits what it reads into plain runs (whole plain frames, headers included, handed to the scanner as before) and
//! compressed messages (handed to [`crate::inflated`], which inflates each distinct payload once per worker).
//!
//! Per connection this keeps only the frame being read: its header while incomplete (at most 14 bytes), how much of
//! its payload is still to come and, when a compressed message spans reads, the part of it read so far (released as
//! soon as the message is whole, so an idle connection holds no buffer). A compressed message wholly inside one read
//! is not copied: its range in the read is handed on.
//!
//! herald never fragments its messages, nor masks its frames (servers must not); fragmented compressed messages
//! (RSV1 on the first frame, continuations after it) are collected anyway, with control frames between them taken
//! as plain, as RFC 7692 has them.

use std::ops::Range;

const FIN: u8 = 0x80;
/// RSV1: the message's payload is compressed (RFC 7692 section 6), set on its first frame.
const RSV1: u8 = 0x40;
const OPCODE: u8 = 0x0f;
const CONTINUATION: u8 = 0x0;
const MASKED: u8 = 0x80;
/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER: usize = 14;

/// What comes next in a read (see [`Frames::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A run of plain frames (or parts of them at the read's ends), headers included: these bytes of the read.
    Plain(Range<usize>),
    /// A whole compressed message's payload, wholly inside the read: these bytes of it.
    Compressed(Range<usize>),
    /// A compressed message whose payload spanned reads is whole: take it with [`Frames::take_message`].
    Collected,
}

/// The frame-parsing state of one compressing connection.
#[derive(Debug, Default)]
pub struct Frames {
    /// The header of the frame being read, while it is incomplete.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The header is whole and `left` payload bytes are still to come.
    in_payload: bool,
    left: u64,
    /// The current frame belongs to a compressed message.
    compressed: bool,
    /// The current frame is its message's last.
    fin: bool,
    /// A compressed message has had frames and awaits its last (fragmented: continuations belong to it).
    in_message: bool,
    /// The compressed message's payload read so far, when it spans reads or frames.
    message: Vec<u8>,
    /// Compressed messages found so far.
    pub messages: u64,
}

impl Frames {
    /// The next segment of `data` from `*at` on, advancing `*at` past it; `None` when the rest of `data` is only part
    /// of a compressed message (kept, to be completed by later reads) or nothing is left. Call until `None`, then with
    /// the next read from 0.
    pub fn next(&mut self, data: &[u8], at: &mut usize) -> Option<Segment> {
        // Where the current plain run began; moved past every byte of a compressed frame.
        let mut from = *at;
        loop {
            if !self.in_payload {
                if *at == data.len() {
                    break;
                }
                if self.header_len == 0 {
                    // A new frame: its first byte says whether it belongs to a compressed message.
                    let first = data[*at];
                    self.compressed = first & RSV1 != 0 || (first & OPCODE == CONTINUATION && self.in_message);
                    if self.compressed && *at > from {
                        return Some(Segment::Plain(from..*at));
                    }
                }
                let whole = self.read_header(data, at);
                if self.compressed {
                    from = *at;
                }
                if !whole {
                    break;
                }
            }
            let take = self.left.min((data.len() - *at) as u64) as usize;
            if !self.compressed {
                *at += take;
                self.left -= take as u64;
                if self.left > 0 {
                    break;
                }
                self.in_payload = false;
                continue;
            }
            if self.fin && !self.in_message && self.message.is_empty() && take as u64 == self.left {
                // The whole message is in this read: handed on where it lies.
                let range = *at..*at + take;
                *at += take;
                self.left = 0;
                self.in_payload = false;
                self.messages += 1;
                return Some(Segment::Compressed(range));
            }
            self.message.extend_from_slice(&data[*at..*at + take]);
            *at += take;
            from = *at;
            self.left -= take as u64;
            if self.left > 0 {
                break;
            }
            self.in_payload = false;
            self.in_message = !self.fin;
            if self.fin {
                self.messages += 1;
                return Some(Segment::Collected);
            }
        }
        (*at > from).then_some(Segment::Plain(from..*at))
    }

    /// The compressed message [`Segment::Collected`] announced; its buffer goes with it, so an idle connection
    /// keeps none.
    pub fn take_message(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }

    /// Takes header bytes from `data` until the header is whole (true: its payload's length is then in `left`) or
    /// `data` ends (false).
    fn read_header(&mut self, data: &[u8], at: &mut usize) -> bool {
        loop {
            let have = usize::from(self.header_len);
            let need = header_len(&self.header[..have]);
            if have == need {
                break;
            }
            let Some(&byte) = data.get(*at) else {
                return false;
            };
            self.header[have] = byte;
            self.header_len += 1;
            *at += 1;
        }
        let header = &self.header[..usize::from(self.header_len)];
        self.left = match header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        self.fin = header[0] & FIN != 0;
        self.header_len = 0;
        self.in_payload = true;
        true
    }
}

/// The length of the header that begins with `start`: 2 until its second byte says more.
fn header_len(start: &[u8]) -> usize {
    let Some(&second) = start.get(1) else {
        return 2;
    };
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + length + if second & MASKED != 0 { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Bytes that look nothing like JSON, standing in for deflate output.
    fn noise(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A stream of every kind of frame herald sends, or could: (stream, its plain frames' bytes, its compressed
    /// messages).
    fn stream() -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
        let (mut stream, mut plain, mut compressed) = (Vec::new(), Vec::new(), Vec::new());
        let push = |text: &str| frame(0x81, text.as_bytes());
        let mut add_plain = |stream: &mut Vec<u8>, bytes: Vec<u8>| {
            plain.extend_from_slice(&bytes);
            stream.extend(bytes);
        };
        add_plain(&mut stream, push(r#"{"type":"PUSH","data":{"items":[{"t":1,"s":0}]}}"#));
        for (len, seed) in [(40, 1), (300, 2), (5, 3)] {
            stream.extend(frame(0xc1, &noise(len, seed)));
            compressed.push(noise(len, seed));
        }
        add_plain(&mut stream, push(r#"{"type":"PONG","data":{}}"#));
        add_plain(
            &mut stream,
            push(&format!(r#"{{"type":"PUSH","data":"{}"}}"#, "x".repeat(200))),
        );
        // A fragmented compressed message with a PONG between its frames; an empty compressed message.
        stream.extend(frame(0x41, &noise(20, 4)));
        add_plain(&mut stream, frame(0x8a, b""));
        stream.extend(frame(0x80, &noise(30, 5)));
        compressed.push([noise(20, 4), noise(30, 5)].concat());
        stream.extend(frame(0xc1, b""));
        compressed.push(Vec::new());
        add_plain(&mut stream, vec![0x88, 2, 0x03, 0xe9]);
        (stream, plain, compressed)
    }

    /// Feeds `pieces` through one [`Frames`] as a connection's reads: the plain bytes and compressed messages found.
    fn split<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
        let mut frames = Frames::default();
        let (mut plain, mut compressed) = (Vec::new(), Vec::new());
        for piece in pieces {
            let mut at = 0;
            while let Some(segment) = frames.next(piece, &mut at) {
                match segment {
                    Segment::Plain(range) => plain.extend_from_slice(&piece[range]),
                    Segment::Compressed(range) => compressed.push(piece[range].to_vec()),
                    Segment::Collected => compressed.push(frames.take_message()),
                }
            }
            assert_eq!(at, piece.len(), "every byte of a read is taken");
        }
        assert!(frames.message.capacity() == 0, "nothing held between messages");
        (plain, compressed, frames.messages)
    }

    #[test]
    fn splits_plain_frames_from_compressed_messages_wherever_the_stream_is_cut() {
        let (stream, plain, compressed) = stream();
        let count = compressed.len() as u64;
        assert_eq!(split([&stream[..]]), (plain.clone(), compressed.clone(), count));
        for cut in 0..=stream.len() {
            let (head, tail) = stream.split_at(cut);
            assert_eq!(
                split([head, tail]),
                (plain.clone(), compressed.clone(), count),
                "cut at {cut}"
            );
        }
        for piece in [1, 2, 3, 7, 64] {
            assert_eq!(
                split(stream.chunks(piece)),
                (plain.clone(), compressed.clone(), count),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn reads_the_64_bit_length_of_a_large_compressed_message() {
        let big = noise(70_000, 9);
        let mut stream = frame(0xc1, &big);
        stream.extend(frame(0x81, b"{}"));
        for piece in [5, 4096, stream.len()] {
            let (plain, compressed, _) = split(stream.chunks(piece));
            assert_eq!(plain, frame(0x81, b"{}"), "pieces of {piece}");
            assert_eq!(compressed, std::slice::from_ref(&big), "pieces of {piece}");
        }
    }
}
