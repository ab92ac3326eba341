//! The demo page in a real browser: headless Chromium loads `GET /` (through a TCP proxy the test cuts), the page
//! connects with herald-client and joins a room, pushes go through the API, and their items show up on the page,
//! compressed when they are long enough (Chromium offers permessage-deflate), also one pushed while the connection
//! was cut (Chromium driven by [`support::chromium`]).

mod support;

use support::chromium::{Page, launch};
use support::proxy::Proxy;
use support::{TestServer, flags};

/// Waits until the page's log shows `text`.
async fn shown(page: &mut Page, text: &str) -> String {
    let log = "document.getElementById('log').innerText";
    let shown = page
        .wait_for(log, |v| v.as_str().is_some_and(|s| s.contains(text)))
        .await;
    shown.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_pushed_items_through_a_cut_connection() {
    let server = TestServer::start(flags(&["--merge-window", "0", "--history-size", "10"])).await;
    let proxy = Proxy::start(server.ws).await;
    let url = format!("http://{}/?room=browser", proxy.addr);
    let browser = launch(&url).await;
    let mut page = Page::attach(&browser, &url).await;

    let status = "document.getElementById('status').textContent";
    page.wait_for(status, |v| v == "joined browser").await;
    let answer = server.push_room("browser", r#"[{"text":"hello from the API"}]"#).await;
    assert_eq!(answer["recipients"], 1);
    let log = shown(&mut page, "hello from the API").await;
    assert!(log.contains("browser"), "the room is shown beside the item: {log}");
    // Chromium offers permessage-deflate: a frame over compression_min_bytes reaches the page compressed.
    let long = "a long message that compresses well, ".repeat(10);
    server
        .push_room("browser", &serde_json::json!([{ "text": long }]).to_string())
        .await;
    shown(&mut page, long.trim_end()).await;
    assert_eq!(server.hub_stats().await.compressed_frames, 1, "compressed for the page");

    // Cut the page's connection and push at once: herald-client reconnects and rejoins from the last item it saw,
    // so the item arrives whether it was pushed before or after the rejoin.
    let before = proxy.accepted();
    // The page's WebSocket, and any HTTP connection Chromium still keeps open.
    assert!(proxy.cut() >= 1, "the page's connection was cut");
    server.push_room("browser", r#"["pushed while cut"]"#).await;
    shown(&mut page, "pushed while cut").await;
    page.wait_for(status, |v| v == "joined browser").await;
    assert!(proxy.accepted() > before, "the page reconnected");
    let log = shown(&mut page, "pushed while cut").await;
    assert_eq!(
        log.matches("hello from the API").count(),
        1,
        "nothing shown twice: {log}"
    );
    assert!(!log.contains("missed"), "the rejoin recovered: {log}");
    assert_eq!(page.errors(), Vec::<String>::new());

    drop(page);
    drop(browser);
    server.stop().await;
}
