//! Random tokens, constant-time comparison and a wrapper that keeps secrets out of logs.

use std::fmt;

use data_encoding::BASE64URL_NOPAD;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string: printed as `<redacted>` by `Debug` so it never ends up in a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the few places that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `n` bytes of entropy as unpadded URL-safe base64 (48 bytes -> 64 characters).
pub fn urlsafe_token(entropy_bytes: usize) -> Secret {
    let mut bytes = vec![0u8; entropy_bytes];
    rand::rng().fill(bytes.as_mut_slice());
    Secret(BASE64URL_NOPAD.encode(&bytes))
}

/// `len` characters of `[a-z0-9]`, the alphabet of asmux's own registration tokens.
pub fn lowercase_alphanumeric(len: usize) -> Secret {
    let token = rand::rng()
        .sample_iter(&Alphanumeric)
        .map(|b| (b as char).to_ascii_lowercase())
        .take(len)
        .collect();
    Secret(token)
}

/// Compares without leaking, through timing, how long the common prefix is.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The token of an `Authorization` header value `Bearer <token>`.
pub fn bearer(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

/// The token a request presents: `Authorization: Bearer`, else the `access_token` query
/// parameter (which homeservers with legacy authorization and some clients use).
pub fn presented_token(authorization: Option<&str>, query: &str) -> Option<String> {
    authorization
        .and_then(bearer)
        .map(str::to_owned)
        .or_else(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        })
}

/// SHA-256 of a token: the key under which token indexes and caches store it, so that a
/// lookup never compares the token itself byte by byte.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lengths_match_their_entropy() {
        assert_eq!(urlsafe_token(48).expose().len(), 64);
        assert_eq!(urlsafe_token(20).expose().len(), 27);
        let t = lowercase_alphanumeric(64);
        assert_eq!(t.expose().len(), 64);
        assert!(t
            .expose()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn tokens_are_not_repeated() {
        assert_ne!(urlsafe_token(48), urlsafe_token(48));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter"));
        assert!(!s.matches("hunter22"));
    }
}
