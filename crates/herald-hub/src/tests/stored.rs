//! History kept elsewhere: a JOIN waits for the store's reader, then gets its ACK, what it missed and the live
//! items, in that order and once; a connection gone meanwhile is forgotten.

use std::borrow::Cow;

use herald_protocol::client::Since;

use super::*;
use crate::history::{HistoryConfig, Recovery};
use crate::{Completion, Fetched, JoinRequest, StoredSince};

const EPOCH: &str = "js-test";

/// A hub with history elsewhere, and what it reports to its store's reader.
struct Elsewhere {
    hub: Arc<Hub<Recorder>>,
    interest: mpsc::UnboundedReceiver<Interest>,
    _stop: CancellationToken,
    _tracker: TaskTracker,
}

fn elsewhere() -> Elsewhere {
    let (hub, stop, tracker) = super::history::with_history(100, HistoryConfig::OFF.max_bytes);
    assert!(hub.keep_history_elsewhere(Arc::from(EPOCH)));
    let interest = hub.watch_interest().unwrap();
    Elsewhere {
        hub,
        interest,
        _stop: stop,
        _tracker: tracker,
    }
}

/// Where a pending JOIN's answer lands once the store answered it.
type Slot = Arc<Mutex<Option<JoinAnswer>>>;

impl Elsewhere {
    /// Sends a JOIN to `r` (resuming from `since` when given): its answer's slot, the request the store must
    /// answer, and the changes of interest reported before it.
    fn join(&mut self, conn: &Arc<Recorder>, since: Option<u64>) -> (Slot, JoinRequest, Vec<Interest>) {
        let since = since.map(|offset| Since {
            offset,
            epoch: Cow::Borrowed(EPOCH),
        });
        let answer = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&answer);
        self.hub
            .join_with("r", conn, since.as_ref(), move |given| {
                *slot.lock() = given.cloned();
                None
            })
            .unwrap();
        let mut before = Vec::new();
        loop {
            match self.interest.try_recv().expect("a JOIN request") {
                Interest::Join(request) => return (answer, request, before),
                other => before.push(other),
            }
        }
    }
}

/// The offsets of the frames a connection received, and their items.
fn frames(conn: &Recorder) -> Vec<(u64, Vec<String>)> {
    conn.frames
        .lock()
        .iter()
        .map(|frame| {
            let json: serde_json::Value = serde_json::from_slice(payload(frame)).unwrap();
            assert_eq!(json["data"]["epoch"], EPOCH);
            let items = json["data"]["items"].as_array().unwrap();
            let offset = json["data"]["offset"].as_u64().expect("an offset");
            (offset, items.iter().map(|item| item.to_string()).collect())
        })
        .collect()
}

/// Connection 1, a member of room `r` (which stood at 4 when it joined), with item 5 sent to it.
async fn member_with_item_5(store: &mut Elsewhere) -> Arc<Recorder> {
    let stays = Recorder::new(1);
    store.hub.register(&stays);
    let (_, request, _) = store.join(&stays, None);
    let at_4 = Fetched {
        stands_at: 4,
        ..Fetched::default()
    };
    assert_eq!(store.hub.complete_join(&request, at_4), Completion::Done);
    stored(&store.hub, "5", 5, 4);
    settle().await;
    stays
}

