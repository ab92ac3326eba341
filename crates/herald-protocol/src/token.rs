//! herald's tokens: JWTs (RFC 7519) the application signs, verified with `jsonwebtoken`.
//!
//! - A **connection token** (`?token=` on `/connect`, or `Authorization: Bearer`) says who the connection is:
//!   `sub` (the user, 1 to 256 bytes), `exp` (required), `nbf` (honoured), `rooms` (names, or prefixes ending in
//!   `*`, that the connection may join) and `info` (any JSON up to 1 KiB, shown in presence).
//! - A **room token** (`data.token` of a JOIN) lets the connection of user `sub` join one room `room` until `exp`.
//!
//! The two kinds cannot stand in for each other: a token with a `room` claim opens no connection and refreshes
//! none, and one with a `rooms` claim is no room token.
//!
//! The algorithm comes from the key, never from the token: HMAC secrets verify HS256 only, an RSA key RS256, a
//! P-256 key ES256, an Ed25519 key EdDSA. A token whose header names another algorithm (or `none`, which has no
//! key at all) is refused before any signature is checked. A public key's `kid` is its file's name without the
//! extension; a token that names a `kid` is checked against that key alone.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{MAX_ROOM_BYTES, valid_user};

/// Largest `info` claim taken, in bytes of JSON.
pub const MAX_INFO_BYTES: usize = 1024;

/// Why a token was refused: the reason in the 401 body and the `reason` label of `herald_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    /// No token came with the handshake.
    #[error("a token is required")]
    Missing,
    /// Not a JWT (three base64url parts of JSON).
    #[error("the token is not a JWT")]
    Malformed,
    /// The header names an algorithm no configured key verifies (`none` included).
    #[error("the token's algorithm is not one of the configured keys'")]
    BadAlgorithm,
    /// The header names a `kid` no configured key has.
    #[error("the token names an unknown key")]
    UnknownKey,
    /// No configured key verifies the signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not `auth_issuer`.
    #[error("the token's issuer is not accepted")]
    BadIssuer,
    /// `aud` does not name `auth_audience`.
    #[error("the token's audience is not accepted")]
    BadAudience,
    /// A claim is missing or not what herald takes (`sub` empty or too long, `exp` missing, `info` too large,
    /// `rooms` not a list of room names).
    #[error("the token's claims are not valid")]
    BadClaims,
    /// A REFRESH or room token whose `sub` is not the connection's user, or a room token for another room.
    #[error("the token is for another user or room")]
    WrongSubject,
}

impl TokenError {
    /// The stable label (metrics, the 401 body's `reason`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadAlgorithm => "bad_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadClaims => "bad_claims",
            Self::WrongSubject => "wrong_subject",
        }
    }

    /// Every reason, for metrics that show each one from the start.
    pub const ALL: [TokenError; 11] = [
        Self::Missing,
        Self::Malformed,
        Self::BadAlgorithm,
        Self::UnknownKey,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::BadIssuer,
        Self::BadAudience,
        Self::BadClaims,
        Self::WrongSubject,
    ];
}

/// A key that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An empty HMAC secret would let anyone sign.
    #[error("auth_hmac_secrets: a secret must not be empty")]
    EmptySecret,
    /// A PEM file that holds no RSA, P-256 or Ed25519 public key.
    #[error("auth_public_keys: {0}: not an RSA, EC (P-256) or Ed25519 public key in PEM")]
    NotAPublicKey(String),
}

/// What a valid connection token says.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user (`sub`).
    pub user: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires: u64,
    /// Rooms the connection may join (`rooms`): names, or prefixes ending in `*`.
    pub rooms: RoomPatterns,
    /// The `info` claim, verbatim.
    pub info: Option<Box<RawValue>>,
}

/// Room names and `*`-prefixes (a token's `rooms`, the `public_rooms` setting).
///
/// Kept in one allocation (each pattern's length, two bytes, then its bytes), since every authenticated
/// connection holds its token's patterns for as long as it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPatterns(Box<[u8]>);

