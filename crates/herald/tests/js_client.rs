//! herald-client, the JavaScript client (`clients/js`): its Node.js test suite, run against this build's herald
//! (and a nats-server of its own), and its type declarations checked by TypeScript.
//!
//! Needs Node.js and the package's development dependencies (`ws`, `typescript`); `scripts/test` installs them
//! with `npm ci` when missing.

use std::path::PathBuf;
use std::process::Command;

fn package() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/js");
    assert!(
        dir.join("node_modules/ws").is_dir() && dir.join("node_modules/typescript").is_dir(),
        "{}/node_modules is missing: run scripts/test, which runs npm ci there",
        dir.display()
    );
    dir
}

/// Runs `node args` in the package's directory and fails the test, with its output, unless it succeeds.
fn node(args: &[&str]) {
    let output = Command::new("node")
        .args(args)
        .current_dir(package())
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .output()
        .expect("node (scripts/test installs Node.js when missing)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "node {args:?} failed:\n{text}");
}

#[test]
fn the_javascript_client_passes_its_tests() {
    node(&["--test", "--test-reporter=spec", "test/"]);
}

#[test]
fn the_javascript_client_s_types_check() {
    node(&["node_modules/typescript/bin/tsc", "-p", "."]);
}
