//! Headers the proxy drops or builds: hop-by-hop headers, which describe one connection,
//! and the `Authorization` values of asmux's own tokens.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::secret::Secret;

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Removes hop-by-hop headers (and those the `Connection` header names). A message
/// carries one or two of them (`Host`, `Connection`): they are found in one pass over
/// the headers, then only those are removed.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(&name.as_str()))
        .cloned()
        .collect();
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in &present {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name.as_str());
    }
}

/// `Bearer {token}`, marked sensitive; `None` for a token no header can carry (config
/// validation refuses those).
pub(super) fn bearer_header(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("host", HeaderValue::from_static("asmux"));
        h.insert("content-length", HeaderValue::from_static("5"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("content-length") && h.contains_key("authorization"));
    }
}
