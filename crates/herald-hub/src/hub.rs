//! The [`Hub`]: its shards, and how a room, a user or a connection finds its shard.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HubConfig;
use crate::frames::Encoding;
use crate::history::Epochs;
use crate::interest::Interest;
use crate::metrics::HubMetrics;
use crate::recipient::Recipient;
use crate::shard::{BroadcastShard, RoomShard, Shard};

/// The fan-out engine. Create with [`Hub::new`], then [`Hub::spawn_workers`].
pub struct Hub<R> {
    /// Rooms, users and connections, by hash of their name (connections: of their id).
    pub(crate) shards: Box<[Shard<RoomShard<R>>]>,
    /// The batch of `/push/all`.
    pub(crate) broadcast: Shard<BroadcastShard>,
    hasher: RandomState,
    pub(crate) config: HubConfig,
    /// Set by [`Hub::close`]: every push is refused from then on.
    pub(crate) closed: AtomicBool,
    pub(crate) metrics: HubMetrics,
    /// How batches are encoded (compression settings, and its counters).
    pub(crate) encoding: Arc<Encoding>,
    /// Tasks one large fan-out is split over: the runtime's worker threads (more tasks than threads would only
    /// take turns on them).
    pub(crate) parallelism: usize,
    /// Where changes of interest in rooms go, when someone asked ([`Hub::watch_interest`]).
    pub(crate) interest: OnceLock<mpsc::UnboundedSender<Interest>>,
    /// The epochs this hub gives the histories it starts.
    pub(crate) epochs: Epochs,
    /// The store's epoch, when room history is kept elsewhere ([`crate::stored`]).
    pub(crate) elsewhere: OnceLock<Arc<str>>,
}

impl<R: Recipient> Hub<R> {
    /// Creates a hub; nothing is sent until [`Hub::spawn_workers`].
    pub fn new(config: HubConfig, metrics: HubMetrics) -> Arc<Self> {
        assert!(
            config.shards > 0 && config.merge.max_items > 0 && config.queue_items > 0,
            "validated config"
        );
        let history_budget = config.history.max_bytes / config.shards;
        Arc::new(Self {
            shards: (0..config.shards)
                .map(|_| Shard::new(RoomShard::new(history_budget)))
                .collect(),
            broadcast: Shard::new(BroadcastShard::default()),
            hasher: RandomState::new(),
            encoding: Arc::new(Encoding::new(config.compression, &metrics)),
            config,
            closed: AtomicBool::new(false),
            metrics,
            parallelism: tokio::runtime::Handle::try_current()
                .map(|runtime| runtime.metrics().num_workers())
                .or_else(|_| std::thread::available_parallelism().map(usize::from))
                .unwrap_or(1),
            interest: OnceLock::new(),
            epochs: Epochs::new(),
            elsewhere: OnceLock::new(),
        })
    }

    /// Starts one worker per shard plus the broadcast worker on `tracker`. When `stop` is cancelled the hub takes
    /// no more pushes, the workers send every batch still waiting (ignoring the window), and exit.
    pub fn spawn_workers(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        for index in 0..self.shards.len() {
            let hub = Arc::clone(self);
            let stop = stop.clone();
            tracker.spawn(async move {
                let own = &hub.shards[index];
                hub.run_worker(
                    own,
                    |state, everything, out| hub.take_due_rooms(state, everything, out),
                    stop,
                )
                .await;
            });
        }
        let hub = Arc::clone(self);
        tracker.spawn(async move {
            hub.run_worker(
                &hub.broadcast,
                |state, everything, out| hub.take_due_broadcast(state, everything, out),
                stop,
            )
            .await;
        });
    }

    /// The shard of a room's or a user's entry (a room and a user of the same name share one; nothing else).
    pub(crate) fn room_shard(&self, name: &str) -> &Shard<RoomShard<R>> {
        &self.shards[self.hasher.hash_one(name) as usize % self.shards.len()]
    }

    /// The shard that lists a connection among everyone (the broadcast's recipients).
    pub(crate) fn conn_shard(&self, id: u64) -> &Shard<RoomShard<R>> {
        &self.shards[id as usize % self.shards.len()]
    }

    /// Current number of connections.
    pub fn connections(&self) -> usize {
        self.metrics.connections.get().max(0) as usize
    }

    /// Refuses every push from now on (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether the hub still takes pushes (false once [`Hub::close`] ran).
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}
