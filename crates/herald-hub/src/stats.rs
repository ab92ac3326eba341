//! What the hub tells about itself (`GET /stats`), and the hub as the in-process [`Bus`].

use bytes::Bytes;
use herald_protocol::bus::{Bus, PushFuture, Query, QueryFuture, Target};
use herald_protocol::stats::{HubStats, Stats};

use crate::hub::Hub;
use crate::recipient::Recipient;

impl<R: Recipient> Hub<R> {
    /// The hub's statistics, as `GET /stats` shows them.
    pub fn stats(&self) -> HubStats {
        let m = &self.metrics;
        let gauge = |gauge: &prometheus_client::metrics::gauge::Gauge| gauge.get().max(0) as u64;
        HubStats {
            connections: gauge(&m.connections),
            rooms: gauge(&m.rooms),
            users: gauge(&m.users),
            memberships: gauge(&m.memberships),
            pending_items: gauge(&m.pending_items),
            pushes: m.pushes_room.get() + m.pushes_all.get() + m.pushes_user.get(),
            items: m.items.get(),
            frames: m.frames.get(),
            frame_items: m.frame_items.get(),
            deliveries: m.deliveries.get(),
            delivered_bytes: m.delivered_bytes.get(),
            compressed_frames: m.compressed_frames.get(),
            compression_in_bytes: m.compression_in_bytes.get(),
            compression_out_bytes: m.compression_out_bytes.get(),
            items_unrouted: m.items_unrouted.get(),
            pushes_refused: m.refused_queue_full.get()
                + m.refused_shutting_down.get()
                + m.refused_too_many_items.get()
                + m.refused_unavailable.get(),
            shards: self.shards.len() as u64,
            merge_window_ms: self.config.merge.window.as_millis() as u64,
            merge_max_items: self.config.merge.max_items as u64,
        }
    }

    /// Rooms with at least one member.
    pub fn rooms(&self) -> u64 {
        self.metrics.rooms.get() as u64
    }

    /// Items waiting in merge batches.
    pub fn pending_items(&self) -> u64 {
        self.metrics.pending_items.get() as u64
    }
}

impl<R: Recipient> Bus for Hub<R> {
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_> {
        Box::pin(std::future::ready(Hub::push(self, &target, items)))
    }

    fn query(&self, query: Query) -> QueryFuture<'_> {
        Box::pin(std::future::ready(Ok(self.census(&query))))
    }

    fn stats(&self) -> Stats {
        Stats::Hub(Hub::stats(self))
    }
}
