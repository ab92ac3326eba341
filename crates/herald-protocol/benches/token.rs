//! Verifying a connection token: what each handshake (and each REFRESH) costs with auth on, by algorithm.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use herald_protocol::token::{PublicKeyPem, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &[u8] = b"bench-secret-0123456789";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/benches/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn verify(c: &mut Criterion) {
    let claims = serde_json::json!({
        "sub": "user-4711",
        "exp": 4_102_444_800u64,
        "rooms": ["team-1", "chat.*"],
        "info": {"name": "Ada", "device": "phone"},
    });
    let public = ["rsa", "ec", "ed"].map(|name| PublicKeyPem {
        kid: name.to_owned(),
        pem: key(&format!("{name}.pem")),
    });
    let verifier = Verifier::new(&[SECRET.to_vec()], &public, None, None).unwrap().unwrap();
    let cases = [
        ("HS256", Algorithm::HS256, EncodingKey::from_secret(SECRET)),
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap(),
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key("ec.key")).unwrap(),
        ),
        (
            "EdDSA",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&key("ed.key")).unwrap(),
        ),
    ];
    let mut group = c.benchmark_group("verify_connection_token");
    for (name, algorithm, encoding) in cases {
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding).unwrap();
        assert!(verifier.connection(&token).is_ok(), "{name}");
        group.bench_function(name, |b| b.iter(|| verifier.connection(std::hint::black_box(&token))));
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
