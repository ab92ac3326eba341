//! Merging: the per-room decision of when a frame goes out.
//!
//! A room that sent no frame during the last window sends at once (no added latency when traffic is light). A room
//! that did waits until one window after its last frame, collecting every item pushed meanwhile into that one
//! frame. A batch that reaches `max_items` goes out at once; a window of zero turns merging off.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// Merge settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePolicy {
    /// At most one frame per room per window. Zero makes every push due as soon as it is taken; pushes that wait
    /// for the same flush (the worker busy with an earlier frame) still share one frame.
    pub window: Duration,
    /// Items that make a batch go out early, and the most items one frame carries.
    pub max_items: usize,
}

/// What the owner of a batch must do after adding to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nothing: the batch is already due or already has a timer.
    Nothing,
    /// Flush as soon as possible.
    Now,
    /// Flush at this instant (a timer must be set).
    At(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Scheduled(Instant),
    Ready,
}

/// The items of one room (or of the broadcast) waiting for their frame.
#[derive(Debug)]
pub struct Batch {
    items: Vec<Bytes>,
    /// Each item's offset, when a store outside the hub gave them (see [`Batch::add_stored`]); else empty.
    offsets: Vec<u64>,
    /// With offsets: the offset of the room's item before the first one waiting (what a JOIN now is told).
    before: u64,
    last_flush: Option<Instant>,
    state: State,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            offsets: Vec::new(),
            before: 0,
            last_flush: None,
            state: State::Idle,
        }
    }
}

impl Batch {
    /// Adds items pushed at `now`, and says when the batch must be flushed.
    pub fn add(&mut self, items: Vec<Bytes>, now: Instant, policy: MergePolicy) -> Wake {
        if self.items.is_empty() {
            self.items = items;
        } else {
            self.items.extend(items);
        }
        self.schedule(now, policy)
    }

    /// Adds items whose offsets a store gave (`offsets[i]` is `items[i]`'s, all above `before`, the offset of the
    /// room's item before them), and says when the batch must be flushed.
    pub fn add_stored(
        &mut self,
        items: Vec<Bytes>,
        offsets: Vec<u64>,
        before: u64,
        now: Instant,
        policy: MergePolicy,
    ) -> Wake {
        debug_assert_eq!(items.len(), offsets.len());
        if self.items.is_empty() {
            self.before = before;
        }
        self.offsets.extend(offsets);
        self.add(items, now, policy)
    }

    /// The offsets of the `count` items just taken ([`Batch::take`]), with offsets from a store.
    pub fn take_offsets(&mut self, count: usize) -> Vec<u64> {
        let rest = self.offsets.split_off(count.min(self.offsets.len()));
        let taken = std::mem::replace(&mut self.offsets, rest);
        if let Some(last) = taken.last() {
            self.before = *last;
        }
        taken
    }

    /// With offsets from a store: the offset of the room's item before the first one waiting.
    pub fn before(&self) -> u64 {
        self.before
    }

    /// With offsets from a store: the offset of the first item waiting, if any waits.
    pub fn first_offset(&self) -> Option<u64> {
        self.offsets.first().copied()
    }

    fn schedule(&mut self, now: Instant, policy: MergePolicy) -> Wake {
        let quiet = self
            .last_flush
            .is_none_or(|last| now.saturating_duration_since(last) >= policy.window);
        match self.state {
            State::Ready => Wake::Nothing,
            _ if quiet || self.items.len() >= policy.max_items => {
                self.state = State::Ready;
                Wake::Now
            }
            State::Scheduled(_) => Wake::Nothing,
            State::Idle => {
                let at = self.last_flush.expect("not quiet, so flushed before") + policy.window;
                self.state = State::Scheduled(at);
                Wake::At(at)
            }
        }
    }

    /// Whether a timer set for `deadline` still stands for this batch (a batch flushed early leaves stale timers).
    pub fn is_due_at(&self, deadline: Instant) -> bool {
        self.state == State::Scheduled(deadline)
    }

