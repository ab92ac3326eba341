//! The items the publisher sends: padding, or realistic JSON from a fixed, seeded generator.
//!
//! Padding (`"p":"xxxx..."`) is what the bench always sent, and what its earlier results measured; but a run of one
//! byte repeated compresses to almost nothing, which says nothing about permessage-deflate on real traffic. Chat
//! messages (about 150 bytes: user ids and names, a short sentence of common words, a timestamp) and market ticks
//! (a symbol, bid, ask, last price and volume) repeat their keys and vocabulary as real feeds do, and differ in
//! their values. The generator is seeded with a constant, so every run sends the same texts (their send times
//! apart) and runs compare.
//!
//! Every item starts with `{"t":<send time µs>,"s":<sequence>,`, which the workers' scanner finds (see
//! [`crate::scan`]).

use std::fmt::Write;

use crate::scan::item;

/// What the items are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ItemsKind {
    /// `"p"` and padding up to --item-bytes: what the bench always sent (compresses to almost nothing).
    #[default]
    Padding,
    /// Chat messages of about 150 bytes (--item-bytes is ignored).
    Chat,
    /// Market ticks of about 120 bytes (--item-bytes is ignored).
    Ticks,
}

const SEED: u64 = 0x6865_7261_6c64; // "herald"

const NAMES: [&str; 32] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia",
    "peggy", "rupert", "sybil", "trent", "victor", "walter", "yasmin", "zoe", "amir", "bea", "chen", "dara", "emeka",
    "farah", "goran", "hana", "ines", "jonas", "kenji",
];

const WORDS: [&str; 64] = [
    "the", "a", "to", "and", "of", "in", "is", "it", "you", "that", "for", "on", "with", "this", "we", "are", "be",
    "at", "have", "not", "meeting", "today", "tomorrow", "deploy", "review", "lunch", "build", "great", "thanks",
    "see", "later", "ok", "sure", "can", "just", "now", "will", "check", "done", "fixed", "broken", "again", "soon",
    "team", "call", "ticket", "please", "merge", "branch", "release", "notes", "coffee", "break", "weekend", "plan",
    "sounds", "good", "why", "how", "when", "where", "who", "what", "yes",
];

const ROOMS: [&str; 8] = [
    "general", "random", "dev", "ops", "design", "sales", "support", "standup",
];

const SYMBOLS: [&str; 16] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V", "XOM", "JNJ", "WMT", "PG", "MA", "HD",
];

/// Makes the items of a run, in sequence order.
#[derive(Debug)]
pub struct Items {
    kind: ItemsKind,
    /// Bytes of a padding item.
    size: usize,
    rng: fastrand::Rng,
    /// Each symbol's last price, in cents: ticks walk from it.
    prices: [u64; SYMBOLS.len()],
}

impl Items {
    /// A generator of `kind` items (`size` bytes each, for padding).
    pub fn new(kind: ItemsKind, size: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(SEED);
        let prices = std::array::from_fn(|_| rng.u64(2_000..60_000));
        Self {
            kind,
            size,
            rng,
            prices,
        }
    }

    /// Appends the next item, sent at `send_time_us` with sequence number `seq`, to `out`.
    pub fn push(&mut self, out: &mut String, send_time_us: u64, seq: u64) {
        match self.kind {
            ItemsKind::Padding => out.push_str(&item(send_time_us, seq, self.size)),
            ItemsKind::Chat => self.chat(out, send_time_us, seq),
            ItemsKind::Ticks => self.tick(out, send_time_us, seq),
        }
    }

    fn chat(&mut self, out: &mut String, send_time_us: u64, seq: u64) {
        let rng = &mut self.rng;
        let user = rng.usize(..NAMES.len());
        let room = ROOMS[rng.usize(..ROOMS.len())];
        let _ = write!(
            out,
            r#"{{"t":{send_time_us},"s":{seq},"id":"m{seq}","room":"{room}","user":{{"id":{},"name":"{}"}},"text":""#,
            10_000 + user * 37,
            NAMES[user]
        );
        for word in 0..rng.usize(4..10) {
            if word > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[rng.usize(..WORDS.len())]);
        }
        let _ = write!(out, r#"","ts":{}}}"#, send_time_us / 1000);
    }

    fn tick(&mut self, out: &mut String, send_time_us: u64, seq: u64) {
        let rng = &mut self.rng;
        let at = rng.usize(..SYMBOLS.len());
        let price = &mut self.prices[at];
        *price = (*price + rng.u64(..41)).saturating_sub(20).max(100);
        let spread = 1 + rng.u64(..5);
        let cents = |value: u64| format!("{}.{:02}", value / 100, value % 100);
        let _ = write!(
            out,
            r#"{{"t":{send_time_us},"s":{seq},"sym":"{}","bid":{},"ask":{},"px":{},"vol":{},"ts":{}}}"#,
            SYMBOLS[at],
            cents(*price - spread.min(*price)),
            cents(*price + spread),
            cents(*price),
            rng.u64(1..100) * 100,
            send_time_us / 1000
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(kind: ItemsKind, count: u64) -> Vec<String> {
        let mut items = Items::new(kind, 100);
        (0..count)
            .map(|seq| {
                let mut out = String::new();
                items.push(&mut out, 1_765_000_000_000_000 + seq, seq);
                out
            })
            .collect()
    }

    #[test]
    fn every_kind_is_json_the_scanner_finds_the_same_every_run() {
        for kind in [ItemsKind::Padding, ItemsKind::Chat, ItemsKind::Ticks] {
            let made = items(kind, 200);
            assert_eq!(made, items(kind, 200), "{kind:?}: deterministic");
            let text = format!(r#"{{"type":"PUSH","data":{{"items":[{}]}}}}"#, made.join(","));
            assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{kind:?}: {text}"
            );
            let found = crate::scan::message(text.as_bytes());
            let expected: Vec<(u64, u64)> = (0..200).map(|seq| (1_765_000_000_000_000 + seq, seq)).collect();
            assert_eq!(found.items, expected, "{kind:?}");
        }
    }

    #[test]
    fn chat_messages_are_about_150_bytes() {
        let made = items(ItemsKind::Chat, 1000);
        let mean = made.iter().map(String::len).sum::<usize>() / made.len();
        assert!((130..=170).contains(&mean), "{mean}");
    }
}
