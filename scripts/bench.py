#!/usr/bin/env python3
"""Reruns herald's standard benchmark scenarios and rewrites the generated part of BENCHMARKS.md.

    usage: scripts/bench.py [--only NAME ...] [--dry-run]

Builds the release binaries, runs every scenario with `herald-bench ... --json`, and replaces what stands between
the `<!-- generated:start -->` and `<!-- generated:end -->` markers of BENCHMARKS.md with the machine, the date,
each command and its figures, and the targets table. The hand-written notes outside the markers stay.

A scenario with a target row runs several times (`--repeats`, 3 by default): the same command swings by 10% and
more between runs on this shared machine, so one run cannot say met or not. Each figure shown is the median of
the runs, with their range beside it in the targets table; losses, duplicates and errors are the worst run's, so
"nothing lost" holds for every run. Takes about forty minutes on the 2-core machine (twenty of them the compressed
scenarios, each run beside the same load plain and both floors). The million scenarios run only when named
(`--only million_idle million_fanout`: about half an hour more). Standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# herald-bench starts the herald beside it, target/release/herald.
HERALD_BENCH = os.path.join(ROOT, "target", "release", "herald-bench")
RAW_FANOUT = os.path.join(ROOT, "target", "release", "examples", "raw_fanout")
START, END = "<!-- generated:start -->", "<!-- generated:end -->"

# name -> (title, herald-bench arguments)
SCENARIOS = {
    "idle": ("19,000 idle connections in one room",
             ["connections", "--conns", "19000", "--secs", "3"]),
    "idle_auth": ("19,000 idle authenticated connections in one room (an HS256 token each, one user per connection: "
                  "the most a user costs)",
                  ["connections", "--conns", "19000", "--secs", "3", "--token-secret", "bench-only-secret"]),
    "window_1s": ("10,000 connections, one room, 10 pushes/s of one 100-byte item, 1 s window, 30 s",
                  ["fanout", "--conns", "10000", "--rate", "10", "--items", "1", "--item-bytes", "100",
                   "--secs", "30", "--merge-window", "1s"]),
    "light": ("light traffic: 1,000 connections, one push every 2 s, 1 s window, 30 s",
              ["fanout", "--conns", "1000", "--rate", "0.5", "--items", "1", "--item-bytes", "100",
               "--secs", "30", "--merge-window", "1s", "--workers", "4"]),
    "window_10ms": ("10,000 connections, one room, 10 pushes/s, 10 ms window (every push its own frame), 30 s",
                    ["fanout", "--conns", "10000", "--rate", "10", "--items", "1", "--item-bytes", "100",
                     "--secs", "30", "--merge-window", "10ms"]),
    "seed": ("the seed's rate: 10,000 connections, 1,000 pushes/s of one 100-byte item, 1 s window, "
             "at most 100 items a frame, 30 s",
             ["fanout", "--conns", "10000", "--rate", "1000", "--items", "1", "--item-bytes", "100",
              "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100"]),
    "cluster_10ms": ("cluster (logic + 2 gateways, 5,000 connections each): the 10 ms window scenario",
                     ["fanout", "--cluster", "2", "--conns", "10000", "--rate", "10", "--items", "1",
                      "--item-bytes", "100", "--secs", "30", "--merge-window", "10ms"]),
    "cluster_seed": ("cluster (logic + 2 gateways, 5,000 connections each): the seed's rate",
                     ["fanout", "--cluster", "2", "--conns", "10000", "--rate", "1000", "--items", "1",
                      "--item-bytes", "100", "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100"]),
    "nats_10ms": ("NATS (nats-server + logic + 2 gateways sharing one port): the 10 ms window scenario",
                  ["fanout", "--nats", "2", "--conns", "10000", "--rate", "10", "--items", "1",
                   "--item-bytes", "100", "--secs", "30", "--merge-window", "10ms"]),
    "nats_seed": ("NATS (nats-server + logic + 2 gateways sharing one port): the seed's rate",
                  ["fanout", "--nats", "2", "--conns", "10000", "--rate", "1000", "--items", "1",
                   "--item-bytes", "100", "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100"]),
    "nats_8_idle": ("many processes: 8 gateways sharing one port behind NATS, 150,000 idle connections",
                    ["connections", "--nats", "8", "--conns", "150000", "--secs", "3"]),
    "nats_8_fanout": ("many processes: 8 gateways sharing one port behind NATS, 150,000 connections in one room, "
                      "one push every 2 s, 1 s window, 20 s",
                      ["fanout", "--nats", "8", "--conns", "150000", "--rate", "0.5", "--items", "1",
                       "--item-bytes", "100", "--secs", "20", "--merge-window", "1s"]),
    "hostile_baseline": ("under attack, the baseline: 5,000 connections in one room, 10 pushes/s of one 100-byte "
                         "item, 10 ms window, 30 s, no attacker",
                         ["hostile", "--conns", "5000", "--attackers", "0", "--rate", "10", "--secs", "30",
                          "--merge-window", "10ms"]),
    "hostile": ("under attack: the same, beside 200 attackers of each of five kinds (1,000 hostile connections: "
                "reply hogs, flooders, fresh-room churners, half-open sockets, slow readers in the room)",
                ["hostile", "--conns", "5000", "--attackers", "200", "--rate", "10", "--secs", "30",
                 "--merge-window", "10ms"]),
    "history_10ms": ("history on (100 items a room, in memory): the 10 ms window scenario",
                     ["fanout", "--conns", "10000", "--rate", "10", "--items", "1", "--item-bytes", "100",
                      "--secs", "30", "--merge-window", "10ms", "--server-arg=--history-size", "--server-arg=100"]),
    "history_seed": ("history on (100 items a room, in memory): the seed's rate",
                     ["fanout", "--conns", "10000", "--rate", "1000", "--items", "1", "--item-bytes", "100",
                      "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100",
                      "--server-arg=--history-size", "--server-arg=100"]),
    # Many processes a host: each gateway holding its idle connections runs on one event loop (--worker-threads 1,
    # as docs/scaling.md says): a second worker would be woken for heartbeats it cannot share.
    "million_idle": ("a million: 56 gateways sharing one port behind NATS, one event loop each, 1,000,000 idle "
                     "connections held 60 s, each sending a PING every 40 s (25,000 a second)",
                     ["connections", "--nats", "56", "--conns", "1000000", "--secs", "60", "--ping-secs", "40",
                      "--server-arg=--worker-threads", "--server-arg=1"]),
    # The floor closes no connection for silence; on this machine a broadcast to a million keeps the load
    # generator's workers so busy that their PINGs go out tens of seconds late, and herald's default 60 s heartbeat
    # timeout then closes half of them (measured: 497,455 closed with 4001). 300 s keeps the comparison about the
    # fan-out. Each gateway runs two workers, as each process of the floor runs two threads (one writes the
    # frames, one answers the PINGs): the scheduler shares the two cores among runnable threads, the load
    # generator's 67 among them, and on one worker a gateway's fan-out waits behind its heartbeats (measured
    # 2026-12-06: p99 60.5 s on one worker, 45.1 s on two, the floor 26.7 s to 41.9 s).
    "million_fanout": ("a million: 56 gateways behind NATS, two workers each, 1,000,000 connections, a broadcast "
                       "(/push/all) of one 100-byte item every 20 s, 1 s window, 60 s, a PING from each every 40 s, "
                       "heartbeat timeout 300 s",
                       ["fanout", "--nats", "56", "--conns", "1000000", "--all", "--rate", "0.05", "--items", "1",
                        "--item-bytes", "100", "--secs", "60", "--ping-secs", "40", "--merge-window", "1s",
                        "--server-arg=--heartbeat-timeout", "--server-arg=300s",
                        "--server-arg=--worker-threads", "--server-arg=2"]),
    # permessage-deflate: realistic items (chat messages of about 150 bytes from a seeded generator: padding would
    # compress to nothing), each load plain and compressed (`--compress`: every connection negotiates it).
    "seed_chat": ("the seed's rate with chat items: 10,000 connections, 1,000 pushes/s of one chat message (about "
                  "150 bytes), 1 s window, at most 100 items a frame, 30 s",
                  ["fanout", "--conns", "10000", "--rate", "1000", "--items", "1", "--items-kind", "chat",
                   "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100"]),
    "seed_chat_deflate": ("compressed: the seed's rate with chat items, every connection negotiating "
                          "permessage-deflate",
                          ["fanout", "--conns", "10000", "--rate", "1000", "--items", "1", "--items-kind", "chat",
                           "--secs", "30", "--merge-window", "1s", "--merge-max-items", "100", "--compress"]),
    "window_10ms_chat": ("10 ms window with chat items: 10,000 connections, one room, 10 pushes/s of one chat message "
                         "(about 150 bytes), 30 s",
                         ["fanout", "--conns", "10000", "--rate", "10", "--items", "1", "--items-kind", "chat",
                          "--secs", "30", "--merge-window", "10ms"]),
    "window_10ms_chat_deflate": ("compressed: the 10 ms window with chat items, every connection negotiating "
                                 "permessage-deflate",
                                 ["fanout", "--conns", "10000", "--rate", "10", "--items", "1", "--items-kind",
                                  "chat", "--secs", "30", "--merge-window", "10ms", "--compress"]),
    "idle_deflate": ("compressed: 19,000 idle connections in one room, every one negotiating permessage-deflate (its "
                     "JOIN and PINGs compressed)",
                     ["connections", "--conns", "19000", "--secs", "3", "--compress"]),
    "churn": ("churn: 10,000 connections stay in one room while 2,000 connections a second join and leave "
              "(each held 50 ms, dropped with a reset), 10 pushes/s, 10 ms window, 30 s",
              ["churn", "--conns", "10000", "--churn", "2000", "--hold-ms", "50", "--rate", "10", "--secs", "30",
               "--merge-window", "10ms"]),
}

# The floor: the same load against crates/herald-bench/examples/raw_fanout (handshake, then frames written to every
# socket from one thread: whole frames as soon as max-items items wait, the rest once per window; nothing else). A
# scenario named here runs alternately with its floor (herald, floor, herald, ...), so both are measured with this
# client in the same minutes, and its target rows are judged against the floor's figures of the same run.
# herald scenario -> (floor name, window ms, max items per frame, answers PINGs, figures compared)
# The floors of the CPU rows answer every PING with a PONG (`--answer-pings`: one event loop reads the connections),
# as any server of this protocol must, so that herald's cost beyond them is herald's own. Light traffic's floor ticks
# every millisecond (and so burns CPU idling: only its latency is compared) and leaves PINGs unread. Latency is
# compared where a push waits no longer in the floor than in herald: light traffic, the 10 ms window (a push waits
# up to 10 ms for the floor's tick; herald sends a lone push at once) and the seed's rate (both send a frame as soon
# as 100 items wait). Behind the 1 s window's tick a push waits up to a second, so latency is not compared there.
# The million's floors are as many raw_fanout processes as herald has gateways, sharing the port
# (`--processes 56`: the first hands each push and /stats request on to the others), with the same client; their
# memory and CPU are summed over every process, as herald's are over gateways, logic and nats-server.
CPU_FIGURES = ["server_cpu_secs", "items_lost", "pongs_received"]
WIRE_FIGURES = CPU_FIGURES + ["latency_p99_ms", "wire_bytes_per_item"]
MILLION_HELD = ["connect_errors", "closed_early", "connect_secs", "server_pss_per_conn_bytes",
                "server_rss_per_conn_bytes", "server_cpu_held_secs", "server_cpu_per_ping_us"]
MILLION_BROADCAST = ["items_lost", "closed_early", "latency_p50_ms", "latency_p99_ms", "server_cpu_secs",
                     "items_per_frame"]
FLOORS = {
    "window_1s": ("floor_1s", 1000, 100, True, CPU_FIGURES),
    "light": ("floor_light", 1, 100, False, ["latency_p99_ms", "items_lost"]),
    "window_10ms": ("floor_10ms", 10, 100, True, CPU_FIGURES + ["latency_p99_ms"]),
    "seed": ("floor_seed", 1000, 100, True, ["items_per_sec"] + CPU_FIGURES + ["latency_p99_ms"]),
    "million_idle": ("floor_million_idle", 1000, 100, True, MILLION_HELD),
    "million_fanout": ("floor_million_fanout", 1000, 100, True, MILLION_BROADCAST),
    # A compressed scenario's floor is raw_fanout --compress (each frame compressed once, with herald's encoder).
    "seed_chat": ("floor_seed_chat", 1000, 100, True, ["items_per_sec"] + WIRE_FIGURES),
    "seed_chat_deflate": ("floor_seed_chat_deflate", 1000, 100, True, ["items_per_sec"] + WIRE_FIGURES),
    "window_10ms_chat": ("floor_10ms_chat", 10, 100, True, WIRE_FIGURES),
    "window_10ms_chat_deflate": ("floor_10ms_chat_deflate", 10, 100, True, WIRE_FIGURES),
}
# Processes of a floor (1 unless named), as many as the gateways of the herald beside it.
FLOOR_PROCESSES = {"floor_million_idle": 56, "floor_million_fanout": 56}
FLOOR_OF = {floor: scenario for scenario, (floor, *_) in FLOORS.items()}
# Flags of herald's layout that a floor, attached by --ws, does not take.
HERALD_ONLY_FLAGS = ("--merge", "--nats", "--cluster", "--server-arg")


def _taken_by_herald(args, i):
    """Whether args[i] is one of HERALD_ONLY_FLAGS, or the value of one given without `=`."""
    return args[i].startswith(HERALD_ONLY_FLAGS) or (
        i > 0 and args[i - 1].startswith(HERALD_ONLY_FLAGS) and "=" not in args[i - 1])


for _floor, _scenario in FLOOR_OF.items():
    _title, _args = SCENARIOS[_scenario]
    _flags = [a for i, a in enumerate(_args) if not _taken_by_herald(_args, i)]
    _what = "raw floor answering PINGs" if FLOORS[_scenario][3] else "raw floor"
    if _floor in FLOOR_PROCESSES:
        _what += f" ({FLOOR_PROCESSES[_floor]} processes sharing the port)"
    SCENARIOS[_floor] = (f"{_what}: {_title}", _flags)

# Scenarios that take many minutes: run only when named in --only, with one run each.
OPT_IN = {"million_idle", "million_fanout"}

# Memory after a churn storm must come back to within this much of the memory before it.
CHURN_RSS_MARGIN_PCT = 10

# History on, run alternately with the same load with history off (stored as "<name>_off"), as a floor is.
HISTORY_OFF = {"history_10ms": "window_10ms", "history_seed": "seed"}
HISTORY_FIGURES = ["items_lost", "duplicates", "closed_early", "latency_p50_ms", "latency_p99_ms", "server_cpu_secs"]

# Compressed scenario -> the same load plain. Run alternately (compressed, its floor, plain, its floor, ...): the
# compressed rows are judged against herald plain measured in the same minutes, and the plain scenario is not run
# again on its own in a whole run.
COMPRESSED = {"seed_chat_deflate": "seed_chat", "window_10ms_chat_deflate": "window_10ms_chat",
              "idle_deflate": "idle"}
COMPRESSION_FIGURES = {
    "fanout": ["wire_bytes_per_item", "wire_bytes_per_sec", "server_cpu_secs", "loadgen_cpu_secs", "latency_p50_ms",
               "latency_p99_ms", "items_lost", "compression_negotiated", "compressed_frames",
               "compressed_payloads_inflated"],
    "connections": ["server_rss_per_conn_bytes", "server_cpu_held_secs", "wire_bytes_per_conn", "connect_errors",
                    "closed_early", "compression_negotiated"],
}

# (single node, gRPC cluster, NATS) scenarios shown side by side.
CLUSTER_PAIRS = [("window_10ms", "cluster_10ms", "nats_10ms"), ("seed", "cluster_seed", "nats_seed")]
CLUSTER_FIGURES = ["items_per_sec", "items_lost", "duplicates", "closed_early", "latency_p50_ms", "latency_p99_ms",
                   "server_cpu_secs", "loadgen_cpu_secs"]

# How a target row is judged: an absolute bound, or against the floor's figure measured beside herald in the same run.
# Each takes (herald's value, the floor's value or None) and says whether the row is met.
TARGET_KINDS = {
    # Memory does not drift with the VM: absolute.
    "rss": ("≤ 3 KB", lambda v, f: v <= 3000),
    # Server CPU, and the million broadcast's latency (tens of seconds: 10 ms would say nothing).
    "ratio": ("≤ 1.10 × the floor's", lambda v, f: f is not None and v <= 1.10 * f),
    "latency": ("≤ the floor's + 10 ms, or ≤ 1.10 × the floor's where larger",
                lambda v, f: f is not None and v <= max(f + 10, 1.10 * f)),
    "ping": ("≤ 1.2 × the floor's", lambda v, f: f is not None and v <= 1.2 * f),
    # Every item reached every connection (the losses are checked for every fan-out row below).
    "delivered": ("every item, as the floor", lambda v, f: True),
    # Compressed against the same load plain (AGAINST_PLAIN: herald uncompressed is the reference, not the floor).
    "wire_0.35": ("≤ 0.35 × herald uncompressed", lambda v, f: f is not None and v <= 0.35 * f),
    "wire_0.6": ("≤ 0.6 × herald uncompressed", lambda v, f: f is not None and v <= 0.6 * f),
    "cpu_1.0": ("≤ 1.0 × herald uncompressed", lambda v, f: f is not None and v <= f),
    "cpu_1.1": ("≤ 1.1 × herald uncompressed", lambda v, f: f is not None and v <= 1.1 * f),
    "latency_plain": ("≤ herald uncompressed + 10 ms", lambda v, f: f is not None and v <= f + 10),
    "delivered_plain": ("every item, as uncompressed", lambda v, f: True),
}
AGAINST_PLAIN = {"wire_0.35", "wire_0.6", "cpu_1.0", "cpu_1.1", "latency_plain", "delivered_plain"}

# (scenario, figure, label, go-push, raw ceiling, kind). go-push's and the raw ceiling's figures are the reference
# figures of the issues (an independent client, the same kind of machine, another day): information, not targets.
TARGETS = [
    ("idle", "server_rss_per_conn_bytes", "server RSS per idle connection", "44–46 KB", "2.1 KB", "rss"),
    ("idle_auth", "server_rss_per_conn_bytes", "server RSS per idle authenticated connection", "—", "—", "rss"),
    ("window_1s", "server_cpu_secs", "1 s window: server CPU seconds", "5.0 s", "2.0 s", "ratio"),
    ("light", "latency_p99_ms", "light traffic: p99 latency push → client", "~1 s", "—", "latency"),
    ("window_10ms", "server_cpu_secs", "10 ms window: server CPU seconds", "33.8–35.5 s", "14.8–16.6 s", "ratio"),
    ("window_10ms", "latency_p99_ms", "10 ms window: p99 latency", "264–493 ms", "73–92 ms", "latency"),
    ("seed", "items_per_sec", "seed rate: items delivered per second", "4.1–5.3 M/s, 30–45% lost", "9.9 M/s",
     "delivered"),
    ("seed", "latency_p99_ms", "seed rate: p99 latency", "29–32 s", "0.32–0.39 s", "latency"),
    ("seed", "server_cpu_secs", "seed rate: server CPU seconds", "70 s", "19–21 s", "ratio"),
    ("seed_chat_deflate", "wire_bytes_per_item", "seed rate, chat, compressed: bytes on the wire per item", "—", "—",
     "wire_0.35"),
    ("seed_chat_deflate", "server_cpu_secs", "seed rate, chat, compressed: server CPU seconds", "—", "—", "cpu_1.0"),
    ("seed_chat_deflate", "latency_p99_ms", "seed rate, chat, compressed: p99 latency", "—", "—", "latency_plain"),
    ("seed_chat_deflate", "items_per_sec", "seed rate, chat, compressed: items delivered per second", "—", "—",
     "delivered_plain"),
    ("window_10ms_chat_deflate", "wire_bytes_per_item", "10 ms window, chat, compressed: bytes on the wire per item",
     "—", "—", "wire_0.6"),
    ("window_10ms_chat_deflate", "server_cpu_secs", "10 ms window, chat, compressed: server CPU seconds", "—", "—",
     "cpu_1.1"),
    ("idle_deflate", "server_rss_per_conn_bytes", "server RSS per idle compressing connection", "—", "—", "rss"),
    ("million_idle", "server_pss_per_conn_bytes",
     "a million held: memory per connection, all processes together (PSS)", "—", "—", "rss"),
    ("million_idle", "server_cpu_per_ping_us", "a million held: server CPU per PING", "—", "—", "ping"),
    ("million_fanout", "latency_p99_ms", "a million, broadcast: p99 latency", "—", "—", "ratio"),
    ("million_fanout", "server_cpu_secs", "a million, broadcast: server CPU seconds", "—", "—", "ratio"),
]


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(next(l.split()[1] for l in f if l.startswith("MemTotal")))
    return f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB, Linux {platform.release()}"


def commit():
    try:
        return subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# A fan-out to a million sends a million segments through the loopback within seconds; each waits in a CPU's input
# backlog until the kernel's softirq takes it, and past net.core.netdev_max_backlog (1000 by default) it is dropped
# and waits for TCP's retransmission timer: measured 2026-12-06, 2.1 million dropped over four broadcast runs,
# their p99 latency set by retransmission timeouts, not by the servers. The million scenarios refuse to run below this.
MILLION_BACKLOG = 100_000


def check_backlog(names):
    if not OPT_IN.intersection(names):
        return
    with open("/proc/sys/net/core/netdev_max_backlog") as f:
        backlog = int(f.read())
    if backlog < MILLION_BACKLOG:
        sys.exit(f"net.core.netdev_max_backlog is {backlog}: a fan-out to a million overflows it on loopback and "
                 f"measures TCP retransmissions; run `sysctl -w net.core.netdev_max_backlog={MILLION_BACKLOG}` "
                 "(as root) first")


def run(args):
    out = subprocess.run([HERALD_BENCH, *args, "--json"], check=True, capture_output=True, text=True,
                         timeout=1800).stdout
    return json.loads(out.strip().splitlines()[-1])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def floor_args(name):
    """raw_fanout's arguments after its two addresses, for a floor scenario."""
    _, window_ms, max_items, answers_pings, _ = FLOORS[FLOOR_OF[name]]
    processes = FLOOR_PROCESSES.get(name, 1)
    compress = "--compress" in SCENARIOS[FLOOR_OF[name]][1]
    return ([str(window_ms), str(max_items)] + (["--answer-pings"] if answers_pings else [])
            + (["--compress"] if compress else [])
            + (["--processes", str(processes)] if processes > 1 else []))


