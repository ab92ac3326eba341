//! The subjects herald uses on NATS (see the parent module's docs for the encoding of room names).

use base64::Engine;
use herald_protocol::bus::Target;

/// Subject of broadcasts.
pub const ALL_SUBJECT: &str = "herald.all";
/// Subject of the gateways' announcements.
pub const ANNOUNCE_SUBJECT: &str = "herald.gateways";
const ROOM_PREFIX: &str = "herald.room.";

/// The subject of a push's target (see the module docs for the encoding of room names).
pub fn subject(target: &Target) -> String {
    match target {
        Target::Room(room) => room_subject(room),
        Target::All => ALL_SUBJECT.to_owned(),
    }
}

pub(super) fn room_subject(room: &str) -> String {
    let plain = room
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain && !room.is_empty() {
        format!("{ROOM_PREFIX}{room}")
    } else {
        format!(
            "{ROOM_PREFIX}~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(room)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_room_names_are_their_own_token() {
        assert_eq!(subject(&Target::Room("news".into())), "herald.room.news");
        assert_eq!(subject(&Target::Room("user_42-a".into())), "herald.room.user_42-a");
        assert_eq!(subject(&Target::All), "herald.all");
    }

    #[test]
    fn other_names_are_encoded_so_they_cannot_collide_or_break_the_subject() {
        for room in ["a.b", "*", ">", "with space", "~x", "日本", "x.".repeat(128).as_str()] {
            let subject = subject(&Target::Room(room.into()));
            let token = subject.strip_prefix("herald.room.").unwrap();
            assert!(token.starts_with('~'), "{room}: {subject}");
            assert!(!token.contains(['.', '*', '>', ' ']), "{subject}");
            assert!(token.len() <= 343, "{}", token.len());
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token[1..])
                .unwrap();
            assert_eq!(decoded, room.as_bytes());
        }
    }
}
