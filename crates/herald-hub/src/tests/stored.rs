//! History kept elsewhere: a JOIN waits for the store's reader, then gets its ACK, what it missed and the live
//! items, in that order and once; a connection gone meanwhile is forgotten.

use std::borrow::Cow;

use herald_protocol::client::Since;

use super::*;
use crate::history::{HistoryConfig, Recovery};

const EPOCH: &str = "js-test";

fn elsewhere() -> (Arc<Hub<Recorder>>, CancellationToken, TaskTracker) {
    let started = super::history::with_history(100, HistoryConfig::OFF.max_bytes);
    assert!(started.0.keep_history_elsewhere(Arc::from(EPOCH)));
    started
}

/// Sends a JOIN (resuming from `since` when given); the answer lands in the returned slot when the store answers.
fn join(hub: &Hub<Recorder>, conn: &Arc<Recorder>, since: Option<u64>) -> Arc<Mutex<Option<JoinAnswer>>> {
    let since = since.map(|offset| Since {
        offset,
        epoch: Cow::Borrowed(EPOCH),
    });
    let answer = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&answer);
    hub.join_with("r", conn, since.as_ref(), move |given| {
        *slot.lock() = given.cloned();
        None
    })
    .unwrap();
    answer
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
async fn member_with_item_5(hub: &Hub<Recorder>) -> Arc<Recorder> {
    let stays = Recorder::new(1);
    hub.register(&stays);
    let _ = join(hub, &stays, None);
    let at_4 = Fetched {
        stands_at: 4,
        ..Fetched::default()
    };
    assert_eq!(hub.complete_join("r", 1, at_4), Completion::Done);
    stored(hub, "5", 5, 4);
    settle().await;
    stays
}

fn stored(hub: &Hub<Recorder>, item: &str, offset: u64, before: u64) -> Accepted {
    hub.push_stored("r", items(&[item]), vec![offset], before).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_join_waits_for_the_store_then_gets_what_it_missed_before_live_items() {
    let (hub, _stop, _tracker) = elsewhere();
    let mut interest = hub.watch_interest().unwrap();
    let a = Recorder::new(1);
    hub.register(&a);
    let answer = join(&hub, &a, Some(10));
    assert_eq!(interest.try_recv().unwrap(), Interest::Wanted(room("r")));
    assert_eq!(
        interest.try_recv().unwrap(),
        Interest::Join(JoinRequest {
            room: Arc::from("r"),
            conn: 1,
            since: Some(StoredSince {
                offset: 10,
                epoch: EPOCH.to_owned(),
            }),
        })
    );
    assert!(answer.lock().is_none(), "no ACK before the store answered");
    // Taken while the JOIN waits: not delivered to it live (it is not a member yet); the store has it.
    assert_eq!(stored(&hub, "12", 12, 11).recipients, Some(0));
    let _ = hub.complete_join(
        "r",
        1,
        Fetched {
            since: Some(10),
            stands_at: 12,
            items: vec![(11, Bytes::from("11")), (12, Bytes::from("12"))],
            outcome: Some(Recovery::Recovered),
        },
    );
    let answer = answer.lock().clone().expect("answered");
    assert_eq!((answer.position.offset, answer.recovered), (12, Some(true)));
    assert_eq!(frames(&a), [(12, vec!["11".to_owned(), "12".to_owned()])]);
    assert_eq!(stored(&hub, "13", 13, 12).recipients, Some(1));
    settle().await;
    assert_eq!(
        frames(&a)[1],
        (13, vec!["13".to_owned()]),
        "then live, with the store's offset"
    );
    assert!(
        interest.try_recv().is_err(),
        "the member changes no interest: the JOIN had"
    );
}

#[tokio::test(start_paused = true)]
async fn items_waiting_for_their_frame_when_the_join_completes_arrive_live_once() {
    let (hub, _stop, _tracker) = elsewhere();
    let stays = member_with_item_5(&hub).await;
    let returns = Recorder::new(2);
    hub.register(&returns);
    // Inside the window: 7 waits in the batch when the returning client's JOIN completes.
    stored(&hub, "7", 7, 5);
    let answer = join(&hub, &returns, Some(4));
    let _ = hub.complete_join(
        "r",
        2,
        Fetched {
            since: Some(4),
            stands_at: 7,
            items: vec![(5, Bytes::from("5")), (7, Bytes::from("7"))],
            outcome: Some(Recovery::Recovered),
        },
    );
    assert_eq!(
        answer.lock().clone().unwrap().position.offset,
        5,
        "the item before those waiting"
    );
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
    let (hub, _stop, _tracker) = elsewhere();
    let mut interest = hub.watch_interest().unwrap();
    let a = Recorder::new(1);
    hub.register(&a);
    let answer = join(&hub, &a, None);
    hub.unregister(&*a, ["r"]);
    assert_eq!(interest.try_recv().unwrap(), Interest::Wanted(room("r")));
    assert!(matches!(interest.try_recv().unwrap(), Interest::Join(_)));
    assert_eq!(interest.try_recv().unwrap(), Interest::Unwanted(room("r")));
    let _ = hub.complete_join(
        "r",
        1,
        Fetched {
            stands_at: 3,
            ..Fetched::default()
        },
    );
    assert!(answer.lock().is_none() && a.frames.lock().is_empty());
    assert_eq!(hub.stats().memberships, 0);
    assert_eq!(hub.stats().rooms, 0);
}

#[tokio::test(start_paused = true)]
async fn a_join_ahead_of_items_still_waiting_here_waits_for_their_frame() {
    let (hub, _stop, _tracker) = elsewhere();
    let _stays = member_with_item_5(&hub).await;
    let ahead = Recorder::new(2);
    hub.register(&ahead);
    // 6 waits in the batch here, but the client got it elsewhere already: it resumes from 6.
    stored(&hub, "6", 6, 5);
    let answer = join(&hub, &ahead, Some(6));
    let resumed = Fetched {
        since: Some(6),
        stands_at: 6,
        items: Vec::new(),
        outcome: Some(Recovery::Recovered),
    };
    assert_eq!(hub.complete_join("r", 2, resumed.clone()), Completion::Wait);
    assert!(answer.lock().is_none(), "still pending");
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(hub.complete_join("r", 2, resumed), Completion::Done);
    assert_eq!(answer.lock().clone().unwrap().position.offset, 6);
    stored(&hub, "7", 7, 6);
    tokio::time::advance(WINDOW).await;
    settle().await;
    assert_eq!(frames(&ahead), [(7, vec!["7".to_owned()])], "6 not again, 7 live");
}