def run_floor(name):
    """Runs a floor scenario: raw_fanout on free ports, `herald-bench` attached to it once it answers /stats (its
    other processes are up by then)."""
    ws, api = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    raw = subprocess.Popen([RAW_FANOUT, ws, api, *floor_args(name)])
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{api}/stats", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or raw.poll() is not None:
                    raise
                time.sleep(0.1)
        return run(SCENARIOS[name][1] + ["--ws", ws, "--api", api, "--server-pid", str(raw.pid)])
    finally:
        raw.kill()
        raw.wait()


# Figures where the worst run counts, not the median: anything lost, refused or broken.
WORST_OF_RUNS = {"items_lost", "duplicates", "sequence_gaps", "connect_errors", "closed_early", "pushes_refused",
                 "churn_errors"}


def combine(runs):
    """One result from several runs of a scenario: each figure's median (the worst run's for WORST_OF_RUNS), and
    each numeric figure's range under `_range`. How connections were closed early is the worst run's."""
    if len(runs) == 1:
        return runs[0]
    result, ranges = {}, {}
    worst = max(runs, key=lambda r: r.get("closed_early") or 0)
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if key == "closed_early_by":
            result[key] = worst.get(key)
        elif not numeric:
            result[key] = first
        elif key in WORST_OF_RUNS:
            result[key] = max(values)
        else:
            median = statistics.median(values)
            result[key] = int(median) if all(isinstance(v, int) for v in values) else median
            ranges[key] = [min(values), max(values)]
    result["_runs"] = len(runs)
    result["_range"] = ranges
    return result


