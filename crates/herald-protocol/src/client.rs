//! The go-push client protocol: what a connection may send, and herald's replies.
//!
//! Messages are JSON text frames `{"type": ..., "data": ...}`. herald adds one compatible extension: a message
//! may carry an `"id"` (any JSON value), and then herald answers it with `ACK` or `ERROR` carrying the same id.
//! Without an id, JOIN and LEAVE get no reply, exactly as in go-push.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::MAX_ROOM_BYTES;

/// Longest `id` a client message may carry, in bytes of its JSON text: every reply echoes it, so it is what a
/// client can make herald hold per request.
pub const MAX_ID_BYTES: usize = 128;
use crate::ws::{self, OpCode, close};

/// A message from a client.
#[derive(Debug)]
pub struct ClientMessage<'a> {
    /// What the client asks for.
    pub command: Command<'a>,
    /// The client's id for this message, echoed verbatim in the reply (herald's extension).
    pub id: Option<&'a RawValue>,
}

/// What a client asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Liveness check; answered with `PONG`.
    Ping,
    /// Join a room, with a room token when the connection's own token does not allow the room.
    Join {
        /// The room.
        room: Cow<'a, str>,
        /// A room token (`data.token`).
        token: Option<Cow<'a, str>>,
        /// Where the client left off (`data.since`), to be given every item after it.
        since: Option<Since<'a>>,
    },
    /// Leave a room.
    Leave(Cow<'a, str>),
    /// Replace the connection's token with a newer one of the same user, before the old one expires.
    Refresh(Cow<'a, str>),
}

/// Why a client message was refused; the connection is closed with [`MessageError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The text is not JSON at all.
    #[error("not JSON")]
    NotJson,
    /// JSON, but not a message herald knows (unknown type, missing or mistyped field).
    #[error("unknown message: {0}")]
    Unknown(String),
    /// An `id` longer than [`MAX_ID_BYTES`].
    #[error("id longer than {MAX_ID_BYTES} bytes")]
    IdTooLong,
}

impl MessageError {
    /// The close code for this error: 1007 for non-JSON, 1008 for unknown structure.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::NotJson => close::INVALID_PAYLOAD,
            Self::Unknown(_) | Self::IdTooLong => close::POLICY_VIOLATION,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomData<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinData<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    #[serde(default, borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    since: Option<Since<'a>>,
}

/// A resuming JOIN's `data.since`: the position of the last item the client has.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since<'a> {
    /// The offset of the client's last item of the room.
    pub offset: u64,
    /// The epoch of that offset.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshData<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
}

/// The PING nearly every client sends, byte for byte: taken without the JSON parser (a PING every 25 s from
/// each connection is most of what a server reads).
const PLAIN_PING: &str = r#"{"type":"PING","data":{}}"#;

/// Parses one client text message.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, MessageError> {
    if text == PLAIN_PING {
        return Ok(ClientMessage {
            command: Command::Ping,
            id: None,
        });
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            MessageError::NotJson
        } else {
            MessageError::Unknown(e.to_string())
        }
    })?;
    if envelope.id.is_some_and(|id| id.get().len() > MAX_ID_BYTES) {
        return Err(MessageError::IdTooLong);
    }
    let command = match &*envelope.kind {
        "PING" => Command::Ping,
        "JOIN" => {
            let data: JoinData<'_> = data(envelope.data, "data.room")?;
            Command::Join {
                room: data.room,
                token: data.token,
                since: data.since,
            }
        }
        "LEAVE" => Command::Leave(data::<RoomData<'_>>(envelope.data, "data.room")?.room),
        "REFRESH" => Command::Refresh(data::<RefreshData<'_>>(envelope.data, "data.token")?.token),
        other => return Err(MessageError::Unknown(format!("type {other:?}"))),
    };
    Ok(ClientMessage {
        command,
        id: envelope.id,
    })
}

/// The message's `data`, as `T`.
fn data<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>, needed: &str) -> Result<T, MessageError> {
    let data = data.ok_or_else(|| MessageError::Unknown(format!("missing {needed}")))?;
    serde_json::from_str(data.get()).map_err(|e| MessageError::Unknown(format!("data: {e}")))
}

