//! `GET /dashboard`: the page in headless Chromium on `herald serve` and on `herald logic` (it loads with no
//! console error, shows the totals `/stats` has, and its charts draw the pushes made), its files over plain HTTP,
//! `api_keys` (a Basic challenge for browsers, Bearer elsewhere as before), and the data endpoint on a gRPC
//! cluster with a gateway stopped and on NATS. A screenshot of each page is kept in `target/test-artifacts/`.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use herald_protocol::dashboard::{DashboardData, DashboardMode, GatewayState};
use serde_json::json;
use support::chromium::{Page, launch};
use support::cluster::{NatsServer, TestGateway, TestLogic};
use support::{Client, FAILSAFE, PushApi, TestServer, flags, http_with};

/// `GET /dashboard/data`, read back as the document herald writes.
async fn dashboard_data(api: &PushApi) -> DashboardData {
    let response = api.http("GET", "/dashboard/data", None, b"").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("/dashboard/data: {e}: {}", response.body))
}

/// Polls the data endpoint until `condition` holds; returns that sample.
async fn wait_data(api: &PushApi, what: &str, condition: impl Fn(&DashboardData) -> bool) -> DashboardData {
    let deadline = tokio::time::Instant::now() + FAILSAFE;
    loop {
        let data = dashboard_data(api).await;
        if condition(&data) {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {what}; last sample: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where test artifacts go: `target/test-artifacts/` of the build (`CARGO_TARGET_DIR` when set).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Opens `url` in `page` with every console message reported from the first byte on, at a size that shows the
/// whole page, and waits for the page's first sample.
async fn open(page: &mut Page, url: &str) {
    let size = json!({"width": 1280, "height": 1500, "deviceScaleFactor": 1, "mobile": false});
    page.call("Emulation.setDeviceMetricsOverride", size).await;
    // Forget the page shown before, so that the wait below is for this one.
    page.evaluate("window.herald = undefined").await;
    page.call("Page.navigate", json!({ "url": url })).await;
    page.wait_for("window.herald ? window.herald.fetches : 0", |v| v.as_u64() >= Some(1))
        .await;
}

/// What the page shows now: its figures' raw values, the largest value each chart draws, the gateway table.
const SHOWN: &str = r##"(() => {
  const value = (id) => { const v = document.getElementById(id).dataset.value; return v === "" ? null : Number(v); };
  const peak = (id) => {
    const chart = window.herald.charts[id];
    if (!chart) return null;
    return Math.max(0, ...chart.data.slice(1).flat().filter((v) => v != null));
  };
  const rows = [...document.querySelectorAll("#gateways tbody tr")]
    .map((tr) => [...tr.cells].map((td) => td.textContent));
  return {
    status: document.getElementById("status").dataset.state,
    mode: document.getElementById("mode").textContent,
    connections: value("total-connections"),
    pushes: value("total-pushes"),
    items: value("total-items"),
    frames: value("total-frames"),
    closes: value("total-closes"),
    pushes_peak: peak("pushes"),
    frames_peak: peak("frames"),
    bytes_peak: peak("bytes"),
    gateways_peak: peak("gateways"),
    gateways: rows,
    failures: window.herald.failures,
  };
})()"##;

/// Saves a screenshot of `page` as `name` among the artifacts, once its charts hold a few samples.
async fn save_screenshot(page: &mut Page, name: &str) {
    page.wait_for("window.herald.samples.length", |v| v.as_u64() >= Some(5))
        .await;
    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_what_serve_and_logic_count_in_chromium() {
    let server = TestServer::with_window("0").await;
    let mut member = server.member("charts").await;
    // A member that negotiated permessage-deflate, so that a long item is compressed (and the bytes counted).
    let (mut compressing, _) = support::RawClient::handshake_with(
        tokio::net::TcpStream::connect(server.ws).await.unwrap(),
        server.ws,
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    )
    .await;
    compressing
        .send_frame(0x81, br#"{"type":"JOIN","id":1,"data":{"room":"charts"}}"#, true)
        .await;
    assert_eq!(
        compressing.read_frame().await.map(|(opcode, _)| opcode),
        Some(0x1),
        "its ACK"
    );
    let gone = server.client().await;
    let browser = launch("about:blank").await;
    let mut page = Page::attach(&browser, "about:blank").await;
    open(&mut page, &format!("http://{}/dashboard", server.api)).await;

    // Pushes after the page's first sample, so that a rate between two samples is not zero.
    for n in 0..5 {
        server.push_room("charts", &format!("[{n},{{\"n\":{n}}}]")).await;
    }
    server.push_all(r#"["to everyone"]"#).await;
    server
        .push_room("charts", &json!([{ "text": "compressible ".repeat(20) }]).to_string())
        .await;
    member.items(12).await;
    drop(gone);
    let closed = |data: &DashboardData| data.counts.closes.as_ref().map(|c| c.values().sum::<u64>());
    wait_data(&server, "the dropped client's close counted", |data| {
        closed(data) == Some(1)
    })
    .await;
    let stats = server.hub_stats().await;
    assert_eq!((stats.pushes, stats.items), (7, 12), "{stats:?}");
    assert_eq!(stats.compressed_frames, 1, "{stats:?}");
    let data = wait_data(&server, "compression counted", |data| {
        data.total.compression_in_bytes == Some(stats.compression_in_bytes)
    })
    .await;
    assert_eq!(data.total.compression_out_bytes, Some(stats.compression_out_bytes));

    let shown = page
        .wait_for(SHOWN, |shown| {
            shown["pushes"] == stats.pushes
                && shown["items"] == stats.items
                && shown["frames"] == stats.frames
                && shown["closes"] == 1
                && shown["pushes_peak"].as_f64() > Some(0.0)
                && shown["frames_peak"].as_f64() > Some(0.0)
                && shown["bytes_peak"].as_f64() > Some(0.0)
        })
        .await;
    assert_eq!(shown["connections"], stats.connections, "{shown}");
    assert_eq!(shown["mode"], "serve", "{shown}");
    assert_eq!(shown["status"], "live", "{shown}");
    assert_eq!(shown["failures"], 0, "{shown}");
    save_screenshot(&mut page, "dashboard.png").await;
    assert_eq!(page.errors(), Vec::<String>::new(), "the page reports no error");

    // The same page on logic, in front of two gateways: one row each, with its state, and the connections per
    // gateway drawn.
    let gateways = [TestGateway::start(vec![]).await, TestGateway::start(vec![]).await];
    let logic = TestLogic::start(&[gateways[0].rpc, gateways[1].rpc], vec![]).await;
    logic.wait_all_up().await;
    let mut listener = gateways[1].member("cluster").await;
    logic.push_room("cluster", "[1,2,3]").await;
    listener.items(3).await;
    // A connection that comes and goes on the other gateway: its close reaches logic with that gateway's status.
    drop(Client::connect(gateways[0].ws).await);
    open(&mut page, &format!("http://{}/dashboard", logic.api.0)).await;
    let shown = page
        .wait_for(SHOWN, |shown| {
            shown["gateways"].as_array().is_some_and(|rows| rows.len() == 2)
                && shown["connections"] == 1
                && shown["gateways_peak"] == 1
                && shown["closes"] == 1
        })
        .await;
    assert_eq!(shown["mode"], "logic · gRPC", "{shown}");
    assert_eq!(shown["pushes"], 1, "{shown}");
    assert_eq!(shown["items"], 3, "{shown}");
    for (row, gateway) in shown["gateways"].as_array().unwrap().iter().zip(&gateways) {
        assert_eq!(row[0], gateway.rpc.to_string(), "{shown}");
        assert_eq!(row[1], "up", "{shown}");
    }
    save_screenshot(&mut page, "dashboard-logic.png").await;
    assert_eq!(
        page.errors(),
        Vec::<String>::new(),
        "the page reports no error on logic"
    );

    drop(page);
    drop(browser);
    drop(listener);
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
    drop(member);
    server.stop().await;
}

#[tokio::test]
async fn the_dashboards_files_are_served_with_their_types_and_caching() {
    let server = TestServer::start(vec![]).await;
    let page = server.http("GET", "/dashboard", None, b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("script-src 'self'")),
        "{:?}",
        page.headers
    );
    for (path, content_type, cache) in [
        ("/dashboard/dashboard.js", "text/javascript", "no-cache"),
        ("/dashboard/dashboard.css", "text/css", "no-cache"),
        ("/dashboard/uplot-1.6.32.min.js", "text/javascript", "immutable"),
        ("/dashboard/uplot-1.6.32.min.css", "text/css", "immutable"),
    ] {
        let file = server.http("GET", path, None, b"").await;
        assert_eq!(file.status, 200, "{path}");
        assert!(page.body.contains(&path[1..]), "the page links {path}");
        assert!(
            file.header("content-type").is_some_and(|t| t.starts_with(content_type)),
            "{path}"
        );
        assert!(
            file.header("cache-control").is_some_and(|c| c.contains(cache)),
            "{path}"
        );
        assert!(!file.body.is_empty(), "{path}");
    }
    let slash = server.http("GET", "/dashboard/", None, b"").await;
    assert_eq!(slash.status, 308);
    assert_eq!(slash.header("location"), Some("../dashboard"));

    let data = dashboard_data(&server).await;
    assert_eq!(data.mode, DashboardMode::Hub);
    assert!(data.gateways.is_empty());
    let closes = data.counts.closes.expect("serve counts its closes");
    assert!(
        closes.contains_key("heartbeat") && closes.contains_key("slow_consumer"),
        "{closes:?}"
    );
    assert!(data.counts.dropped_frames.is_some() && data.counts.history.is_some());
    server.stop().await;
}

#[tokio::test]
async fn with_api_keys_a_browser_logs_in_to_the_dashboard_and_nowhere_else() {
    let server = TestServer::start(flags(&["--api-key", "key-one,key-two"])).await;
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    let get = |path: &'static str, authorization: Option<String>| {
        let api = server.api;
        async move {
            let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("Authorization", a.as_str())).collect();
            http_with(api, "GET", path, &headers, None, b"").await
        }
    };

    for path in ["/dashboard", "/dashboard/data", "/dashboard/dashboard.js"] {
        let refused = get(path, None).await;
        assert_eq!(refused.status, 401, "{path}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some(r#"Basic realm="herald", charset="UTF-8""#),
            "{path}: the browser is asked to log in"
        );
        let wrong = get(path, Some(basic("operator:key-three"))).await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    for authorization in [
        basic("operator:key-one"),
        basic(":key-two"),
        "Bearer key-one".to_owned(),
    ] {
        let page = get("/dashboard", Some(authorization.clone())).await;
        assert_eq!(page.status, 200, "{authorization}: {}", page.body);
        let data = get("/dashboard/data", Some(authorization.clone())).await;
        assert_eq!(data.status, 200, "{authorization}: {}", data.body);
        let data: DashboardData = serde_json::from_str(&data.body).unwrap();
        assert_eq!(data.mode, DashboardMode::Hub);
    }

    // Everywhere else: Bearer only, challenged as before, and Basic is no key (a browser that remembers it
    // would send it with a form another site posts).
    let stats = get("/stats", None).await;
    assert_eq!(stats.status, 401);
    assert_eq!(stats.header("www-authenticate"), Some("Bearer"));
    assert_eq!(get("/stats", Some(basic("operator:key-one"))).await.status, 401);
    let push = http_with(
        server.api,
        "POST",
        "/push/all",
        &[("Authorization", &basic("operator:key-one"))],
        Some("application/x-www-form-urlencoded"),
        b"items=[1]",
    )
    .await;
    assert_eq!(push.status, 401, "{}", push.body);
    assert_eq!(push.header("www-authenticate"), Some("Bearer"));
    assert_eq!(get("/stats", Some("Bearer key-two".to_owned())).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_logic_each_gateway_is_listed_with_its_state_and_a_stopped_one_is_down() {
    let first = TestGateway::start(vec![]).await;
    let second = TestGateway::start(vec![]).await;
    let (first_rpc, second_rpc) = (first.rpc.to_string(), second.rpc.to_string());
    let logic = TestLogic::start(&[first.rpc, second.rpc], vec![]).await;
    logic.wait_all_up().await;
    let mut on_first = first.member("r").await;
    let mut on_second = second.member("r").await;
    logic.push_room("r", "[1,2]").await;
    on_first.items(2).await;
    on_second.items(2).await;

    let data = wait_data(&logic, "both gateways' connections reported", |data| {
        data.total.connections == 2
            && data
                .gateways
                .iter()
                .all(|g| g.hub.as_ref().is_some_and(|h| h.items == 2))
    })
    .await;
    assert_eq!(data.mode, DashboardMode::Cluster);
    let names: Vec<&str> = data.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [first_rpc.as_str(), second_rpc.as_str()],
        "in the order configured"
    );
    assert!(
        data.gateways
            .iter()
            .all(|g| g.state == GatewayState::Up && g.connections == 1)
    );
    assert_eq!(
        (data.total.pushes, data.total.items),
        (1, 2),
        "as the push API took them, once"
    );
    assert_eq!(data.total.frames, Some(2), "summed over the gateways: one frame each");
    assert!(
        data.gateways.iter().all(|g| g.counts.is_some()),
        "each gateway reports its counts with its status: {data:?}"
    );
    let stats = logic.cluster_stats().await;
    assert_eq!(data.total.connections, stats.connections);

    // Logic holds no connection: the closes it shows are the gateways', added up.
    drop(Client::connect(first.ws).await);
    drop(Client::connect(second.ws).await);
    let peer_gone = |closes: Option<&BTreeMap<String, u64>>| closes.and_then(|c| c.get("peer_gone").copied());
    let data = wait_data(&logic, "a close on each gateway reported", |data| {
        data.gateways
            .iter()
            .all(|g| peer_gone(g.counts.as_ref().and_then(|c| c.closes.as_ref())) == Some(1))
    })
    .await;
    assert_eq!(peer_gone(data.counts.closes.as_ref()), Some(2), "{data:?}");
    assert!(data.counts.dropped_frames.is_some(), "{data:?}");

    drop(on_second);
    second.stop().await;
    let data = wait_data(&logic, "the stopped gateway down", |data| {
        data.gateways
            .iter()
            .any(|g| g.name == second_rpc && g.state == GatewayState::Down)
    })
    .await;
    let (up, down) = (&data.gateways[0], &data.gateways[1]);
    assert_eq!(
        (up.name.as_str(), up.state, up.connections),
        (first_rpc.as_str(), GatewayState::Up, 1)
    );
    assert_eq!((down.connections, down.hub.as_ref()), (0, None), "{down:?}");
    assert_eq!(data.total.connections, 1, "the sum is over the gateways up");

    drop(on_first);
    logic.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn on_nats_the_gateways_heard_are_listed_and_what_they_do_not_announce_is_null() {
    let nats = NatsServer::start().await;
    let gateway = TestGateway::start(nats.bus()).await;
    let logic = TestLogic::start(&[], nats.bus()).await;
    // Logic's NATS connection is up once it has heard the gateway (before that a push is answered 503).
    logic.wait_nats("the gateway heard", |s| s.gateways_live == 1).await;
    let mut member = gateway.member("r").await;
    gateway
        .internal()
        .wait_metric_eq("herald_nats_subscriptions", 1.0)
        .await;
    logic.push_room("r", "[1,2]").await;
    member.items(2).await;

    let data = wait_data(&logic, "the gateway's connection announced", |data| {
        data.total.connections == 1
    })
    .await;
    assert_eq!(data.mode, DashboardMode::Nats);
    assert_eq!((data.total.pushes, data.total.items), (1, 2));
    assert_eq!(
        (data.total.users, data.total.frames, data.total.delivered_bytes),
        (None, None, None)
    );
    let [row] = data.gateways.as_slice() else {
        panic!("one gateway heard: {data:?}")
    };
    assert!(row.counts.is_some(), "a gateway announces its counts: {row:?}");
    // A close on the gateway reaches logic with the next announcement.
    drop(Client::connect(gateway.ws).await);
    let data = wait_data(&logic, "the gateway's close announced", |data| {
        data.counts.closes.as_ref().and_then(|c| c.get("peer_gone")) == Some(&1)
    })
    .await;
    let [row] = data.gateways.as_slice() else {
        panic!("one gateway heard: {data:?}")
    };
    assert_eq!(
        (row.state, row.connections, row.rooms),
        (GatewayState::Up, 1, 1),
        "{row:?}"
    );
    assert!(row.last_seen_ms.is_some() && row.hub.is_none(), "{row:?}");

    drop(member);
    logic.stop().await;
    gateway.stop().await;
}
