//! Room history on NATS, kept in JetStream: one stream over every room, limited per room by the history settings,
//! written by logic and read by every gateway alike, so a client resumes on any gateway as on the one it left.
//!
//! # The stream
//! [`STREAM`] holds the subjects `herald.store.room.<token>` (the room tokens of `herald.room.<token>`) with
//! `max_msgs_per_subject` = `history_size`, `max_age` = `history_ttl` and `max_bytes` = `history_max_bytes` (the
//! oldest messages go first), in files, with direct gets allowed. It republishes every message it stores on the
//! room's `herald.room.<token>`, with the headers `Nats-Sequence` (the message's sequence in the stream) and
//! `Nats-Last-Sequence` (the sequence of the room's message before it). Logic and each gateway create it, or update
//! it to their settings, at start: give them the same history settings.
//!
//! # Offsets and the epoch
//! One message holds one item (a push of several items is several messages, published in order), and an item's
//! offset is its sequence in the stream: strictly increasing per room, not by one. The epoch is the stream's
//! creation time: a stream deleted and made again counts from 1 under a new epoch (restart the gateways then: they
//! read the epoch at start).
//!
//! # When a JOIN is recovered
//! The stream removes a room's oldest messages first: by count per room, and stream-wide by age or by bytes. A JOIN
//! from offset N is told `recovered: true` only when nothing after N can have been removed: the stream's oldest
//! message is at or after N (nothing after N went by age or bytes), and either the room still holds a message at or
//! below N or it holds fewer than `history_size` (nothing after N went by count). Otherwise, or when the stream does
//! not answer, `recovered: false`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::TryStreamExt;
use herald_hub::history::{HistoryConfig, Recovery};
use prost::Message as _;

use super::subjects::{ROOM_PREFIX, STORE_PREFIX};
use crate::pb;

/// The stream of every room's history.
pub const STREAM: &str = "HERALD_ROOMS";

/// Longest a request to JetStream waits (a publish's acknowledgement has `publish_timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The history stream as herald uses it: its handle, its epoch and its per-room limit.
#[derive(Clone)]
pub struct RoomStore {
    context: jetstream::Context,
    stream: stream::Stream,
    epoch: Arc<str>,
}

impl std::fmt::Debug for RoomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomStore").field("epoch", &self.epoch).finish()
    }
}

/// Why the stream could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("JetStream stream {STREAM}: {0}")]
pub struct StoreError(String);

/// Where a room's reader finds it: the offsets and items after one position.
#[derive(Debug, Default)]
pub(crate) struct Missed {
    pub(crate) items: Vec<(u64, Bytes)>,
    pub(crate) outcome: Option<Recovery>,
}

