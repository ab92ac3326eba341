// herald-client: the browser and Node.js client of herald's WebSocket protocol (docs/protocol.md).
//
// One `Herald` keeps one WebSocket: it joins rooms and hands their items to the application in order, answers the
// server's heartbeat, reconnects with backoff after a cut, rejoins every room from the last position it saw (so
// that, with history on, nothing is missed and nothing repeats), and refreshes its token before it expires.
// No dependencies: where the platform has no WebSocket (Node.js before 22), pass one (`ws`) as `WebSocket`.
//
// The same file is the package's entry point and what herald serves at `/herald-client.js` for its demo page.

/** Defaults of every option; the README of the package says what each does. */
export const DEFAULTS = Object.freeze({
  token: undefined,
  WebSocket: undefined,
  pingInterval: 25_000,
  pongTimeout: 10_000,
  minReconnectDelay: 500,
  maxReconnectDelay: 20_000,
  refreshBefore: 30_000,
  connectTimeout: 10_000,
  reconnectAfterDisconnect: false,
});

/** Close codes after which the client does not reconnect by itself (docs/protocol.md, "Close codes"). */
const DISCONNECTED_BY_SERVER = 4004;
const TOKEN_EXPIRED = 4003;
/** The code the client reports for a connection it gave up on itself (no PONG, no open in time): "abnormal". */
const ABNORMAL = 1006;

/** A JOIN, LEAVE or REFRESH the server refused: `code` is herald's error code (`forbidden`, `invalid_token`, ...). */
export class HeraldError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.name = "HeraldError";
    this.code = code;
    this.reason = reason;
  }
}

/** Unix seconds of a JWT's `exp`, or undefined when it has none (or is not a JWT). The signature is the server's. */
export function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const text = typeof atob === "function" ? atob(payload) : Buffer.from(payload, "base64").toString("binary");
    const exp = JSON.parse(text).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** A delay before reconnect attempt `attempt` (0, 1, ...): exponential with full jitter. */
export function backoff(attempt, min, max) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.random() * ceiling;
}

