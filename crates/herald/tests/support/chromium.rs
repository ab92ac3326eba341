//! Headless Chromium driven over its DevTools protocol (a WebSocket, spoken with the same client library the
//! other tests use): start it on a page, attach to that page, evaluate expressions in it, take a screenshot.
//!
//! Needs Debian's `chromium`; `scripts/test` installs it when missing. `HERALD_CHROMIUM` names another binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

use super::FAILSAFE;

type DevTools = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    profile: PathBuf,
    pub debugger: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub fn chromium_binary() -> PathBuf {
    let binary = std::env::var_os("HERALD_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        binary.exists(),
        "{} not found: run scripts/test, which installs Debian's chromium, or set HERALD_CHROMIUM",
        binary.display()
    );
    binary
}

/// Starts headless Chromium on `url` with remote debugging on a free port.
pub async fn launch(url: &str) -> Browser {
    // A profile of its own for each browser, so two tests of one binary can run browsers side by side.
    static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("herald-chromium-{}-{nth}", std::process::id()));
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

/// A page of the browser, driven over its DevTools WebSocket. Events that arrive between answers are kept:
/// [`Page::errors`] reads the console errors and uncaught exceptions among them.
pub struct Page {
    devtools: DevTools,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    /// Connects to the DevTools endpoint of the page showing `url`, with its console reported
    /// (`Runtime.enable`, `Log.enable`).
    pub async fn attach(browser: &Browser, url: &str) -> Page {
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
        let target = loop {
            let targets: Value = super::http(list_addr, "GET", "/json/list", None, b"").await.json();
            let target = targets
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == "page" && t["url"] == url)
                .cloned();
            if let Some(target) = target {
                break target;
            }
            assert!(tokio::time::Instant::now() < deadline, "no page for {url} in {targets}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (devtools, _) = ClientBuilder::new()
            .uri(target["webSocketDebuggerUrl"].as_str().unwrap())
            .unwrap()
            .connect()
            .await
            .expect("attach to the page");
        let mut page = Page {
            devtools,
            next_id: 1,
            events: Vec::new(),
        };
        page.call("Runtime.enable", json!({})).await;
        page.call("Log.enable", json!({})).await;
        page
    }

    /// Calls a DevTools method and returns its `result`; panics on an error answer.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({"id": id, "method": method, "params": params});
        self.devtools.send(Message::text(call.to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(FAILSAFE, self.devtools.next())
                .await
                .expect("DevTools answers in time")
                .expect("DevTools stays connected")
                .unwrap();
            let Some(text) = message.as_text() else {
                continue;
            };
            let reply: Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
            if reply.get("method").is_some() {
                self.events.push(reply);
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting it when it is a promise) and returns its value.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        self.try_evaluate(expression)
            .await
            .unwrap_or_else(|thrown| panic!("{expression} threw: {thrown}"))
    }

    /// Evaluates `expression`; what it threw, if it did.
    async fn try_evaluate(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call("Runtime.evaluate", params).await;
        if result["exceptionDetails"].is_null() {
            Ok(result["result"]["value"].clone())
        } else {
            Err(result["exceptionDetails"].clone())
        }
    }

    /// Polls `expression` until `done` accepts its value. While the page is still loading the expression may
    /// throw (its elements not there yet): that counts as not done.
    pub async fn wait_for(&mut self, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        loop {
            let value = self.try_evaluate(expression).await;
            if let Ok(value) = &value
                && done(value)
            {
                return value.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "{expression} stayed {value:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The console errors and uncaught exceptions the page has reported so far, one line each.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|event| match event["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(event["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled" if event["params"]["type"] == "error" => {
                    Some(event["params"]["args"].to_string())
                }
                "Log.entryAdded" if event["params"]["entry"]["level"] == "error" => {
                    Some(event["params"]["entry"].to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// A PNG screenshot of the page as it is drawn now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let result = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}
