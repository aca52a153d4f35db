//! Which client-server endpoint a proxied request reaches, as far as asmux cares: the
//! few whose bodies or paths name users and aliases, and those that mint credentials or
//! manage devices and accounts. Recognised on the inclusive reading of the path
//! ([`Target::words`]): a spelling one homeserver routes and another does not is still
//! checked.

use http::Method;

use super::target::Target;
use crate::error::Error;

/// What asmux must check or rewrite in a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Nothing: streamed through.
    Other,
    /// `POST .../register`: the user registered.
    Register,
    /// `POST .../login`: the user logged in, a password to convert.
    Login,
    /// `POST .../createRoom`: the alias created, and the room to own afterwards.
    CreateRoom,
    /// `PUT|DELETE .../directory/room/{alias}`: the alias, as the homeserver reads it.
    Alias(String),
    /// `POST .../delete_devices`, `DELETE .../devices/{id}`: a password to convert.
    DeviceAuth,
}

impl Endpoint {
    /// The endpoint of a request. Refuses an alias path the homeserver could read another
    /// alias from than asmux (an encoded `/directory/room/` inside the alias, anything
    /// after it).
    pub fn of(method: &Method, target: &Target) -> Result<Endpoint, Error> {
        let words = target.words();
        let last = words.last().copied().unwrap_or_default();
        let alias_pairs = words
            .windows(2)
            .filter(|w| w == &["directory", "room"])
            .count();
        Ok(match *method {
            Method::PUT | Method::DELETE if alias_pairs > 0 => {
                Endpoint::Alias(alias_in_path(target, alias_pairs)?)
            }
            Method::POST if last == "register" => Endpoint::Register,
            Method::POST if last == "login" => Endpoint::Login,
            Method::POST if last == "createRoom" => Endpoint::CreateRoom,
            Method::POST if last == "delete_devices" => Endpoint::DeviceAuth,
            Method::DELETE if words.len() >= 2 && words[words.len() - 2] == "devices" => {
                Endpoint::DeviceAuth
            }
            _ => Endpoint::Other,
        })
    }
}

/// Whether the raw path is exactly the route of `endpoint` on a homeserver, spelled
/// plainly (nothing percent-encoded in its fixed words, nothing around them): the
/// reading on which asmux adds something to a request (a converted password). Checks
/// use the inclusive reading instead.
pub fn is_exactly(endpoint: &Endpoint, target: &Target) -> bool {
    let words: Vec<&str> = target.segments.iter().map(String::as_str).collect();
    let Some(route) = (match words.as_slice() {
        ["", "_matrix", "client", "r0" | "v3" | "unstable", route @ ..] => Some(route),
        ["", "_matrix", "client", "api", "v1", route @ ..] => Some(route),
        _ => None,
    }) else {
        return false;
    };
    let plain = |raw: &str| !raw.contains('%');
    let raw: Vec<&str> = target.raw.split('/').collect();
    let raw_route = &raw[raw.len() - route.len()..];
    match (endpoint, route, raw_route) {
        (Endpoint::Login, ["login"], [word]) => plain(word),
        (Endpoint::DeviceAuth, ["delete_devices"], [word]) => plain(word),
        (Endpoint::DeviceAuth, ["devices", device], [word, _]) => plain(word) && !device.is_empty(),
        _ => false,
    }
}

/// The alias of `.../directory/room/{alias}`: the last raw segment, decoded on its own.
fn alias_in_path(target: &Target, pairs: usize) -> Result<String, Error> {
    let ambiguous =
        || Error::InvalidParam("The alias in the path cannot be read unambiguously".into());
    match target.segments.as_slice() {
        [.., directory, room, alias]
            if pairs == 1 && directory == "directory" && room == "room" && !alias.is_empty() =>
        {
            Ok(alias.clone())
        }
        _ => Err(ambiguous()),
    }
}

