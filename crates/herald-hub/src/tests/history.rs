//! Room history in the hub: offsets on frames, resuming JOINs, and what leaves a history and why.

use std::borrow::Cow;

use herald_protocol::client::Since;

use super::*;
use crate::history::{HISTORY_OVERHEAD, HistoryConfig, ITEM_OVERHEAD};

const TTL: Duration = Duration::from_secs(60);

pub(super) fn with_history(size: usize, max_bytes: usize) -> (Arc<Hub<Recorder>>, CancellationToken, TaskTracker) {
    start_with(HubConfig {
        shards: 2,
        merge: MergePolicy {
            window: WINDOW,
            max_items: 100,
        },
        queue_items: 10_000,
        queue_bytes: 1 << 30,
        max_rooms: 0,
        history: HistoryConfig {
            size,
            ttl: TTL,
            max_bytes,
        },
        compression: herald_protocol::deflate::Compression::default(),
    })
}

/// Joins, resuming from `since` when given; returns the hub's answer.
fn join(hub: &Hub<Recorder>, name: &str, conn: &Arc<Recorder>, since: Option<&Position>) -> JoinAnswer {
    let since = since.map(|at| Since {
        offset: at.offset,
        epoch: Cow::Borrowed(&*at.epoch),
    });
    let answer = Arc::new(Mutex::new(None));
    let given = Arc::clone(&answer);
    hub.join_with(name, conn, since.as_ref(), move |at| {
        *given.lock() = at.cloned();
        None
    })
    .unwrap();
    let answer = answer.lock().take();
    answer.expect("a room with history answers with its position")
}

/// Every item a connection received, with its offset (items of one frame count up to the frame's offset).
fn received(conn: &Recorder) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for frame in conn.frames.lock().iter() {
        let json: serde_json::Value = serde_json::from_slice(payload(frame)).unwrap();
        let items = json["data"]["items"].as_array().unwrap();
        let last = json["data"]["offset"]
            .as_u64()
            .expect("frames of a room with history carry an offset");
        assert!(json["data"]["epoch"].is_string());
        for (i, item) in items.iter().enumerate() {
            out.push((last + 1 + i as u64 - items.len() as u64, item.to_string()));
        }
    }
    out
}

fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|n| (n, n.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn a_client_that_comes_back_gets_exactly_what_it_missed_then_live_items() {
    let (hub, _stop, _tracker) = with_history(100, 1 << 20);
    let (a, b) = (Recorder::new(1), Recorder::new(2));
    hub.register(&a);
    let first = join(&hub, "news", &a, None);
    assert_eq!(
        (first.position.offset, first.recovered),
        (0, None),
        "an empty room stands at 0"
    );
    hub.push(&room("news"), items(&["1", "2"])).unwrap();
    settle().await;
    assert_eq!(received(&a), numbered(1..=2));
    let left_at = Position {
        offset: 2,
        epoch: Arc::clone(&first.position.epoch),
    };
    hub.unregister(&*a, ["news"]);

    // Pushed while nobody is in the room: kept, not delivered.
    tokio::time::advance(WINDOW).await;
    assert_eq!(
        hub.push(&room("news"), items(&["3", "4", "5"])).unwrap().recipients,
        Some(0)
    );
    hub.register(&b);
    let resumed = join(&hub, "news", &b, Some(&left_at));
    assert_eq!(resumed.recovered, Some(true));
    assert_eq!(
        resumed.position,
        Position {
            offset: 5,
            ..left_at.clone()
        }
    );
    tokio::time::advance(WINDOW).await;
    hub.push(&room("news"), items(&["6"])).unwrap();
    settle().await;
    assert_eq!(received(&b), numbered(3..=6), "the missed items, then the live one");
}

#[tokio::test(start_paused = true)]
async fn items_waiting_for_their_frame_during_a_join_arrive_once() {
    let (hub, _stop, _tracker) = with_history(100, 1 << 20);
    let (stays, returns) = (Recorder::new(1), Recorder::new(2));
    hub.register(&stays);
    hub.register(&returns);
    let start = join(&hub, "r", &stays, None);
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    // Inside the window: 2 and 3 wait in the batch while the returning client joins from 0.
    hub.push(&room("r"), items(&["2", "3"])).unwrap();
    let since = Position {
        offset: 0,
        ..start.position
    };
    let resumed = join(&hub, "r", &returns, Some(&since));
    assert_eq!((resumed.position.offset, resumed.recovered), (1, Some(true)));
    settle().await;
    assert_eq!(
        received(&returns),
        numbered(1..=1),
        "only what went out before it joined"
    );
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(received(&returns), numbered(1..=3), "the waiting items live, once");
    assert_eq!(received(&stays), numbered(1..=3));
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_cannot_be_served_says_so_and_replays_nothing() {
    let (hub, _stop, _tracker) = with_history(3, 1 << 20);
    let conn = Recorder::new(1);
    hub.register(&conn);
    hub.push(&room("r"), items(&["1", "2", "3", "4", "5"])).unwrap();
    let epoch = join(&hub, "r", &Recorder::new(9), None).position.epoch;
    let at = |offset, epoch: &Arc<str>| Position {
        offset,
        epoch: Arc::clone(epoch),
    };
    let cases = [
        (at(1, &epoch), "items 2 left by size"),
        (at(4, &Arc::from("another")), "another epoch"),
        (at(9, &epoch), "an offset the room never reached"),
    ];
    for (since, why) in cases {
        let answer = join(&hub, "r", &conn, Some(&since));
        assert_eq!(answer.recovered, Some(false), "{why}");
        assert_eq!(answer.position, at(5, &epoch), "{why}: where the room stands");
        assert!(conn.frames.lock().is_empty(), "{why}: nothing replayed");
        hub.leave("r", 1);
    }
    let answer = join(&hub, "r", &conn, Some(&at(2, &epoch)));
    assert_eq!(answer.recovered, Some(true), "3 to 5 are all kept");
    assert_eq!(received(&conn), numbered(3..=5));
    let outcomes = |label| hub.metrics.recoveries_of(label);
    assert_eq!(
        (
            outcomes("recovered"),
            outcomes("gone"),
            outcomes("other_epoch"),
            outcomes("ahead")
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(hub.metrics.evicted_of("size"), 2);
}

#[tokio::test(start_paused = true)]
async fn items_age_out_and_an_empty_history_without_members_is_forgotten() {
    let (hub, _stop, _tracker) = with_history(100, 1 << 20);
    hub.push(&room("r"), items(&["1"])).unwrap();
    let conn = Recorder::new(1);
    hub.register(&conn);
    let before = join(&hub, "r", &conn, None).position;
    hub.leave("r", 1);
    tokio::time::advance(TTL).await;
    settle().await;
    assert_eq!(hub.metrics.evicted_of("age"), 1);
    assert_eq!(hub.metrics.history_bytes.get(), 0);
    let since = Position {
        offset: 0,
        ..before.clone()
    };
    let after = join(&hub, "r", &conn, Some(&since));
    assert_eq!(after.recovered, Some(false), "the history was forgotten: a new epoch");
    assert_ne!(after.position.epoch, before.epoch);
    assert_eq!(after.position.offset, 0);
}

#[tokio::test(start_paused = true)]
async fn the_memory_bound_evicts_the_oldest_items_of_the_shard_first() {
    let item = "x".repeat(100);
    let cost = 100 + ITEM_OVERHEAD;
    // Room for about ten items (and their histories) per shard.
    let budget = 2 * (10 * cost + 3 * HISTORY_OVERHEAD);
    let (hub, _stop, _tracker) = with_history(1000, budget);
    for n in 0..200 {
        hub.push(&room(&format!("room-{}", n % 7)), items(&[&format!("\"{item}{n}\"")]))
            .unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let evicted = hub.metrics.evicted_of("memory");
    assert!(evicted >= 170, "evicted {evicted}");
    let shards_bytes: usize = hub.shards.iter().map(|s| s.state.lock().histories.bytes()).sum();
    assert!(shards_bytes <= budget, "{shards_bytes} > {budget}");
    assert_eq!(hub.metrics.history_bytes.get() as usize, shards_bytes);
    // What is left is the newest: a resume from just before the last push of a room works.
    let conn = Recorder::new(1);
    let epoch = join(&hub, "room-3", &conn, None).position;
    hub.leave("room-3", 1);
    let since = Position {
        offset: epoch.offset - 1,
        ..epoch
    };
    assert_eq!(join(&hub, "room-3", &conn, Some(&since)).recovered, Some(true));
}

#[tokio::test(start_paused = true)]
async fn with_history_off_frames_and_joins_are_as_before() {
    let (hub, _stop, _tracker) = start(100, 1000);
    let conn = Recorder::new(1);
    hub.register(&conn);
    let answered = Arc::new(AtomicBool::new(true));
    let seen = Arc::clone(&answered);
    hub.join_with("r", &conn, None, move |given| {
        seen.store(given.is_some(), Ordering::Relaxed);
        None
    })
    .unwrap();
    assert!(!answered.load(Ordering::Relaxed), "no position without history");
    hub.push(&room("r"), items(&["1"])).unwrap();
    settle().await;
    let frame = conn.frames.lock()[0].clone();
    assert_eq!(payload(&frame), br#"{"type":"PUSH","data":{"room":"r","items":[1]}}"#);
    assert_eq!(
        hub.shards.iter().map(|s| s.state.lock().histories.len()).sum::<usize>(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn histories_emptied_to_make_room_are_forgotten() {
    let cost = 10 + ITEM_OVERHEAD + HISTORY_OVERHEAD;
    let (hub, _stop, _tracker) = with_history(10, 2 * 5 * cost);
    for n in 0..500 {
        hub.push(&room(&format!("once-{n}")), items(&["\"123456789\""]))
            .unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let held: usize = hub.shards.iter().map(|s| s.state.lock().histories.len()).sum();
    assert!(held <= 12, "{held} histories held for about 10 items");
}