impl RoomStore {
    /// Creates the stream, or updates it to `config`, retrying until `wait` is over (NATS may still be starting).
    pub async fn open(client: async_nats::Client, config: &HistoryConfig, wait: Duration) -> Result<Self, StoreError> {
        let mut context = jetstream::new(client);
        context.set_timeout(REQUEST_TIMEOUT);
        let wanted = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![format!("{STORE_PREFIX}>")],
            max_messages_per_subject: config.size as i64,
            max_age: config.ttl,
            max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{STORE_PREFIX}>"),
                destination: format!("{ROOM_PREFIX}>"),
                headers_only: false,
            }),
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + wait;
        let info = loop {
            match context.create_or_update_stream(wanted.clone()).await {
                Ok(info) => break info,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "JetStream not ready; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(StoreError(error.to_string())),
            }
        };
        let stream = context
            .get_stream(STREAM)
            .await
            .map_err(|error| StoreError(error.to_string()))?;
        let epoch = Arc::from(format!("js-{:x}", info.created.unix_timestamp_nanos()));
        tracing::info!(stream = STREAM, %epoch, size = config.size, "room history in JetStream");
        Ok(Self { context, stream, epoch })
    }

    /// The stream's epoch: every offset it gives is of this epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Stores the items of a push to a room, one message each on `subject` (the room's store subject), and waits
    /// until JetStream acknowledged every one, at most `timeout` in all. The items acknowledged before a failure
    /// stay stored (and are delivered).
    pub(crate) async fn store(
        &self,
        subject: String,
        target: &herald_protocol::bus::Target,
        items: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<(), String> {
        let stored = async {
            // Published back to back, then acknowledged: one round trip for the push, in the items' order.
            let mut acks = Vec::with_capacity(items.len());
            for item in items {
                let payload = Bytes::from(crate::hop::wire_push(target.clone(), vec![item]).encode_to_vec());
                let ack = self
                    .context
                    .publish(subject.clone(), payload)
                    .await
                    .map_err(|e| e.to_string())?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, stored).await {
            Ok(result) => result,
            Err(_) => Err("JetStream did not acknowledge in time".to_owned()),
        }
    }

    /// Where the stream stands now: its last sequence (no later item of any room is at or below it).
    pub(crate) async fn last_sequence(&self) -> Result<u64, String> {
        let info = self.stream.get_info().await.map_err(|e| e.to_string())?;
        Ok(info.state.last_sequence)
    }

    /// The room's messages with a sequence in `(after, upto)`, each as its one item, in order.
    pub(crate) async fn between(&self, subject: &str, after: u64, upto: u64) -> Result<Vec<(u64, Bytes)>, String> {
        let mut items = Vec::new();
        let mut from = after + 1;
        while from < upto {
            let message = match self.stream.direct_get_next_for_subject(subject, Some(from)).await {
                Ok(message) => message,
                Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(error) => return Err(error.to_string()),
            };
            if message.sequence >= upto {
                break;
            }
            from = message.sequence + 1;
            if let Some(item) = one_item(message.payload) {
                items.push((message.sequence, item));
            }
        }
        Ok(items)
    }

    /// What a JOIN resuming from `since` (of `epoch`) missed in the room of `subject`, up to and including `upto`
    /// (where the room's reader stands), and whether that is everything it missed (see the module docs).
    pub(crate) async fn missed(&self, subject: &str, since: u64, epoch: &str, upto: u64) -> Missed {
        let outcome = |outcome| Missed {
            items: Vec::new(),
            outcome: Some(outcome),
        };
        if epoch != &*self.epoch {
            return outcome(Recovery::OtherEpoch);
        }
        if since > upto {
            return outcome(Recovery::Ahead);
        }
        if since == upto {
            return outcome(Recovery::Recovered);
        }
        match self.kept_since(subject, since).await {
            Ok(true) => {}
            Ok(false) => return outcome(Recovery::Gone),
            Err(error) => {
                tracing::warn!(%error, "cannot read room history from JetStream");
                return outcome(Recovery::Unavailable);
            }
        }
        let items = match self.between(subject, since, upto + 1).await {
            Ok(items) => items,
            Err(error) => {
                tracing::warn!(%error, "cannot read room history from JetStream");
                return outcome(Recovery::Unavailable);
            }
        };
        // Asked again after the read: the stream removes oldest first, so if it still holds everything after
        // `since` now, nothing was removed while the items were read one by one.
        match self.kept_since(subject, since).await {
            Ok(true) => Missed {
                items,
                outcome: Some(Recovery::Recovered),
            },
            Ok(false) => outcome(Recovery::Gone),
            Err(error) => {
                tracing::warn!(%error, "cannot read room history from JetStream");
                outcome(Recovery::Unavailable)
            }
        }
    }

    /// Whether the stream still holds every message of the room after `since` (see the module docs).
    async fn kept_since(&self, subject: &str, since: u64) -> Result<bool, String> {
        let mut info = self
            .stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| e.to_string())?;
        let state = &info.info.state;
        // An empty stream's first sequence is the next it will give.
        let oldest = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        if oldest > since + 1 {
            // Messages after `since` may have gone by age or bytes (or by count, of other rooms): unknown, so no.
            return Ok(false);
        }
        // The stream's own limit, whoever set it last (every node should give the same).
        let limit = info.info.config.max_messages_per_subject;
        let held = info
            .try_next()
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |(_, count)| count as i64);
        if limit <= 0 || held < limit {
            return Ok(true);
        }
        // Full: kept only if the room still holds a message at or below `since` (its oldest goes first).
        match self.stream.direct_get_first_for_subject(subject).await {
            Ok(first) => Ok(first.sequence <= since),
            Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(true),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// The item of a stored message (each holds one).
fn one_item(payload: Bytes) -> Option<Bytes> {
    let push = pb::Push::decode(payload).ok()?;
    let mut items = push.items;
    (items.len() == 1).then(|| items.remove(0))
}

/// The store subject of a room's `herald.room.<token>` subject.
pub(crate) fn store_subject(room_subject: &str) -> String {
    let token = room_subject.strip_prefix(ROOM_PREFIX).unwrap_or(room_subject);
    format!("{STORE_PREFIX}{token}")
}
