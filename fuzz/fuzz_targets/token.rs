//! A connection or room token from a client (`?token=`, `Authorization: Bearer`, a JOIN's or REFRESH's
//! `data.token`): whatever the bytes, verification answers with a reason, never panics.
#![no_main]

use std::sync::OnceLock;

use herald_protocol::token::Verifier;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new(&[b"fuzz-secret".to_vec()], &[], Some("iss".into()), Some("aud".into()))
            .expect("a valid secret")
            .expect("auth on")
    })
}

fuzz_target!(|token: &str| {
    let verifier = verifier();
    let _ = verifier.connection(token);
    let _ = verifier.room(token, "user", "room");
});
