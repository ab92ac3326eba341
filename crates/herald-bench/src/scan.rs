//! Finding bench items in the byte stream of a connection without parsing frames or JSON.
//!
//! Every item the publisher sends starts `{"t":<send time, µs since the epoch>,"s":<sequence>,` (then padding, or
//! the realistic fields of `items`), and every frame starts with `{"type":"PUSH"` (or, answering a PING,
//! `{"type":"PONG"`). The scanner looks for those markers with `memmem`, so reading a frame costs about as much as a
//! `memchr` over it. Markers split across two reads are caught by carrying the unscanned tail of one read into the
//! next (at most [`CARRY`] bytes, kept per connection). The same carry holds the end of the stream when the server
//! closes, where [`Scanner::close_code`] finds the close frame's status code.
//!
//! A compressed frame's payload is inflated elsewhere (see `inflated`), once per distinct payload, and its text
//! scanned whole by [`message`].

use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem;

/// Bytes carried from one read to the next: enough for a whole item header (`{"t":` + 16 digits + `,"s":` + 20).
pub const CARRY: usize = 48;

const ITEM: &[u8] = br#"{"t":"#;
const SEQ: &[u8] = br#","s":"#;
const FRAME: &[u8] = br#"{"type":"PUSH""#;
const PONG: &[u8] = br#"{"type":"PONG""#;
/// What both frame markers start with, so that one pass finds either.
const FRAME_OR_PONG: &[u8] = br#"{"type":"P"#;
/// First byte of an unfragmented close frame (FIN + opcode 8); the server's frames are unmasked.
const CLOSE_HEADER: u8 = 0x88;
const MARKER_LEN: usize = FRAME.len();
const _: () = assert!(PONG.len() == MARKER_LEN);
/// An item without a sequence number (not sent by the bench publisher): counted, not checked for order.
const NO_SEQ: u64 = u64::MAX;

/// What one connection has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Items received.
    pub items: u64,
    /// PUSH frames received.
    pub frames: u64,
    /// PONG frames received (answers to the connection's PINGs).
    pub pongs: u64,
    /// Items whose sequence number skipped ahead (the items in between were lost).
    pub gaps: u64,
    /// Items at or below a sequence number already seen (duplicated or reordered).
    pub duplicates: u64,
    /// The next sequence number expected.
    pub next_seq: u64,
}

impl Tally {
    /// Counts one item, and checks its sequence number against the ones before it.
    pub fn count(&mut self, seq: u64) {
        self.items += 1;
        if seq == NO_SEQ {
            return;
        }
        if seq == self.next_seq {
            self.next_seq += 1;
        } else if seq > self.next_seq {
            self.gaps += seq - self.next_seq;
            self.next_seq = seq + 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Counts one copy of a whole message (see [`message`]): its items, each also handed to `record` with its send
    /// time, and its frame marker.
    pub fn count_message(&mut self, message: &Message, mut record: impl FnMut(u64)) {
        for &(sent, seq) in &message.items {
            record(sent);
            self.count(seq);
        }
        self.frames += message.frames;
        self.pongs += message.pongs;
    }
}

/// What one whole message holds (a compressed frame's payload, inflated): found once, then counted for every copy
/// of it a connection receives (see `inflated`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its items' (send time in µs, sequence number), in order.
    pub items: Vec<(u64, u64)>,
    /// PUSH frames it is (0 or 1).
    pub frames: u64,
    /// PONGs it is (0 or 1).
    pub pongs: u64,
}

/// Finds the items and frame markers of one whole message: no carry, nothing cut off.
pub fn message(text: &[u8]) -> Message {
    let mut found = Message::default();
    let mut at = 0;
    let finder = memmem::Finder::new(ITEM);
    while let Some(offset) = finder.find(&text[at..]) {
        let start = at + offset;
        match parse_item(&text[start..]) {
            Some((time, seq, len)) => {
                found.items.push((time, seq));
                at = start + len;
            }
            None => break,
        }
    }
    for offset in memmem::find_iter(text, FRAME_OR_PONG) {
        let marker = &text[offset..];
        if marker.starts_with(FRAME) {
            found.frames += 1;
        } else if marker.starts_with(PONG) {
            found.pongs += 1;
        }
    }
    found
}

/// The scanning state of one connection.
#[derive(Debug)]
pub struct Scanner {
    carry: [u8; CARRY],
    carry_len: usize,
    /// Tally of what was seen.
    pub tally: Tally,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            carry: [0; CARRY],
            carry_len: 0,
            tally: Tally::default(),
        }
    }
}

