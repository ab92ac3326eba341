//! A batch's frames, held once per wire form: encoded the first time a recipient of that form needs them, then
//! shared by every recipient of the form. A form no recipient uses is never built; a compressed form is compressed
//! once per batch, however many recipients take it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_protocol::bus::Target;
use herald_protocol::deflate::Compression;
use herald_protocol::forms::{FORMS, WireForm};
use herald_protocol::position::Position;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::HubMetrics;

/// What encoding frames takes from the hub: its compression settings, and the counters compression adds to.
pub(crate) struct Encoding {
    compression: Compression,
    compressed_frames: Counter,
    in_bytes: Counter,
    out_bytes: Counter,
}

impl Encoding {
    pub(crate) fn new(compression: Compression, metrics: &HubMetrics) -> Self {
        Self {
            compression,
            compressed_frames: metrics.compressed_frames.clone(),
            in_bytes: metrics.compression_in_bytes.clone(),
            out_bytes: metrics.compression_out_bytes.clone(),
        }
    }
}

/// The offsets a room's frames carry.
#[derive(Clone, Copy)]
pub(crate) enum Offsets<'a> {
    /// None (no history here, or not a room).
    None,
    /// Counted from the first item's position, one by one (history here).
    From(&'a Position),
    /// Each item's own, in this epoch (history elsewhere).
    Each(&'a [u64], &'a Arc<str>),
}

/// The frames of one batch, at most `merge_max_items` items each.
pub(crate) struct Frames {
    encoding: Arc<Encoding>,
    target: Target,
    items: Vec<Bytes>,
    /// Where each frame's items end in `items`, and the position of its last item (in a room with history).
    cuts: Vec<(usize, Option<Position>)>,
    /// Each form's frames, once a recipient of the form asked for them, with their total length.
    built: [OnceLock<(Box<[Bytes]>, usize)>; FORMS],
}

impl Frames {
    /// Cuts `items` pushed to `target` into frames of at most `max_items`; nothing is encoded yet.
    pub(crate) fn new(
        encoding: &Arc<Encoding>,
        target: Target,
        items: Vec<Bytes>,
        max_items: usize,
        offsets: Offsets<'_>,
    ) -> Self {
        let mut cuts = Vec::with_capacity(items.len().div_ceil(max_items));
        let mut end = 0;
        while end < items.len() {
            end = (end + max_items).min(items.len());
            let last = match offsets {
                Offsets::None => None,
                Offsets::From(first) => Some(Position {
                    offset: first.offset + end as u64 - 1,
                    epoch: Arc::clone(&first.epoch),
                }),
                Offsets::Each(each, epoch) => each.get(end - 1).map(|offset| Position {
                    offset: *offset,
                    epoch: Arc::clone(epoch),
                }),
            };
            cuts.push((end, last));
        }
        Self {
            encoding: Arc::clone(encoding),
            target,
            items,
            cuts,
            built: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// How many frames the batch makes.
    pub(crate) fn count(&self) -> usize {
        self.cuts.len()
    }

    /// How many items they carry.
    pub(crate) fn items(&self) -> usize {
        self.items.len()
    }

    /// The frames in `form`, encoded now if no recipient of the form asked before.
    pub(crate) fn of(&self, form: WireForm) -> &[Bytes] {
        &self.built_in(form).0
    }

    /// The bytes of all the frames in `form` (what one recipient of the form is handed).
    pub(crate) fn bytes_in(&self, form: WireForm) -> usize {
        self.built_in(form).1
    }

    fn built_in(&self, form: WireForm) -> &(Box<[Bytes]>, usize) {
        self.built[form.index()].get_or_init(|| {
            let encoding = &*self.encoding;
            let mut start = 0;
            let frames: Box<[Bytes]> = self
                .cuts
                .iter()
                .map(|(end, last)| {
                    let encoded = form.encode(
                        &self.target,
                        &self.items[start..*end],
                        last.as_ref(),
                        &encoding.compression,
                    );
                    if let Some((before, after)) = encoded.deflated {
                        encoding.compressed_frames.inc();
                        encoding.in_bytes.inc_by(before as u64);
                        encoding.out_bytes.inc_by(after as u64);
                    }
                    start = *end;
                    encoded.frame
                })
                .collect();
            let bytes = frames.iter().map(Bytes::len).sum();
            (frames, bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::push::push_frame_at;

    use super::*;

    fn encoding() -> Arc<Encoding> {
        let metrics = HubMetrics::register(&mut prometheus_client::registry::Registry::default());
        Arc::new(Encoding::new(Compression::default(), &metrics))
    }

    fn items(count: usize) -> Vec<Bytes> {
        (1..=count).map(|n| Bytes::from(n.to_string())).collect()
    }

    #[test]
    fn frames_cut_the_batch_and_carry_their_last_items_position() {
        let room = Target::Room("r".into());
        let first = Position {
            offset: 11,
            epoch: "e".into(),
        };
        let frames = Frames::new(&encoding(), room.clone(), items(5), 2, Offsets::From(&first));
        assert_eq!((frames.count(), frames.items()), (3, 5));
        let built = frames.of(WireForm::WebSocket);
        let at = |offset| Position {
            offset,
            epoch: "e".into(),
        };
        assert_eq!(built[0], push_frame_at(&room, &items(2), Some(&at(12))));
        assert_eq!(built[2], push_frame_at(&room, &items(5)[4..], Some(&at(15))));
        assert_eq!(
            frames.bytes_in(WireForm::WebSocket),
            built.iter().map(Bytes::len).sum::<usize>()
        );
    }

    #[test]
    fn a_form_is_built_once_and_then_shared() {
        let frames = Frames::new(&encoding(), Target::All, items(3), 10, Offsets::None);
        let once = frames.of(WireForm::WebSocket)[0].as_ptr();
        assert_eq!(frames.of(WireForm::WebSocket)[0].as_ptr(), once);
    }

    #[test]
    fn stored_offsets_are_each_items_own() {
        let room = Target::Room("r".into());
        let epoch: Arc<str> = "js".into();
        let frames = Frames::new(
            &encoding(),
            room.clone(),
            items(3),
            2,
            Offsets::Each(&[4, 9, 20], &epoch),
        );
        let at = |offset| Position {
            offset,
            epoch: Arc::clone(&epoch),
        };
        let built = frames.of(WireForm::WebSocket);
        assert_eq!(built[0], push_frame_at(&room, &items(2), Some(&at(9))));
        assert_eq!(built[1], push_frame_at(&room, &items(3)[2..], Some(&at(20))));
    }
}
