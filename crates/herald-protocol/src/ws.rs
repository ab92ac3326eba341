//! WebSocket frames (RFC 6455) as a server sees them.
//!
//! herald writes its own frame layer instead of using a WebSocket crate's stream type because it needs two things
//! no crate offers together: no read buffer retained while a connection is idle (the session reads into a stack
//! buffer and keeps bytes only for an unfinished frame), and direct non-blocking writes of one pre-encoded frame to
//! many sockets from the fan-out path. The layer is small: [`decode_header`] for one frame header,
//! [`Assembler`] for fragmentation, control frames, compressed messages (permessage-deflate, RFC 7692) and UTF-8,
//! and [`encode_header`] / [`frame`] for what the server sends (servers never mask).

use bytes::{BufMut, Bytes, BytesMut};

use crate::deflate::{self, InflateError};

/// Close codes herald sends, with the reason each stands for.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down ("going away").
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (unmasked frame, bad opcode, bad control frame, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a data type herald does not take (binary messages).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8, or a message that is not JSON.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A JSON message of unknown type or structure.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the read limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// herald: the connection could not keep up (outbox full, or a write stalled past the write timeout).
    pub const SLOW_CONSUMER: u16 = 4000;
    /// herald: nothing was received from the connection within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// herald: the connection's token expired and no REFRESH brought a new one in time.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// herald: the push API closed the user's connections (`POST /disconnect/user`).
    pub const DISCONNECTED: u16 = 4004;
    /// herald: the client sent messages faster than `client_message_rate` allows.
    pub const MESSAGE_RATE: u16 = 4005;
}

/// The header of herald's `101 Switching Protocols` answer that says its heartbeat timeout, in milliseconds: a
/// client that can read it PINGs more often than that (herald closes a connection silent so long with 4001).
pub const HEARTBEAT_TIMEOUT_HEADER: &str = "Herald-Heartbeat-Timeout-Ms";

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation,
    /// First (or only) frame of a text message.
    Text,
    /// First (or only) frame of a binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why a peer's bytes were refused; each maps to the close code the connection is closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A violation of RFC 6455 framing.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or close reason) that is not valid UTF-8.
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// A compressed message whose bytes do not inflate.
    #[error("invalid compressed data")]
    BadCompression,
    /// A frame or message longer than the read limit.
    #[error("message over the {limit}-byte read limit")]
    TooBig {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
}

impl FrameError {
    /// The close code a connection is closed with for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close::PROTOCOL_ERROR,
            Self::InvalidUtf8 | Self::BadCompression => close::INVALID_PAYLOAD,
            Self::TooBig { .. } => close::MESSAGE_TOO_BIG,
        }
    }
}

/// One decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1: the message this frame begins is compressed (permessage-deflate).
    pub compressed: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The client's masking key (clients must mask every frame).
    pub mask: [u8; 4],
    /// Bytes taken by the header itself, mask included.
    pub header_len: usize,
    /// Bytes of payload after the header.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Decodes the header of the client frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header. `max_payload` bounds the payload of any
/// single frame; it is checked before any payload byte arrives, so an oversized frame costs no memory. `deflate`:
/// the connection negotiated permessage-deflate, so RSV1 may mark the first frame of a data message.
pub fn decode_header(buf: &[u8], max_payload: usize, deflate: bool) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x30 != 0 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    let fin = b0 & 0x80 != 0;
    let compressed = b0 & 0x40 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("reserved opcode"))?;
    if compressed {
        if !deflate {
            return Err(FrameError::Protocol("RSV1 set without permessage-deflate"));
        }
        if !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(FrameError::Protocol("RSV1 set on a control or continuation frame"));
        }
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frame not masked"));
    }
    let (len_bytes, short_len) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as u64)),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if short_len.is_none() {
            return Err(FrameError::Protocol("control frame payload over 125 bytes"));
        }
    }
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match short_len {
        Some(n) => n,
        None => {
            let mut be = [0u8; 8];
            be[8 - len_bytes..].copy_from_slice(&buf[2..2 + len_bytes]);
            let n = u64::from_be_bytes(be);
            if n >> 63 != 0 {
                return Err(FrameError::Protocol("payload length with the high bit set"));
            }
            n
        }
    };
    if payload_len > max_payload as u64 {
        return Err(FrameError::TooBig { limit: max_payload });
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[header_len - 4..header_len]);
    Ok(Some(FrameHeader {
        fin,
        compressed,
        opcode,
        mask,
        header_len,
        payload_len: payload_len as usize,
    }))
}

/// Unmasks a client payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A complete message, or a control frame, handed up by the [`Assembler`].
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole text message, UTF-8 checked.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame with the peer's code (if any).
    Close(Option<u16>),
}

