//! The subjects herald uses on NATS (see the parent module's docs for the encoding of room names).

use base64::Engine;
use herald_protocol::bus::Target;

/// Subject of broadcasts.
pub const ALL_SUBJECT: &str = "herald.all";
/// Subject of the gateways' announcements.
pub const ANNOUNCE_SUBJECT: &str = "herald.gateways";
/// Subject of presence queries and disconnects: every gateway answers each request.
pub const QUERY_SUBJECT: &str = "herald.query";
/// Rooms: what gateways subscribe to (with history, the stream republishes here what it stored).
pub(crate) const ROOM_PREFIX: &str = "herald.room.";
/// Rooms with history: what logic publishes to, and the history stream holds (see `history`).
pub(crate) const STORE_PREFIX: &str = "herald.store.room.";
const USER_PREFIX: &str = "herald.user.";

/// The subject of a push's target (see the module docs for the encoding of room names).
pub fn subject(target: &Target) -> String {
    match target {
        Target::Room(room) => encoded(ROOM_PREFIX, room),
        Target::User(user) => encoded(USER_PREFIX, user),
        Target::All => ALL_SUBJECT.to_owned(),
    }
}

/// `prefix` and the name as one subject token: the name itself when plain, else `~` and its base64.
fn encoded(prefix: &str, name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain && !name.is_empty() {
        format!("{prefix}{name}")
    } else {
        format!(
            "{prefix}~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
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
        assert_eq!(subject(&Target::User("u-1".into())), "herald.user.u-1");
        assert_eq!(subject(&Target::User("a@b".into())), "herald.user.~YUBi");
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