export class Herald {
  /**
   * @param {string} url the server's WebSocket address, e.g. `ws://host:7777/connect`
   * @param {object} [options] see DEFAULTS and the README
   */
  constructor(url, options = {}) {
    for (const key of Object.keys(options)) {
      if (!(key in DEFAULTS)) throw new TypeError(`herald-client: unknown option ${key}`);
    }
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("herald-client: this platform has no WebSocket; pass one as the WebSocket option (e.g. ws)");
    }
    /** `disconnected`, `connecting`, `connected`, or `closed` (by the application, or for good by the server). */
    this.state = "disconnected";
    this.handlers = new Map();
    /** Rooms joined by the application, by name: `{ onItems, token, position, promise callbacks, ... }`. */
    this.rooms = new Map();
    this.socket = null;
    this.attempt = 0;
    this.pending = new Map();
    this.nextId = 1;
    this.token = undefined;
    /** How long before the token's `exp` it is renewed, fixed when the token is fetched. */
    this.tokenLead = 0;
    this.timers = { reconnect: null, ping: null, pong: null, refresh: null, open: null };
    queueMicrotask(() => {
      if (this.state === "disconnected") this.connect();
    });
  }

  /** Registers `handler` for `event`; returns a function that removes it. */
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this.handlers.get(event)?.delete(handler);
  }

  emit(event, ...args) {
    for (const handler of this.handlers.get(event) ?? []) {
      try {
        handler(...args);
      } catch (error) {
        // An application's handler that throws must not break the client's own bookkeeping.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /**
   * Joins `room`; `onItems(items, { room, offset, epoch })` gets every frame of it, in order. Resolves with the
   * server's ACK (`{ room, offset, epoch, recovered }`), rejects with a HeraldError on its ERROR. The room stays
   * joined across reconnects until `leave(room)`.
   * @param {{ token?: string | (() => Promise<string>), since?: { offset: number, epoch: string } }} [options]
   */
  join(room, onItems, options = {}) {
    if (typeof room !== "string" || room === "") return Promise.reject(new TypeError("herald-client: room must be a non-empty string"));
    if (this.rooms.has(room)) {
      const existing = this.rooms.get(room);
      existing.onItems = onItems;
      return existing.joined;
    }
    const entry = { room, onItems, token: options.token, position: options.since ?? null, acked: false, everJoined: false };
    entry.joined = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    this.rooms.set(room, entry);
    if (this.state === "connected") this.sendJoin(entry);
    return entry.joined;
  }

  /** Leaves `room`: no more of its items are handed over. Resolves once the server has acknowledged (or at once, offline). */
  leave(room) {
    const entry = this.rooms.get(room);
    if (!entry) return Promise.resolve();
    this.rooms.delete(room);
    if (!entry.acked) entry.reject(new HeraldError("left", `left ${room} before it was joined`));
    if (this.state !== "connected") return Promise.resolve();
    // A cut before the answer leaves the room all the same: the next connection does not join it again.
    return this.request("LEAVE", { room }).then(
      () => undefined,
      (error) => {
        if (error.code !== "disconnected") throw error;
      },
    );
  }

  /** The position of the last item seen in `room` (`{ offset, epoch }`), or null: what a rejoin resumes from. */
  position(room) {
    return this.rooms.get(room)?.position ?? null;
  }

  /** Connects (again): after `close()`, after the server disconnected the user (4004), or to retry at once. */
  connect() {
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    if (this.state === "connecting" || this.state === "connected") return;
    this.open();
  }

  /** Closes the connection with 1000 and does not reconnect; rooms stay registered for a later `connect()`. */
  close() {
    this.state = "closed";
    clearTimeout(this.timers.reconnect);
    this.drop(1000, "closed by the application", false);
  }

  // ---- the connection ----

  async open() {
    this.state = "connecting";
    this.emit("connecting", { attempt: this.attempt });
    let token;
    try {
      token = await this.currentToken();
    } catch (error) {
      this.emit("error", new HeraldError("token", `the token function failed: ${error?.message ?? error}`));
      this.scheduleReconnect();
      return;
    }
    if (this.state !== "connecting") return; // closed while the token was fetched
    let url = this.url;
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    let socket;
    try {
      socket = new this.WebSocket(url);
    } catch (error) {
      this.emit("error", new HeraldError("url", String(error?.message ?? error)));
      this.state = "closed";
      return;
    }
    this.socket = socket;
    let opened = false;
    this.timers.open = setTimeout(() => this.drop(ABNORMAL, "no connection within connectTimeout", true), this.options.connectTimeout);
    socket.onopen = () => {
      if (socket !== this.socket) return;
      opened = true;
      clearTimeout(this.timers.open);
      this.state = "connected";
      this.emit("connected", {});
      this.scheduleRefresh();
      this.ping();
      for (const entry of this.rooms.values()) this.sendJoin(entry);
    };
    socket.onmessage = (event) => {
      if (socket === this.socket) this.receive(event.data);
    };
    socket.onerror = () => {};
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      // A handshake refused (401, 429, 503) reaches a WebSocket as a close before open: fetch a new token next time.
      if (!opened) this.token = undefined;
      this.drop(event.code || ABNORMAL, event.reason || "", true);
    };
  }

  /** Forgets the current socket (closing it when still open), settles what waited on it, and maybe reconnects. */
  drop(code, reason, reconnect) {
    const socket = this.socket;
    this.socket = null;
    for (const timer of ["ping", "pong", "refresh", "open"]) {
      clearTimeout(this.timers[timer]);
      this.timers[timer] = null;
    }
    for (const { reject } of this.pending.values()) reject(new HeraldError("disconnected", `connection closed (${code})`));
    this.pending.clear();
    for (const entry of this.rooms.values()) entry.acked = false;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try {
        socket.close(code >= 3000 || code === 1000 ? code : 1000, reason.slice(0, 100));
      } catch {
        // Already closing.
      }
    } else if (this.state !== "connecting" && this.state !== "connected") {
      return;
    }
    if (code === TOKEN_EXPIRED) this.token = undefined;
    const goOn = reconnect && this.state !== "closed" && this.shouldReconnect(code);
    this.state = goOn ? "disconnected" : "closed";
    this.emit("disconnected", { code, reason, reconnect: goOn });
    if (goOn) this.scheduleReconnect();
  }

  shouldReconnect(code) {
    if (code === DISCONNECTED_BY_SERVER) return this.options.reconnectAfterDisconnect;
    // An expired token the client cannot renew would only be refused again.
    if (code === TOKEN_EXPIRED) return typeof this.options.token === "function";
    return true;
  }

  scheduleReconnect() {
    this.state = "disconnected";
    const delay = backoff(this.attempt, this.options.minReconnectDelay, this.options.maxReconnectDelay);
    this.attempt += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = null;
      if (this.state === "disconnected") this.open();
    }, delay);
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  /**
   * Sends `type` with a fresh id; resolves with the ACK's data, rejects with a HeraldError on ERROR. `onAck` runs
   * as the ACK is read, before any later frame: a platform may hand over several messages before a promise's
   * continuation runs, and a room's replayed items follow its ACK at once.
   */
  request(type, data, onAck = () => {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onAck });
      this.send({ type, id, data });
    });
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this.emit("error", new HeraldError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    this.alive();
    if (message.type === "PUSH") return this.deliver(message.data ?? {});
    // An answer proves the server takes this connection: the next cut starts its backoff from the bottom again.
    this.attempt = 0;
    const waiter = this.pending.get(message.id);
    if (!waiter) return;
    this.pending.delete(message.id);
    if (message.type === "ERROR") {
      waiter.reject(new HeraldError(message.data?.code ?? "error", message.data?.reason ?? ""));
    } else {
      waiter.onAck(message.data ?? {});
      waiter.resolve(message.data ?? {});
    }
  }

  deliver(data) {
    const meta = { room: data.room, user: data.user, offset: data.offset, epoch: data.epoch };
    const items = data.items ?? [];
    if (data.room === undefined) {
      this.emit("push", items, meta);
      return;
    }
    const entry = this.rooms.get(data.room);
    if (!entry || !entry.acked) return;
    if (typeof data.offset === "number") {
      const seen = entry.position;
      // The server sends nothing twice on one connection; this guards the application all the same.
      if (seen && seen.epoch === data.epoch && data.offset <= seen.offset) return;
      entry.position = { offset: data.offset, epoch: data.epoch };
    }
    this.emit("push", items, meta);
    entry.onItems?.(items, meta);
  }

  // ---- rooms ----

  async sendJoin(entry) {
    const socket = this.socket;
    const data = { room: entry.room };
    if (entry.position) data.since = entry.position;
    const resuming = entry.everJoined || entry.position !== null;
    try {
      if (entry.token) data.token = typeof entry.token === "function" ? await entry.token(entry.room) : entry.token;
    } catch (error) {
      this.emit("error", new HeraldError("token", `the room token function failed: ${error?.message ?? error}`));
      return;
    }
    // Cut while the room token was fetched: the next connection sends its own JOIN.
    if (this.socket !== socket || this.rooms.get(entry.room) !== entry) return;
    let ack;
    try {
      ack = await this.request("JOIN", data, (answer) => {
        if (this.rooms.get(entry.room) !== entry) return;
        entry.acked = true;
        // Not recovered: go on from where the room stands now (the application reloads what came before).
        if (!answer.recovered && typeof answer.offset === "number") entry.position = { offset: answer.offset, epoch: answer.epoch };
      });
    } catch (error) {
      if (error.code === "disconnected") return; // joined again on the next connection
      if (this.rooms.get(entry.room) === entry) this.rooms.delete(entry.room);
      error.room = entry.room;
      // A rejoin refused (a room token that expired, say) has no promise left to reject: the application hears it here.
      if (entry.everJoined) this.emit("error", error);
      entry.reject(error);
      return;
    }
    if (this.rooms.get(entry.room) !== entry) return;
    // With history off the ACK carries no position: a rejoin then cannot have recovered what passed meanwhile.
    const recovered = ack.recovered === true;
    const result = { room: entry.room, offset: ack.offset, epoch: ack.epoch, recovered };
    if (resuming) this.emit("recovery", result);
    entry.everJoined = true;
    entry.resolve(result);
  }

  // ---- heartbeat ----

  /** Sends a PING now and every `pingInterval`; a connection that answers nothing within `pongTimeout` is dropped. */
  ping() {
    clearTimeout(this.timers.ping);
    this.timers.ping = setTimeout(() => this.ping(), this.options.pingInterval);
    if (!this.socket || this.state !== "connected") return;
    this.send({ type: "PING", data: {} });
    if (!this.timers.pong) {
      this.timers.pong = setTimeout(() => this.drop(ABNORMAL, "no answer to PING within pongTimeout", true), this.options.pongTimeout);
    }
  }

  /** Something arrived: the connection is alive. */
  alive() {
    clearTimeout(this.timers.pong);
    this.timers.pong = null;
  }

  // ---- tokens ----

  async currentToken() {
    const source = this.options.token;
    if (typeof source !== "function") return source;
    if (this.token && Date.now() < this.renewAt()) return this.token;
    this.keep(await source());
    return this.token;
  }

  /** Takes a fresh token: it is renewed `refreshBefore` ahead of its `exp`, or halfway through a shorter life. */
  keep(token) {
    this.token = token;
    const exp = tokenExpiry(token);
    this.tokenLead = exp === undefined ? 0 : Math.min(this.options.refreshBefore, (exp * 1000 - Date.now()) / 2);
  }

  /** When the current token is to be renewed (ms since the epoch); Infinity for a token without `exp`. */
  renewAt() {
    const exp = tokenExpiry(this.token);
    return exp === undefined ? Infinity : exp * 1000 - this.tokenLead;
  }

  scheduleRefresh() {
    clearTimeout(this.timers.refresh);
    this.timers.refresh = null;
    if (typeof this.options.token !== "function" || !this.token) return;
    const at = this.renewAt();
    if (at === Infinity) return;
    this.timers.refresh = setTimeout(() => this.refresh(), Math.max(0, at - Date.now()));
  }

  /** Fetches a new token and hands it to the server (REFRESH) before the current one expires. */
  async refresh() {
    this.timers.refresh = null;
    const socket = this.socket;
    let token;
    try {
      token = await this.options.token();
      if (this.socket !== socket || this.state !== "connected") return;
      await this.request("REFRESH", { token });
      this.keep(token);
      this.scheduleRefresh();
    } catch (error) {
      if (this.socket !== socket) return;
      this.emit("error", error instanceof HeraldError ? error : new HeraldError("token", String(error?.message ?? error)));
      // Try again while the current token lasts; past its exp the server closes with 4003 and a reconnect fetches one.
      const exp = tokenExpiry(this.token);
      const remaining = exp === undefined ? 0 : exp * 1000 - Date.now();
      if (remaining > 1000) this.timers.refresh = setTimeout(() => this.refresh(), Math.min(5000, remaining / 2));
    }
  }
}
