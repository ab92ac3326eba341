//! Keeps `herald-bench` alive: a few hundred connections for a few seconds through the real binary, which starts
//! its own `herald serve` (the herald binary beside it) and worker processes. Asserts what the tool reports (nothing
//! lost, figures present), never how fast anything was.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// `herald-bench`, which starts the herald beside it by default. `cargo test --workspace` has built that one; under
/// `cargo test -p herald-bench` it may be missing, and is then built here (same profile, same target directory). One
/// that is there is taken as it is: after changing herald, build it before running this test alone.
fn herald_bench() -> Command {
    static BUILT: OnceLock<()> = OnceLock::new();
    let bench = Path::new(env!("CARGO_BIN_EXE_herald-bench"));
    let profile_dir = bench.parent().expect("the binary is in a directory");
    BUILT.get_or_init(|| {
        if profile_dir.join("herald").is_file() {
            return;
        }
        let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        build.args(["build", "-p", "herald", "--target-dir"]);
        build.arg(
            profile_dir
                .parent()
                .expect("the profile's directory is in the target directory"),
        );
        match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let status = build.status().expect("running cargo build -p herald");
        assert!(
            status.success(),
            "cargo build -p herald failed: herald-bench needs the herald binary"
        );
    });
    let mut command = Command::new(bench);
    command.env_remove("HERALD_BIN");
    command
}

