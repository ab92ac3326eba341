//! herald's wire formats, with no I/O and no runtime: everything here is a pure function of bytes, so it is easy
//! to test and to fuzz.
//!
//! # Layout
//! - [`ws`]: WebSocket frames (RFC 6455) as a server sees them: the header decoder, the message assembler that
//!   joins fragments and checks UTF-8, and the encoder for the unmasked frames a server sends.
//! - [`client`]: the go-push client protocol (`PING`, `JOIN`, `LEAVE`, optional `"id"` acks) and its replies.
//! - [`position`]: offsets and epochs of rooms with history, their JSON form (a PUSH frame's too), and the JOIN
//!   acknowledgement that carries them.
//! - [`push`]: the `PUSH` frame a merged batch of items becomes, encoded once for all recipients.
//! - [`deflate`], [`deflate_offer`]: permessage-deflate (RFC 7692): compressing and inflating one message with no
//!   context, and negotiating the extension at the handshake.
//! - [`forms`]: the wire forms a batch goes out in (the WebSocket `PUSH` frame first), each with its encoder.
//! - [`api`]: the push-API bodies (go-push's form fields, or JSON) parsed into validated items.
//! - [`bus`]: the contract between the push API and whatever delivers pushes (the hub, the cluster, NATS).
//! - [`presence`]: who is in a room, a user's connections, the server's disconnect: queries every gateway answers.
//! - [`token`]: the claims of herald's connection and room tokens (JWT), as the gateway reads them.
//! - [`stats`]: the documents operators and tools read: `/stats` of every mode, a gateway's announcement.
//! - [`counts`]: closes, drops and history as a process that holds connections counts them, typed so gateways can
//!   report them and logic add them up.
//! - [`dashboard`]: the sample the dashboard page reads every second (`GET /dashboard/data`).

pub mod api;
pub mod bus;
pub mod client;
pub mod counts;
pub mod dashboard;
pub mod deflate;
pub mod deflate_offer;
pub mod forms;
pub mod position;
pub mod presence;
pub mod push;
pub mod stats;
pub mod token;
pub mod ws;

/// Longest room name accepted, in bytes, from clients and from the push API alike.
pub const MAX_ROOM_BYTES: usize = 256;

/// Longest user id (a token's `sub`) accepted, in bytes, from tokens and from the push API alike.
pub const MAX_USER_BYTES: usize = 256;

/// Checks a user id from a token or the push API.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_BYTES
}
