// What the client's tests run against: real herald processes (the binary cargo built, or HERALD_BIN), a real
// nats-server with JetStream on a port it picks itself, and a TCP proxy the tests cut and stall. Everything listens
// on 127.0.0.1 and is stopped by `stopAll()`.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** How long one expected event may take before a test fails: a failsafe, never a timing assertion. */
export const FAILSAFE = 20_000;

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const running = [];

/** Stops every process and proxy the tests started. */
export async function stopAll() {
  while (running.length) await running.pop()();
}

function heraldBinary() {
  const binary = process.env.HERALD_BIN ?? join(repo, "target", "debug", "herald");
  if (!existsSync(binary)) throw new Error(`${binary} not found: build herald (cargo build) or set HERALD_BIN`);
  return binary;
}

/** Waits for `predicate()` to hold, polling; fails after FAILSAFE with `what`. */
export async function until(what, predicate) {
  const deadline = Date.now() + FAILSAFE;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `herald <args>` and resolves, once it logs its "serving" line, with the addresses of that line
 * (`{ ws, api, rpc }` as "127.0.0.1:PORT" strings) and `stop()`.
 */
export function herald(args, env = {}) {
  const child = spawn(heraldBinary(), args, {
    env: { ...process.env, HERALD_LOG: "info", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const stop = () => stopChild(child);
  running.push(stop);
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => reject(new Error(`herald ${args[0]} did not serve in time`)), FAILSAFE);
    child.once("exit", (code) => reject(new Error(`herald ${args.join(" ")} exited (${code}) before serving`)));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      if (process.env.HERALD_TEST_LOG) process.stderr.write(chunk);
      if (buffered === null) return;
      buffered += chunk;
      const line = buffered.split("\n").find((l) => l.includes(" serving "));
      if (!line) return;
      buffered = null;
      clearTimeout(timer);
      const addrs = Object.fromEntries(
        line
          .split(/\s+/)
          .map((word) => word.split("="))
          .filter(([key, value]) => key && /^\d+\.\d+\.\d+\.\d+:\d+$/.test(value ?? "")),
      );
      resolve({ ...addrs, stop, child });
    });
  });
}

/** `herald serve` on loopback port 0 with `flags`. */
export function serve(flags = [], env = {}) {
  return herald(["serve", "--ws-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", ...flags], env);
}

function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", resolve);
    child.kill("SIGKILL");
  });
}

/** A nats-server with JetStream in a private store, on a port it picks itself; resolves with `{ url }`. */
export async function natsServer() {
  const dir = mkdtempSync(join(tmpdir(), "herald-client-nats-"));
  const binary = process.env.HERALD_NATS_SERVER ?? (existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server");
  const child = spawn(binary, ["-js", "-sd", join(dir, "store"), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "--ports_file_dir", dir], {
    stdio: "ignore",
  });
  running.push(async () => {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  });
  await new Promise((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", (error) => reject(new Error(`nats-server (scripts/test installs it): ${error.message}`)));
  });
  const portsFile = join(dir, `nats-server_${child.pid}.ports`);
  let url;
  await until("nats-server's ports file", () => {
    try {
      const ports = JSON.parse(readFileSync(portsFile, "utf8"));
      url = ports.nats[0];
      return Boolean(url);
    } catch {
      return false;
    }
  });
  return { url };
}

/**
 * A TCP proxy on a free port to `target` ("host:port", or a function returning one per new connection).
 * `cut()` resets every connection through it; `stall()` keeps them open but forwards nothing more (a dead
 * network path TCP does not notice); `resume()` forwards again.
 */
export async function proxy(target) {
  const pick = typeof target === "function" ? target : () => target;
  const pairs = new Set();
  let stalled = false;
  let connections = 0;
  const server = net.createServer((client) => {
    connections += 1;
    const [host, port] = pick().split(":");
    const upstream = net.connect(Number(port), host);
    const pair = { client, upstream };
    pairs.add(pair);
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (!stalled) to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const close = () =>
    new Promise((resolve) => {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      server.close(() => resolve());
    });
  running.push(close);
  return {
    addr: `127.0.0.1:${server.address().port}`,
    get connections() {
      return connections;
    },
    get open() {
      return pairs.size;
    },
    /** Resets every connection through the proxy; returns how many there were. */
    cut() {
      const cut = pairs.size;
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      pairs.clear();
      return cut;
    },
    stall() {
      stalled = true;
    },
    resume() {
      stalled = false;
    },
  };
}

/** POSTs a JSON `body` to `path` of the push API at `api`; resolves with `{ status, body }`. */
export async function post(api, path, body) {
  const response = await fetch(`http://${api}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

/** GETs `path` of the push API at `api` as JSON. */
export async function get(api, path) {
  const response = await fetch(`http://${api}${path}`);
  return response.json();
}

/** Pushes `items` to `room`; throws unless answered 200. */
export async function pushRoom(api, room, items) {
  const answer = await post(api, "/push/room", { room, items });
  if (answer.status !== 200) throw new Error(`push answered ${answer.status}: ${JSON.stringify(answer.body)}`);
  return answer.body;
}

/** An HS256 JWT of `claims` signed with `secret` (node:crypto; herald verifies it with its own code). */
export function sign(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** Unix seconds `seconds` from now. */
export const inSeconds = (seconds) => Math.floor(Date.now() / 1000) + seconds;
