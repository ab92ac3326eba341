//! What compressed payloads hold, found once per worker process and looked up for every copy.
//!
//! herald compresses a room's batch once and sends the very same bytes to every compressing connection of the room.
//! Inflating each copy would cost the load generator more than the server spends compressing (on two shared cores
//! it would become the bottleneck it measures); so a worker inflates each distinct payload once, scans the text for
//! its items (their send times and sequence numbers), and counts every copy from that list. How many payloads were
//! inflated beside how many compressed frames arrived also shows the server compressed once for many connections.
//!
//! Payloads are told apart by their length and a 64-bit hash of their bytes (a chance collision among the few
//! thousand kept is about 2^-40: it would count one frame's items for another's). The table is cleared when it
//! passes [`MAX_ENTRIES`]: the copies of a batch arrive within moments of each other, so an old entry is rarely
//! asked for again, and one that is gets inflated a second time.

use std::collections::HashMap;

use herald_protocol::deflate::inflate;

use crate::scan::{self, Message};

/// Distinct payloads kept before the table is cleared.
const MAX_ENTRIES: usize = 4096;
/// The longest text a payload may inflate to (herald's frames are far shorter).
const MAX_INFLATED: usize = 64 << 20;

/// A worker's table of compressed payloads and what they hold.
#[derive(Debug, Default)]
pub struct Inflated {
    messages: HashMap<(usize, u64), Message>,
    /// Distinct payloads inflated.
    pub inflated: u64,
    /// Payloads that would not inflate (each copy counted).
    pub errors: u64,
}

impl Inflated {
    /// What `payload` holds (inflated on first sight), or `None` if it is not valid deflate data.
    pub fn get(&mut self, payload: &[u8]) -> Option<&Message> {
        let key = (payload.len(), hash(payload));
        if !self.messages.contains_key(&key) {
            let Ok(text) = inflate(payload, MAX_INFLATED) else {
                self.errors += 1;
                return None;
            };
            if self.messages.len() >= MAX_ENTRIES {
                self.messages.clear();
            }
            self.inflated += 1;
            self.messages.insert(key, scan::message(&text));
        }
        self.messages.get(&key)
    }
}

/// A fast 64-bit hash of `bytes` (wyhash's folded multiply, 16 bytes a step): read on every copy, so it must cost
/// little beside the read itself; deflate output is not chosen to collide.
fn hash(bytes: &[u8]) -> u64 {
    const K: [u64; 3] = [0xa076_1d64_78bd_642f, 0xe703_7ed1_a0b4_28db, 0x8ebc_6af0_9c88_c6e3];
    let fold = |a: u64, b: u64| {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    };
    let word = |chunk: &[u8]| {
        let mut padded = [0u8; 8];
        padded[..chunk.len()].copy_from_slice(chunk);
        u64::from_le_bytes(padded)
    };
    let mut state = K[0] ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        state = fold(word(&chunk[..8]) ^ K[1], word(&chunk[8..]) ^ state);
    }
    let rest = chunks.remainder();
    let (low, high) = rest.split_at(rest.len().min(8));
    state = fold(word(low) ^ K[1], word(high) ^ state ^ K[2]);
    fold(state ^ K[2], state ^ K[0])
}

#[cfg(test)]
mod tests {
    use herald_protocol::deflate::deflate;

    use super::*;

    #[test]
    fn inflates_each_distinct_payload_once_and_finds_its_items() {
        let text = |seq: u64| format!(r#"{{"type":"PUSH","data":{{"items":[{{"t":5,"s":{seq},"x":"hello"}}]}}}}"#);
        let (one, two) = (deflate(text(0).as_bytes(), 1), deflate(text(1).as_bytes(), 1));
        let mut table = Inflated::default();
        for _ in 0..3 {
            assert_eq!(table.get(&one).unwrap().items, [(5, 0)]);
            let found = table.get(&two).unwrap();
            assert_eq!((found.items.as_slice(), found.frames), (&[(5, 1)][..], 1));
        }
        assert_eq!((table.inflated, table.errors), (2, 0));
        assert!(table.get(&[0xff, 0xff, 0xff]).is_none());
        assert_eq!(table.errors, 1);
    }

    #[test]
    fn hashes_differ_for_payloads_one_byte_apart() {
        let base: Vec<u8> = (0..100u8).collect();
        let mut seen = std::collections::HashSet::new();
        for at in 0..base.len() {
            let mut changed = base.clone();
            changed[at] ^= 1;
            assert!(seen.insert(hash(&changed)), "byte {at}");
        }
        assert!(seen.insert(hash(&base)) && seen.insert(hash(&base[..99])));
    }
}
