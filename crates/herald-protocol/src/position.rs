//! Where a room with history stands: the offset of an item and the epoch the offsets belong to, as PUSH frames,
//! JOIN acknowledgements and a resuming client's `since` carry them.
//!
//! Offsets increase strictly within one epoch; a new epoch means the offsets started over (an in-memory history
//! restarted or was forgotten, a new stream), so an offset of another epoch says nothing about this one.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::ws::{self, OpCode};

/// A position in a room's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The offset of an item (0: before the first item of the epoch).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: Arc<str>,
}

impl Position {
    /// The position as PUSH frames and JOIN acknowledgements carry it: the JSON members `"offset":O,"epoch":"E"`.
    pub(crate) fn json_members(&self) -> String {
        let epoch = serde_json::to_string(&*self.epoch).expect("a string serializes");
        format!(r#""offset":{},"epoch":{epoch}"#, self.offset)
    }
}

/// How a JOIN of a room with history was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// Every item above this offset reaches the connection live; none at or below it does, except what was
    /// replayed.
    pub position: Position,
    /// `None` for a JOIN without `since`; `Some(true)` when every item above `since` was replayed before the live
    /// ones, `Some(false)` when that was impossible (another epoch, or items already gone) and nothing was.
    pub recovered: Option<bool>,
}

/// The `ACK` of a JOIN of a room with history: `{"type":"ACK","id":..,"data":{"offset":O,"epoch":"E"}}`, with
/// `"recovered"` when the JOIN asked to resume.
pub fn join_ack(id: &RawValue, joined: &JoinAnswer) -> Bytes {
    let recovered = match joined.recovered {
        None => "",
        Some(true) => r#","recovered":true"#,
        Some(false) => r#","recovered":false"#,
    };
    let json = format!(
        r#"{{"type":"ACK","id":{},"data":{{{}{recovered}}}}}"#,
        id.get(),
        joined.position.json_members(),
    );
    ws::frame(OpCode::Text, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_ack_says_where_the_room_stands_and_whether_it_resumed() {
        let id: &RawValue = serde_json::from_str("7").unwrap();
        let position = Position {
            offset: 9,
            epoch: "ab-1".into(),
        };
        let plain = join_ack(
            id,
            &JoinAnswer {
                position: position.clone(),
                recovered: None,
            },
        );
        assert_eq!(
            &plain[2..],
            br#"{"type":"ACK","id":7,"data":{"offset":9,"epoch":"ab-1"}}"#
        );
        let resumed = join_ack(
            id,
            &JoinAnswer {
                position,
                recovered: Some(false),
            },
        );
        let json: serde_json::Value = serde_json::from_slice(&resumed[2..]).unwrap();
        assert_eq!(json["data"]["recovered"], false);
    }
}
