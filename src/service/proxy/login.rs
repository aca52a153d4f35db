//! Shared-secret login (spec 5): a bridge logs its users in with
//! `hex(HMAC-SHA512(login_token, user_id))`; asmux swaps it for the homeserver's
//! `hex(HMAC-SHA512(login_shared_secret, user_id))`, so the homeserver's secret never
//! leaves asmux.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha512;

use crate::error::Error;
use crate::secret::constant_time_eq;

/// `hex(HMAC-SHA512(key, message))`.
pub fn password(key: &str, user_id: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha512>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(user_id.as_bytes());
    data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
}

/// Every user a login or auth object names, as a full user ID on `server`: the
/// identifier's `user` and the legacy top-level `user`, which some homeservers prefer
/// over the identifier (Synapse's legacy conversion does). A name that is no string, or
/// an identifier that is no object, is refused: a homeserver might read something else.
pub fn named_users(auth: &Map<String, Value>, server: &str) -> Result<Vec<String>, Error> {
    let identifier = match auth.get("identifier") {
        None => None,
        Some(Value::Object(identifier)) => identifier.get("user"),
        Some(_) => return Err(Error::BadJson("identifier must be an object".into())),
    };
    [identifier, auth.get("user")]
        .into_iter()
        .flatten()
        .map(|name| match name {
            Value::String(user) if user.starts_with('@') => Ok(user.clone()),
            Value::String(localpart) => Ok(format!("@{localpart}:{server}")),
            _ => Err(Error::BadJson("user names must be strings".into())),
        })
        .collect()
}

/// Whether the object names a user by a third-party ID (an email address, a phone
/// number) or an identifier type other than a user ID.
pub fn names_third_party(auth: &Map<String, Value>) -> bool {
    let identifier_type = auth
        .get("identifier")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str);
    auth.contains_key("medium")
        || auth.contains_key("address")
        || identifier_type.is_some_and(|t| t != "m.id.user")
}

/// The one user a password login names, if it names exactly one by user ID.
pub fn single_user(auth: &Map<String, Value>, server: &str) -> Result<Option<String>, Error> {
    let mut users = named_users(auth, server)?;
    users.dedup();
    Ok(match users.as_slice() {
        [user] if !names_third_party(auth) => Some(user.clone()),
        _ => None,
    })
}

/// If `auth` is a password login whose password is the one `login_token` makes for its
/// user, replaces it with the one the homeserver's `shared_secret` makes. Returns whether
/// it changed anything.
pub fn convert(
    auth: &mut Map<String, Value>,
    user_id: &str,
    login_token: &str,
    shared_secret: &str,
) -> bool {
    if auth.get("type").and_then(Value::as_str) != Some("m.login.password") {
        return false;
    }
    let Some(presented) = auth.get("password").and_then(Value::as_str) else {
        return false;
    };
    if !constant_time_eq(presented, &password(login_token, user_id)) {
        return false;
    }
    auth.insert(
        "password".into(),
        Value::String(password(shared_secret, user_id)),
    );
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
        let object = |v: Value| v.as_object().unwrap().clone();
        let mut auth = object(
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "_alice_whatsapp_1"}, "password": password("lt", user)}),
        );
        assert_eq!(
            single_user(&auth, "example.test").unwrap().as_deref(),
            Some(user)
        );
        assert!(convert(&mut auth, user, "lt", "hs-secret"));
        assert_eq!(auth["password"], password("hs-secret", user));
        let mut wrong =
            object(json!({"type": "m.login.password", "user": user, "password": "guess"}));
        assert!(!convert(&mut wrong, user, "lt", "hs-secret"));
        assert_eq!(wrong["password"], "guess");
    }

    #[test]
    fn every_reading_of_the_user_is_found() {
        let object = |v: Value| v.as_object().unwrap().clone();
        let both =
            object(json!({"identifier": {"type": "m.id.user", "user": "@a:hs"}, "user": "b"}));
        assert_eq!(named_users(&both, "hs").unwrap(), ["@a:hs", "@b:hs"]);
        assert_eq!(single_user(&both, "hs").unwrap(), None);
        let same =
            object(json!({"identifier": {"type": "m.id.user", "user": "a"}, "user": "@a:hs"}));
        assert_eq!(single_user(&same, "hs").unwrap().as_deref(), Some("@a:hs"));
        let email = object(
            json!({"identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b"}}),
        );
        assert!(names_third_party(&email));
        assert_eq!(single_user(&email, "hs").unwrap(), None);
        let legacy_email = object(json!({"user": "a", "medium": "email", "address": "a@b"}));
        assert_eq!(single_user(&legacy_email, "hs").unwrap(), None);
        for bad in [
            json!({"user": 1}),
            json!({"identifier": "a"}),
            json!({"identifier": {"user": ["a"]}}),
        ] {
            assert_eq!(
                named_users(&object(bad), "hs").unwrap_err().errcode(),
                "M_BAD_JSON"
            );
        }
    }
}
