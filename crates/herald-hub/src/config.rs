//! The hub's settings.

use herald_protocol::deflate::Compression;

use crate::batch::MergePolicy;
use crate::history::HistoryConfig;

/// Hub settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// Number of shards (buckets), each with its own lock and worker.
    pub shards: usize,
    /// When frames go out.
    pub merge: MergePolicy,
    /// Items that may wait for their frame in one shard (and in the broadcast batch); a push beyond is refused.
    pub queue_items: usize,
    /// Bytes of items that may wait in one shard (and in the broadcast batch); a push beyond is refused, unless the
    /// shard holds nothing (so a push of any size the push API took can go out).
    pub queue_bytes: usize,
    /// Rooms the hub holds at most; a JOIN that would make one more is refused ([`crate::RoomLimit`]). 0: no limit.
    pub max_rooms: usize,
    /// What rooms keep of their items for clients that come back.
    pub history: HistoryConfig,
    /// How frames are compressed for connections that negotiated permessage-deflate (once per batch).
    pub compression: Compression,
}
