//! Who may connect, and who may join what: the handshake's admission (source rate, `Origin`, token, connections
//! per user) and the rooms an authenticated connection may join.
//!
//! Checked in order of cost, cheapest first, so a flood is turned away before any signature is checked:
//! 1. `handshake_rate_per_ip`: a token bucket per source address (429 with `Retry-After`);
//! 2. `allowed_origins`: a browser's `Origin` (403); a client that sends none is not a browser and passes;
//! 3. the token, when any key is configured (401 with the reason);
//! 4. `max_connections_per_user` (429).
//!
//! The per-address buckets and per-user counts are hand-written rather than taken from a rate-limiting crate:
//! each is a map behind one lock with a few lines of arithmetic, where `governor` would bring its own clock,
//! sharded map and generic machinery for one bucket per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::token::{Identity, RoomPatterns, TokenError, Verifier};
use parking_lot::Mutex;
use tokio::time::Instant;

/// Buckets kept before full ones (addresses that have not connected for a while) are forgotten.
const PRUNE_ABOVE: usize = 65_536;
/// Pruning walks every bucket under the lock: at most this often, so a flood from many addresses does not make
/// every handshake walk them all.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The access settings of the WebSocket side. The default admits anyone to any room (go-push's behaviour).
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Verifies connection and room tokens; `None` turns auth off.
    pub verifier: Option<Arc<Verifier>>,
    /// Rooms any authenticated connection may join (names, or prefixes ending in `*`).
    pub public_rooms: RoomPatterns,
    /// Origins a browser may connect from: exact (`https://app.example.com`) or one wildcard label
    /// (`https://*.example.com`); empty means any.
    pub allowed_origins: Vec<String>,
    /// Connections one user may hold on this gateway; 0 means no limit.
    pub max_connections_per_user: usize,
    /// Handshakes a second one source address may start (a token bucket as deep as one second's worth, at least
    /// 1); 0 means no limit.
    pub handshake_rate_per_ip: f64,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over `handshake_rate_per_ip`: try again after this many seconds.
    RateLimited { retry_after_secs: u64 },
    /// `Origin` not allowed.
    Origin,
    /// No valid token.
    Unauthorized(TokenError),
    /// The user holds `max_connections_per_user` already.
    UserLimit,
}

/// An admitted connection's identity, and its place in the per-user count (given back when dropped).
pub(crate) struct Admitted {
    pub(crate) identity: Option<Identity>,
    pub(crate) _slot: Option<UserSlot>,
}