CRITERION = ["cargo", "bench", "-p", "herald-hub", "-p", "herald-protocol", "--bench", "fanout", "--bench", "encode",
             "--", "--warm-up-time", "1", "--measurement-time", "3"]
UNITS = {"ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def criterion():
    """Runs the criterion benches; returns [(name, ns per iteration, elements per iteration)]."""
    out = subprocess.run(CRITERION, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows, name = [], None
    for line in out.splitlines():
        match = re.match(r"^(\S.*?)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if match or (line and not line.startswith(" ") and "time:" not in line):
            name = (match.group(1) if match else line).strip()
        match = re.search(r"time:\s+\[\S+ \S+ ([0-9.]+) (ns|µs|us|ms|s) ", line)
        if match and name and not line.strip().startswith("change:"):
            ns = float(match.group(1)) * UNITS[match.group(2)]
            elements = int(re.match(r"\D*(\d+)", name.split("/")[-1]).group(1))
            rows.append((name, ns, elements))
    return rows


def fmt(value):
    if isinstance(value, dict) and all(isinstance(count, int) for count in value.values()):  # counts by kind
        return ", ".join(f"{kind}: {count:,}" for kind, count in value.items()) or "none"
    if isinstance(value, (dict, list)):  # the attack's tally: shown as its own table
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def shown(figure, value):
    if figure.endswith("_per_conn_bytes"):
        return f"{value / 1000:.2f} KB"
    if figure.endswith("_us"):
        return f"{value:,.1f} µs"
    if figure == "items_per_sec":
        return f"{value / 1e6:.2f} M/s"
    if figure.endswith("_ms"):
        return f"{value:,.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if figure.endswith("_secs"):
        return f"{value:.2f} s"
    return fmt(value)


def beside_floor(results, floor, scenario, figures):
    """Table rows: each figure of `scenario` beside the same figure of `floor`, and the difference."""
    rows = []
    for figure in figures:
        low, high = results[floor].get(figure), results[scenario].get(figure)
        if low is None or high is None:
            continue
        diff = high - low
        if figure.endswith("_per_conn_bytes"):
            delta = f"{diff / 1000:+.2f} KB"
        elif isinstance(diff, int):
            delta = f"{diff:+,}"
        elif figure == "items_per_sec":
            delta = f"{diff / 1e6:+.2f} M/s"
        elif figure.endswith("_secs") and low:
            delta = f"{diff:+.2f} s ({diff / low:+.0%})"
        elif figure.endswith("_us") and low:
            delta = f"{diff:+,.1f} µs ({diff / low:+.0%})"
        elif figure.endswith("_ms"):
            delta = f"{diff:+,.1f} ms" if abs(diff) < 1000 else f"{diff / 1000:+.2f} s"
        else:
            delta = f"{diff:+.3f}"
        rows.append(f"| {scenario} | {figure} | {shown(figure, low)} | {shown(figure, high)} | {delta} |")
    return rows


def render(results, benches):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [START, "", f"Rendered {now} on {machine()}, commit `{commit()}`; server and load generator share the",
             "machine. Regenerate with `scripts/bench.py` (`--only NAME` reruns some scenarios and keeps the others'",
             "last results; each run below says when and at which commit it was measured).", "", "## Targets", "",
             "Each row but memory is judged against the raw floor measured in the same run, alternating with herald "
             "(see below): the machine's speed drifts from day to day, the ratio does not. go-push and the raw "
             "ceiling are the issues' reference figures, for information. A fan-out row is met only if nothing was "
             "lost or duplicated and no connection was closed early, in every run.", "",
             "| scenario | go-push | raw ceiling | target | raw floor here | herald | herald ÷ floor | met |",
             "|---|---|---|---|---|---|---|---|"]
    for scenario, figure, label, gopush, raw, kind in TARGETS:
        target, check = TARGET_KINDS[kind]
        floor_name, *_, floor_figures = FLOORS.get(scenario, (None, None, None, None, []))
        floor = results.get(floor_name) or {}
        floor_value = floor.get(figure) if figure in floor_figures else None
        floor_here = "—" if floor_value is None else shown(figure, floor_value)
        if kind in AGAINST_PLAIN:
            floor_value = (results.get(COMPRESSED[scenario]) or {}).get(figure)
            floor_here = "—" if floor_value is None else f"{shown(figure, floor_value)} (herald uncompressed)"
        result = results.get(scenario)
        if result is None or result.get(figure) is None:
            lines.append(f"| {label} | {gopush} | {raw} | {target} | {floor_here} | not run | | |")
            continue
        value = result[figure]
        ok = check(value, floor_value)
        if result.get("scenario") == "fanout" and any(result.get(k, 0) > 0
                                                      for k in ("items_lost", "duplicates", "closed_early")):
            ok = False
        if result.get("scenario") == "connections" and any(result.get(k, 0) > 0
                                                           for k in ("connect_errors", "closed_early")):
            ok = False
        extra = ""
        if figure in result.get("_range", {}):
            low, high = result["_range"][figure]
            extra += f" (runs: {shown(figure, low)} to {shown(figure, high)})"
        if result.get("scenario") == "fanout":
            extra += (f" ({fmt(result['items_lost'])} lost, {fmt(result['duplicates'])} duplicated, "
                      f"{fmt(result['closed_early'])} closed early)")
        if result.get("scenario") == "connections":
            extra += (f" ({fmt(result['connect_errors'])} errors, {fmt(result['closed_early'])} closed early)")
        ratio = f"{value / floor_value:.2f}" if floor_value else "—"
        lines.append(f"| {label} | {gopush} | {raw} | {target} | {floor_here} | {shown(figure, value)}{extra} | "
                     f"{ratio} | {'yes' if ok else '**no**'} |")
    groups = [[name for name in group if name in results] for group in CLUSTER_PAIRS]
    groups = [group for group in groups if len(group) > 1]
    if groups:
        lines += ["", "## Cluster and NATS beside single node", "",
                  "The same load through `herald serve`; through `herald logic` to two `herald gateway`s over gRPC",
                  "(`--cluster 2`: connections split between the gateways); and on NATS (`--nats 2`: a nats-server,",
                  "logic and two gateways sharing the WebSocket port). Server CPU is summed over all those processes.",
                  ""]
        header = "| figure | " + " | ".join(" | ".join(group) for group in groups) + " |"
        lines += [header, "|---|" + "".join("---|" * len(group) for group in groups)]
        for figure in CLUSTER_FIGURES:
            cells = [shown(figure, results[name].get(figure)) for group in groups for name in group]
            lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    floors = [(floor, scenario) for scenario, (floor, *_) in FLOORS.items()
              if floor in results and scenario in results]
    if floors:
        lines += ["", "## herald beside the raw floor", "",
                  "The raw floor is `crates/herald-bench/examples/raw_fanout`: it completes the handshake and writes",
                  "what was pushed to every socket from one thread, in frames of at most 100 items: whole frames as",
                  "soon as 100 items wait, the rest once per window. Beside the 1 s window, the 10 ms window and the",
                  "seed's rate it also answers every PING with a static PONG frame (`--answer-pings`: one event loop",
                  "reads every connection), as any server of this protocol must; beside light traffic it ticks every",
                  "millisecond and leaves PINGs unread. Its runs alternate with herald's (same client, same machine,",
                  "same minutes); the difference is what herald's hub, merging, outbox and protocol cost on top of",
                  "the kernel's share.", "",
                  "| scenario | figure | raw floor | herald | herald − floor |", "|---|---|---|---|---|"]
        for floor, scenario in floors:
            lines += beside_floor(results, floor, scenario, FLOORS[scenario][4])
    compressed = [(plain, on) for on, plain in COMPRESSED.items() if on in results and plain in results]
    if compressed:
        lines += ["", "## Compressed beside plain", "",
                  "The same load with every connection negotiating permessage-deflate (`--compress`) and without, in",
                  "alternating runs, each beside its raw floor (`raw_fanout`, `--compress` for the compressed one:",
                  "each frame compressed once with herald's encoder). Bytes on the wire are what the clients' sockets",
                  "read; the load generator inflates each distinct compressed payload once per worker process and",
                  "counts every copy from it.", ""]
        for plain, on in compressed:
            names = [n for n in (FLOORS.get(plain, [None])[0], plain, FLOORS.get(on, [None])[0], on)
                     if n in results]
            lines += ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for figure in COMPRESSION_FIGURES[results[on].get("scenario", "fanout")]:
                cells = [shown(figure, results[n].get(figure)) if results[n].get(figure) is not None else "—"
                         for n in names]
                lines.append(f"| {figure} | " + " | ".join(cells) + " |")
            lines.append("")
    pairs = [(f"{on}_off", on) for on in HISTORY_OFF if f"{on}_off" in results and on in results]
    if pairs:
        lines += ["", "## History beside none", "",
                  "The same load with `--history-size 100` (every item retained in its room's history in memory, its",
                  "frames carrying offsets) and without, in alternating runs: what history costs on the fan-out path.",
                  "",
                  "| figure | " + " | ".join(f"{off} | {on}" for off, on in pairs) + " |",
                  "|---|" + "---|---|" * len(pairs)]
        for figure in HISTORY_FIGURES:
            cells = [shown(figure, results[name].get(figure)) for pair in pairs for name in pair]
            lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    churn = results.get("churn")
    if churn:
        growth = churn["server_rss_after_vs_before_pct"]
        held = growth is not None and growth <= CHURN_RSS_MARGIN_PCT
        lines += ["", "## Churn", "",
                  f"{fmt(churn['churn_cycles'])} connections joined and left ({fmt(churn['churn_per_sec'])}/s, "
                  f"{fmt(churn['churn_errors'])} errors) while {fmt(churn['connections'])} stayed: they got "
                  f"{fmt(churn['items_received'])} of {fmt(churn['items_expected'])} items "
                  f"({fmt(churn['items_lost'])} lost, {fmt(churn['duplicates'])} duplicated, "
                  f"{fmt(churn['sequence_gaps'])} gaps), p99 {shown('latency_p99_ms', churn['latency_p99_ms'])}. "
                  f"Server RSS {churn['server_rss_before_bytes'] / 1e6:.1f} MB before, "
                  f"{churn['server_rss_peak_bytes'] / 1e6:.1f} MB at the peak, "
                  f"{churn['server_rss_after_bytes'] / 1e6:.1f} MB 3 s after ({growth:+.1f}%): "
                  f"{'within' if held else '**outside**'} the {CHURN_RSS_MARGIN_PCT}% margin."]
    attacked, baseline = results.get("hostile"), results.get("hostile_baseline")
    if attacked and baseline:
        lines += ["", "## Under attack", "",
                  "The same 5,000 clients and pushes, without and with 1,000 hostile connections (`herald-bench "
                  "hostile`, each attacker reconnecting whenever herald closes it). Server CPU and RSS are herald's.",
                  "", "| figure | no attack | under attack |", "|---|---|---|"]
        for figure in ["items_lost", "duplicates", "closed_early", "latency_p50_ms", "latency_p99_ms",
                       "server_cpu_secs", "server_rss_before_bytes", "server_rss_peak_bytes"]:
            lines.append(f"| {figure} | {shown(figure, baseline.get(figure))} | {shown(figure, attacked.get(figure))} |")
        tally = attacked.get("attack") or {}
        lines += ["", "What the attackers went through (sessions opened, sessions herald ended, bytes herald's "
                  "sockets took from them):", "", "| attacker | sessions | cut off | bytes sent |", "|---|---|---|---|"]
        for kind, counts in tally.items():
            lines.append(f"| {kind} | {fmt(counts['sessions'])} | {fmt(counts['cut_off'])} | "
                         f"{fmt(counts['bytes_sent'])} |")
    lines += ["", "## Runs", ""]
    for name, (title, args) in SCENARIOS.items():
        result = results.get(name)
        if result is None:
            continue
        command = ["herald-bench " + " ".join(args)]
        if name in FLOOR_OF:
            command = [f"target/release/examples/raw_fanout WS_ADDR API_ADDR {' '.join(floor_args(name))} &",
                       command[0] + " --ws WS_ADDR --api API_ADDR --server-pid $!"]
        lines += [f"### {title}", "", "```", *command, "```", ""]
        if "_measured" in result:
            lines += [f"Measured {result['_measured']}.", ""]
        if result.get("_runs", 1) > 1:
            lines += [f"Median of {result['_runs']} runs (losses, duplicates and errors: the worst run); the range "
                      "is each figure's lowest and highest run.", ""]
        ranges = result.get("_range", {})
        if ranges:
            lines += ["| figure | value | range |", "|---|---|---|"]
            lines += [f"| {k} | {fmt(v)} | {fmt(ranges[k][0]) + ' – ' + fmt(ranges[k][1]) if k in ranges else ''} |"
                      for k, v in result.items() if k != "scenario" and not k.startswith("_")]
        else:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in result.items() if k != "scenario" and not k.startswith("_")]
        lines.append("")
    if benches:
        lines += ["## Criterion", "", "```", " ".join(CRITERION), "```", "",
                  "`fanout`: one push through the hub to a room whose members only take the frame (a refcount) and",
                  "count it; the hub's own cost, no sockets. `push_frame`: encoding one merged batch (done once per",
                  "frame, whatever the number of recipients).", "",
                  "| bench | time per iteration | per element |", "|---|---|---|"]
        for name, ns, elements in benches:
            lines.append(f"| {name} | {ns / 1000:,.2f} µs | {ns / elements:,.1f} ns |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=[n for n in SCENARIOS if n not in FLOOR_OF],
                        help="run only these scenarios (a scenario with a floor runs it too); the others keep their "
                             "last results from target/bench-results.json, so run the whole script once first on a "
                             "new checkout; " + ", ".join(sorted(OPT_IN)) + " run only when named here (each takes "
                             "minutes, with a million connections)")
    parser.add_argument("--dry-run", action="store_true", help="print instead of rewriting BENCHMARKS.md")
    parser.add_argument("--no-criterion", action="store_true",
                        help="skip the criterion benches (their last results are shown again)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N",
                        help="runs of each scenario that has a target row (default 3; the others run once)")
    parser.add_argument("--reuse", action="store_true",
                        help="render the scenario results of the last run (target/bench-results.json) again")
    opts = parser.parse_args()
    saved = os.path.join(ROOT, "target", "bench-results.json")
    if opts.only and not opts.dry_run and not opts.reuse and not os.path.exists(saved):
        # The block would be rendered from these scenarios alone, and every other section of BENCHMARKS.md lost.
        sys.exit(f"--only needs the results of a whole run ({saved} is missing): run the script once without "
                 "--only, or add --dry-run to print what these scenarios measure")
    if not opts.reuse:
        check_backlog(opts.only or [])
    # herald on its own, as it ships (built beside herald-bench, cargo would unify their dependencies' features).
    subprocess.run(["cargo", "build", "--release", "-p", "herald"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "herald-bench", "--bin", "herald-bench", "--example",
                    "raw_fanout"], cwd=ROOT, check=True)
    if opts.reuse:
        with open(saved) as f:
            results = json.load(f)
    else:
        # With --only, the other scenarios keep their last results.
        results = {}
        if opts.only and os.path.exists(saved):
            with open(saved) as f:
                results = json.load(f)
        targeted = {scenario for scenario, *_ in TARGETS}
        # A plain scenario beside a compressed one runs with it (see COMPRESSED), unless named alone.
        whole = [n for n in SCENARIOS if n not in FLOOR_OF and n not in OPT_IN and n not in COMPRESSED.values()]
        for name in opts.only or whole:
            repeats = max(1, opts.repeats) if name in targeted or name in HISTORY_OFF else 1
            if name in OPT_IN:
                repeats = 1
            floors = [FLOORS[name][0]] if name in FLOORS else []
            beside = [f"{name}_off"] if name in HISTORY_OFF else []
            plain = COMPRESSED.get(name)
            if plain is not None and not (opts.only and plain in opts.only):
                # The same load plain, and its floor: run beside as floors are (by their own names).
                floors += [plain] + ([FLOORS[plain][0]] if plain in FLOORS else [])
            runs = {key: [] for key in [name, *floors, *beside]}
            for attempt in range(repeats):
                for key in runs:
                    print(f"running {key} ({attempt + 1}/{repeats}) ...", file=sys.stderr, flush=True)
                    if key in FLOOR_OF:
                        runs[key].append(run_floor(key))
                    elif key in beside:
                        runs[key].append(run(SCENARIOS[HISTORY_OFF[name]][1]))
                    else:
                        runs[key].append(run(SCENARIOS[key][1]))
            measured = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            for key, key_runs in runs.items():
                if key_runs:
                    results[key] = combine(key_runs)
                    results[key]["_measured"] = f"{measured} at commit `{commit()}`"
        with open(saved, "w") as f:
            json.dump(results, f)
    if opts.no_criterion:
        benches = results.get("_criterion", [])  # the last criterion run's, so the section stays
    else:
        benches = results["_criterion"] = criterion()
        with open(saved, "w") as f:
            json.dump(results, f)
    block = render(results, benches)
    if opts.dry_run:
        print(block)
        return
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else f"# herald benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