fn stored(hub: &Hub<Recorder>, item: &str, offset: u64, before: u64) -> Accepted {
    hub.push_stored(&Arc::from("r"), items(&[item]), vec![offset], before)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_join_waits_for_the_store_then_gets_what_it_missed_before_live_items() {
    let mut store = elsewhere();
    let hub = Arc::clone(&store.hub);
    let a = Recorder::new(1);
    hub.register(&a);
    let (answer, request, before) = store.join(&a, Some(10));
    assert_eq!(before, [Interest::Wanted(room("r"))]);
    assert_eq!(
        (request.room.as_ref(), request.conn, request.since.clone()),
        (
            "r",
            1,
            Some(StoredSince {
                offset: 10,
                epoch: EPOCH.to_owned(),
            })
        )
    );
    assert!(answer.lock().is_none(), "no ACK before the store answered");
    // Taken while the JOIN waits: not delivered to it live (it is not a member yet); the store has it.
    assert_eq!(stored(&hub, "12", 12, 11).recipients, Some(0));
    let fetched = Fetched {
        since: Some(10),
        stands_at: 12,
        items: vec![(11, Bytes::from("11")), (12, Bytes::from("12"))],
        outcome: Some(Recovery::Recovered),
    };
    assert_eq!(hub.complete_join(&request, fetched), Completion::Done);
    let answer = answer.lock().clone().expect("answered");
    assert_eq!((answer.position.offset, answer.recovered), (12, Some(true)));
    assert_eq!(frames(&a), [(12, vec!["11".to_owned(), "12".to_owned()])]);
    assert_eq!(stored(&hub, "13", 13, 12).recipients, Some(1));
    assert_eq!(stored(&hub, "12", 12, 11).items, 0, "what the room has is dropped");
    settle().await;
    assert_eq!(
        frames(&a)[1..],
        [(13, vec!["13".to_owned()])],
        "then live, with the store's offset"
    );
    assert!(
        store.interest.try_recv().is_err(),
        "the member changes no interest: the JOIN had"
    );
}

#[tokio::test(start_paused = true)]
async fn items_waiting_for_their_frame_when_the_join_completes_arrive_live_once() {
    let mut store = elsewhere();
    let stays = member_with_item_5(&mut store).await;
    let hub = Arc::clone(&store.hub);
    let returns = Recorder::new(2);
    hub.register(&returns);
    // Inside the window: 7 waits in the batch when the returning client's JOIN completes.
    stored(&hub, "7", 7, 5);
    let (answer, request, _) = store.join(&returns, Some(4));
    let fetched = Fetched {
        since: Some(4),
        stands_at: 7,
        items: vec![(5, Bytes::from("5")), (7, Bytes::from("7"))],
        outcome: Some(Recovery::Recovered),
    };
    assert_eq!(hub.complete_join(&request, fetched), Completion::Done);
    let at = answer.lock().clone().unwrap().position.offset;
    assert_eq!(at, 5, "the item before those waiting");
    assert_eq!(
        frames(&returns),
        [(5, vec!["5".to_owned()])],
        "replayed up to there only"
    );
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(
        frames(&returns)[1..],
        [(7, vec!["7".to_owned()])],
        "the waiting item live, once"
    );
    assert_eq!(frames(&stays), [(5, vec!["5".to_owned()]), (7, vec!["7".to_owned()])]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_leaves_before_the_store_answers_is_forgotten() {
    let mut store = elsewhere();
    let hub = Arc::clone(&store.hub);
    let a = Recorder::new(1);
    hub.register(&a);
    let (answer, request, _) = store.join(&a, None);
    hub.unregister(&*a, ["r"]);
    assert_eq!(store.interest.try_recv().unwrap(), Interest::Unwanted(room("r")));
    let late = Fetched {
        stands_at: 3,
        ..Fetched::default()
    };
    assert_eq!(hub.complete_join(&request, late.clone()), Completion::Done);
    assert!(answer.lock().is_none() && a.frames.lock().is_empty());
    assert_eq!((hub.stats().memberships, hub.stats().rooms), (0, 0));

    // Back again: a new JOIN, which a late answer to the old one does not complete.
    let (answer, again, _) = store.join(&a, None);
    assert_ne!(again.id, request.id);
    assert_eq!(hub.complete_join(&request, late), Completion::Done);
    assert!(answer.lock().is_none(), "the old answer is not this JOIN's");
    let now = Fetched {
        stands_at: 8,
        ..Fetched::default()
    };
    assert_eq!(hub.complete_join(&again, now), Completion::Done);
    assert_eq!(answer.lock().clone().unwrap().position.offset, 8);
}

#[tokio::test(start_paused = true)]
async fn a_join_sent_again_while_the_first_waits_is_answered_with_it() {
    let mut store = elsewhere();
    let hub = Arc::clone(&store.hub);
    let a = Recorder::new(1);
    hub.register(&a);
    let (first, request, _) = store.join(&a, None);
    let second = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&second);
    let joined = hub
        .join_with("r", &a, None, move |given| {
            *slot.lock() = given.cloned();
            None
        })
        .unwrap();
    assert!(!joined.new, "the connection is joining already");
    assert!(store.interest.try_recv().is_err(), "no second request for the store");
    let fetched = Fetched {
        stands_at: 2,
        ..Fetched::default()
    };
    assert_eq!(hub.complete_join(&request, fetched), Completion::Done);
    assert_eq!(first.lock().clone().unwrap().position.offset, 2);
    assert_eq!(second.lock().clone().unwrap().position.offset, 2);
}

#[tokio::test(start_paused = true)]
async fn a_room_nobody_wants_any_more_drops_its_batch_at_once() {
    let mut store = elsewhere();
    let stays = member_with_item_5(&mut store).await;
    let hub = Arc::clone(&store.hub);
    stored(&hub, "6", 6, 5);
    hub.unregister(&*stays, ["r"]);
    assert_eq!(hub.stats().rooms, 0, "gone with its batch");
    assert_eq!(hub.stats().pending_items, 0);
    // The next reader starts from where the store stands (9): it finds no batch of before (6) to wait behind.
    let b = Recorder::new(2);
    hub.register(&b);
    let (answer, request, _) = store.join(&b, None);
    let fetched = Fetched {
        stands_at: 9,
        ..Fetched::default()
    };
    assert_eq!(hub.complete_join(&request, fetched), Completion::Done);
    assert_eq!(answer.lock().clone().unwrap().position.offset, 9);
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert!(b.frames.lock().is_empty(), "6 reached nobody");
}

#[tokio::test(start_paused = true)]
async fn a_join_ahead_of_items_still_waiting_here_waits_for_their_frame() {
    let mut store = elsewhere();
    let _stays = member_with_item_5(&mut store).await;
    let hub = Arc::clone(&store.hub);
    let ahead = Recorder::new(2);
    hub.register(&ahead);
    // 6 waits in the batch here, but the client got it elsewhere already: it resumes from 6.
    stored(&hub, "6", 6, 5);
    let (answer, request, _) = store.join(&ahead, Some(6));
    let resumed = Fetched {
        since: Some(6),
        stands_at: 6,
        items: Vec::new(),
        outcome: Some(Recovery::Recovered),
    };
    assert_eq!(hub.complete_join(&request, resumed.clone()), Completion::Wait);
    assert!(answer.lock().is_none(), "still pending");
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(hub.complete_join(&request, resumed), Completion::Done);
    assert_eq!(answer.lock().clone().unwrap().position.offset, 6);
    stored(&hub, "7", 7, 6);
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(frames(&ahead), [(7, vec!["7".to_owned()])], "6 not again, 7 live");
}

#[tokio::test(start_paused = true)]
async fn a_room_push_around_the_store_is_refused() {
    let store = elsewhere();
    let refused = store.hub.push(&room("r"), items(&["1"])).unwrap_err();
    assert!(matches!(refused, Refused::Unavailable { .. }), "{refused:?}");
    assert_eq!(store.hub.metrics.refused_unavailable.get(), 1, "counted as refused");
    // Broadcasts and users have no history: taken as before.
    assert!(store.hub.push(&Target::All, items(&["1"])).is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_item_refused_for_a_full_queue_is_not_counted_as_handed() {
    let (hub, _stop, _tracker) = start_with(HubConfig {
        shards: 1,
        merge: MergePolicy {
            window: WINDOW,
            max_items: 100,
        },
        queue_items: 2,
        queue_bytes: 1 << 30,
        max_rooms: 0,
        history: HistoryConfig::OFF,
        compression: herald_protocol::deflate::Compression::default(),
    });
    assert!(hub.keep_history_elsewhere(Arc::from(EPOCH)));
    let mut store = Elsewhere {
        interest: hub.watch_interest().unwrap(),
        hub: Arc::clone(&hub),
        _stop: CancellationToken::new(),
        _tracker: TaskTracker::new(),
    };
    let member = member_with_item_5(&mut store).await;
    // 5 went out at once; 6 and 7 wait for the window and fill the queue, so 8 is refused.
    stored(&hub, "6", 6, 5);
    stored(&hub, "7", 7, 6);
    let refused = hub.push_stored(&Arc::from("r"), items(&["8"]), vec![8], 7).unwrap_err();
    assert!(matches!(refused, Refused::QueueFull { .. }), "{refused:?}");
    tokio::time::advance(WINDOW).await;
    settle().await;
    // Where the room stands is the last item it took: a JOIN now is told 7, and the reader that hands 8 again
    // (once the queue has room) gets it delivered, not dropped as a duplicate.
    let answer = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&answer);
    hub.join_with("r", &member, None, move |given| {
        *slot.lock() = given.cloned();
        None
    })
    .unwrap();
    assert_eq!(answer.lock().as_ref().map(|answer| answer.position.offset), Some(7));
    assert_eq!(stored(&hub, "8", 8, 7).items, 1);
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(
        frames(&member).last(),
        Some(&(8, vec!["8".to_owned()])),
        "{:?}",
        frames(&member)
    );
}