/// Why a well-formed request was not carried out; sent back as `ERROR` when the message had an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The room name is empty or longer than [`MAX_ROOM_BYTES`].
    InvalidRoom,
    /// The connection is already in the maximum number of rooms.
    TooManyRooms,
    /// Auth is on and neither the connection's token, nor `public_rooms`, nor a room token allows the room.
    Forbidden,
    /// A REFRESH or room token that does not verify (the token's own reason is counted by the gateway).
    InvalidToken,
    /// A REFRESH on a connection without a token (auth is off).
    NotAuthenticated,
    /// The JOIN would make one room more than the server holds (`max_rooms`).
    TooManyRoomsTotal,
}

impl RequestError {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRoom => "invalid_room",
            Self::TooManyRooms => "too_many_rooms",
            Self::Forbidden => "forbidden",
            Self::InvalidToken => "invalid_token",
            Self::NotAuthenticated => "not_authenticated",
            Self::TooManyRoomsTotal => "too_many_rooms_total",
        }
    }

    /// Short human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidRoom => "room must be 1 to 256 bytes",
            Self::TooManyRooms => "connection is in the maximum number of rooms",
            Self::Forbidden => "the connection's token does not allow this room",
            Self::InvalidToken => "the token does not verify, has expired, or is for another user or room",
            Self::NotAuthenticated => "this server takes no tokens",
            Self::TooManyRoomsTotal => "the server holds the most rooms it takes",
        }
    }
}

/// Checks a room name from a client or the push API.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty() && room.len() <= MAX_ROOM_BYTES
}

/// The `PONG` answer to a PING without an id, framed (a text frame of 25 bytes): one static frame for all.
const PLAIN_PONG_FRAME: &[u8] = b"\x81\x19{\"type\":\"PONG\",\"data\":{}}";

