//! The HTTP/1.1 side of the WebSocket listener: read one request head, then upgrade `/connect`, serve the demo
//! page at `/` (and the client library it runs on at `/herald-client.js`), or refuse.
//!
//! Written on `httparse` rather than a full HTTP server so the upgraded connection is a bare `TcpStream` the
//! session owns outright (no HTTP-layer buffers kept per connection, direct non-blocking writes possible).

use std::time::Duration;

use base64::Engine;
use herald_protocol::deflate_offer::{self, DeflateAgreement};
use herald_protocol::ws::HEARTBEAT_TIMEOUT_HEADER;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest request head taken; browsers send well under 2 KiB.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A file the listener serves, built into the binary.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The demo page (`GET /`).
pub const DEMO_PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("demo.html"),
};

/// herald-client, the JavaScript client library the demo page imports (`GET /herald-client.js`): the package's
/// own file, so the page runs exactly the code an application installs.
pub const CLIENT_LIBRARY: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../../../clients/js/herald-client.js"),
};

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade on `/connect`.
    Upgrade {
        /// The `Sec-WebSocket-Accept` value to answer with.
        accept: String,
        /// Bytes the client sent after the request head (the start of its first frames).
        early: Vec<u8>,
        /// The connection token: `?token=` on the path, or `Authorization: Bearer`.
        token: Option<String>,
        /// The `Origin` header (browsers send it; other clients usually do not).
        origin: Option<String>,
        /// The first permessage-deflate offer herald can honour, from every `Sec-WebSocket-Extensions` line.
        deflate: Option<DeflateAgreement>,
    },
    /// `GET /` (the demo page) or `GET /herald-client.js`.
    Page(&'static Asset),
    /// Anything else, with the complete response to send before closing.
    Refuse(&'static str),
}

const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n";
const BAD_REQUEST: &str =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\nConnection: close\r\n\r\nexpected a WebSocket handshake\n";
const UPGRADE_REQUIRED: &str = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 28\r\n\
                                Connection: close\r\n\r\nWebSocket version 13 needed\n";
const TOO_LARGE: &str =
    "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const METHOD_NOT_ALLOWED: &str =
    "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// Sent when the connection limit is reached.
pub const OVER_LIMIT: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 21\r\n\
                              Connection: close\r\n\r\nconnection limit hit\n";

/// The answer at `max_handshakes`, sent without reading the request.
pub const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 20\r\n\
                        Connection: close\r\n\r\ntoo many handshakes\n";

/// Reads and classifies one request head. `None` when the peer closed or broke the connection first.
/// `upgrade_at_root`: `/` upgrades instead of serving the page (the conformance echo server only).
pub async fn read_request(stream: &mut TcpStream, upgrade_at_root: bool) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = parse_head(&buf, upgrade_at_root) {
            return Some(request);
        }
    }
}

/// Classifies what has arrived of a request so far; `None` while its head is incomplete and within the limit.
/// Bytes after the head (a client that sent its first frame at once) stay with the upgrade.
pub fn parse_head(buf: &[u8], upgrade_at_root: bool) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => Some(classify(&request, &buf[head_len..], upgrade_at_root)),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => Some(Request::Refuse(TOO_LARGE)),
        Err(_) => Some(Request::Refuse(BAD_REQUEST)),
    }
}

fn classify(request: &httparse::Request<'_, '_>, rest: &[u8], upgrade_at_root: bool) -> Request {
    if request.method != Some("GET") {
        return Request::Refuse(METHOD_NOT_ALLOWED);
    }
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" if upgrade_at_root => {}
        "/" | "/index.html" => return Request::Page(&DEMO_PAGE),
        "/herald-client.js" => return Request::Page(&CLIENT_LIBRARY),
        "/connect" => {}
        _ => return Request::Refuse(NOT_FOUND),
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Request::Refuse(BAD_REQUEST);
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Request::Refuse(UPGRADE_REQUIRED);
    }
    let Some(key) = header("sec-websocket-key").map(str::trim) else {
        return Request::Refuse(BAD_REQUEST);
    };
    let decoded_len = base64::engine::general_purpose::STANDARD.decode(key).map(|k| k.len());
    if decoded_len != Ok(16) {
        return Request::Refuse(BAD_REQUEST);
    }
    let from_query = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned());
    let from_header = header("authorization")
        .and_then(|value| value.trim().strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned());
    let extensions = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok());
    Request::Upgrade {
        accept: accept_key(key),
        early: rest.to_vec(),
        token: from_query.or(from_header),
        origin: header("origin").map(str::to_owned),
        deflate: deflate_offer::negotiate(extensions),
    }
}

