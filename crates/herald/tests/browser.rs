//! The demo page in a real browser: headless Chromium loads `GET /`, the page connects and joins a room, a push
//! goes through the API, and the item shows up on the page. Chromium is driven over its DevTools protocol (a
//! WebSocket, spoken here with the same client library the other tests use).
//!
//! Needs Debian's `chromium`; `scripts/test` installs it when missing. `HERALD_CHROMIUM` names another binary.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{FAILSAFE, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

type DevTools = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct Browser {
    child: Child,
    profile: PathBuf,
    debugger: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium_binary() -> PathBuf {
    let binary = std::env::var_os("HERALD_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        binary.exists(),
        "{} not found: run scripts/test, which installs Debian's chromium, or set HERALD_CHROMIUM",
        binary.display()
    );
    binary
}

/// Starts headless Chromium on `url` with remote debugging on a free port.
async fn launch(url: &str) -> Browser {
    let profile = std::env::temp_dir().join(format!("herald-chromium-{}", std::process::id()));
    let mut child = Command::new(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let debugger = tokio::time::timeout(FAILSAFE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without opening DevTools");
    })
    .await
    .expect("chromium starts in time");
    // Keep draining stderr so Chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Browser {
        child,
        profile,
        debugger,
    }
}

/// Connects to the DevTools endpoint of the page showing `url`.
async fn attach(browser: &Browser, url: &str) -> DevTools {
    let port: u16 = browser
        .debugger
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let list_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + FAILSAFE;
    let page = loop {
        let targets: Value = support::http(list_addr, "GET", "/json/list", None, b"").await.json();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page" && t["url"] == url)
            .cloned();
        if let Some(page) = page {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "no page for {url} in {targets}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (devtools, _) = ClientBuilder::new()
        .uri(page["webSocketDebuggerUrl"].as_str().unwrap())
        .unwrap()
        .connect()
        .await
        .expect("attach to the page");
    devtools
}

/// Evaluates `expression` in the page and returns its value.
async fn evaluate(devtools: &mut DevTools, id: u64, expression: &str) -> Value {
    let call =
        json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": true}});
    devtools.send(Message::text(call.to_string())).await.unwrap();
    loop {
        let message = tokio::time::timeout(FAILSAFE, devtools.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(text) = message.as_text() else {
            continue;
        };
        let reply: Value = serde_json::from_str(text).unwrap();
        if reply["id"] == id {
            return reply["result"]["result"]["value"].clone();
        }
    }
}

/// Polls `expression` until `done` accepts its value.
async fn wait_for(devtools: &mut DevTools, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + FAILSAFE;
    for id in 1.. {
        let value = evaluate(devtools, id, expression).await;
        if done(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{expression} stayed {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_a_pushed_item() {
    let server = TestServer::with_window("0").await;
    let url = format!("http://{}/?room=browser", server.ws);
    let browser = launch(&url).await;
    let mut devtools = attach(&browser, &url).await;

    let status = "document.getElementById('status').textContent";
    wait_for(&mut devtools, status, |v| v == "joined browser").await;
    let answer = server.push_room("browser", r#"[{"text":"hello from the API"}]"#).await;
    assert_eq!(answer["recipients"], 1);

    let log = "document.getElementById('log').innerText";
    let shown = wait_for(&mut devtools, log, |v| {
        v.as_str().is_some_and(|s| s.contains("hello from the API"))
    })
    .await;
    assert!(
        shown.as_str().unwrap().contains("browser"),
        "the room is shown beside the item: {shown}"
    );
    drop(devtools);
    drop(browser);
    server.stop().await;
}