/// Joins fragmented messages, inflates compressed ones, and checks what RFC 6455 asks of a message (continuation
/// order, UTF-8, close codes).
///
/// It holds bytes only while a fragmented message is in flight, or while a message it handed out is in use, and
/// gives them back when [`Self::release`] is called.
#[derive(Debug, Default)]
pub struct Assembler {
    fragments: Vec<u8>,
    fragmented: Option<OpCode>,
    /// The fragmented message in flight is compressed: its bytes are inflated when it completes (and its UTF-8
    /// checked then).
    compressed: bool,
    /// Bytes of a fragmented text message known to be valid UTF-8 so far: each fragment is checked as it arrives
    /// (a character may still be cut at the end), so invalid text fails at its first bad fragment, not at the last.
    utf8_valid: usize,
}

impl Assembler {
    /// Takes one unmasked frame; returns the message it completes, if any. `max_message` bounds a whole message.
    pub fn on_frame<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Message<'a>>, FrameError> {
        match header.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong)),
            OpCode::Close => parse_close(payload).map(|code| Some(Message::Close(code))),
            OpCode::Text | OpCode::Binary if self.fragmented.is_some() => {
                Err(FrameError::Protocol("new message inside a fragmented one"))
            }
            OpCode::Text | OpCode::Binary if header.fin && header.compressed => {
                self.fragments = inflate(payload, max_message)?;
                whole(header.opcode, &self.fragments).map(Some)
            }
            OpCode::Text | OpCode::Binary if header.fin => Ok(Some(whole(header.opcode, payload)?)),
            OpCode::Text | OpCode::Binary => {
                self.fragmented = Some(header.opcode);
                self.compressed = header.compressed;
                self.fragments.extend_from_slice(payload);
                self.utf8_valid = 0;
                self.check_text_so_far()?;
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(opcode) = self.fragmented else {
                    return Err(FrameError::Protocol("continuation without a message to continue"));
                };
                if self.fragments.len() + payload.len() > max_message {
                    return Err(FrameError::TooBig { limit: max_message });
                }
                self.fragments.extend_from_slice(payload);
                if !header.fin {
                    self.check_text_so_far()?;
                    return Ok(None);
                }
                self.fragmented = None;
                if std::mem::take(&mut self.compressed) {
                    self.fragments = inflate(&self.fragments, max_message)?;
                }
                // The joined message is handed out borrowed; `release` frees it before the next frame.
                whole(opcode, &self.fragments).map(Some)
            }
        }
    }

    /// Checks the new bytes of a fragmented text message; an incomplete character at the end may yet be completed.
    fn check_text_so_far(&mut self) -> Result<(), FrameError> {
        if self.fragmented != Some(OpCode::Text) || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.fragments[self.utf8_valid..]) {
            Ok(_) => self.utf8_valid = self.fragments.len(),
            Err(e) if e.error_len().is_none() => self.utf8_valid += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }

    /// Frees the bytes of a completed fragmented message; call after handling what [`Self::on_frame`] returned.
    pub fn release(&mut self) {
        if self.fragmented.is_none() && self.fragments.capacity() > 0 {
            self.fragments = Vec::new();
        }
    }
}

/// A compressed message's bytes inflated, within the message limit.
fn inflate(compressed: &[u8], max_message: usize) -> Result<Vec<u8>, FrameError> {
    deflate::inflate(compressed, max_message).map_err(|e| match e {
        InflateError::TooBig { limit } => FrameError::TooBig { limit },
        InflateError::BadData => FrameError::BadCompression,
    })
}

fn whole(opcode: OpCode, payload: &[u8]) -> Result<Message<'_>, FrameError> {
    if opcode == OpCode::Text {
        std::str::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| FrameError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Reads a close frame's payload: nothing, or a valid code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends the header of an unmasked, final server frame of `payload_len` bytes.
pub fn encode_header(opcode: OpCode, payload_len: usize, out: &mut BytesMut) {
    out.put_u8(0x80 | opcode.bits());
    if payload_len < 126 {
        out.put_u8(payload_len as u8);
    } else if payload_len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(payload_len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(payload_len as u64);
    }
}

/// Header bytes [`encode_header`] writes for a payload of this length.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..126 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// A complete unmasked server frame.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    encode_header(opcode, payload.len(), &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// A complete unmasked server frame of a compressed message (RSV1 set): `compressed` is the message's payload as
/// [`deflate::deflate`] made it.
pub fn compressed_frame(opcode: OpCode, compressed: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(compressed.len()) + compressed.len());
    encode_header(opcode, compressed.len(), &mut out);
    out[0] |= 0x40;
    out.put_slice(compressed);
    out.freeze()
}

