//! The client side of herald's protocol as the bench speaks it, byte for byte and without a WebSocket crate: the
//! handshake, masked text frames and signed connection tokens. The workers' connections, the attackers and the
//! coordinator's look at the herald it started all use it.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::ws::HEARTBEAT_TIMEOUT_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The permessage-deflate offer of a compressing client (RFC 7692): `client_max_window_bits` says it could take a
/// smaller window for its own messages, as browsers do; herald answers with no context takeover either way.
pub(crate) const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The WebSocket handshake on `stream` (`/connect` with `query`, offering permessage-deflate with `compress`):
/// herald's answer head (status line and headers), or an error unless answered 101.
pub(crate) async fn upgrade(
    stream: &mut TcpStream,
    target: SocketAddr,
    query: &str,
    compress: bool,
) -> io::Result<String> {
    let offer = if compress {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET /connect{query} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: aGVyYWxkLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 512];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 || len + n == head.len() {
            return Err(io::Error::other("handshake refused"));
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&head[..len]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(head));
    }
    Ok(head)
}

/// Whether an upgrade's answer `head` accepted permessage-deflate (a `Sec-WebSocket-Extensions` line naming it).
pub(crate) fn accepted_deflate(head: &str) -> bool {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
        .any(|(_, value)| {
            value
                .split(',')
                .any(|extension| extension.split(';').next().map(str::trim) == Some("permessage-deflate"))
        })
}

/// The heartbeat timeout an upgrade's answer `head` says ([`HEARTBEAT_TIMEOUT_HEADER`]), if it says one.
pub(crate) fn heartbeat_timeout(head: &str) -> Option<Duration> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(HEARTBEAT_TIMEOUT_HEADER))
        .and_then(|(_, value)| value.trim().parse().ok())
        .map(Duration::from_millis)
}

/// The `?token=` query of a connection token for `user`, signed with `secret` (HS256): any room, valid for a day.
pub(crate) fn token_query(secret: &str, user: &str) -> String {
    let claims = serde_json::json!({
        "sub": user,
        "exp": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 86_400,
        "rooms": ["*"],
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail");
    format!("?token={token}")
}

/// A masked client text frame (the mask is fixed: it only has to be present).
pub(crate) fn masked_text(payload: &[u8]) -> Vec<u8> {
    masked_frame(0x81, payload)
}

/// A masked client text frame whose payload is `text` compressed (RSV1 set, `text` deflated at level 1 with no
/// context), as a client that negotiated permessage-deflate may send any message.
pub(crate) fn masked_compressed(text: &[u8]) -> Vec<u8> {
    masked_frame(0xc1, &herald_protocol::deflate::deflate(text, 1))
}

/// A masked client frame: `first` (FIN, RSV bits, opcode), then `payload`'s length, the mask and the payload masked.
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x17, 0xc3, 0x8e];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_heartbeat_timeout_herald_says() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: x\r\nherald-heartbeat-timeout-ms: 1500\r\n\r\n";
        assert_eq!(heartbeat_timeout(head), Some(Duration::from_millis(1500)));
        assert_eq!(heartbeat_timeout("HTTP/1.1 101 Switching Protocols\r\n\r\n"), None);
    }

    #[test]
    fn tells_whether_herald_accepted_the_deflate_offer() {
        let head = |extensions: &str| format!("HTTP/1.1 101 Switching Protocols\r\n{extensions}\r\n");
        let accepted = "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                        client_no_context_takeover\r\n";
        assert!(accepted_deflate(&head(accepted)));
        assert!(!accepted_deflate(&head("")));
        assert!(!accepted_deflate(&head(
            "Sec-WebSocket-Extensions: x-permessage-deflate\r\n"
        )));
    }
}
