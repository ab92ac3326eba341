//! Wire forms: the ways a merged batch is put on the wire. A connection states its form once, when it is accepted;
//! the hub builds a batch's frames in a form the first time one of its recipients needs them, and hands every
//! recipient of that form the same bytes.
//!
//! Adding a form is a module with its encoder and one line in the `forms!` list below.

use bytes::Bytes;

use crate::bus::Target;
use crate::position::Position;

/// Encodes one frame: `items` pushed to a target, with the position of the last one in a room with history, as the
/// complete bytes a connection of the form writes.
pub type Encoder = fn(&Target, &[Bytes], Option<&Position>) -> Bytes;

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
    WebSocket => crate::push::push_frame_at,
}

/// How many forms there are (the length of per-form arrays).
pub const FORMS: usize = WireForm::ALL.len();

impl WireForm {
    /// The form's place in per-form arrays, below [`FORMS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// One frame in this form (see [`Encoder`]).
    pub fn encode(self, target: &Target, items: &[Bytes], at: Option<&Position>) -> Bytes {
        (Self::ENCODERS[self.index()])(target, items, at)
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
        assert_eq!(
            WireForm::WebSocket.encode(&target, &items, Some(&at)),
            crate::push::push_frame_at(&target, &items, Some(&at))
        );
    }
}
