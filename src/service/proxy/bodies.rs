//! The request bodies asmux reads before forwarding: registrations, logins and
//! createRoom name users and aliases a bridge must own; logins and device deletions
//! carry passwords to convert. Such a body is parsed strictly and refused when it is not
//! a JSON object, and what is forwarded is asmux's own serialisation of what it read, so
//! that no parser finds another document in it (a lone surrogate, `1e400`, deep nesting
//! or a repeated key, which parsers read differently, never reach the homeserver).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use super::endpoint::Endpoint;
use super::{guard, login, read_limited, Proxy};
use crate::error::Error;
use crate::http_client::{full_body, Body};
use crate::store::Bridge;

impl Proxy {
    /// Whether asmux must read the body of a request to `endpoint`: always for a bridge's
    /// registrations, logins and createRoom; for anyone's logins and device deletions when
    /// there is a shared secret to convert passwords to and the path is exactly their
    /// route (`exact`, see [`super::endpoint::is_exactly`]).
    pub(super) fn reads_body(
        &self,
        endpoint: &Endpoint,
        bridge: Option<&Bridge>,
        exact: bool,
    ) -> bool {
        let converts = exact && self.login_shared_secret.is_some();
        match endpoint {
            Endpoint::Register | Endpoint::CreateRoom => bridge.is_some(),
            Endpoint::Login => bridge.is_some() || converts,
            Endpoint::DeviceAuth => converts,
            Endpoint::Other | Endpoint::Alias(_) => false,
        }
    }

    /// Reads, checks and rewrites the body of a request to `endpoint` (converting a
    /// password only when `exact`); returns the body to forward, with `headers`
    /// describing it.
    pub(super) async fn checked_body(
        &self,
        endpoint: &Endpoint,
        bridge: Option<&Bridge>,
        exact: bool,
        headers: &mut HeaderMap,
        body: Body,
    ) -> Result<Body, Error> {
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity");
        if encoded {
            return Err(Error::NotJson(
                "Encoded request bodies are not accepted on this endpoint".into(),
            ));
        }
        let bytes = read_limited(body).await?;
        // Deleting a device may come without a body (the first step of its auth).
        if bytes.is_empty() && *endpoint == Endpoint::DeviceAuth {
            return Ok(full_body(bytes));
        }
        let mut json = parse_object(&bytes)?;
        self.check(endpoint, bridge, &json)?;
        if exact {
            match (endpoint, json.get_mut("auth")) {
                (Endpoint::Login, _) => self.convert_password(&mut json)?,
                (Endpoint::DeviceAuth, Some(Value::Object(auth))) => self.convert_password(auth)?,
                (Endpoint::DeviceAuth, Some(Value::Null) | None) => {}
                (Endpoint::DeviceAuth, Some(_)) => {
                    return Err(Error::BadJson("auth must be an object".into()))
                }
                _ => {}
            }
        }
        let out = Bytes::from(Value::Object(json).to_string());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(full_body(out))
    }

