//! Hub tests with a recording recipient and tokio's paused clock (timers fire only when time is advanced).

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Query, Refused, Target};
use herald_protocol::forms::WireForm;
use herald_protocol::position::{JoinAnswer, Position};
use herald_protocol::push::payload;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::MergePolicy;
use crate::fanout::{MIN_DELIVERIES_PER_TASK, partition};
use crate::{Hub, HubConfig, HubMetrics, Interest, Recipient};

#[derive(Default)]
struct Recorder {
    id: u64,
    user: Option<Arc<str>>,
    info: Option<Box<RawValue>>,
    frames: Mutex<Vec<Bytes>>,
    disconnected: AtomicBool,
    /// It negotiated compression: it takes the deflate form.
    deflate: bool,
}

impl Recipient for Recorder {
    fn id(&self) -> u64 {
        self.id
    }
    fn form(&self) -> WireForm {
        if self.deflate {
            WireForm::Deflate
        } else {
            WireForm::WebSocket
        }
    }
    fn deliver(&self, frame: &Bytes) {
        self.frames.lock().push(frame.clone());
    }
    fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }
    fn info(&self) -> Option<&RawValue> {
        self.info.as_deref()
    }
    fn disconnect(&self) {
        self.disconnected.store(true, Ordering::Release);
    }
}

impl Recorder {
    fn new(id: u64) -> Arc<Self> {
        Arc::new(Self { id, ..Self::default() })
    }

    fn of_user(id: u64, user: &Arc<str>, info: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            id,
            user: Some(Arc::clone(user)),
            info: info.map(|info| RawValue::from_string(info.to_owned()).unwrap()),
            ..Self::default()
        })
    }

    fn compressing(id: u64) -> Arc<Self> {
        Arc::new(Self {
            id,
            deflate: true,
            ..Self::default()
        })
    }

    /// The items of each received frame (inflated if compressed), as strings.
    fn items(&self) -> Vec<Vec<String>> {
        self.frames
            .lock()
            .iter()
            .map(|frame| {
                let text = if frame[0] & 0x40 != 0 {
                    herald_protocol::deflate::inflate(payload(frame), 1 << 20).unwrap()
                } else {
                    payload(frame).to_vec()
                };
                let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
                json["data"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_string())
                    .collect()
            })
            .collect()
    }
}

const WINDOW: Duration = Duration::from_secs(1);

fn start(max_items: usize, queue_items: usize) -> (Arc<Hub<Recorder>>, CancellationToken, TaskTracker) {
    start_with(HubConfig {
        shards: 4,
        merge: MergePolicy {
            window: WINDOW,
            max_items,
        },
        queue_items,
        queue_bytes: 1 << 30,
        max_rooms: 0,
        history: crate::history::HistoryConfig::OFF,
        compression: herald_protocol::deflate::Compression::default(),
    })
}

fn start_with(config: HubConfig) -> (Arc<Hub<Recorder>>, CancellationToken, TaskTracker) {
    let hub = Hub::new(config, HubMetrics::unregistered());
    let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
    hub.spawn_workers(&tracker, stop.clone());
    (hub, stop, tracker)
}

fn items(list: &[&str]) -> Vec<Bytes> {
    list.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
}

fn room(name: &str) -> Target {
    Target::Room(Arc::from(name))
}

/// Lets the workers run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_room_push_reaches_its_members_only() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let (a, b, c) = (Recorder::new(1), Recorder::new(2), Recorder::new(3));
    for conn in [&a, &b, &c] {
        hub.register(conn);
    }
    assert!(hub.join("news", &a).unwrap().new && hub.join("news", &b).unwrap().new);
    let again = hub.join("news", &a).unwrap();
    assert!(!again.new, "second join is a no-op");
    assert!(
        Arc::ptr_eq(&again.room, &hub.join("news", &b).unwrap().room),
        "one copy of the name"
    );
    let accepted = hub.push(&room("news"), items(&["1"])).unwrap();
    assert_eq!(
        accepted,
        Accepted {
            items: 1,
            recipients: Some(2),
            gateways: None,
        }
    );
    settle().await;
    assert_eq!(a.items(), [["1"]]);
    assert_eq!(b.items(), [["1"]]);
    assert!(c.items().is_empty());

    assert!(hub.leave("news", 2));
    tokio::time::advance(WINDOW).await;
    hub.push(&room("news"), items(&["2"])).unwrap();
    settle().await;
    assert_eq!(a.items(), [["1"], ["2"]]);
    assert_eq!(b.items(), [["1"]], "left before the push");
}

