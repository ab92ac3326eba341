//! Push-API bodies: go-push's form fields or a JSON body, parsed into validated items.
//!
//! - form (`application/x-www-form-urlencoded`, or any body not declared JSON, as go-push's callers send):
//!   `items=<JSON array>` and, for a room push, `room=<name>`; for a push to a user, `user=<id>`.
//! - JSON (`application/json`): `{"items": [...]}` and, for a room push, `"room": "name"`; for a user,
//!   `"user": "id"`.
//!
//! `POST /disconnect/user` takes `user=<id>` or `{"user": "id"}` ([`parse_user`]).
//!
//! Each item is kept as the exact JSON text the caller sent (a slice of one shared buffer, no re-encode).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bus::Target;
use crate::client::valid_room;
use crate::valid_user;

/// Which endpoint a body was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /push/room`: needs a room.
    Room,
    /// `POST /push/all`: takes no room.
    All,
    /// `POST /push/user`: needs a user.
    User,
}

/// A validated push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// Where it goes.
    pub target: Target,
    /// Its items, each one complete JSON value, in push order.
    pub items: Vec<Bytes>,
}

/// A body that could not be taken, naming the field at fault; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault (`body` when the body as a whole is unreadable).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses a push body sent to `endpoint` with the given `Content-Type`.
pub fn parse_push(endpoint: Endpoint, content_type: Option<&str>, body: Bytes) -> Result<PushRequest, FieldError> {
    let Fields { room, user, items } = if is_json(content_type) {
        parse_json(&body)?
    } else {
        parse_form(&body)?
    };
    let not_taken = |field: &str| field_error(field, "not taken by this endpoint");
    let target = match endpoint {
        Endpoint::All if room.is_some() => return Err(not_taken("room")),
        Endpoint::All | Endpoint::Room if user.is_some() => return Err(not_taken("user")),
        Endpoint::User if room.is_some() => return Err(not_taken("room")),
        Endpoint::All => Target::All,
        Endpoint::Room => Target::Room(checked_room(room)?),
        Endpoint::User => Target::User(checked_user(user)?),
    };
    let items = items.ok_or_else(|| field_error("items", "required"))?;
    if items.is_empty() {
        return Err(field_error("items", "must hold at least one item"));
    }
    Ok(PushRequest { target, items })
}

/// Parses a `POST /disconnect/user` body: the user whose connections are closed.
pub fn parse_user(content_type: Option<&str>, body: Bytes) -> Result<Arc<str>, FieldError> {
    let fields = if is_json(content_type) {
        parse_json(&body)?
    } else {
        parse_form(&body)?
    };
    if fields.room.is_some() {
        return Err(field_error("room", "not taken by this endpoint"));
    }
    if fields.items.is_some() {
        return Err(field_error("items", "not taken by this endpoint"));
    }
    checked_user(fields.user)
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn checked_room(room: Option<String>) -> Result<Arc<str>, FieldError> {
    match room {
        None => Err(field_error("room", "required")),
        Some(room) if !valid_room(&room) => Err(field_error("room", "must be 1 to 256 bytes")),
        Some(room) => Ok(Arc::from(room)),
    }
}

fn checked_user(user: Option<String>) -> Result<Arc<str>, FieldError> {
    match user {
        None => Err(field_error("user", "required")),
        Some(user) if !valid_user(&user) => Err(field_error("user", "must be 1 to 256 bytes")),
        Some(user) => Ok(Arc::from(user)),
    }
}

/// The fields a body may carry, before the endpoint says which it needs.
struct Fields {
    room: Option<String>,
    user: Option<String>,
    items: Option<Vec<Bytes>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody<'a> {
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

fn parse_json(body: &Bytes) -> Result<Fields, FieldError> {
    let parsed: JsonBody<'_> = serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        // serde names the field in its message ("missing field `items`", "unknown field `x`"); pass it on.
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| !e.is_syntax() && !e.is_eof())
            .unwrap_or("body");
        field_error(field, text.clone())
    })?;
    let items = parsed
        .items
        .map(|items| items.iter().map(|raw| body.slice_ref(raw.get().as_bytes())).collect());
    Ok(Fields {
        room: parsed.room.map(Cow::into_owned),
        user: parsed.user.map(Cow::into_owned),
        items,
    })
}

