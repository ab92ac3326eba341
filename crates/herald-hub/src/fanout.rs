//! Delivery of a batch taken by a worker: each member is handed the batch's frames in its wire form, the same
//! refcounted bytes as every other member of that form.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::bus::Target;
use herald_protocol::forms::WireForm;
use herald_protocol::position::Position;

use crate::frames::{Frames, Offsets};
use crate::hub::Hub;
use crate::recipient::Recipient;

/// Deliveries a worker makes before it lets other tasks run.
const DELIVERIES_PER_YIELD: usize = 4096;
/// Below this many recipients per task, splitting a fan-out costs more than it saves.
pub(crate) const MIN_DELIVERIES_PER_TASK: usize = 256;

/// A batch taken for sending, with who gets it.
pub(crate) struct Flush<R> {
    pub(crate) target: Target,
    pub(crate) items: Vec<Bytes>,
    /// The position of the first item, in a room with history here.
    pub(crate) first: Option<Position>,
    /// Each item's offset, in a room with history kept elsewhere (else empty).
    pub(crate) offsets: Vec<u64>,
    pub(crate) members: Vec<Arc<Vec<Arc<R>>>>,
}

impl<R: Recipient> Hub<R> {
    /// Hands a batch's frames to every member, each in its form.
    ///
    /// A large fan-out is split into contiguous slices of the member lists delivered by parallel tasks (one per
    /// runtime worker thread): each connection sits in exactly one slice, which gets the frames in order, and the
    /// worker waits for every slice before its next flush, so per-connection order holds.
    pub(crate) async fn send(&self, flush: Flush<R>) {
        let Flush {
            target,
            items,
            first,
            offsets,
            members,
        } = flush;
        let recipients: usize = members.iter().map(|m| m.len()).sum();
        if recipients == 0 {
            self.metrics.items_unrouted.inc_by(items.len() as u64);
            return;
        }
        let offsets = match (self.elsewhere.get(), &target, &first) {
            (Some(epoch), Target::Room(_), _) => Offsets::Each(&offsets, epoch),
            (_, _, Some(first)) => Offsets::From(first),
            _ => Offsets::None,
        };
        let frames = Arc::new(Frames::new(
            &self.encoding,
            target,
            items,
            self.config.merge.max_items,
            offsets,
        ));
        // The first member's form is built here, before the slices start: their tasks would otherwise all wait on
        // the one that builds it. (Each other form is built by the first slice that needs it.)
        let first_form = members.iter().find_map(|list| list.first()).map(|member| member.form());
        if let Some(form) = first_form {
            frames.of(form);
        }
        // Counted before any frame is handed over: a client that sees its frame sees it counted. The bytes are
        // counted as each slice is handed its frames, since they depend on the recipients' forms.
        self.metrics.frames.inc_by(frames.count() as u64);
        self.metrics.frame_items.inc_by(frames.items() as u64);
        self.metrics.deliveries.inc_by((frames.count() * recipients) as u64);
        let mut slices = partition(&members, self.fanout_tasks(recipients));
        let own = slices.pop().expect("at least one slice");
        let helpers: Vec<_> = slices
            .into_iter()
            .map(|slice| {
                let frames = Arc::clone(&frames);
                let delivered_bytes = self.metrics.delivered_bytes.clone();
                tokio::spawn(async move {
                    let bytes = deliver(slice, &frames).await;
                    delivered_bytes.inc_by(bytes);
                })
            })
            .collect();
        let bytes = deliver(own, &frames).await;
        self.metrics.delivered_bytes.inc_by(bytes);
        for helper in helpers {
            // A panic in a recipient is a bug; surface it rather than lose track of the slice.
            helper.await.expect("fan-out task panicked");
        }
    }

    /// How many tasks deliver to `recipients` connections.
    pub(crate) fn fanout_tasks(&self, recipients: usize) -> usize {
        (recipients / MIN_DELIVERIES_PER_TASK).clamp(1, self.parallelism)
    }
}

/// A contiguous run of one member list.
type Slice<R> = Vec<(Arc<Vec<Arc<R>>>, std::ops::Range<usize>)>;

/// Cuts the member lists into `parts` slices of about equal size.
pub(crate) fn partition<R>(lists: &[Arc<Vec<Arc<R>>>], parts: usize) -> Vec<Slice<R>> {
    let total: usize = lists.iter().map(|l| l.len()).sum();
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut slices = vec![Vec::new()];
    let mut room_left = per_part;
    for list in lists {
        let mut start = 0;
        while start < list.len() {
            if room_left == 0 {
                slices.push(Vec::new());
                room_left = per_part;
            }
            let end = (start + room_left).min(list.len());
            slices
                .last_mut()
                .expect("never empty")
                .push((Arc::clone(list), start..end));
            room_left -= end - start;
            start = end;
        }
    }
    slices
}

/// Hands every frame, in order and in its form, to every member of `slice`, yielding now and then so a large
/// fan-out does not hold a runtime thread away from sessions and timers. Returns the bytes handed over.
async fn deliver<R: Recipient>(slice: Slice<R>, frames: &Frames) -> u64 {
    let mut delivered = 0usize;
    let mut bytes = 0u64;
    // Members of one form usually follow each other: the form's frames are looked up again only when it changes.
    let mut current: Option<(WireForm, &[Bytes], u64)> = None;
    for (list, range) in slice {
        for member in &list[range] {
            let form = member.form();
            let (of_form, form_bytes) = match current {
                Some((known, built, size)) if known == form => (built, size),
                _ => {
                    let built = frames.of(form);
                    let size = frames.bytes_in(form) as u64;
                    current = Some((form, built, size));
                    (built, size)
                }
            };
            for frame in of_form {
                member.deliver(frame);
            }
            bytes += form_bytes;
            delivered += 1;
            if delivered % DELIVERIES_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    bytes
}