/// The `PONG` reply frame (with the ping's id, when it had one).
pub fn pong(id: Option<&RawValue>) -> Bytes {
    match id {
        None => Bytes::from_static(PLAIN_PONG_FRAME),
        Some(id) => text_frame(format!(r#"{{"type":"PONG","id":{},"data":{{}}}}"#, id.get())),
    }
}

/// The `ACK` reply frame for a request with an id.
pub fn ack(id: &RawValue) -> Bytes {
    text_frame(format!(r#"{{"type":"ACK","id":{}}}"#, id.get()))
}

/// The `ERROR` reply frame for a request with an id.
pub fn error(id: &RawValue, err: RequestError) -> Bytes {
    text_frame(format!(
        r#"{{"type":"ERROR","id":{},"data":{{"code":"{}","reason":"{}"}}}}"#,
        id.get(),
        err.code(),
        err.reason()
    ))
}

fn text_frame(json: String) -> Bytes {
    ws::frame(OpCode::Text, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_push_messages() {
        assert_eq!(parse(r#"{"type":"PING","data":{}}"#).unwrap().command, Command::Ping);
        // The plain PING skips the parser; with spaces, an id or another key it takes the parser's path.
        let (plain, spaced) = (
            parse(PLAIN_PING).unwrap(),
            parse(r#"{"type":"PING", "data":{}}"#).unwrap(),
        );
        assert_eq!(
            (plain.command, plain.id.is_none()),
            (spaced.command, spaced.id.is_none())
        );
        assert_eq!(
            parse(r#"{"type":"PING","data":{},"id":3}"#).unwrap().id.unwrap().get(),
            "3"
        );
        assert_eq!(parse(r#"{"type":"PING"}"#).unwrap().command, Command::Ping);
        let join = parse(r#"{"type":"JOIN","data":{"room":"news\u00e9"}}"#).unwrap();
        assert_eq!(
            join.command,
            Command::Join {
                room: "newsé".into(),
                token: None,
                since: None,
            }
        );
        assert!(join.id.is_none());
        let leave = parse(r#"{"id":7,"type":"LEAVE","data":{"room":"a"}}"#).unwrap();
        assert_eq!(leave.command, Command::Leave("a".into()));
        assert_eq!(leave.id.unwrap().get(), "7");
    }

    #[test]
    fn long_ids_are_refused() {
        let id = format!("\"{}\"", "x".repeat(MAX_ID_BYTES - 2));
        assert!(parse(&format!(r#"{{"type":"PING","id":{id}}}"#)).is_ok());
        let long = format!("\"{}\"", "x".repeat(MAX_ID_BYTES - 1));
        let err = parse(&format!(r#"{{"type":"PING","id":{long}}}"#)).unwrap_err();
        assert_eq!(
            (err.clone(), err.close_code()),
            (MessageError::IdTooLong, close::POLICY_VIOLATION)
        );
    }

    #[test]
    fn parses_herald_extensions() {
        let join = parse(r#"{"type":"JOIN","id":1,"data":{"room":"r","token":"a.b.c"}}"#).unwrap();
        assert_eq!(
            join.command,
            Command::Join {
                room: "r".into(),
                token: Some("a.b.c".into()),
                since: None,
            }
        );
        let resume = parse(r#"{"type":"JOIN","id":1,"data":{"room":"r","since":{"offset":12,"epoch":"e"}}}"#).unwrap();
        let Command::Join { since, .. } = resume.command else {
            panic!("a join")
        };
        assert_eq!(
            since,
            Some(Since {
                offset: 12,
                epoch: "e".into()
            })
        );
        let refresh = parse(r#"{"type":"REFRESH","id":2,"data":{"token":"t"}}"#).unwrap();
        assert_eq!(refresh.command, Command::Refresh("t".into()));
        for bad in [
            r#"{"type":"REFRESH"}"#,
            r#"{"type":"REFRESH","data":{}}"#,
            r#"{"type":"REFRESH","data":{"token":1}}"#,
            r#"{"type":"LEAVE","data":{"room":"r","token":"t"}}"#,
            r#"{"type":"JOIN","data":{"room":"r","since":{"offset":-1,"epoch":"e"}}}"#,
            r#"{"type":"JOIN","data":{"room":"r","since":{"offset":1}}}"#,
            r#"{"type":"JOIN","data":{"room":"r","since":{"offset":1,"epoch":"e","x":1}}}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().close_code(), close::POLICY_VIOLATION, "{bad}");
        }
    }

    #[test]
    fn tells_non_json_from_unknown_structure() {
        assert_eq!(parse("hello").unwrap_err(), MessageError::NotJson);
        assert_eq!(parse(r#"{"type":"PING""#).unwrap_err(), MessageError::NotJson);
        for unknown in [
            r#"{"type":"SHOUT"}"#,
            r#"{"data":{}}"#,
            r#"[1,2]"#,
            r#"{"type":"JOIN"}"#,
            r#"{"type":"JOIN","data":{"room":5}}"#,
            r#"{"type":"JOIN","data":{"rooms":"a"}}"#,
        ] {
            let err = parse(unknown).unwrap_err();
            assert_eq!(err.close_code(), close::POLICY_VIOLATION, "{unknown}: {err}");
        }
    }

    #[test]
    fn replies_echo_the_id_verbatim() {
        let id: &RawValue = serde_json::from_str(r#""a\"b""#).unwrap();
        let ack = ack(id);
        assert_eq!(&ack[2..], br#"{"type":"ACK","id":"a\"b"}"#);
        let err = error(id, RequestError::TooManyRooms);
        let json: serde_json::Value = serde_json::from_slice(&err[2..]).unwrap();
        assert_eq!(json["data"]["code"], "too_many_rooms");
        assert_eq!(json["id"], "a\"b");
        assert_eq!(&pong(None)[2..], br#"{"type":"PONG","data":{}}"#);
        assert_eq!(pong(None), ws::frame(OpCode::Text, br#"{"type":"PONG","data":{}}"#));
    }
}