/// A complete close frame with a code and a short reason (cut to fit the 125-byte control-frame limit).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn decodes_a_masked_text_frame_once_complete() {
        let bytes = client_frame(0x81, b"hello");
        for cut in 0..bytes.len() - 5 {
            assert_eq!(decode_header(&bytes[..cut], 1024, false), Ok(None), "cut at {cut}");
        }
        let header = decode_header(&bytes, 1024, false).unwrap().unwrap();
        assert_eq!((header.fin, header.opcode, header.payload_len), (true, OpCode::Text, 5));
        let mut payload = bytes[header.header_len..header.frame_len()].to_vec();
        unmask(&mut payload, header.mask);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn decodes_16_and_64_bit_lengths() {
        for len in [126usize, 65535, 65536] {
            let bytes = client_frame(0x82, &vec![7; len]);
            let header = decode_header(&bytes, 1 << 20, false).unwrap().unwrap();
            assert_eq!(header.payload_len, len);
            assert_eq!(header.frame_len(), bytes.len());
        }
    }

    #[test]
    fn refuses_protocol_violations_with_their_close_codes() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(
            decode_header(&unmasked, 10, false).unwrap_err().close_code(),
            close::PROTOCOL_ERROR
        );
        let rsv = client_frame(0xC1, b"a");
        assert_eq!(
            decode_header(&rsv, 10, false).unwrap_err().close_code(),
            close::PROTOCOL_ERROR
        );
        let bad_opcode = client_frame(0x83, b"a");
        assert_eq!(
            decode_header(&bad_opcode, 10, false).unwrap_err().close_code(),
            close::PROTOCOL_ERROR
        );
        let fragmented_ping = client_frame(0x09, b"a");
        assert!(decode_header(&fragmented_ping, 10, false).is_err());
        let long_ping = client_frame(0x89, &[0; 126]);
        assert!(decode_header(&long_ping, 1000, false).is_err());
        let too_big = client_frame(0x81, &[b'a'; 11]);
        assert_eq!(
            decode_header(&too_big, 10, false).unwrap_err().close_code(),
            close::MESSAGE_TOO_BIG
        );
    }

    fn feed<'a>(asm: &'a mut Assembler, b0: u8, payload: &'a [u8]) -> Result<Option<Message<'a>>, FrameError> {
        let bytes = client_frame(b0, payload);
        let header = decode_header(&bytes, 1 << 20, false).unwrap().unwrap();
        asm.on_frame(&header, payload, 16)
    }

    #[test]
    fn joins_fragments_and_interleaves_control_frames() {
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x01, b"hel"), Ok(None));
        assert_eq!(feed(&mut asm, 0x89, b"p"), Ok(Some(Message::Ping(b"p"))));
        assert_eq!(feed(&mut asm, 0x00, b"lo "), Ok(None));
        assert_eq!(feed(&mut asm, 0x80, b"you"), Ok(Some(Message::Text("hello you"))));
        asm.release();
        assert_eq!(
            asm.fragments.capacity(),
            0,
            "no bytes kept once the message is handed out"
        );
    }

    #[test]
    fn refuses_bad_sequences_utf8_and_oversized_messages() {
        let mut asm = Assembler::default();
        assert!(
            feed(&mut asm, 0x80, b"x").is_err(),
            "continuation with nothing to continue"
        );
        let mut asm = Assembler::default();
        feed(&mut asm, 0x01, b"a").unwrap();
        assert!(
            feed(&mut asm, 0x81, b"b").is_err(),
            "new message inside a fragmented one"
        );
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x81, &[0xFF, 0xFE]), Err(FrameError::InvalidUtf8));
        let mut asm = Assembler::default();
        feed(&mut asm, 0x01, &[b'a'; 10]).unwrap();
        assert_eq!(feed(&mut asm, 0x80, &[b'a'; 10]), Err(FrameError::TooBig { limit: 16 }));
    }

    #[test]
    fn text_fragments_fail_at_the_first_invalid_one() {
        // "é" (C3 A9) cut between two fragments is fine; the message is whole at the end.
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x01, &[b'a', 0xC3]), Ok(None));
        assert_eq!(feed(&mut asm, 0x00, &[0xA9, b'b']), Ok(None));
        assert_eq!(feed(&mut asm, 0x80, b"c"), Ok(Some(Message::Text("aébc"))));
        // An invalid byte fails its own fragment, before the message is complete.
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x01, b"ok"), Ok(None));
        assert_eq!(feed(&mut asm, 0x00, &[0xFF]), Err(FrameError::InvalidUtf8));
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x01, &[0xC3, b'x']), Err(FrameError::InvalidUtf8));
        // A character still cut when the message ends is invalid.
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x01, &[0xE2, 0x82]), Ok(None));
        assert_eq!(feed(&mut asm, 0x80, &[]), Err(FrameError::InvalidUtf8));
        // Binary fragments are not text.
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x02, &[0xFF]), Ok(None));
        assert_eq!(feed(&mut asm, 0x80, &[0xFE]), Ok(Some(Message::Binary(&[0xFF, 0xFE]))));
    }

    fn feed_deflate<'a>(asm: &'a mut Assembler, b0: u8, payload: &'a [u8]) -> Result<Option<Message<'a>>, FrameError> {
        let bytes = client_frame(b0, payload);
        let header = decode_header(&bytes, 1 << 20, true)?.unwrap();
        asm.on_frame(&header, payload, 64)
    }

    #[test]
    fn inflates_compressed_messages_whole_or_fragmented() {
        let compressed = deflate::deflate(br#"{"type":"PING"}"#, 1);
        let mut asm = Assembler::default();
        assert_eq!(
            feed_deflate(&mut asm, 0xC1, &compressed),
            Ok(Some(Message::Text(r#"{"type":"PING"}"#)))
        );
        asm.release();
        // RSV1 on the first fragment only; a control frame may come between.
        let (head, tail) = compressed.split_at(3);
        assert_eq!(feed_deflate(&mut asm, 0x41, head), Ok(None));
        assert_eq!(feed_deflate(&mut asm, 0x89, b""), Ok(Some(Message::Ping(b""))));
        assert_eq!(
            feed_deflate(&mut asm, 0x80, tail),
            Ok(Some(Message::Text(r#"{"type":"PING"}"#)))
        );
        asm.release();
        assert_eq!(asm.fragments.capacity(), 0, "nothing kept between messages");
        // A plain message on the same connection is taken as it is.
        assert_eq!(feed_deflate(&mut asm, 0x81, b"plain"), Ok(Some(Message::Text("plain"))));
    }

    #[test]
    fn refuses_bad_compressed_messages_with_their_close_codes() {
        let code = |b0: u8, payload: &[u8], deflate: bool| {
            let bytes = client_frame(b0, payload);
            decode_header(&bytes, 1 << 20, deflate)
                .and_then(|header| Assembler::default().on_frame(&header.unwrap(), payload, 64).map(|_| ()))
                .unwrap_err()
                .close_code()
        };
        let ok = deflate::deflate(b"hello", 1);
        assert_eq!(
            code(0xC1, &ok, false),
            close::PROTOCOL_ERROR,
            "RSV1 without the extension"
        );
        assert_eq!(code(0xC9, b"", true), close::PROTOCOL_ERROR, "RSV1 on a ping");
        assert_eq!(code(0xC0, &ok, true), close::PROTOCOL_ERROR, "RSV1 on a continuation");
        assert_eq!(code(0xA1, &ok, true), close::PROTOCOL_ERROR, "RSV2 is never allowed");
        assert_eq!(code(0xC1, &[0x07], true), close::INVALID_PAYLOAD, "bad data");
        assert_eq!(
            code(0xC1, &deflate::deflate(&[0xFF; 10], 1), true),
            close::INVALID_PAYLOAD,
            "not UTF-8"
        );
        let big = deflate::deflate(&[b'a'; 65], 1);
        assert_eq!(
            code(0xC1, &big, true),
            close::MESSAGE_TOO_BIG,
            "inflated past the limit"
        );
    }

    #[test]
    fn checks_close_payloads() {
        let mut asm = Assembler::default();
        assert_eq!(feed(&mut asm, 0x88, &[]), Ok(Some(Message::Close(None))));
        assert_eq!(
            feed(&mut asm, 0x88, &[0x03, 0xE8, b'o', b'k']),
            Ok(Some(Message::Close(Some(1000))))
        );
        assert!(feed(&mut asm, 0x88, &[0x03]).is_err());
        assert!(feed(&mut asm, 0x88, &[0x03, 0xEC]).is_err(), "1004 is reserved");
        assert_eq!(feed(&mut asm, 0x88, &[0x03, 0xE8, 0xFF]), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn encodes_server_frames_unmasked_with_the_shortest_length() {
        assert_eq!(&frame(OpCode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&frame(OpCode::Text, &[0; 200])[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&frame(OpCode::Binary, &[0; 70000])[..2], &[0x82, 127]);
        let close = close_frame(4000, &"é".repeat(100));
        assert_eq!(
            close.len(),
            2 + 2 + 122,
            "reason cut on a char boundary under 125 bytes"
        );
        assert_eq!(&close[2..4], &4000u16.to_be_bytes());
    }
}
