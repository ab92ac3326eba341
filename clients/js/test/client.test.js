// herald-client against real herald processes over real TCP (see harness.js). Tests assert what arrives, never
// how fast: every wait is a failsafe.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import WebSocket from "ws";

import { Herald, HeraldError } from "../herald-client.js";
import { FAILSAFE, get, herald, inSeconds, natsServer, post, proxy, pushRoom, serve, sign, sleep, stopAll, until } from "./harness.js";

after(stopAll);

/** Options every test's client takes: `ws` as the WebSocket (Node 20 has none), and a short backoff. */
const quick = { WebSocket, minReconnectDelay: 20, maxReconnectDelay: 200 };

/** A client of `ws` ("host:port") with `options`, closed after the test. */
function client(t, ws, options = {}) {
  const herald = new Herald(`ws://${ws}/connect`, { ...quick, ...options });
  t.after(() => herald.close());
  return herald;
}

/** Resolves with the first `event` the client emits (its first argument). */
function next(herald, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event in time`)), FAILSAFE);
    const off = herald.on(event, (value) => {
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Joins `room` and collects what arrives in it: `{ items, frames, ack }`. */
async function collect(herald, room, options) {
  const seen = { items: [], frames: [] };
  seen.ack = await herald.join(room, (items, meta) => {
    seen.items.push(...items);
    seen.frames.push(meta);
  }, options);
  return seen;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * Pushes the numbers `from..=to` to `room` one push each, cutting `path` every `every` items; returns how many
 * cuts found a connection to cut (one may fall while the client is still reconnecting).
 */
async function pushThroughCuts(api, room, from, to, path, every) {
  let cuts = 0;
  for (const n of range(from, to)) {
    await pushRoom(api, room, [n]);
    if (n % every === 0 && path.cut() > 0) cuts += 1;
  }
  return cuts;
}

describe("one herald serve", () => {
  test("items of a room arrive in push order", async (t) => {
    const server = await serve(["--merge-window", "5ms"]);
    const herald = client(t, server.ws);
    const lobby = await collect(herald, "lobby");
    assert.equal(herald.state, "connected");
    for (let batch = 0; batch < 20; batch += 1) await pushRoom(server.api, "lobby", range(batch * 10 + 1, batch * 10 + 10));
    await until("200 items", () => lobby.items.length >= 200);
    assert.deepEqual(lobby.items, range(1, 200));
  });

  test("through cuts of the connection, every item arrives once and in order (history in memory)", async (t) => {
    const server = await serve(["--merge-window", "5ms", "--history-size", "1000"]);
    const path = await proxy(server.ws);
    const herald = client(t, path.addr);
    const recoveries = [];
    herald.on("recovery", (result) => recoveries.push(result));
    const room = await collect(herald, "cut");
    assert.equal(typeof room.ack.offset, "number", "history on: the ACK says where the room stands");
    const cuts = await pushThroughCuts(server.api, "cut", 1, 300, path, 30);
    await until("300 items", () => room.items.length >= 300);
    await sleep(100); // a duplicate would arrive behind the last item
    assert.deepEqual(room.items, range(1, 300));
    assert.ok(cuts >= 3, `only ${cuts} cuts found a connection`);
    assert.ok(path.connections > cuts, `reconnected after each cut (${path.connections} connections)`);
    assert.ok(recoveries.length >= 1 && recoveries.every((r) => r.recovered), JSON.stringify(recoveries));
  });

  test("with history off, a rejoin after a cut says it could not recover", async (t) => {
    const server = await serve(["--merge-window", "0"]);
    const path = await proxy(server.ws);
    const herald = client(t, path.addr);
    await collect(herald, "plain");
    const recovery = next(herald, "recovery");
    path.cut();
    assert.deepEqual(await recovery, { room: "plain", offset: undefined, epoch: undefined, recovered: false });
  });

  test("a dead connection is noticed by its heartbeat, without waiting for TCP", async (t) => {
    const server = await serve(["--merge-window", "0"]);
    const path = await proxy(server.ws);
    const herald = client(t, path.addr, { pingInterval: 100, pongTimeout: 200 });
    const room = await collect(herald, "beat");
    const disconnected = next(herald, "disconnected");
    path.stall();
    const gone = await disconnected;
    assert.equal(gone.code, 1006);
    assert.match(gone.reason, /PING/);
    assert.equal(gone.reconnect, true);
    path.resume();
    await until("the room rejoined", () => herald.state === "connected" && path.open === 1);
    await until("a push reaches the new connection", async () => {
      await pushRoom(server.api, "beat", ["after"]);
      return room.items.includes("after");
    });
  });
});

describe("identity", () => {
  const secret = "client-test-secret-that-is-long-enough";
  const env = { HERALD_AUTH_HMAC_SECRETS: secret };

  test("a token function is called again before exp, so the connection outlives its tokens", async (t) => {
    const server = await serve(["--merge-window", "0"], env);
    let issued = 0;
    const token = async () => {
      issued += 1;
      return sign(secret, { sub: "alice", exp: inSeconds(4), rooms: ["news"] });
    };
    const herald = client(t, server.ws, { token });
    const closes = [];
    herald.on("disconnected", (event) => closes.push(event));
    const news = await collect(herald, "news");
    // Three token lifetimes: without REFRESH herald would have closed the connection with 4003 at the first exp.
    await sleep(9_000);
    assert.deepEqual(closes, []);
    assert.ok(issued >= 3, `the token was fetched ${issued} times`);
    await pushRoom(server.api, "news", ["still here"]);
    await until("the push after the first exp", () => news.items.includes("still here"));
  });

  test("a room the token does not allow rejects the join's promise", async (t) => {
    const server = await serve([], env);
    const herald = client(t, server.ws, { token: sign(secret, { sub: "bob", exp: inSeconds(600), rooms: ["news"] }) });
    await herald.join("news", () => {});
    await assert.rejects(herald.join("secret", () => {}), (error) => error instanceof HeraldError && error.code === "forbidden");
    assert.equal(herald.position("secret"), null, "a refused room is not kept");
  });

  test("after the server disconnects the user (4004) the client stays away until asked", async (t) => {
    const server = await serve([], env);
    const herald = client(t, server.ws, { token: async () => sign(secret, { sub: "carol", exp: inSeconds(600), rooms: ["news"] }) });
    const room = await collect(herald, "news");
    const disconnected = next(herald, "disconnected");
    const answer = await post(server.api, "/disconnect/user", { user: "carol" });
    assert.equal(answer.body.closed, 1);
    assert.deepEqual(await disconnected, { code: 4004, reason: "disconnected by the server", reconnect: false });
    assert.equal(herald.state, "closed");
    await sleep(300);
    assert.equal((await get(server.api, "/users/carol")).connections, 0, "no reconnect by itself");
    const connected = next(herald, "connected");
    herald.connect();
    await connected;
    await until("the room rejoined", async () => (await get(server.api, "/rooms/news")).connections === 1);
    await pushRoom(server.api, "news", ["back"]);
    await until("the push after connect()", () => room.items.includes("back"));
  });
});

describe("a herald cluster on NATS", () => {
  test("cut between gateways while pushes flow, the client ends with every item once, in order", async (t) => {
    const nats = await natsServer();
    const history = ["--bus", nats.url, "--history-size", "1000", "--merge-window", "5ms"];
    const gateways = [];
    for (let i = 0; i < 2; i += 1) gateways.push(await herald(["gateway", "--ws-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0", ...history]));
    const logic = await herald(["logic", "--api-addr", "127.0.0.1:0", "--bus", nats.url, "--history-size", "1000"]);
    await until("both gateways heard from", async () => (await get(logic.api, "/stats")).gateways_live === 2);
    // Each new connection through the proxy goes to the other gateway: every cut resumes on another one.
    let turn = 0;
    const path = await proxy(() => gateways[turn++ % 2].ws);
    const member = client(t, path.addr);
    const recoveries = [];
    member.on("recovery", (result) => recoveries.push(result));
    const room = await collect(member, "orders");
    const cuts = await pushThroughCuts(logic.api, "orders", 1, 200, path, 20);
    await until("200 items", () => room.items.length >= 200);
    await sleep(100);
    assert.deepEqual(room.items, range(1, 200));
    assert.ok(cuts >= 3, `only ${cuts} cuts found a connection`);
    assert.ok(path.connections > cuts, `${path.connections} connections`);
    assert.ok(recoveries.length >= 1 && recoveries.every((r) => r.recovered), JSON.stringify(recoveries));
  });
});
