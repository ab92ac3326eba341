//! The `PUSH` frame: a merged batch of items, encoded once into a complete WebSocket frame.
//!
//! `{"type":"PUSH","data":{"items":[item, ...]}}` exactly as go-push sends it, plus `"room"` inside `data` for
//! room pushes and `"user"` for pushes to a user, and, for a room with history, `"offset"` (of the frame's last
//! item) and `"epoch"` after `items` (go-push clients ignore all of them). Items are the JSON texts the business
//! pushed, copied in verbatim: no parse, no re-encode, so unicode, escapes and number formats arrive as sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bus::Target;
use crate::position::Position;
use crate::ws::{self, OpCode};

const PREFIX: &[u8] = br#"{"type":"PUSH","data":{"#;
const ITEMS_OPEN: &[u8] = br#""items":["#;
/// After the items' `]` (and the position, when there is one).
const CLOSE: &[u8] = b"}}";

/// Encodes `items` (each a complete JSON value) pushed to `target` as one complete WebSocket text frame, header
/// included.
pub fn push_frame(target: &Target, items: &[Bytes]) -> Bytes {
    push_frame_at(target, items, None)
}

/// [`push_frame`] for a room with history: `at` is the position of the frame's last item.
pub fn push_frame_at(target: &Target, items: &[Bytes], at: Option<&Position>) -> Bytes {
    let named = match target {
        Target::Room(room) => Some((&br#""room":"#[..], room)),
        Target::User(user) => Some((&br#""user":"#[..], user)),
        Target::All => None,
    };
    let room_json = named.map(|(key, name)| {
        let mut field = key.to_vec();
        serde_json::to_writer(&mut field, &**name).expect("writing a string to a Vec cannot fail");
        field.push(b',');
        field
    });
    let room_len = room_json.as_ref().map_or(0, Vec::len);
    // The items, their commas and the closing `]`.
    let items_len: usize = items.iter().map(Bytes::len).sum::<usize>() + items.len().saturating_sub(1) + 1;
    let position = at.map(Position::json_members);
    // With its leading comma.
    let position_len = position.as_ref().map_or(0, |members| 1 + members.len());
    let payload_len = PREFIX.len() + room_len + ITEMS_OPEN.len() + items_len + position_len + CLOSE.len();

    let mut out = BytesMut::with_capacity(ws::header_len(payload_len) + payload_len);
    ws::encode_header(OpCode::Text, payload_len, &mut out);
    out.put_slice(PREFIX);
    if let Some(field) = &room_json {
        out.put_slice(field);
    }
    out.put_slice(ITEMS_OPEN);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
    out.put_u8(b']');
    if let Some(position) = &position {
        out.put_u8(b',');
        out.put_slice(position.as_bytes());
    }
    out.put_slice(CLOSE);
    debug_assert_eq!(out.len(), ws::header_len(payload_len) + payload_len);
    out.freeze()
}

/// The JSON payload of a frame made by [`push_frame`] (the bytes after the WebSocket header).
pub fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    &frame[header.min(frame.len())..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_items_verbatim_in_push_order() {
        let items = [
            Bytes::from_static(br#"{"n":1.50,"s":"\u00e9"}"#),
            Bytes::from_static(b"2"),
        ];
        let frame = push_frame(&Target::Room("r\"1".into()), &items);
        assert_eq!(frame[0], 0x81);
        let text = std::str::from_utf8(payload(&frame)).unwrap();
        assert_eq!(
            text,
            r#"{"type":"PUSH","data":{"room":"r\"1","items":[{"n":1.50,"s":"\u00e9"},2]}}"#
        );
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(json["data"]["room"], "r\"1");
    }

    #[test]
    fn broadcast_frames_carry_no_room_and_long_frames_get_long_headers() {
        let big = Bytes::from(format!("\"{}\"", "x".repeat(70_000)));
        let frame = push_frame(&Target::All, &[big]);
        assert_eq!(frame[1], 127);
        let json: serde_json::Value = serde_json::from_slice(payload(&frame)).unwrap();
        assert!(json["data"].get("room").is_none());
        assert_eq!(json["data"]["items"][0].as_str().unwrap().len(), 70_000);
    }

    #[test]
    fn frames_of_a_room_with_history_carry_their_position_after_the_items() {
        let at = Position {
            offset: 42,
            epoch: "e\"1".into(),
        };
        let items = [Bytes::from_static(b"1"), Bytes::from_static(b"2")];
        let frame = push_frame_at(&Target::Room("r".into()), &items, Some(&at));
        let text = std::str::from_utf8(payload(&frame)).unwrap();
        assert_eq!(
            text,
            r#"{"type":"PUSH","data":{"room":"r","items":[1,2],"offset":42,"epoch":"e\"1"}}"#
        );
        assert_eq!(
            push_frame_at(&Target::All, &items, None),
            push_frame(&Target::All, &items)
        );
    }

    #[test]
    fn user_frames_name_the_user() {
        let frame = push_frame(&Target::User("u\u{e9}".into()), &[Bytes::from_static(b"1")]);
        let text = std::str::from_utf8(payload(&frame)).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"PUSH\",\"data\":{\"user\":\"u\u{e9}\",\"items\":[1]}}"
        );
    }
}
