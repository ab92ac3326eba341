//! The demo page in a real browser: headless Chromium loads `GET /`, the page connects and joins a room, a push
//! goes through the API, and the item shows up on the page (Chromium driven by [`support::chromium`]).

mod support;

use support::TestServer;
use support::chromium::{Page, launch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_a_pushed_item() {
    let server = TestServer::with_window("0").await;
    let url = format!("http://{}/?room=browser", server.ws);
    let browser = launch(&url).await;
    let mut page = Page::attach(&browser, &url).await;

    let status = "document.getElementById('status').textContent";
    page.wait_for(status, |v| v == "joined browser").await;
    let answer = server.push_room("browser", r#"[{"text":"hello from the API"}]"#).await;
    assert_eq!(answer["recipients"], 1);

    let log = "document.getElementById('log').innerText";
    let shown = page.wait_for(log, |v| {
        v.as_str().is_some_and(|s| s.contains("hello from the API"))
    })
    .await;
    assert!(
        shown.as_str().unwrap().contains("browser"),
        "the room is shown beside the item: {shown}"
    );
    drop(page);
    drop(browser);
    server.stop().await;
}