    /// Checks the names a bridge's body gives: every one must be in its namespace.
    fn check(
        &self,
        endpoint: &Endpoint,
        bridge: Option<&Bridge>,
        json: &Map<String, Value>,
    ) -> Result<(), Error> {
        let (ns, Some(bridge)) = (&self.namespace, bridge) else {
            return Ok(());
        };
        match endpoint {
            Endpoint::Register => {
                // Synapse reads `username`; the appservice API once named it `user`.
                let names = string_fields(json, &["username", "user"])?;
                if names.is_empty() {
                    return Err(Error::BadJson(
                        "A bridge must name the user it registers".into(),
                    ));
                }
                for localpart in names {
                    guard::own_user(ns, bridge, &ns.user_id(localpart), true)?;
                }
                Ok(())
            }
            Endpoint::CreateRoom => {
                for name in string_fields(json, &["room_alias_name"])? {
                    guard::own_alias(ns, bridge, &format!("#{name}:{}", ns.server))?;
                }
                Ok(())
            }
            Endpoint::Login => {
                let users = login::named_users(json, &ns.server)?;
                if users.is_empty() || login::names_third_party(json) {
                    return Err(Error::Forbidden(
                        "A bridge may only log in users of its namespace, by user ID".into(),
                    ));
                }
                for user in &users {
                    guard::own_user(ns, bridge, user, false)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Swaps a login_token-derived password for the homeserver's shared-secret one, when
    /// the object names exactly one user and its password is the one made for that user.
    fn convert_password(&self, auth: &mut Map<String, Value>) -> Result<(), Error> {
        let Some(shared) = &self.login_shared_secret else {
            return Ok(());
        };
        let Some(user_id) = login::single_user(auth, &self.namespace.server)? else {
            return Ok(());
        };
        // Bridge users log in with their owner's token; plain users with their own.
        let owner = match self.namespace.parse('@', &user_id) {
            Some(u) => self
                .store
                .bridge_by_name(u.owner, u.prefix)?
                .map(|b| b.owner.clone()),
            None => self.namespace.local_user(&user_id).map(str::to_owned),
        };
        let Some(user) = owner.and_then(|o| self.store.user(&o).ok().flatten()) else {
            return Ok(());
        };
        login::convert(auth, &user_id, user.login_token.expose(), shared.expose());
        Ok(())
    }
}

/// Refuses a bridge's request whose body the homeserver may read parameters from: Twisted
/// (Synapse) merges a POSTed `application/x-www-form-urlencoded` or `multipart/form-data`
/// body into the query's arguments, where a `user_id` in it would replace the one asmux
/// checked. One `Content-Type` only, and one asmux can read.
pub(super) fn refuse_form_bodies(headers: &HeaderMap) -> Result<(), Error> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return match headers.contains_key(header::CONTENT_TYPE) {
            true => Err(Error::InvalidParam(
                "A request may carry one Content-Type".into(),
            )),
            false => Ok(()),
        };
    };
    let essence = value
        .to_str()
        .ok()
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|essence| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            essence
                .split_once('/')
                .is_some_and(|(kind, sub)| token(kind) && token(sub))
        })
        .ok_or_else(|| Error::InvalidParam("The Content-Type cannot be read".into()))?;
    if essence == "application/x-www-form-urlencoded" || essence == "multipart/form-data" {
        return Err(Error::InvalidParam(
            "Form-encoded bodies are not proxied for bridges: the homeserver reads parameters from them"
                .into(),
        ));
    }
    Ok(())
}

/// A request body that must be a JSON object.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Error::BadJson(
            "The request body must be a JSON object".into(),
        )),
        Err(_) => Err(Error::NotJson(
            "The request body is not valid JSON (strictly parsed)".into(),
        )),
    }
}

/// The values of those of `names` that are present, each of which must be a string.
fn string_fields<'a>(json: &'a Map<String, Value>, names: &[&str]) -> Result<Vec<&'a str>, Error> {
    names
        .iter()
        .filter_map(|name| json.get(*name).map(|value| (name, value)))
        .map(|(name, value)| {
            value
                .as_str()
                .ok_or_else(|| Error::BadJson(format!("{name} must be a string")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_json_objects_are_read() {
        assert!(parse_object(br#"{"a": [1, {"b": null}]}"#).is_ok());
        for bad in [
            &br#"{"pad": "\ud800"}"#[..],
            br#"{"n": 1e400}"#,
            br#"{"n": NaN}"#,
            b"\xef\xbb\xbf{}",
            b"{} x",
            b"",
        ] {
            assert_eq!(parse_object(bad).unwrap_err().errcode(), "M_NOT_JSON");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err().errcode(),
            "M_NOT_JSON"
        );
        assert_eq!(parse_object(b"[]").unwrap_err().errcode(), "M_BAD_JSON");
    }

    #[test]
    fn repeated_keys_collapse_to_the_one_asmux_read() {
        let object =
            parse_object(br#"{"username": "_bob_wa_x", "username": "_alice_wa_x"}"#).unwrap();
        assert_eq!(
            Value::Object(object).to_string(),
            r#"{"username":"_alice_wa_x"}"#
        );
    }

    #[test]
    fn form_bodies_are_refused() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        for fine in [
            &[][..],
            &["application/json"],
            &["image/png"],
            &["application/vnd.openxmlformats-officedocument.wordprocessingml.document"],
        ] {
            assert!(refuse_form_bodies(&headers(fine)).is_ok(), "{fine:?}");
        }
        for refused in [
            &["application/x-www-form-urlencoded"][..],
            &[" Application/X-WWW-Form-Urlencoded ; charset=utf-8"],
            &["multipart/form-data; boundary=x"],
            &["application/json", "application/x-www-form-urlencoded"],
            &["application/json (comment)"],
            &["nonsense"],
        ] {
            assert!(
                refuse_form_bodies(&headers(refused)).is_err(),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn named_fields_must_be_strings() {
        let json = parse_object(br#"{"username": "a", "user": 5}"#).unwrap();
        assert_eq!(
            string_fields(&json, &["username", "user"])
                .unwrap_err()
                .errcode(),
            "M_BAD_JSON"
        );
        assert_eq!(string_fields(&json, &["username", "x"]).unwrap(), ["a"]);
    }
}