#[tokio::test(start_paused = true)]
async fn pushes_inside_one_window_merge_into_one_frame_in_order() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    assert_eq!(a.items(), [["1"]], "the first push after a quiet window goes at once");

    hub.push(&room("r"), items(&["2"])).unwrap();
    hub.push(&room("r"), items(&["3", "4"])).unwrap();
    settle().await;
    assert_eq!(a.items().len(), 1, "held until the window ends");
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(a.items(), [vec!["1"], vec!["2", "3", "4"]]);
    assert_eq!(hub.metrics.frames.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_early_and_frames_hold_at_most_max_items() {
    let (hub, _stop, _tracker) = start(3, 1000);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["0"])).unwrap();
    settle().await;
    hub.push(&room("r"), items(&["1", "2"])).unwrap();
    settle().await;
    assert_eq!(a.items().len(), 1);
    hub.push(&room("r"), items(&["3", "4", "5", "6"])).unwrap();
    settle().await;
    assert_eq!(a.items(), [vec!["0"], vec!["1", "2", "3"], vec!["4", "5", "6"]]);
}

#[tokio::test(start_paused = true)]
async fn broadcasts_reach_every_connection_and_merge_too() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let conns: Vec<_> = (0..10).map(Recorder::new).collect();
    for conn in &conns {
        hub.register(conn);
    }
    assert_eq!(hub.push(&Target::All, items(&["1"])).unwrap().recipients, Some(10));
    settle().await;
    hub.push(&Target::All, items(&["2"])).unwrap();
    hub.push(&Target::All, items(&["3"])).unwrap();
    settle().await;
    tokio::time::advance(WINDOW).await;
    settle().await;
    for conn in &conns {
        assert_eq!(conn.items(), [vec!["1"], vec!["2", "3"]]);
    }
    let first = conns[0].frames.lock()[0].clone();
    let last = conns[9].frames.lock()[0].clone();
    assert_eq!(first.as_ptr(), last.as_ptr(), "one encoding shared by every recipient");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_the_whole_push() {
    let (hub, _stop, _tracker) = start(100, 5);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    hub.push(&room("r"), items(&["2", "3", "4"])).unwrap();
    let refused = hub.push(&room("r"), items(&["5", "6", "7"])).unwrap_err();
    assert_eq!(refused, Refused::QueueFull { retry_after_secs: 1 });
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(
        a.items(),
        [vec!["1"], vec!["2", "3", "4"]],
        "nothing of the refused push delivered"
    );
    hub.push(&room("r"), items(&["5", "6", "7"])).unwrap();
}