/// Whether the request reaches an endpoint that mints credentials or devices, or manages
/// the account or its devices and keys: none of these is double puppeting, so a bridge
/// acting as its owner may not call them. Every reading of the version part of the path
/// is tried (`unstable/login` and `unstable/{feature}/login` alike).
pub fn manages_account(target: &Target) -> bool {
    let words = target.words();
    let ["_matrix", "client", version, rest @ ..] = words.as_slice() else {
        return false;
    };
    let mut readings = vec![rest];
    if matches!(*version, "unstable" | "api") && !rest.is_empty() {
        readings.push(&rest[1..]);
    }
    readings.into_iter().any(|endpoint| {
        matches!(
            endpoint,
            [
                "login" | "register" | "logout" | "refresh" | "delete_devices",
                ..
            ] | ["devices" | "dehydrated_device" | "room_keys", ..]
                | ["keys", "upload" | "device_signing" | "signatures", ..]
                | ["account", "password" | "deactivate" | "3pid", ..]
                | ["user", _, "openid", ..]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(method: Method, path: &str) -> Result<Endpoint, Error> {
        Endpoint::of(&method, &Target::read(path).unwrap())
    }

    #[test]
    fn special_endpoints_in_every_spelling() {
        for path in [
            "/_matrix/client/v3/register",
            "/_matrix/client/r0/register/",
            "/_matrix/client/v3/regist%65r",
            "/_matrix/client/v3%2Fregister",
        ] {
            assert_eq!(
                endpoint(Method::POST, path).unwrap(),
                Endpoint::Register,
                "{path}"
            );
        }
        assert_eq!(
            endpoint(Method::POST, "/_matrix/client/v3/login").unwrap(),
            Endpoint::Login
        );
        assert_eq!(
            endpoint(Method::GET, "/_matrix/client/v3/login").unwrap(),
            Endpoint::Other
        );
        assert_eq!(
            endpoint(Method::POST, "/_matrix/client/v3/createRoom").unwrap(),
            Endpoint::CreateRoom
        );
        assert_eq!(
            endpoint(Method::DELETE, "/_matrix/client/v3/devices/ABC").unwrap(),
            Endpoint::DeviceAuth
        );
        assert_eq!(
            endpoint(Method::POST, "/_matrix/client/v3/delete_devices").unwrap(),
            Endpoint::DeviceAuth
        );
    }

    #[test]
    fn passwords_are_converted_on_plain_routes_only() {
        let exactly = |method: Method, path: &str| {
            let target = Target::read(path).unwrap();
            is_exactly(&Endpoint::of(&method, &target).unwrap(), &target)
        };
        assert!(exactly(Method::POST, "/_matrix/client/v3/login"));
        assert!(exactly(Method::POST, "/_matrix/client/api/v1/login"));
        assert!(exactly(Method::POST, "/_matrix/client/r0/delete_devices"));
        assert!(exactly(Method::DELETE, "/_matrix/client/v3/devices/ABC"));
        for (method, path) in [
            (Method::POST, "/_matrix/client/v3/rooms/!r/send/login"),
            (Method::POST, "/_matrix/client/v3/logi%6E"),
            (Method::POST, "/_matrix/client/v3/login/"),
            (Method::POST, "/_matrix/client/v3%2Flogin"),
            (Method::POST, "/_matrix/client/v4/login"),
            (Method::DELETE, "/_matrix/client/v3/user/x/devices/D"),
            (Method::DELETE, "/_matrix/client/v3/devices/"),
        ] {
            assert!(!exactly(method, path), "{path}");
        }
    }

    #[test]
    fn aliases_are_read_from_the_raw_segment() {
        assert_eq!(
            endpoint(
                Method::PUT,
                "/_matrix/client/v3/directory/room/%23a%2Fb%3Ahs"
            )
            .unwrap(),
            Endpoint::Alias("#a/b:hs".into())
        );
        assert_eq!(
            endpoint(Method::GET, "/_matrix/client/v3/directory/room/%23a%3Ahs").unwrap(),
            Endpoint::Other
        );
        for path in [
            "/_matrix/client/v3/directory/room/%23_bob_wa_main%2Fdirectory%2Froom%2F%23_alice_wa_y%3Ahs",
            "/_matrix/client/v3/directory%2Froom/%23_alice_wa_y%3Ahs",
            "/_matrix/client/v3/directory/room/%23_alice_wa_y%3Ahs/extra",
            "/_matrix/client/v3/directory/room/",
        ] {
            let err = endpoint(Method::PUT, path).unwrap_err();
            assert_eq!(err.errcode(), "M_INVALID_PARAM", "{path}");
        }
    }

    #[test]
    fn account_endpoints() {
        for path in [
            "/_matrix/client/v3/login",
            "/_matrix/client/v1/login/get_token",
            "/_matrix/client/unstable/org.matrix.msc3882/login/get_token",
            "/_matrix/client/unstable/login",
            "/_matrix/client/v3/register",
            "/_matrix/client/v3/logout/all",
            "/_matrix/client/v3/refresh",
            "/_matrix/client/v3/devices/PHONE",
            "/_matrix/client/v3/delete_devices",
            "/_matrix/client/v3/keys/upload",
            "/_matrix/client/v3/keys/device_signing/upload",
            "/_matrix/client/v3/account/password",
            "/_matrix/client/v3/account/deactivate",
            "/_matrix/client/v3/account/3pid/add",
            "/_matrix/client/v3/user/%40alice%3Ahs/openid/request_token",
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
            "/_matrix/client/v3/room_keys/keys",
            "/_matrix/client/v3//login",
        ] {
            assert!(manages_account(&Target::read(path).unwrap()), "{path}");
        }
        for path in [
            "/_matrix/client/v3/account/whoami",
            "/_matrix/client/v3/rooms/!r/send/m.room.message/t1",
            "/_matrix/client/v3/keys/query",
            "/_matrix/client/v3/user/%40alice%3Ahs/account_data/m.direct",
            "/_matrix/media/v3/upload",
            "/_matrix/client/v3/sync",
        ] {
            assert!(!manages_account(&Target::read(path).unwrap()), "{path}");
        }
    }
}
