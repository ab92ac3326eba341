//! The shared secret on the internal hop: logic sends `authorization: Bearer <secret>` on every call, the gateway
//! refuses a call without the right one (UNAUTHENTICATED), so a stray client on the network cannot inject pushes.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::Secret;

const SCHEME: &str = "Bearer ";

/// The gateway's check. With no secret configured, every call passes.
#[derive(Clone)]
pub struct SecretCheck {
    expected: Option<Secret>,
}

impl SecretCheck {
    /// A check for `expected` (or none).
    pub fn new(expected: Option<Secret>) -> Self {
        Self { expected }
    }
}

impl Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix(SCHEME));
        match presented {
            Some(presented) if constant_time_eq(presented.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong cluster secret")),
            None => Err(Status::unauthenticated("this gateway requires the cluster secret")),
        }
    }
}

/// Compares without an early exit on the first differing byte, so response timing does not reveal how much of a
/// guess was right. (Ten lines; a crate for it would be the only user of its dependency tree here.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Logic's side: adds the secret to every call.
#[derive(Clone)]
pub struct SecretHeader {
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl SecretHeader {
    /// A header for `secret` (or none). Fails when the secret is not printable ASCII.
    pub fn new(secret: Option<&Secret>) -> Result<Self, String> {
        let value = secret
            .map(|secret| {
                format!("{SCHEME}{}", secret.as_str())
                    .parse()
                    .map_err(|_| "cluster_secret: must be printable ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self { value })
    }
}

impl Interceptor for SecretHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_check_takes_only_the_right_secret() {
        let secret = Secret::new("s3cret".into());
        let mut check = SecretCheck::new(Some(secret.clone()));
        let mut header = SecretHeader::new(Some(&secret)).unwrap();
        assert!(check.call(header.call(Request::new(())).unwrap()).is_ok());
        let mut wrong = SecretHeader::new(Some(&Secret::new("guess".into()))).unwrap();
        let refused = check.call(wrong.call(Request::new(())).unwrap()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(check.call(Request::new(())).is_err());
        assert!(SecretCheck::new(None).call(Request::new(())).is_ok());
    }
}
