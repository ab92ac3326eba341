//! The real `herald` binary: configuration errors name the key, precedence is flags > env > file, and SIGTERM
//! drains and exits cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("herald-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `herald serve` expecting it to refuse its configuration; returns stderr.
fn refused(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "herald started with a bad configuration");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn unknown_and_bad_keys_are_named() {
    let unknown = config_file("unknown", "merge_windw = \"1s\"\n");
    let stderr = refused(herald().arg("serve").arg("--config").arg(&unknown));
    assert!(stderr.contains("merge_windw"), "{stderr}");

    let bad = config_file("bad", "merge_window = \"soon\"\n");
    let stderr = refused(herald().arg("serve").arg("--config").arg(&bad));
    assert!(stderr.contains("merge_window"), "{stderr}");

    let stderr = refused(herald().args(["serve", "--merge-max-items", "0"]));
    assert!(stderr.contains("merge_max_items: must be at least 1"), "{stderr}");

    let stderr = refused(herald().args(["serve", "--merge-window", "fast"]));
    assert!(stderr.contains("--merge-window"), "{stderr}");
    for path in [unknown, bad] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn cluster_settings_are_checked_at_start() {
    let stderr = refused(herald().args(["logic", "--api-addr", "127.0.0.1:0"]));
    assert!(
        stderr.contains("gateways: herald logic needs at least one gateway"),
        "{stderr}"
    );
    let stderr = refused(herald().args(["logic", "--api-addr", "127.0.0.1:0", "--gateways", "gw-1"]));
    assert!(stderr.contains("gateways: `gw-1` is not host:port"), "{stderr}");
    let twice = [
        "logic",
        "--api-addr",
        "127.0.0.1:0",
        "--gateways",
        "127.0.0.1:7788,127.0.0.1:7788",
    ];
    let stderr = refused(herald().args(twice));
    assert!(stderr.contains("listed twice"), "{stderr}");
    let stderr = refused(herald().args(["gateway", "--rpc-tls-cert", "/nonexistent.pem"]));
    assert!(stderr.contains("rpc_tls_key: needed with rpc_tls_cert"), "{stderr}");
    let stderr = refused(herald().args(["gateway", "--rpc-tls-cert", "/nonexistent.pem", "--rpc-tls-key", "/k"]));
    assert!(stderr.contains("rpc_tls_cert: reading /nonexistent.pem"), "{stderr}");
    let stderr = refused(herald().args(["gateway", "--cluster-secret", "two words"]));
    assert!(stderr.contains("cluster_secret: must be printable ASCII"), "{stderr}");
    let stderr = refused(herald().args(["serve", "--bus", "http://127.0.0.1:4222"]));
    assert!(
        stderr.contains("bus: `http://127.0.0.1:4222` is not nats://HOST:PORT"),
        "{stderr}"
    );
    let both = [
        "logic",
        "--bus",
        "nats://127.0.0.1:4222",
        "--gateways",
        "127.0.0.1:7788",
    ];
    let stderr = refused(herald().args(both));
    assert!(stderr.contains("gateways: not used with bus"), "{stderr}");
}

#[test]
fn flags_beat_env_and_env_beats_the_file() {
    // The file's valid value is overridden by env's invalid one (so the error proves env won) ...
    let file = config_file("precedence", "merge_max_items = 5\nshards = 2\n");
    let stderr = refused(
        herald()
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env("HERALD_SHARDS", "0"),
    );
    assert!(stderr.contains("shards: must be at least 1"), "{stderr}");
    // ... and a flag overrides env: the same bad env with a good flag gets past validation to binding, where the
    // address (also from a flag) is taken, and the error names that instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = refused(
        herald()
            .args(["serve", "--shards", "4", "--ws-addr", &addr])
            .arg("--config")
            .arg(&file)
            .env("HERALD_SHARDS", "0"),
    );
    assert!(stderr.contains("ws_addr: cannot listen on"), "{stderr}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut child = herald()
        .args(["serve", "--ws-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .env("HERALD_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Failsafe: a herald that hangs is killed, so the reads below end and the test fails instead of hanging.
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("herald serving"));
    assert!(serving.is_some(), "herald did not start");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "herald did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|line| line.contains("stopped")), "{rest:?}");
}

#[test]
fn a_flag_of_another_mode_is_refused_naming_the_mode() {
    let stderr = refused(herald().args(["logic", "--merge-window", "5s"]));
    assert!(
        stderr.contains("--merge-window is not a setting of herald logic (it is one of serve, gateway)"),
        "{stderr}"
    );
    let stderr = refused(herald().args(["serve", "--gateways", "127.0.0.1:7788"]));
    assert!(
        stderr.contains("--gateways is not a setting of herald serve (it is one of logic)"),
        "{stderr}"
    );
    // A flag of no mode is clap's own error.
    let stderr = refused(herald().args(["gateway", "--merge-windw", "5s"]));
    assert!(stderr.contains("unexpected argument '--merge-windw'"), "{stderr}");
}

#[test]
fn help_shows_each_default_once() {
    let help = |args: &[&str]| {
        let output = herald().args(args).output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let serve = help(&["serve", "--help"]);
    let line = serve
        .lines()
        .skip_while(|l| !l.contains("--merge-window"))
        .nth(1)
        .unwrap();
    assert_eq!(line.matches("[default: 1s]").count(), 1, "{line}");
}
