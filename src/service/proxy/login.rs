//! Shared-secret login (spec 5): a bridge logs its users in with
//! `hex(HMAC-SHA512(login_token, user_id))`; asmux swaps it for the homeserver's
//! `hex(HMAC-SHA512(login_shared_secret, user_id))`, so the homeserver's secret never
//! leaves asmux.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha512;

use crate::secret::constant_time_eq;

/// `hex(HMAC-SHA512(key, message))`.
pub fn password(key: &str, user_id: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha512>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(user_id.as_bytes());
    data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
}

/// The user a password login or auth object names: `identifier.user` (`m.id.user`) or the
/// legacy top-level `user`, as a full user ID on `server`.
pub fn user_of(auth: &Value, server: &str) -> Option<String> {
    let user = auth
        .get("identifier")
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("m.id.user"))
        .and_then(|i| i.get("user"))
        .or_else(|| auth.get("user"))
        .and_then(Value::as_str)?;
    Some(if user.starts_with('@') {
        user.to_owned()
    } else {
        format!("@{user}:{server}")
    })
}

/// If `auth` is a password login whose password is the one `login_token` makes for its
/// user, replaces it with the one the homeserver's `shared_secret` makes. Returns whether
/// it changed anything.
pub fn convert(auth: &mut Value, user_id: &str, login_token: &str, shared_secret: &str) -> bool {
    if auth.get("type").and_then(Value::as_str) != Some("m.login.password") {
        return false;
    }
    let Some(presented) = auth.get("password").and_then(Value::as_str) else {
        return false;
    };
    if !constant_time_eq(presented, &password(login_token, user_id)) {
        return false;
    }
    auth["password"] = Value::String(password(shared_secret, user_id));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            password("Jefe", "what do ya want for nothing?"),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn converts_only_the_right_password() {
        let user = "@_alice_whatsapp_1:example.test";
        let mut auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "_alice_whatsapp_1"}, "password": password("lt", user)});
        assert_eq!(user_of(&auth, "example.test").as_deref(), Some(user));
        assert!(convert(&mut auth, user, "lt", "hs-secret"));
        assert_eq!(auth["password"], password("hs-secret", user));
        let mut wrong = json!({"type": "m.login.password", "user": user, "password": "guess"});
        assert!(!convert(&mut wrong, user, "lt", "hs-secret"));
        assert_eq!(wrong["password"], "guess");
    }
}