impl RoomPatterns {
    /// Patterns from a list; `None` for an entry that is neither a room name nor a prefix ending in `*` of 1 to
    /// 256 bytes.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Option<Self> {
        let mut packed = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().as_bytes();
            if pattern.is_empty() || pattern.len() > MAX_ROOM_BYTES {
                return None;
            }
            packed.extend_from_slice(&(pattern.len() as u16).to_le_bytes());
            packed.extend_from_slice(pattern);
        }
        Some(Self(packed.into_boxed_slice()))
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (pattern, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)));
            rest = tail;
            Some(pattern)
        })
    }

    /// Whether `room` is one of the names or starts with one of the prefixes.
    pub fn allow(&self, room: &str) -> bool {
        let room = room.as_bytes();
        self.iter().any(|pattern| match pattern.strip_suffix(b"*") {
            Some(prefix) => room.starts_with(prefix),
            None => pattern == room,
        })
    }

    /// No pattern at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Deserialize)]
struct ConnectionClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    /// Present only in a room token, which must not open a connection (nor REFRESH one).
    #[serde(default)]
    room: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RoomClaims {
    sub: String,
    exp: u64,
    room: String,
    /// Present only in a connection token, which must not stand in for a room token.
    #[serde(default)]
    rooms: Option<serde::de::IgnoredAny>,
}