fn parse_form(body: &Bytes) -> Result<Fields, FieldError> {
    let mut room = None;
    let mut user = None;
    let mut items = None;
    for (key, value) in form_urlencoded::parse(body) {
        let slot = match &*key {
            "room" => &mut room,
            "user" => &mut user,
            "items" => &mut items,
            other => return Err(field_error(other, "unknown field")),
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(field_error(key, "given more than once"));
        }
    }
    let items = match items {
        None => None,
        Some(items) => {
            let items = Bytes::from(items);
            let raws: Vec<&RawValue> = serde_json::from_slice(&items)
                .map_err(|e| field_error("items", format!("must be a JSON array: {e}")))?;
            Some(raws.iter().map(|raw| items.slice_ref(raw.get().as_bytes())).collect())
        }
    };
    Ok(Fields { room, user, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(req: &PushRequest) -> Vec<&[u8]> {
        req.items.iter().map(|b| &b[..]).collect()
    }

    #[test]
    fn takes_go_push_form_bodies() {
        let body = Bytes::from("room=lobby&items=%5B%7B%22a%22%3A1%7D%2C%20%22%5Cu00e9%22%5D");
        let req = parse_push(Endpoint::Room, Some("application/x-www-form-urlencoded"), body).unwrap();
        assert_eq!(req.target, Target::Room("lobby".into()));
        assert_eq!(items(&req), [&br#"{"a":1}"#[..], br#""\u00e9""#]);
        let all = parse_push(Endpoint::All, None, Bytes::from("items=[1,2.50]")).unwrap();
        assert_eq!(all.target, Target::All);
        assert_eq!(items(&all), [&b"1"[..], b"2.50"]);
    }

    #[test]
    fn takes_json_bodies_keeping_item_text() {
        let body = Bytes::from(r#"{"room":"r","items":[{"x": [1, 2]}, "é", 1e3]}"#);
        let req = parse_push(Endpoint::Room, Some("application/json; charset=utf-8"), body).unwrap();
        assert_eq!(items(&req), [&br#"{"x": [1, 2]}"#[..], "\"é\"".as_bytes(), b"1e3"]);
    }

    #[test]
    fn takes_pushes_to_a_user_and_disconnects() {
        let req = parse_push(Endpoint::User, None, Bytes::from("user=u%201&items=[1]")).unwrap();
        assert_eq!(req.target, Target::User("u 1".into()));
        let json = Bytes::from(r#"{"user":"u","items":[1]}"#);
        let req = parse_push(Endpoint::User, Some("application/json"), json).unwrap();
        assert_eq!(req.target, Target::User("u".into()));
        for (body, field) in [
            ("items=[1]", "user"),
            ("user=&items=[1]", "user"),
            ("user=u&room=r&items=[1]", "room"),
        ] {
            assert_eq!(
                parse_push(Endpoint::User, None, Bytes::from(body)).unwrap_err().field,
                field
            );
        }
        assert_eq!(
            parse_push(Endpoint::Room, None, Bytes::from("room=r&user=u&items=[1]"))
                .unwrap_err()
                .field,
            "user"
        );
        assert_eq!(&*parse_user(None, Bytes::from("user=u")).unwrap(), "u");
        assert_eq!(
            &*parse_user(Some("application/json"), Bytes::from(r#"{"user":"v"}"#)).unwrap(),
            "v"
        );
        assert_eq!(parse_user(None, Bytes::from("")).unwrap_err().field, "user");
        assert_eq!(
            parse_user(None, Bytes::from("user=u&items=[1]")).unwrap_err().field,
            "items"
        );
    }

    #[test]
    fn names_the_field_at_fault() {
        let cases: [(Endpoint, Option<&str>, &str, &str); 11] = [
            (Endpoint::Room, None, "items=[1]", "room"),
            (Endpoint::All, None, "room=a&items=[1]", "room"),
            (Endpoint::Room, None, "room=&items=[1]", "room"),
            (Endpoint::Room, None, "room=a", "items"),
            (Endpoint::Room, None, "room=a&items={}", "items"),
            (Endpoint::Room, None, "room=a&items=[]", "items"),
            (Endpoint::Room, None, "room=a&items=[1]&items=[2]", "items"),
            (Endpoint::Room, None, "room=a&items=[1]&colour=red", "colour"),
            (Endpoint::All, Some("application/json"), r#"{"items":[1"#, "body"),
            (Endpoint::Room, Some("application/json"), r#"{"room":"a"}"#, "items"),
            (
                Endpoint::All,
                Some("application/json"),
                r#"{"items":[1],"extra":2}"#,
                "extra",
            ),
        ];
        for (endpoint, ct, body, field) in cases {
            let err = parse_push(endpoint, ct, Bytes::from(body)).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
        let long_room = format!("room={}&items=[1]", "a".repeat(257));
        assert_eq!(
            parse_push(Endpoint::Room, None, Bytes::from(long_room))
                .unwrap_err()
                .field,
            "room"
        );
    }
}