/// The gateway's admission state.
pub(crate) struct Access {
    pub(crate) config: AccessConfig,
    buckets: Mutex<Buckets>,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

/// The per-address buckets, and when they were last pruned.
#[derive(Default)]
struct Buckets {
    by_source: HashMap<IpAddr, Bucket>,
    pruned: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Access {
    pub(crate) fn new(config: AccessConfig) -> Self {
        Self {
            config,
            buckets: Mutex::default(),
            per_user: Arc::default(),
        }
    }

    /// Admits a handshake from `peer` with this `Origin` and token, or says why not.
    pub(crate) fn admit(&self, peer: IpAddr, origin: Option<&str>, token: Option<&str>) -> Result<Admitted, Refusal> {
        self.take_handshake(peer)?;
        if let Some(origin) = origin
            && !self.origin_allowed(origin)
        {
            return Err(Refusal::Origin);
        }
        let Some(verifier) = &self.config.verifier else {
            return Ok(Admitted {
                identity: None,
                _slot: None,
            });
        };
        let token = token.ok_or(Refusal::Unauthorized(TokenError::Missing))?;
        let identity = verifier.connection(token).map_err(Refusal::Unauthorized)?;
        let slot = self.hold_user(&identity.user)?;
        Ok(Admitted {
            identity: Some(identity),
            _slot: slot,
        })
    }

    fn take_handshake(&self, peer: IpAddr) -> Result<(), Refusal> {
        let rate = self.config.handshake_rate_per_ip;
        if rate <= 0.0 {
            return Ok(());
        }
        let depth = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let Buckets { by_source, pruned } = &mut *buckets;
        if by_source.len() > PRUNE_ABOVE && pruned.is_none_or(|at| now >= at + PRUNE_EVERY) {
            by_source.retain(|_, bucket| bucket.refilled(now, rate, depth) < depth);
            *pruned = Some(now);
        }
        let bucket = by_source
            .entry(source_of(peer))
            .or_insert(Bucket { tokens: depth, at: now });
        bucket.tokens = bucket.refilled(now, rate, depth);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        Err(Refusal::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let allowed = &self.config.allowed_origins;
        allowed.is_empty() || allowed.iter().any(|pattern| origin_matches(pattern, origin))
    }

    fn hold_user(&self, user: &str) -> Result<Option<UserSlot>, Refusal> {
        let limit = self.config.max_connections_per_user;
        if limit == 0 {
            return Ok(None);
        }
        let mut per_user = self.per_user.lock();
        let held = per_user.entry(user.to_owned()).or_insert(0);
        if *held >= limit {
            return Err(Refusal::UserLimit);
        }
        *held += 1;
        Ok(Some(UserSlot {
            user: user.to_owned(),
            per_user: Arc::clone(&self.per_user),
        }))
    }

    /// Whether an authenticated connection whose token allows `granted` may join `room` without a room token.
    pub(crate) fn may_join(&self, granted: &RoomPatterns, room: &str) -> bool {
        granted.allow(room) || self.config.public_rooms.allow(room)
    }
}

/// The source a bucket is kept for: the address, or for IPv6 its /64 (one host usually holds a whole /64, so
/// counting each address apart would let it through).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, depth: f64) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(depth)
    }
}

/// One connection in its user's count; dropping it gives the place back.
pub(crate) struct UserSlot {
    user: String,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut per_user = self.per_user.lock();
        if let Some(held) = per_user.get_mut(&self.user) {
            *held -= 1;
            if *held == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

/// `https://app.example.com` matches itself (case aside); `https://*.example.com` matches any origin of that
/// scheme whose host ends in `.example.com` below at least one more label.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (pattern, origin) = (pattern.to_ascii_lowercase(), origin.to_ascii_lowercase());
    match pattern.split_once("://*.") {
        None => pattern == origin,
        Some((scheme, domain)) => origin.split_once("://").is_some_and(|(their_scheme, host)| {
            their_scheme == scheme
                && host
                    .strip_suffix(domain)
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_below_a_wildcard() {
        assert!(origin_matches("https://app.example.com", "https://APP.example.com"));
        assert!(!origin_matches("https://app.example.com", "http://app.example.com"));
        assert!(origin_matches("https://*.example.com", "https://a.b.example.com"));
        assert!(!origin_matches("https://*.example.com", "https://example.com"));
        assert!(!origin_matches("https://*.example.com", "https://evilexample.com"));
        assert!(!origin_matches("https://*.example.com", "http://a.example.com"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_the_rate() {
        let access = Access::new(AccessConfig {
            handshake_rate_per_ip: 2.0,
            ..AccessConfig::default()
        });
        let peer: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        assert!(access.admit(peer, None, None).is_ok());
        assert!(access.admit(peer, None, None).is_ok());
        assert_eq!(
            access.admit(peer, None, None).err(),
            Some(Refusal::RateLimited { retry_after_secs: 1 })
        );
        assert!(
            access.admit(other, None, None).is_ok(),
            "one address does not spend another's"
        );
        let (v6a, v6b): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        assert!(access.admit(v6a, None, None).is_ok());
        assert!(access.admit(v6b, None, None).is_ok());
        assert!(access.admit(v6a, None, None).is_err(), "one /64 is one source");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(access.admit(peer, None, None).is_ok());
    }

    #[test]
    fn the_user_count_gives_places_back() {
        let access = Access::new(AccessConfig {
            max_connections_per_user: 1,
            ..AccessConfig::default()
        });
        let slot = access.hold_user("u").unwrap();
        assert_eq!(access.hold_user("u").err(), Some(Refusal::UserLimit));
        assert!(access.hold_user("v").is_ok());
        drop(slot);
        assert!(access.hold_user("u").is_ok());
        assert!(access.per_user.lock().is_empty());
    }
}
