// Types of herald-client (herald-client.js): what the package exports, for TypeScript and editors.

/** A room's position: the offset of the last item seen and the room's epoch (docs/protocol.md). */
export interface Position {
  offset: number;
  epoch: string;
}

/** What arrives with each frame of items. */
export interface FrameMeta {
  /** The room, for a room's frame; absent for broadcasts and pushes to a user. */
  room?: string;
  /** The user, for a push to a user (`/push/user`). */
  user?: string;
  /** With history on: the offset of the frame's last item. */
  offset?: number;
  /** With history on: the room's epoch. */
  epoch?: string;
}

/** How a JOIN was answered. */
export interface Joined {
  room: string;
  /** Where the room stood (history on), else undefined. */
  offset?: number;
  epoch?: string;
  /** True when the JOIN resumed from a position and the server replays everything after it. */
  recovered: boolean;
}

/** A function that fetches a fresh token (a JWT signed by the application's backend). */
export type TokenSource = string | (() => Promise<string>);

/** A WebSocket constructor: the platform's, or one such as `ws` where there is none. */
export type WebSocketConstructor = new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
};

export interface Options {
  /** The connection token, or a function called for a fresh one before `exp`, after a 4003 close, and after a refused handshake. Default: none (herald without auth). */
  token?: TokenSource;
  /** The WebSocket constructor. Default: `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Milliseconds between PINGs; keep it below the server's `heartbeat_timeout` (60 s by default). Default 25000. */
  pingInterval?: number;
  /** Milliseconds a PING may go unanswered (nothing received) before the connection is taken for dead. Default 10000. */
  pongTimeout?: number;
  /** The first reconnect's delay ceiling, doubled at each failed attempt (full jitter: a random delay up to it). Default 500. */
  minReconnectDelay?: number;
  /** The most a reconnect waits. Default 20000. */
  maxReconnectDelay?: number;
  /** Milliseconds before a token's `exp` to fetch and send a new one (at most half its life). Default 30000. */
  refreshBefore?: number;
  /** Milliseconds a connection attempt may take to open. Default 10000. */
  connectTimeout?: number;
  /** Reconnect by itself after the server disconnected the user (close 4004). Default false. */
  reconnectAfterDisconnect?: boolean;
}

export interface JoinOptions {
  /** A room token (a JWT with `room`), or a function fetching one; asked again at every rejoin. */
  token?: string | ((room: string) => Promise<string>);
  /** Resume from this position (one saved by the application) instead of from now. */
  since?: Position;
}

export interface Disconnected {
  /** The close code: the server's (4000 slow consumer, 4001 heartbeat, 4003 token expired, 4004 disconnected, ...), 1006 for a cut or a connection the client gave up on. */
  code: number;
  reason: string;
  /** Whether the client reconnects by itself. */
  reconnect: boolean;
}

/** A JOIN, LEAVE or REFRESH the server refused, or a failure the client reports (`token`, `disconnected`, `left`, ...). */
export class HeraldError extends Error {
  constructor(code: string, reason: string);
  readonly code: string;
  readonly reason: string;
  /** The room, when a rejoin was refused. */
  room?: string;
}

export interface Events {
  connecting: (info: { attempt: number }) => void;
  connected: (info: Record<string, never>) => void;
  disconnected: (info: Disconnected) => void;
  /** After every JOIN that resumed from a position; `recovered: false` means items may have been missed: reload the room from the application. */
  recovery: (result: Joined) => void;
  /** Every frame of items: rooms joined, broadcasts, pushes to this user. */
  push: (items: unknown[], meta: FrameMeta) => void;
  /** A failure with no promise to reject: a refused rejoin, a token function that threw, a failed REFRESH. */
  error: (error: HeraldError) => void;
}

export const DEFAULTS: Readonly<Required<Omit<Options, "token" | "WebSocket">> & Pick<Options, "token" | "WebSocket">>;

/** Unix seconds of a JWT's `exp`, or undefined. */
export function tokenExpiry(token: string): number | undefined;

/** A reconnect delay in milliseconds: random up to `min(max, min * 2^attempt)`. */
export function backoff(attempt: number, min: number, max: number): number;

export class Herald {
  constructor(url: string, options?: Options);
  readonly url: string;
  readonly state: "disconnected" | "connecting" | "connected" | "closed";
  on<E extends keyof Events>(event: E, handler: Events[E]): () => void;
  off<E extends keyof Events>(event: E, handler: Events[E]): void;
  join(room: string, onItems: (items: unknown[], meta: FrameMeta) => void, options?: JoinOptions): Promise<Joined>;
  leave(room: string): Promise<void>;
  position(room: string): Position | null;
  connect(): void;
  close(): void;
}