impl Scanner {
    /// Scans `window`, whose first `self.carry_len` bytes must be the carry (see [`Scanner::prepare`]);
    /// `on_item(send_time_us)` is called for each item. Saves the new carry.
    pub fn scan(&mut self, window: &[u8], mut on_item: impl FnMut(u64)) {
        let finder = memmem::Finder::new(ITEM);
        let mut consumed = 0; // bytes up to the end of the last complete marker
        let mut at = 0;
        while let Some(found) = finder.find(&window[at..]) {
            let start = at + found;
            match parse_item(&window[start..]) {
                Some((time, seq, len)) => {
                    on_item(time);
                    self.tally.count(seq);
                    consumed = start + len;
                    at = consumed;
                }
                None => break, // cut off by the end of this read: rescanned from the carry next time
            }
        }
        let from = self.markers_from(window);
        for found in memmem::find_iter(&window[from..], FRAME_OR_PONG) {
            // A marker cut off by the end of this read is counted from the carry next time.
            let marker = &window[from + found..];
            if marker.starts_with(FRAME) {
                self.tally.frames += 1;
            } else if marker.starts_with(PONG) {
                self.tally.pongs += 1;
            }
        }
        let keep_from = consumed.max(window.len().saturating_sub(CARRY));
        self.carry_len = window.len() - keep_from;
        self.carry[..self.carry_len].copy_from_slice(&window[keep_from..]);
    }

    /// Where frame markers may start without counting one twice: a marker lying wholly in the carry was counted
    /// in the previous read.
    fn markers_from(&self, window: &[u8]) -> usize {
        self.carry_len.saturating_sub(MARKER_LEN - 1).min(window.len())
    }

    /// The status code of a close frame ending the bytes scanned so far: `Some(None)` for a close frame without
    /// one, `None` when the stream does not end in a close frame (or its reason was too long for the carry). Asked
    /// once the server has closed the connection, whose last frame is then its close frame. The header is taken at
    /// the last place one fits (`0x88`, then the length of exactly the rest): no close code has an `0x88` byte and
    /// herald's reasons are ASCII, so nothing inside the close frame fits.
    pub fn close_code(&self) -> Option<Option<u16>> {
        let tail = &self.carry[..self.carry_len];
        (0..tail.len().saturating_sub(1)).rev().find_map(|at| {
            let payload = &tail[at + 2..];
            (tail[at] == CLOSE_HEADER && usize::from(tail[at + 1]) == payload.len() && payload.len() != 1)
                .then(|| payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]])))
        })
    }

    /// Puts the carry in front of `buf[CARRY..]` (where the next read must go); returns where the window starts.
    pub fn prepare(&self, buf: &mut [u8]) -> usize {
        self.prepare_at(buf, CARRY)
    }

    /// Puts the carry in front of the bytes at `buf[at..]`, overwriting the (at most [`CARRY`]) bytes before them;
    /// returns where the window starts. For a segment in the middle of a read (the plain frames after a compressed
    /// one): the bytes before it were already taken, so overwriting them loses nothing. `at` must be at least
    /// [`CARRY`].
    pub fn prepare_at(&self, buf: &mut [u8], at: usize) -> usize {
        let start = at - self.carry_len;
        buf[start..at].copy_from_slice(&self.carry[..self.carry_len]);
        start
    }
}

/// Parses `{"t":DIGITS,"s":DIGITS` at the start of `bytes`: (time, sequence, bytes used); None if incomplete.
fn parse_item(bytes: &[u8]) -> Option<(u64, u64, usize)> {
    let (time, after_time) = digits(bytes, ITEM.len())?;
    if !bytes.get(after_time..)?.starts_with(SEQ) {
        return if bytes.len() < after_time + SEQ.len() {
            None
        } else {
            Some((time, NO_SEQ, after_time))
        };
    }
    let (seq, end) = digits(bytes, after_time + SEQ.len())?;
    Some((time, seq, end))
}

/// Reads the decimal number at `from`, which must be followed by a non-digit within `bytes`.
fn digits(bytes: &[u8], from: usize) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut at = from;
    while let Some(&b) = bytes.get(at) {
        if !b.is_ascii_digit() {
            return (at > from).then_some((value, at));
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        at += 1;
    }
    None
}