/// Runs `herald-bench <command> --json` (the command's words split on spaces) and returns its result.
fn bench(command: &str) -> serde_json::Value {
    let args: Vec<&str> = command.split_whitespace().collect();
    let output = herald_bench().args(&args).arg("--json").output().unwrap();
    assert!(
        output.status.success(),
        "herald-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("one JSON line")).unwrap()
}

/// A fan-out result where all `conns` connected, at least `pushes` pushes were taken, and every connection got
/// every item once.
fn assert_every_item_delivered(result: &serde_json::Value, conns: u64, pushes: u64) {
    assert_eq!(result["connections"], conns, "{result}");
    assert_eq!(result["pushes_refused"], 0, "{result}");
    assert!(result["items_expected"].as_u64().unwrap() >= conns * pushes, "{result}");
    assert_eq!(result["items_received"], result["items_expected"], "{result}");
    assert_eq!(
        (result["items_lost"].as_u64(), result["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{result}"
    );
}

#[test]
fn bench_scenarios_run_and_account_for_every_item() {
    let fanout = bench("fanout --conns 300 --rate 20 --secs 2 --merge-window 50ms");
    assert_every_item_delivered(&fanout, 300, 20);
    assert!(fanout["latency_p99_ms"].as_f64().unwrap() > 0.0);
    // Latency ends when a frame reached the client's socket (the kernel's receive timestamp), never after the
    // load generator read it.
    assert_eq!(fanout["latency_untimed_reads"], 0, "{fanout}");
    assert!(fanout["read_latency_p99_ms"].as_f64().unwrap() >= fanout["latency_p99_ms"].as_f64().unwrap());
    assert!(fanout["server_cpu_secs"].is_number() && fanout["loadgen_cpu_secs"].is_number());
    // Each connection's first PING goes at a random point of its first 20 s, so some of 300 ping in a few seconds
    // and the server answers them; only the PINGs still in flight when the run stops may miss their PONG.
    let (pings, pongs) = (
        fanout["pings_sent"].as_u64().unwrap(),
        fanout["pongs_received"].as_u64().unwrap(),
    );
    assert!(pings > 0 && pongs <= pings && pongs >= pings / 2, "{fanout}");
    assert_eq!(
        (&fanout["closed_early"], &fanout["closed_early_by"]),
        (&serde_json::json!(0), &serde_json::json!({})),
        "{fanout}"
    );

    let broadcast = bench("fanout --all --conns 200 --rate 10 --secs 1 --workers 2");
    assert_eq!(broadcast["items_received"], broadcast["items_expected"], "{broadcast}");

    let idle = bench("connections --conns 300 --secs 1");
    assert_eq!(
        (idle["connections"].as_u64(), idle["connect_errors"].as_u64()),
        (Some(300), Some(0)),
        "{idle}"
    );
    assert!(idle["server_rss_per_conn_bytes"].is_u64(), "{idle}");
    // Everything the server holds, its baseline included, is more than what the connections added.
    let (pss, rss_added) = (
        idle["server_pss_per_conn_bytes"].as_u64().unwrap(),
        idle["server_rss_per_conn_bytes"].as_u64().unwrap(),
    );
    assert!(
        pss > 0 && idle["server_pss_bytes"].as_u64() >= Some(pss * 300),
        "{idle}"
    );
    assert!(pss > rss_added, "{idle}");
    assert!(idle["server_cpu_per_ping_us"].is_number(), "{idle}");
    // The hold is part of the run: its CPU is a share of the server's whole.
    let (held, total) = (
        idle["server_cpu_held_secs"].as_f64().unwrap(),
        idle["server_cpu_secs"].as_f64().unwrap(),
    );
    assert!((0.0..=total).contains(&held), "{idle}");
}

#[test]
fn bench_compresses_when_asked_and_counts_every_copy_from_one_inflation() {
    // Ten chat items a push: frames well over herald's compression_min_bytes. PINGs every 200 ms, sent compressed:
    // herald closes a connection whose compressed message it cannot take, so none closed says it took them.
    let load = "fanout --conns 200 --rate 20 --items 10 --items-kind chat --secs 2 --merge-window 50ms --workers 1 \
                --ping-secs 0.2";
    let compressed = bench(&format!("{load} --compress"));
    assert_every_item_delivered(&compressed, 200, 20);
    assert_eq!(
        (
            &compressed["compression_negotiated"],
            &compressed["compression_refused"]
        ),
        (&serde_json::json!(200), &serde_json::json!(0)),
        "{compressed}"
    );
    assert_eq!(compressed["inflate_errors"], 0, "{compressed}");
    assert_eq!(compressed["closed_early"], 0, "{compressed}");
    assert!(compressed["pongs_received"].as_u64() > Some(0), "{compressed}");
    let (frames, inflated) = (
        compressed["compressed_frames"].as_u64().unwrap(),
        compressed["compressed_payloads_inflated"].as_u64().unwrap(),
    );
    // herald compresses a batch once for every connection: one worker inflates each distinct payload once.
    assert!(frames > 0 && inflated > 0 && inflated < frames, "{compressed}");

    let plain = bench(load);
    assert_every_item_delivered(&plain, 200, 20);
    assert!(plain.get("compressed_frames").is_none(), "{plain}");
    let per_item = |result: &serde_json::Value| result["wire_bytes_per_item"].as_f64().unwrap();
    assert!(per_item(&plain) > 0.0, "{plain}");
    assert!(per_item(&compressed) < per_item(&plain), "{compressed}\n{plain}");

    // Idle compressing connections: their JOIN and PINGs go compressed, herald answers, none is closed.
    let idle = bench("connections --conns 40 --secs 1 --ping-secs 0.2 --compress");
    assert_eq!(
        (
            &idle["connections"],
            &idle["compression_negotiated"],
            &idle["closed_early"]
        ),
        (&serde_json::json!(40), &serde_json::json!(40), &serde_json::json!(0)),
        "{idle}"
    );
    assert!(idle["pongs_received"].as_u64() > Some(0), "{idle}");
}

#[test]
fn bench_hostile_attacks_beside_normal_clients_that_still_get_everything() {
    let hostile = bench("hostile --conns 100 --attackers 3 --rate 20 --secs 3 --merge-window 50ms");
    assert_every_item_delivered(&hostile, 100, 20);
    let attack = &hostile["attack"];
    for kind in ["reply_hog", "flooder", "room_churner", "half_open", "slow_reader"] {
        assert!(attack[kind]["sessions"].as_u64() >= Some(3), "{kind}: {hostile}");
    }
    // Flooders are closed at client_message_rate and come back.
    assert!(attack["flooder"]["cut_off"].as_u64() >= Some(1), "{hostile}");
    assert!(hostile["server_rss_growth_per_attacker_bytes"].is_number(), "{hostile}");
}

#[test]
fn bench_runs_a_cluster_of_its_own() {
    // `herald logic` (one event loop by default) and two `herald gateway` processes, started and stopped by the bench.
    let cluster = bench("fanout --cluster 2 --conns 200 --rate 20 --secs 2 --merge-window 50ms");
    assert_every_item_delivered(&cluster, 200, 20);
}

#[test]
fn bench_says_how_the_server_closed_connections_and_pings_as_often_as_asked() {
    // A herald that takes 5 messages a second from a client, clients that ping 100 times a second: every connection
    // is closed past its burst (4005) while the bench holds them.
    let flooding =
        bench("connections --conns 40 --secs 2 --ping-secs 0.01 --server-arg=--client-message-rate --server-arg=5");
    assert_eq!(flooding["closed_early"], 40, "{flooding}");
    assert_eq!(
        flooding["closed_early_by"],
        serde_json::json!({"4005": 40}),
        "{flooding}"
    );

    // The same herald, clients that ping every 200 ms: none is closed, and each pinged several times.
    let pinging =
        bench("connections --conns 40 --secs 2 --ping-secs 0.2 --server-arg=--heartbeat-timeout --server-arg=1s");
    assert_eq!(pinging["closed_early"], 0, "{pinging}");
    assert!(pinging["pings_sent"].as_u64().unwrap() >= 40 * 10, "{pinging}");
}

#[test]
fn bench_refuses_a_remote_target_unless_allowed() {
    let output = herald_bench()
        .args(["connections", "--conns", "1", "--ws", "192.0.2.1:7777"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("outside loopback"));
}

#[test]
fn bench_says_when_the_herald_to_start_is_missing() {
    let refusal = |command: &mut Command| {
        let output = command.output().unwrap();
        assert!(!output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };
    let named = refusal(herald_bench().args(["connections", "--conns", "1", "--herald", "/nonexistent/herald"]));
    assert!(named.contains("--herald /nonexistent/herald: no such file"), "{named}");

    // A herald-bench with no herald beside it says how to build one.
    let alone = std::env::temp_dir().join(format!("herald-bench-alone-{}", std::process::id()));
    std::fs::create_dir_all(&alone).unwrap();
    let copy = alone.join("herald-bench");
    std::fs::copy(env!("CARGO_BIN_EXE_herald-bench"), &copy).unwrap();
    let beside = refusal(
        Command::new(&copy)
            .env_remove("HERALD_BIN")
            .args(["connections", "--conns", "1"]),
    );
    std::fs::remove_dir_all(&alone).unwrap();
    assert!(
        beside.contains("build it with `cargo build --release -p herald`"),
        "{beside}"
    );
}

#[test]
fn bench_help_shows_its_own_defaults_once() {
    let output = herald_bench().args(["fanout", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // --merge-window, a flag of the herald it starts too: the bench's default, once.
    assert_eq!(help.matches("[default: 1s]").count(), 1, "{help}");
}

#[test]
fn bench_refuses_a_ping_interval_out_of_range() {
    for interval in ["0", "0.0001", "soon", "100000"] {
        let output = herald_bench()
            .args(["connections", "--conns", "1", "--ping-secs", interval])
            .output()
            .unwrap();
        assert!(!output.status.success(), "--ping-secs {interval} was taken");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("not a number of seconds between 0.001 and 86400"),
            "--ping-secs {interval}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn bench_refuses_pings_the_herald_it_starts_would_not_wait_for() {
    let refused = |args: &[&str], env: Option<(&str, &str)>| {
        let mut command = herald_bench();
        command.args(["connections", "--conns", "1"]).args(args);
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} was taken");
        String::from_utf8(output.stderr).unwrap()
    };
    let flag = refused(
        &[
            "--ping-secs",
            "30",
            "--server-arg=--heartbeat-timeout",
            "--server-arg=1s",
        ],
        None,
    );
    assert!(
        flag.contains("--ping-secs 30") && flag.contains("heartbeat_timeout (1 s)"),
        "{flag}"
    );
    // The environment the started herald inherits counts too; so do the gateways of a cluster.
    let env = refused(&["--cluster", "2"], Some(("HERALD_HEARTBEAT_TIMEOUT", "20s")));
    assert!(env.contains("heartbeat_timeout (20 s)"), "{env}");
    let default = refused(&["--ping-secs", "60"], None);
    assert!(default.contains("heartbeat_timeout (60 s)"), "{default}");
}

#[test]
fn bench_churn_resumes_with_since_and_says_how_many_recovered() {
    let churn = bench("churn --conns 50 --churn 50 --hold-ms 150 --rate 20 --secs 3 --merge-window 20ms --resume");
    assert_every_item_delivered(&churn, 50, 20);
    let recovered = churn["recovered"].as_u64().unwrap();
    assert!(recovered >= 20, "{churn}");
    assert_eq!(churn["not_recovered"], 0, "history holds 100 items: {churn}");

    // On NATS, with JetStream (the bench starts nats-server with -js), resuming on whichever gateway takes it.
    let nats =
        bench("churn --nats 2 --conns 40 --churn 30 --hold-ms 150 --rate 20 --secs 3 --merge-window 20ms --resume");
    assert_every_item_delivered(&nats, 40, 60);
    assert!(nats["recovered"].as_u64().unwrap() >= 20, "{nats}");
    assert_eq!(nats["not_recovered"], 0, "{nats}");
}
