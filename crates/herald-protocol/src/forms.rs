//! Wire forms: the ways a merged batch is put on the wire. A connection states its form once, when it is accepted;
//! the hub builds a batch's frames in a form the first time one of its recipients needs them, and hands every
//! recipient of that form the same bytes.
//!
//! Adding a form is a module with its encoder and one line in the `forms!` list below.

use bytes::Bytes;

use crate::bus::Target;
use crate::deflate::{self, Compression};
use crate::position::Position;
use crate::push::{self, push_frame_at};
use crate::ws::{self, OpCode};

/// Encodes one frame: `items` pushed to a target, with the position of the last one in a room with history, as the
/// complete bytes a connection of the form writes. Forms that compress follow `compression`.
pub type Encoder = fn(&Target, &[Bytes], Option<&Position>, &Compression) -> Encoded;

/// One frame in a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The complete bytes a connection of the form writes.
    pub frame: Bytes,
    /// When the frame's payload was compressed: its length before and after (for the metrics).
    pub deflated: Option<(usize, usize)>,
}

/// Declares [`WireForm`] and the encoder of each form, from one list.
macro_rules! forms {
    ($($(#[$doc:meta])* $form:ident => $encoder:path,)+) => {
        /// How a connection takes its frames.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum WireForm {
            $($(#[$doc])* $form,)+
        }

        impl WireForm {
            /// Every form, each at its index.
            pub const ALL: &[WireForm] = &[$(WireForm::$form,)+];
            const ENCODERS: &[Encoder] = &[$($encoder as Encoder,)+];
        }
    };
}

forms! {
    /// go-push's `PUSH` message in a WebSocket text frame (RFC 6455), header included.
    WebSocket => websocket,
    /// The same message compressed (permessage-deflate, RFC 7692, with no context), for connections that
    /// negotiated it: RSV1 set and the payload deflated, or the plain frame when the payload is shorter than
    /// `compression.min_bytes` or would not shrink.
    Deflate => deflated,
}

fn websocket(target: &Target, items: &[Bytes], at: Option<&Position>, _: &Compression) -> Encoded {
    Encoded {
        frame: push_frame_at(target, items, at),
        deflated: None,
    }
}

fn deflated(target: &Target, items: &[Bytes], at: Option<&Position>, compression: &Compression) -> Encoded {
    let plain = push_frame_at(target, items, at);
    let payload = push::payload(&plain);
    if payload.len() < compression.min_bytes {
        return Encoded {
            frame: plain,
            deflated: None,
        };
    }
    let compressed = deflate::deflate(payload, compression.level);
    if compressed.len() >= payload.len() {
        return Encoded {
            frame: plain,
            deflated: None,
        };
    }
    Encoded {
        frame: ws::compressed_frame(OpCode::Text, &compressed),
        deflated: Some((payload.len(), compressed.len())),
    }
}

/// How many forms there are (the length of per-form arrays).
pub const FORMS: usize = WireForm::ALL.len();

impl WireForm {
    /// The form's place in per-form arrays, below [`FORMS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// One frame in this form (see [`Encoder`]).
    pub fn encode(self, target: &Target, items: &[Bytes], at: Option<&Position>, compression: &Compression) -> Encoded {
        (Self::ENCODERS[self.index()])(target, items, at, compression)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_sits_at_its_index() {
        for (index, form) in WireForm::ALL.iter().enumerate() {
            assert_eq!(form.index(), index);
        }
    }

    #[test]
    fn the_websocket_form_is_the_push_frame() {
        let target = Target::Room("r".into());
        let items = [Bytes::from_static(b"1"), Bytes::from_static(b"2")];
        let at = Position {
            offset: 7,
            epoch: "e".into(),
        };
        let encoded = WireForm::WebSocket.encode(&target, &items, Some(&at), &Compression::default());
        assert_eq!(encoded.frame, push_frame_at(&target, &items, Some(&at)));
        assert_eq!(encoded.deflated, None);
    }

    #[test]
    fn the_deflate_form_is_the_push_frame_compressed_when_it_pays() {
        let target = Target::Room("r".into());
        let items: Vec<Bytes> = (0..20)
            .map(|n| Bytes::from(format!(r#"{{"text":"hello number {n}","user":"someone"}}"#)))
            .collect();
        let plain = push_frame_at(&target, &items, None);
        let compression = Compression::default();
        let encoded = WireForm::Deflate.encode(&target, &items, None, &compression);
        assert_eq!(encoded.frame[0], 0xC1, "FIN, RSV1, text");
        let inflated = deflate::inflate(push::payload(&encoded.frame), 1 << 20).unwrap();
        assert_eq!(inflated, push::payload(&plain));
        let (before, after) = encoded.deflated.unwrap();
        assert_eq!(
            (before, after),
            (push::payload(&plain).len(), push::payload(&encoded.frame).len())
        );
        // Short frames, and frames that would not shrink, go plain.
        let short = WireForm::Deflate.encode(&target, &items[..1], None, &compression);
        assert_eq!(
            (short.frame, short.deflated),
            (push_frame_at(&target, &items[..1], None), None)
        );
        let everything = Compression { level: 1, min_bytes: 0 };
        let tiny = WireForm::Deflate.encode(&Target::All, &[Bytes::from_static(b"1")], None, &everything);
        assert_eq!(tiny.deflated, None, "a payload that would grow goes plain");
    }
}
