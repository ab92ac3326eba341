//! What an authenticated connection's task keeps of its token: when it expires and which rooms it allows. The
//! writer makes it from the handshake's token, the commands read it (JOIN) and replace it (REFRESH), and the
//! connection's task closes the connection when it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::token::RoomPatterns;
use tokio::time::Instant;

/// A connection's token, as its task keeps it: when it expires and which rooms it allows.
pub(crate) struct Auth {
    expires: Instant,
    rooms: RoomPatterns,
}

impl Auth {
    /// `expires` in seconds since the Unix epoch (a token's `exp`).
    pub(crate) fn new(expires: u64, rooms: RoomPatterns) -> Self {
        Self {
            expires: instant_of(expires),
            rooms,
        }
    }

    pub(super) fn expires(&self) -> Instant {
        self.expires
    }

    /// The rooms the token allows.
    pub(super) fn rooms(&self) -> &RoomPatterns {
        &self.rooms
    }
}

/// Longest a token is held to: an `exp` further off is taken as this far (it cannot overflow a clock).
const LONGEST_TOKEN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The moment a Unix time in seconds comes (now, if it has passed).
fn instant_of(unix_secs: u64) -> Instant {
    let left = match UNIX_EPOCH.checked_add(Duration::from_secs(unix_secs)) {
        None => LONGEST_TOKEN,
        // Passed already: due now.
        Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
    };
    Instant::now() + left.min(LONGEST_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_exp_makes_an_instant() {
        let now = Instant::now();
        assert!(instant_of(0) <= Instant::now());
        assert!(instant_of(1) <= Instant::now());
        assert!(instant_of(u64::MAX) >= now + LONGEST_TOKEN);
        let in_a_minute = herald_protocol::token::unix_now() + 60;
        let at = instant_of(in_a_minute);
        assert!(at > now + Duration::from_secs(58) && at < now + Duration::from_secs(62));
    }
}