/// `queue_bytes` bounds a shard's waiting items by size, rooms and broadcast alike: a push past it is refused whole,
/// while a push of any size is taken into an empty queue.
#[tokio::test(start_paused = true)]
async fn queue_bytes_refuses_a_push_that_would_overfill_the_shard() {
    let (hub, _stop, _tracker) = start_with(HubConfig {
        shards: 1,
        merge: MergePolicy {
            window: WINDOW,
            max_items: 100,
        },
        queue_items: 1000,
        queue_bytes: 10,
        max_rooms: 0,
        history: crate::history::HistoryConfig::OFF,
        compression: herald_protocol::deflate::Compression::default(),
    });
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    // The first push went out at once (a quiet room): the queue is empty again, and takes one over the limit.
    hub.push(&room("r"), items(&["1234567890123"])).unwrap();
    assert_eq!(
        hub.push(&room("r"), items(&["1"])).unwrap_err(),
        Refused::QueueFull { retry_after_secs: 1 }
    );
    hub.push(&Target::All, items(&["1234567890"])).unwrap();
    assert_eq!(
        hub.push(&Target::All, items(&["7"])).unwrap_err(),
        Refused::QueueFull { retry_after_secs: 1 }
    );
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(a.items(), [vec!["1"], vec!["1234567890123"], vec!["1234567890"]]);
    // Sent, the bytes are free again.
    hub.push(&room("r"), items(&["1234567890"])).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_room_without_members_reports_zero_recipients() {
    let (hub, _stop, _tracker) = start(100, 1000);
    assert_eq!(
        hub.push(&room("empty"), items(&["1"])).unwrap(),
        Accepted {
            items: 1,
            recipients: Some(0),
            gateways: None,
        }
    );
    assert_eq!(hub.metrics.items_unrouted.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn stopping_sends_what_waits_and_refuses_the_rest() {
    let (hub, stop, tracker) = start(100, 1000);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    hub.push(&room("r"), items(&["2"])).unwrap();
    hub.push(&Target::All, items(&["\"b\""])).unwrap();
    hub.close();
    assert_eq!(hub.push(&room("r"), items(&["3"])), Err(Refused::ShuttingDown));
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    let mut got = a.items();
    got.sort();
    assert_eq!(
        got,
        [vec!["\"b\""], vec!["1"], vec!["2"]],
        "waiting batches sent at once on stop"
    );
}

#[tokio::test(start_paused = true)]
async fn unregister_leaves_every_room_and_empty_rooms_go_away() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let a = Recorder::new(1);
    hub.register(&a);
    for r in ["x", "y", "z"] {
        hub.join(r, &a).unwrap();
    }
    assert_eq!(hub.metrics.rooms.get(), 3);
    hub.unregister(&*a, ["x", "y", "z"]);
    assert_eq!(
        (
            hub.metrics.rooms.get(),
            hub.metrics.memberships.get(),
            hub.connections()
        ),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_final_pass_pushes_are_refused_not_lost() {
    let (hub, stop, tracker) = start(100, 1000);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    // The workers are gone (a push racing past `close()` would land here): refused, not accepted and left.
    assert_eq!(hub.push(&room("r"), items(&["1"])), Err(Refused::ShuttingDown));
    assert_eq!(hub.push(&Target::All, items(&["1"])), Err(Refused::ShuttingDown));
}

#[tokio::test(start_paused = true)]
async fn a_push_larger_than_the_queue_is_refused_as_too_large() {
    let (hub, _stop, _tracker) = start(100, 3);
    assert_eq!(
        hub.push(&room("r"), items(&["1", "2", "3", "4"])),
        Err(Refused::TooManyItems { limit: 3 })
    );
}

#[tokio::test(start_paused = true)]
async fn every_refusal_is_counted_under_its_reason_and_none_as_a_push() {
    let (hub, stop, tracker) = start(100, 3);
    let a = Recorder::new(1);
    hub.register(&a);
    hub.join("r", &a).unwrap();
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    hub.push(&room("r"), items(&["2", "3"])).unwrap();
    assert!(matches!(
        hub.push(&room("r"), items(&["4", "5"])),
        Err(Refused::QueueFull { .. })
    ));
    assert!(matches!(
        hub.push(&room("r"), items(&["1", "2", "3", "4"])),
        Err(Refused::TooManyItems { .. })
    ));
    hub.close();
    assert_eq!(hub.push(&room("r"), items(&["6"])), Err(Refused::ShuttingDown));
    let m = &hub.metrics;
    let refused = [
        &m.refused_queue_full,
        &m.refused_too_many_items,
        &m.refused_shutting_down,
    ]
    .map(|c| c.get());
    assert_eq!(refused, [1, 1, 1]);
    let stats = hub.stats();
    assert_eq!((stats.pushes, stats.items, stats.pushes_refused), (2, 3, 3));
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(start_paused = true)]
async fn delivered_bytes_are_each_recipients_frames() {
    let (hub, _stop, _tracker) = start(2, 100);
    let conns: Vec<_> = (1..=3).map(Recorder::new).collect();
    for conn in &conns {
        hub.register(conn);
        hub.join("r", conn).unwrap();
    }
    hub.push(&room("r"), items(&["1", "2", "3"])).unwrap();
    settle().await;
    let frames = conns[0].frames.lock().clone();
    assert_eq!(frames.len(), 2, "two frames of at most two items");
    let per_recipient: usize = frames.iter().map(Bytes::len).sum();
    let stats = hub.stats();
    assert_eq!((stats.frames, stats.deliveries), (2, 6));
    assert_eq!(stats.delivered_bytes, 3 * per_recipient as u64);
}

#[tokio::test(start_paused = true)]
async fn a_compressing_and_a_plain_member_get_the_same_items_compressed_once() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let plain = Recorder::new(1);
    let compressing: Vec<_> = (2..=3).map(Recorder::compressing).collect();
    for conn in std::iter::once(&plain).chain(&compressing) {
        hub.register(conn);
        hub.join("r", conn).unwrap();
    }
    let texts: Vec<String> = (0..20)
        .map(|n| format!(r#"{{"text":"item {n} of the batch"}}"#))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    hub.push(&room("r"), items(&texts)).unwrap();
    settle().await;
    assert_eq!(plain.items(), compressing[0].items());
    assert_eq!(compressing[0].items(), compressing[1].items());
    let (ours, theirs) = (&compressing[0].frames.lock()[0], &compressing[1].frames.lock()[0]);
    assert_eq!(ours[0], 0xC1, "RSV1 set");
    assert_eq!(ours.as_ptr(), theirs.as_ptr(), "one compressed frame shared");
    assert_eq!(plain.frames.lock()[0][0], 0x81, "the plain member's frame is plain");
    let stats = hub.stats();
    assert_eq!(stats.compressed_frames, 1, "compressed once for both");
    assert_eq!(
        stats.compression_in_bytes,
        payload(&plain.frames.lock()[0]).len() as u64
    );
    assert_eq!(stats.compression_out_bytes, payload(ours).len() as u64);
    assert!(stats.compression_out_bytes < stats.compression_in_bytes / 2);
}

#[test]
fn partition_covers_every_member_once_in_near_equal_slices() {
    let lists: Vec<Arc<Vec<Arc<Recorder>>>> = [5usize, 0, 7, 3]
        .iter()
        .map(|&n| Arc::new((0..n as u64).map(Recorder::new).collect()))
        .collect();
    for parts in 1..=6 {
        let slices = partition(&lists, parts);
        let sizes: Vec<usize> = slices.iter().map(|s| s.iter().map(|(_, r)| r.len()).sum()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 15, "{parts} parts");
        assert!(
            slices.len() <= parts && sizes.iter().all(|&n| n > 0 && n <= 15usize.div_ceil(parts)),
            "{sizes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_split_over_tasks_keeps_each_connection_in_order() {
    let (hub, _stop, _tracker) = start(2, 100_000);
    let conns: Vec<_> = (0..2000).map(Recorder::new).collect();
    for conn in &conns {
        hub.register(conn);
        hub.join("big", conn).unwrap();
    }
    let pushed: Vec<String> = (0..50).map(|n| n.to_string()).collect();
    for item in &pushed {
        hub.push(&room("big"), items(&[item])).unwrap();
    }
    for conn in &conns {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while conn.items().concat().len() < pushed.len() {
            assert!(std::time::Instant::now() < deadline, "connection {} short", conn.id);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conn.items().concat(), pushed, "connection {}", conn.id);
    }
}

#[tokio::test(start_paused = true)]
async fn interest_follows_the_first_and_last_member() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let mut interest = hub.watch_interest().expect("first watcher");
    assert!(hub.watch_interest().is_none(), "one watcher only");
    let (a, b) = (Recorder::new(1), Recorder::new(2));
    let event = |room: &str, wanted| {
        let topic = Target::Room(Arc::from(room));
        if wanted {
            Interest::Wanted(topic)
        } else {
            Interest::Unwanted(topic)
        }
    };

    hub.join("r", &a).unwrap();
    hub.join("r", &b).unwrap();
    hub.join("r", &b).unwrap();
    hub.join("s", &b).unwrap();
    assert_eq!(interest.try_recv().unwrap(), event("r", true));
    assert_eq!(interest.try_recv().unwrap(), event("s", true));
    assert!(interest.try_recv().is_err(), "a second member changes nothing");
    assert_eq!(hub.topics_with_members().len(), 2);

    hub.leave("r", 1);
    assert!(interest.try_recv().is_err(), "a member is left");
    // Items waiting keep the room alive past its last member; interest still ends with the last member.
    hub.push(&room("r"), items(&["1"])).unwrap();
    hub.push(&room("r"), items(&["2"])).unwrap();
    hub.unregister(&*b, ["r", "s"]);
    assert_eq!(interest.try_recv().unwrap(), event("r", false));
    assert_eq!(interest.try_recv().unwrap(), event("s", false));
    hub.join("r", &a).unwrap();
    assert_eq!(interest.try_recv().unwrap(), event("r", true));
    assert_eq!(hub.topics_with_members(), vec![room("r")]);

    let user: Arc<str> = Arc::from("u");
    let c = Recorder::of_user(3, &user, None);
    hub.register(&c);
    assert_eq!(
        interest.try_recv().unwrap(),
        Interest::Wanted(Target::User(Arc::clone(&user)))
    );
    hub.unregister(&*c, []);
    assert_eq!(interest.try_recv().unwrap(), Interest::Unwanted(Target::User(user)));
}

#[tokio::test(start_paused = true)]
async fn a_user_is_merged_like_a_room_and_only_its_connections_get_it() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let phone = Recorder::of_user(1, &hub.user_name("alice"), None);
    hub.register(&phone);
    // The second connection of a user takes the name the first one registered.
    let laptop = Recorder::of_user(2, &hub.user_name("alice"), None);
    let bob = Recorder::of_user(3, &hub.user_name("bob"), None);
    let anonymous = Recorder::new(4);
    for conn in [&laptop, &bob, &anonymous] {
        hub.register(conn);
    }
    assert!(
        Arc::ptr_eq(phone.user.as_ref().unwrap(), laptop.user.as_ref().unwrap()),
        "one shared name"
    );
    let to_alice = Target::User(Arc::from("alice"));
    assert_eq!(hub.push(&to_alice, items(&["1"])).unwrap().recipients, Some(2));
    assert_eq!(hub.push(&to_alice, items(&["2"])).unwrap().recipients, Some(2));
    tokio::time::sleep(WINDOW * 2).await;
    tokio::task::yield_now().await;
    for conn in [&phone, &laptop] {
        assert_eq!(conn.items().concat(), ["1", "2"]);
        let json: serde_json::Value = serde_json::from_slice(payload(&conn.frames.lock()[0])).unwrap();
        assert_eq!(json["data"]["user"], "alice");
    }
    assert!(bob.items().is_empty() && anonymous.items().is_empty());
    assert_eq!(
        hub.push(&Target::User(Arc::from("carol")), items(&["3"]))
            .unwrap()
            .recipients,
        Some(0)
    );
    assert_eq!(hub.stats().users, 2);
    hub.unregister(&*phone, []);
    hub.unregister(&*laptop, []);
    assert_eq!(hub.stats().users, 1);
}

#[tokio::test(start_paused = true)]
async fn census_counts_rooms_users_and_disconnects() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let alice = hub.user_name("alice");
    let a1 = Recorder::of_user(1, &alice, Some(r#"{"device":"phone"}"#));
    let a2 = Recorder::of_user(2, &alice, None);
    let bob = Recorder::of_user(3, &hub.user_name("bob"), Some("1"));
    let anonymous = Recorder::new(4);
    for conn in [&a1, &a2, &bob, &anonymous] {
        hub.register(conn);
        hub.join("r", conn).unwrap();
    }
    let room = hub.census(&Query::Room(Arc::from("r")));
    assert_eq!((room.connections, room.users.len()), (4, 2));
    let user = hub.census(&Query::User(Arc::from("alice")));
    assert_eq!(user.connections, 2);
    assert_eq!(
        user.info.iter().map(|i| i.get()).collect::<Vec<_>>(),
        [r#"{"device":"phone"}"#]
    );
    assert_eq!(hub.census(&Query::Room(Arc::from("nobody"))).connections, 0);
    let closed = hub.census(&Query::Disconnect(Arc::from("alice")));
    assert_eq!(closed.connections, 2);
    assert!(a1.disconnected.load(Ordering::Acquire) && a2.disconnected.load(Ordering::Acquire));
    assert!(!bob.disconnected.load(Ordering::Acquire));
}

mod history;
mod stored;

#[tokio::test]
async fn a_fan_out_is_split_over_the_runtimes_workers_not_the_cores() {
    let (hub, _stop, _tracker) = start(100, 1000);
    // One event loop: however large the fan-out, one task (a second would only take turns with it).
    assert_eq!(hub.fanout_tasks(1_000_000), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_large_fan_out_gets_a_task_per_worker() {
    let (hub, _stop, _tracker) = start(100, 1000);
    assert_eq!(hub.fanout_tasks(1_000_000), 3);
    assert_eq!(hub.fanout_tasks(MIN_DELIVERIES_PER_TASK * 2), 2);
    assert_eq!(hub.fanout_tasks(10), 1);
}