/// Microseconds since the Unix epoch: the items' send time, on the clock the publisher and the workers share on
/// one machine.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One bench item of about `size` bytes.
pub fn item(send_time_us: u64, seq: u64, size: usize) -> String {
    let head = format!(r#"{{"t":{send_time_us},"s":{seq},"p":""#);
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(items: &[String]) -> Vec<u8> {
        let mut out = vec![0x81, 0x7e, 0, 0];
        out.extend_from_slice(format!(r#"{{"type":"PUSH","data":{{"items":[{}]}}}}"#, items.join(",")).as_bytes());
        out
    }

    /// Feeds `stream` in pieces of `piece` bytes through the carry mechanics, as a connection does.
    fn fed(stream: &[u8], piece: usize) -> (Scanner, Vec<u64>) {
        let mut scanner = Scanner::default();
        let mut times = Vec::new();
        let mut buf = vec![0u8; CARRY + piece];
        for chunk in stream.chunks(piece) {
            buf[CARRY..CARRY + chunk.len()].copy_from_slice(chunk);
            let start = scanner.prepare(&mut buf);
            scanner.scan(&buf[start..CARRY + chunk.len()], |t| times.push(t));
        }
        (scanner, times)
    }

    fn feed(stream: &[u8], piece: usize) -> (Tally, Vec<u64>) {
        let (scanner, times) = fed(stream, piece);
        (scanner.tally, times)
    }

    #[test]
    fn finds_every_item_frame_and_pong_however_the_stream_is_cut() {
        let pong = b"\x81\x19{\"type\":\"PONG\",\"data\":{}}";
        let mut stream = frame(&[item(1_700_000_000_000_001, 0, 100), item(1_700_000_000_000_002, 1, 60)]);
        stream.extend_from_slice(pong);
        stream.extend(frame(&[item(1_700_000_000_000_003, 2, 100)]));
        stream.extend_from_slice(pong);
        for piece in [1, 2, 3, 7, 13, 14, 15, 64, 4096] {
            let (tally, times) = feed(&stream, piece);
            assert_eq!(
                (tally.items, tally.frames, tally.pongs, tally.gaps, tally.duplicates),
                (3, 2, 2, 0, 0),
                "piece {piece}"
            );
            assert_eq!(
                times,
                [1_700_000_000_000_001, 1_700_000_000_000_002, 1_700_000_000_000_003]
            );
        }
    }

    #[test]
    fn counts_gaps_and_duplicates() {
        let stream = frame(&[item(5, 0, 40), item(5, 3, 40), item(5, 3, 40), item(5, 4, 40)]);
        let (tally, _) = feed(&stream, 5);
        assert_eq!(
            (tally.items, tally.gaps, tally.duplicates, tally.next_seq),
            (4, 2, 1, 5)
        );
    }

    #[test]
    fn finds_the_code_of_the_close_frame_that_ends_the_stream() {
        let close = |code: u16, reason: &str| {
            let mut out = vec![CLOSE_HEADER, (2 + reason.len()) as u8];
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
            out
        };
        let mut stream = frame(&[item(1, 0, 100)]);
        stream.extend(close(4000, "slow consumer"));
        for piece in [1, 5, 17, 4096] {
            assert_eq!(fed(&stream, piece).0.close_code(), Some(Some(4000)), "piece {piece}");
        }
        // A close frame without a status code; a stream cut without one; a reason longer than the carry.
        let mut bare = frame(&[item(1, 0, 100)]);
        let mut cut = bare.clone();
        let mut long = bare.clone();
        bare.extend([CLOSE_HEADER, 0]);
        assert_eq!(fed(&bare, 4096).0.close_code(), Some(None));
        cut.truncate(cut.len() - 3);
        assert_eq!(fed(&cut, 4096).0.close_code(), None);
        long.extend(close(1001, &"x".repeat(100)));
        assert_eq!(fed(&long, 4096).0.close_code(), None);
    }

    #[test]
    fn items_have_the_asked_size() {
        assert_eq!(item(1_700_000_000_000_000, 12, 100).len(), 100);
        assert!(
            serde_json::from_str::<serde_json::Value>(&item(1, 2, 10)).is_ok(),
            "too small still valid"
        );
    }
}
