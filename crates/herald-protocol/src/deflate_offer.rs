//! Negotiating permessage-deflate (RFC 7692 sections 5 and 7.1): a client's `Sec-WebSocket-Extensions` offers read,
//! the first one herald can honour accepted, one line answered.
//!
//! herald's answer always holds `server_no_context_takeover` (each frame it sends is compressed on its own, once,
//! for every recipient) and `client_no_context_takeover` (which the RFC lets a server add to any offer: the client
//! then compresses each message on its own too, so herald keeps no inflate state between a connection's messages).

/// The extension's name.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// An offer herald accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateAgreement {
    /// The `server_max_window_bits` the client asked for, if any; the answer repeats it. herald's frames are
    /// compressed once for everyone with deflate's full 32 KB window, so a connection that asked for less gets
    /// them plain (RSV1 clear, which the RFC allows for any message) while its own messages may still be compressed.
    pub server_max_window_bits: Option<u8>,
}

impl DeflateAgreement {
    /// Whether herald may send this connection compressed frames (see [`Self::server_max_window_bits`]).
    pub fn compresses(&self) -> bool {
        self.server_max_window_bits.is_none_or(|bits| bits == 15)
    }

    /// The value of the `Sec-WebSocket-Extensions` header that answers the offer.
    pub fn response(&self) -> String {
        let mut answer = format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        answer
    }
}

/// The first permessage-deflate offer in `values` (every `Sec-WebSocket-Extensions` header of the request, in
/// order) that herald can honour; `None` when there is none (the connection then gets plain frames). An offer with
/// an unknown or repeated parameter, or a window size outside 8 to 15, is declined (section 7.1), and the next one
/// is considered. Other extensions are ignored.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<DeflateAgreement> {
    values
        .into_iter()
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(|offer| {
            let mut parts = split_outside_quotes(offer, ';').into_iter();
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
                return None;
            }
            accept(parts)
        })
}

/// The agreement for one offer's parameters, or `None` when they cannot be honoured.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<DeflateAgreement> {
    let mut seen = [false; 4];
    let mut server_max_window_bits = None;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(DeflateAgreement { server_max_window_bits })
}

/// A window size: a decimal 8 to 15 without leading zeros (section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter's value, a token or a quoted string (whose unquoted value must then be a token; section 7.1).
fn unquote(value: &str) -> Option<&str> {
    let inner = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => value,
    };
    (!inner.is_empty() && !inner.contains(['"', '\\'])).then_some(inner)
}

/// `value` cut at every `separator` that is not inside a quoted string.
fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<DeflateAgreement> {
        negotiate(values.iter().copied())
    }

    const PLAIN: DeflateAgreement = DeflateAgreement {
        server_max_window_bits: None,
    };

    #[test]
    fn accepts_what_browsers_and_libraries_offer() {
        // Chromium, Firefox, Python's websockets, Node's ws.
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits"]), Some(PLAIN));
        assert_eq!(offer(&["permessage-deflate"]), Some(PLAIN));
        assert_eq!(
            offer(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]),
            Some(PLAIN)
        );
        assert_eq!(
            PLAIN.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(PLAIN.compresses());
    }

    #[test]
    fn answers_a_server_window_and_sends_plain_below_15() {
        let small = offer(&["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(small.server_max_window_bits, Some(10));
        assert!(!small.compresses());
        assert!(small.response().ends_with("; server_max_window_bits=10"));
        let full = offer(&["permessage-deflate; server_max_window_bits=\"15\""]).unwrap();
        assert!(full.compresses());
    }

    #[test]
    fn declines_offers_it_cannot_read_and_takes_the_next() {
        for bad in [
            "permessage-deflate; 15",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=1a",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            assert_eq!(offer(&[&format!("{bad}, permessage-deflate")]), Some(PLAIN), "{bad}");
        }
        assert_eq!(offer(&[]), None);
    }

    #[test]
    fn reads_every_header_line_and_quoted_values() {
        let agreed = offer(&[
            "foo; a=\"x,y\"",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=\"12\"",
        ]);
        assert_eq!(agreed.and_then(|a| a.server_max_window_bits), Some(12));
    }
}