/// A refusal of the handshake with a JSON body (`{"error":..,"reason":..}`) and any extra header lines.
pub fn refusal(status: &str, extra_headers: &str, body: &serde_json::Value) -> String {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The `101 Switching Protocols` response; with `heartbeat_timeout`, it says how long a silent connection is kept
/// ([`HEARTBEAT_TIMEOUT_HEADER`]); with `deflate`, it accepts that permessage-deflate offer.
pub fn switching_protocols(
    accept: &str,
    heartbeat_timeout: Option<Duration>,
    deflate: Option<&DeflateAgreement>,
) -> String {
    let heartbeat = heartbeat_timeout.map_or(String::new(), |timeout| {
        format!("{HEARTBEAT_TIMEOUT_HEADER}: {}\r\n", timeout.as_millis())
    });
    let extensions = deflate.map_or(String::new(), |agreement| {
        format!("Sec-WebSocket-Extensions: {}\r\n", agreement.response())
    });
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extensions}{heartbeat}\r\n"
    )
}

/// The response that serves `asset`.
pub fn page_response(asset: &Asset) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n{}",
        asset.content_type,
        asset.body.len(),
        asset.body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Request {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(raw.as_bytes()).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        classify(&request, &raw.as_bytes()[head_len..], false)
    }

    const UPGRADE: &str = "GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
                           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn computes_the_rfc_example_accept_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_upgrade_says_the_heartbeat_timeout_when_given() {
        let said = switching_protocols("k", Some(Duration::from_secs(60)), None);
        assert!(
            said.ends_with("Sec-WebSocket-Accept: k\r\nHerald-Heartbeat-Timeout-Ms: 60000\r\n\r\n"),
            "{said}"
        );
        assert!(switching_protocols("k", None, None).ends_with("Sec-WebSocket-Accept: k\r\n\r\n"));
    }

    #[test]
    fn reads_every_extensions_line_and_answers_one() {
        let offered = UPGRADE.replace(
            "Host: x\r\n",
            "Host: x\r\nSec-WebSocket-Extensions: permessage-deflate; 15\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let Request::Upgrade { deflate, .. } = parse(&offered) else {
            panic!("not an upgrade")
        };
        let agreement = deflate.expect("the second line's offer is taken");
        let said = switching_protocols("k", None, Some(&agreement));
        assert_eq!(said.matches("Sec-WebSocket-Extensions").count(), 1, "{said}");
        assert!(said.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ));
        let Request::Upgrade { deflate, .. } = parse(UPGRADE) else {
            panic!("not an upgrade")
        };
        assert_eq!(deflate, None, "no offer, no extension");
    }

    #[test]
    fn upgrades_connect_and_keeps_early_bytes() {
        let raw = format!("{UPGRADE}\u{81}");
        let Request::Upgrade {
            accept,
            early,
            token,
            origin,
            ..
        } = parse(&raw)
        else {
            panic!("not an upgrade")
        };
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(early, "\u{81}".as_bytes());
        assert_eq!((token, origin), (None, None));
    }

    #[test]
    fn takes_the_token_from_the_query_or_the_header() {
        let token_of = |raw: &str| match parse(raw) {
            Request::Upgrade { token, origin, .. } => (token, origin),
            other => panic!("{other:?}"),
        };
        let query = UPGRADE.replace("/connect", "/connect?x=1&token=a.b%2Bc");
        assert_eq!(token_of(&query).0.as_deref(), Some("a.b+c"));
        let header = UPGRADE.replace(
            "Host: x\r\n",
            "Host: x\r\nAuthorization: Bearer h.e.t\r\nOrigin: https://o\r\n",
        );
        assert_eq!(token_of(&header), (Some("h.e.t".into()), Some("https://o".into())));
    }

    #[test]
    fn routes_and_refuses() {
        assert_eq!(parse("GET /?room=a HTTP/1.1\r\n\r\n"), Request::Page(&DEMO_PAGE));
        assert_eq!(
            parse("GET /herald-client.js HTTP/1.1\r\n\r\n"),
            Request::Page(&CLIENT_LIBRARY)
        );
        assert_eq!(parse("GET /nope HTTP/1.1\r\n\r\n"), Request::Refuse(NOT_FOUND));
        assert_eq!(
            parse("POST /connect HTTP/1.1\r\n\r\n"),
            Request::Refuse(METHOD_NOT_ALLOWED)
        );
        assert_eq!(parse("GET /connect HTTP/1.1\r\n\r\n"), Request::Refuse(BAD_REQUEST));
        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(parse(&old), Request::Refuse(UPGRADE_REQUIRED));
        let bad_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(parse(&bad_key), Request::Refuse(BAD_REQUEST));
    }
}