    /// Whether the batch should go out at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        match self.state {
            State::Ready => true,
            State::Scheduled(at) => at <= now,
            State::Idle => false,
        }
    }

    /// When a scheduled batch is due.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Scheduled(at) => Some(at),
            State::Ready | State::Idle => None,
        }
    }

    /// Takes the items for the frames sent at `now`.
    ///
    /// A batch that went out early because it filled up gives only whole frames (multiples of `max_items`); the
    /// rest waits, merged with what comes next, until it fills a frame too or the window ends. Frames stay full
    /// under heavy traffic (fewer frames, fewer writes) and a partial frame still goes at most once per window.
    /// With `everything` (shutdown, or nobody left to deliver to) nothing is held back.
    pub fn take(&mut self, now: Instant, policy: MergePolicy, everything: bool) -> Vec<Bytes> {
        let len = self.items.len();
        let whole = len - len % policy.max_items;
        let window_over = self
            .last_flush
            .is_none_or(|last| now.saturating_duration_since(last) >= policy.window);
        self.last_flush = Some(now);
        if everything || window_over || whole == 0 || whole == len {
            self.state = State::Idle;
            return std::mem::take(&mut self.items);
        }
        let rest = self.items.split_off(whole);
        self.state = State::Scheduled(now + policy.window);
        std::mem::replace(&mut self.items, rest)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: MergePolicy = MergePolicy {
        window: Duration::from_secs(1),
        max_items: 3,
    };

    fn item(n: u8) -> Vec<Bytes> {
        vec![Bytes::from(vec![b'0' + n])]
    }

    #[test]
    fn first_push_after_a_quiet_window_goes_at_once() {
        let t0 = Instant::now();
        let mut batch = Batch::default();
        assert_eq!(batch.add(item(1), t0, POLICY), Wake::Now);
        assert_eq!(batch.add(item(2), t0, POLICY), Wake::Nothing, "already due");
        assert_eq!(batch.take(t0, POLICY, false).len(), 2);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(
            batch.add(item(3), later, POLICY),
            Wake::Now,
            "a window passed since the last frame"
        );
    }

    #[test]
    fn pushes_inside_a_window_wait_for_one_frame() {
        let t0 = Instant::now();
        let mut batch = Batch::default();
        batch.add(item(1), t0, POLICY);
        batch.take(t0, POLICY, false);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(batch.add(item(2), t1, POLICY), Wake::At(t0 + POLICY.window));
        assert_eq!(batch.add(item(3), t1, POLICY), Wake::Nothing);
        assert!(batch.is_due_at(t0 + POLICY.window));
        let frame = batch.take(t0 + POLICY.window, POLICY, false);
        assert_eq!(frame, [item(2), item(3)].concat(), "push order kept");
        assert!(batch.is_empty());
    }

    #[test]
    fn a_full_batch_goes_early_and_leaves_its_timer_stale() {
        let t0 = Instant::now();
        let mut batch = Batch::default();
        batch.add(item(0), t0, POLICY);
        batch.take(t0, POLICY, false);
        let t1 = t0 + Duration::from_millis(10);
        let Wake::At(deadline) = batch.add(item(1), t1, POLICY) else {
            panic!("expected a timer")
        };
        assert_eq!(batch.add(item(2), t1, POLICY), Wake::Nothing);
        assert_eq!(batch.add(item(3), t1, POLICY), Wake::Now, "max_items reached");
        assert!(!batch.is_due_at(deadline));
    }

    #[test]
    fn a_full_batch_sends_whole_frames_and_keeps_the_rest_for_the_window() {
        let t0 = Instant::now();
        let mut batch = Batch::default();
        batch.add(item(0), t0, POLICY);
        batch.take(t0, POLICY, false);
        let t1 = t0 + Duration::from_millis(10);
        batch.add((1..=7).flat_map(item).collect(), t1, POLICY);
        assert_eq!(batch.take(t1, POLICY, false).len(), 6, "two whole frames of 3");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.deadline(), Some(t1 + POLICY.window), "the rest waits one window");
        assert_eq!(batch.add(item(8), t1, POLICY), Wake::Nothing);
        assert_eq!(batch.add(item(9), t1, POLICY), Wake::Now, "filled a frame: goes early");
        assert_eq!(batch.take(t1, POLICY, false).len(), 3);
        batch.add(item(1), t1, POLICY);
        assert_eq!(batch.take(t1, POLICY, true).len(), 1, "everything when asked");
    }

    #[test]
    fn a_zero_window_never_waits() {
        let policy = MergePolicy {
            window: Duration::ZERO,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut batch = Batch::default();
        for n in 0..3 {
            assert_eq!(batch.add(item(n), t0, policy), Wake::Now);
            batch.take(t0, POLICY, false);
        }
    }
}
