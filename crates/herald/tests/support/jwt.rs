//! Tokens for the identity tests, signed by PyJWT (scripts/sign_token.py), an implementation independent of the crate
//! herald verifies with. `scripts/test` installs it into `target/python` (scripts/install-python);
//! `HERALD_TEST_PYTHON` names another interpreter that has PyJWT, cryptography and websockets.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tests' Python interpreter, with the packages scripts/install-python installs.
pub fn python() -> PathBuf {
    let python =
        std::env::var_os("HERALD_TEST_PYTHON").map_or_else(|| repo().join("target/python/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "{} not found: run scripts/test, which installs it (scripts/install-python target/python), or set \
         HERALD_TEST_PYTHON",
        python.display()
    );
    python
}

fn run(args: &[&str]) -> String {
    let output = Command::new(python())
        .arg(repo().join("scripts/sign_token.py"))
        .args(args)
        .output()
        .expect("run scripts/sign_token.py");
    assert!(
        output.status.success(),
        "sign_token.py {}: {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A token of `claims` signed with `alg` and `key` (the HMAC secret, or a private key PEM file).
pub fn sign(alg: &str, key: &str, claims: &Value) -> String {
    run(&["sign", alg, key, &claims.to_string()])
}

/// As [`sign`], with extra header fields (`kid`).
pub fn sign_with_header(alg: &str, key: &str, claims: &Value, header: &Value) -> String {
    run(&["sign", alg, key, &claims.to_string(), &header.to_string()])
}

/// An HS256 token of `claims` whose secret is the bytes of the file at `path` (a public key: the algorithm
/// confusion attack).
pub fn forge_with_file(path: &str, claims: &Value) -> String {
    run(&["forge", path, &claims.to_string()])
}

/// An HS256 token of `claims`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    sign("HS256", secret, claims)
}

/// Writes `rsa`, `ec` and `ed` key pairs into `dir`: `NAME.key` (private) and `NAME.pem` (public).
pub fn make_keys(dir: &Path) {
    run(&["keys", dir.to_str().unwrap()]);
}

/// Seconds since the Unix epoch, `offset` from now.
pub fn unix_in(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

/// Claims of user `sub`, expiring `secs` from now, with `extra` fields merged in.
pub fn claims(sub: &str, secs: i64, extra: Value) -> Value {
    let mut claims = json!({ "sub": sub, "exp": unix_in(secs) });
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}