struct Key {
    /// A public key's id (its file name); `None` for HMAC secrets.
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A public key file as configured: its `kid` and its PEM text.
#[derive(Clone)]
pub struct PublicKeyPem {
    /// The key's id: the file name without its extension.
    pub kid: String,
    /// The PEM text.
    pub pem: Vec<u8>,
}

impl Verifier {
    /// A verifier for HMAC `secrets` (HS256) and `public_keys` (RS256, ES256 or EdDSA by the key's type), checking
    /// `iss` and `aud` when given. `None` when no key is configured (auth is off).
    pub fn new(
        secrets: &[Vec<u8>],
        public_keys: &[PublicKeyPem],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Option<Self>, KeyError> {
        let mut keys = Vec::new();
        for secret in secrets {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        for public in public_keys {
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&public.pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&public.pem) {
                (Algorithm::ES256, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(&public.pem) {
                (Algorithm::EdDSA, key)
            } else {
                return Err(KeyError::NotAPublicKey(public.kid.clone()));
            };
            keys.push(Key {
                kid: Some(public.kid.clone()),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { keys, issuer, audience }))
    }

    /// Verifies a connection token.
    pub fn connection(&self, token: &str) -> Result<Identity, TokenError> {
        let claims: ConnectionClaims = self.verify(token)?;
        if claims.room.is_some() || !valid_user(&claims.sub) {
            return Err(TokenError::BadClaims);
        }
        if claims
            .info
            .as_ref()
            .is_some_and(|info| info.get().len() > MAX_INFO_BYTES)
        {
            return Err(TokenError::BadClaims);
        }
        let rooms = match &claims.rooms {
            None => RoomPatterns::default(),
            Some(rooms) => RoomPatterns::new(rooms).ok_or(TokenError::BadClaims)?,
        };
        Ok(Identity {
            user: claims.sub,
            expires: claims.exp,
            rooms,
            info: claims.info,
        })
    }

    /// Verifies a room token for `user` joining `room`; returns its `exp`.
    pub fn room(&self, token: &str, user: &str, room: &str) -> Result<u64, TokenError> {
        let claims: RoomClaims = self.verify(token)?;
        if claims.rooms.is_some() {
            return Err(TokenError::BadClaims);
        }
        if claims.sub != user || claims.room != room {
            return Err(TokenError::WrongSubject);
        }
        Ok(claims.exp)
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An algorithm jsonwebtoken does not know at all (`none` among them).
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => TokenError::BadAlgorithm,
            _ => TokenError::Malformed,
        })?;
        let mut candidates = self.keys.iter().filter(|key| key.algorithm == header.alg).peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::BadAlgorithm);
        }
        let by_kid: Vec<&Key> = match &header.kid {
            // HMAC secrets have no id: they rotate by each being tried.
            Some(kid) if header.alg != Algorithm::HS256 => {
                let picked: Vec<&Key> = candidates.filter(|key| key.kid.as_deref() == Some(kid)).collect();
                if picked.is_empty() {
                    return Err(TokenError::UnknownKey);
                }
                picked
            }
            _ => candidates.collect(),
        };
        let mut error = TokenError::BadSignature;
        for key in by_kid {
            match jsonwebtoken::decode::<T>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    error = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        // The signature verified: what follows is about the claims, and no other key will change it.
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidIssuer => return Err(TokenError::BadIssuer),
                        ErrorKind::InvalidAudience => return Err(TokenError::BadAudience),
                        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                            return Err(TokenError::BadIssuer);
                        }
                        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                            return Err(TokenError::BadAudience);
                        }
                        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                            return Err(TokenError::BadClaims);
                        }
                        ErrorKind::InvalidAlgorithm => TokenError::BadAlgorithm,
                        _ => TokenError::Malformed,
                    }
                }
            }
        }
        Err(error)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        // Expiry is exact: herald closes the connection at `exp` itself, so a leeway here would only blur that.
        validation.leeway = 0;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when a token has them: with an issuer or audience configured,
        // a token without the claim must be refused too, so they are required then.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// Seconds since the Unix epoch now (what `exp` and `nbf` count in).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_and_prefixes() {
        let patterns = RoomPatterns::new(&["news", "chat.*"]).unwrap();
        assert!(patterns.allow("news"));
        assert!(!patterns.allow("news2"));
        assert!(patterns.allow("chat.1"));
        assert!(patterns.allow("chat."));
        assert!(!patterns.allow("chat"));
        assert!(RoomPatterns::new(&[""]).is_none());
        assert!(RoomPatterns::new(&["x".repeat(257)]).is_none());
    }

    #[test]
    fn no_key_means_auth_off_and_empty_secrets_are_refused() {
        assert!(Verifier::new(&[], &[], None, None).unwrap().is_none());
        assert_eq!(
            Verifier::new(&[Vec::new()], &[], None, None).unwrap_err(),
            KeyError::EmptySecret
        );
        let not_a_key = PublicKeyPem {
            kid: "k".into(),
            pem: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
        };
        assert!(Verifier::new(&[], &[not_a_key], None, None).is_err());
    }

    #[test]
    fn room_and_connection_tokens_do_not_stand_in_for_each_other() {
        let verifier = Verifier::new(&[b"secret".to_vec()], &[], None, None).unwrap().unwrap();
        let sign = |claims: serde_json::Value| {
            let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let exp = unix_now() + 60;
        let room = sign(serde_json::json!({"sub": "u", "exp": exp, "room": "r"}));
        assert_eq!(verifier.connection(&room).unwrap_err(), TokenError::BadClaims);
        assert_eq!(verifier.room(&room, "u", "r"), Ok(exp));
        assert_eq!(verifier.room(&room, "v", "r"), Err(TokenError::WrongSubject));
        let connection = sign(serde_json::json!({"sub": "u", "exp": exp, "room": "r", "rooms": ["r"]}));
        assert_eq!(verifier.room(&connection, "u", "r"), Err(TokenError::BadClaims));
        let plain = sign(serde_json::json!({"sub": "u", "exp": exp, "rooms": ["a*"], "info": {"n": 1}}));
        let identity = verifier.connection(&plain).unwrap();
        assert!(identity.rooms.allow("ab") && !identity.rooms.allow("b"));
        assert_eq!(identity.info.unwrap().get(), r#"{"n":1}"#);
    }

    #[test]
    fn refuses_what_is_not_a_signed_token() {
        let verifier = Verifier::new(&[b"secret".to_vec()], &[], None, None).unwrap().unwrap();
        assert_eq!(verifier.connection("abc").unwrap_err(), TokenError::Malformed);
        // {"alg":"none"} . {"sub":"u","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(verifier.connection(none).unwrap_err(), TokenError::BadAlgorithm);
        // {"alg":"RS256"}: no RSA key is configured.
        let rs = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.c2ln";
        assert_eq!(verifier.connection(rs).unwrap_err(), TokenError::BadAlgorithm);
    }
}
