//! How asmux reads a proxied request's path and query: percent-decoded strictly, once.
//! Every check decides on this reading, and a bridge's request is forwarded as this
//! reading (its query rebuilt from the parameters read here), so that the homeserver, or
//! a proxy in front of it, cannot find another request in the same bytes. What cannot be
//! read this way is refused, never forwarded unchecked.

use std::borrow::Cow;

use crate::error::Error;

/// A proxied request's path, read.
#[derive(Debug)]
pub struct Target {
    /// The path as received.
    pub raw: String,
    /// Each `/`-separated segment of the raw path, percent-decoded on its own: an encoded
    /// `/` stays inside its segment, as homeservers' routers read IDs in paths.
    pub segments: Vec<String>,
    /// The whole path percent-decoded, for route matching and metric labels.
    pub decoded: String,
}

impl Target {
    /// Reads a raw (percent-encoded) path. Refuses a malformed escape, bytes that do not
    /// decode to UTF-8, and any `.` or `..` segment, encoded or not and also where an
    /// encoded `/` makes one: a proxy in front of the homeserver may resolve them, and no
    /// Matrix route has one.
    pub fn read(raw_path: &str) -> Result<Target, Error> {
        let unreadable =
            || Error::InvalidParam("The request path is not valid percent-encoded UTF-8".into());
        let segments: Vec<String> = raw_path
            .split('/')
            .map(|segment| {
                decode(segment, false)
                    .map(Cow::into_owned)
                    .ok_or_else(unreadable)
            })
            .collect::<Result<_, _>>()?;
        let decoded = segments.join("/");
        if decoded.split('/').any(|s| s == "." || s == "..") {
            return Err(Error::InvalidParam(
                "Paths with . or .. segments are not proxied".into(),
            ));
        }
        Ok(Target {
            raw: raw_path.to_owned(),
            segments,
            decoded,
        })
    }

    /// The non-empty words of the decoded path (an encoded `/` splits words too; empty
    /// segments are skipped as a proxy merging slashes would): the reading on which
    /// endpoints are recognised, so that no spelling of a path escapes its checks.
    pub fn words(&self) -> Vec<&str> {
        self.decoded.split('/').filter(|w| !w.is_empty()).collect()
    }
}

/// The parameters of a query string, decoded strictly (`+` is a space).
pub fn read_query(raw: &str) -> Result<Vec<(String, String)>, Error> {
    let unreadable =
        || Error::InvalidParam("The query string is not valid percent-encoded UTF-8".into());
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((
                decode(key, true).ok_or_else(unreadable)?.into_owned(),
                decode(value, true).ok_or_else(unreadable)?.into_owned(),
            ))
        })
        .collect()
}

/// The value of parameter `name`, refusing a repeated one: homeservers differ in which
/// of several values they take.
pub fn single<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, Error> {
    let mut values = params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::InvalidParam(
            format!("The query parameter {name} may appear only once").into(),
        ));
    }
    Ok(first)
}

/// The query string of `params`, every byte that is not plainly safe percent-encoded.
pub fn write_query(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Percent-decodes `raw` (and `+` to a space in a query), or `None` when an escape is
/// malformed or the bytes are not UTF-8.
fn decode(raw: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    let bytes = raw.as_bytes();
    let escapes_well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if !escapes_well_formed {
        return None;
    }
    if plus_is_space && raw.contains('+') {
        let spaced = raw.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()?;
        return Some(Cow::Owned(decoded.into_owned()));
    }
    percent_encoding::percent_decode_str(raw).decode_utf8().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_per_segment() {
        let t = Target::read("/_matrix/client/v3/directory/room/%23a%2Fb%3Ahs").unwrap();
        assert_eq!(t.segments.last().unwrap(), "#a/b:hs");
        assert_eq!(t.decoded, "/_matrix/client/v3/directory/room/#a/b:hs");
        assert_eq!(
            Target::read("/_matrix//client/").unwrap().words(),
            ["_matrix", "client"]
        );
    }

    #[test]
    fn dot_segments_and_unreadable_paths_are_refused() {
        for path in [
            "/_matrix/client/v3/../../_synapse/admin/v2/users",
            "/_matrix/client/v3/%2e%2e/%2E%2E/_synapse",
            "/_matrix/client/v3/x%2f..%2fy",
            "/_matrix/client/v3/./login",
            "/_matrix/client/v3/.",
            "/_matrix/client/v3/%ZZ",
            "/_matrix/client/v3/%2",
            "/_matrix/client/v3/%ff",
        ] {
            let err = Target::read(path).unwrap_err();
            assert_eq!(err.errcode(), "M_INVALID_PARAM", "{path}");
        }
        assert!(Target::read("/_matrix/client/v3/rooms/!a...b:hs/.well").is_ok());
    }

    #[test]
    fn queries_decode_strictly_and_refuse_repeats() {
        let params = read_query("user_id=%40a%3Ahs&x=a+b%2B&flag&&y=").unwrap();
        assert_eq!(
            params,
            [
                ("user_id".into(), "@a:hs".into()),
                ("x".into(), "a b+".into()),
                ("flag".into(), String::new()),
                ("y".into(), String::new())
            ]
        );
        assert_eq!(single(&params, "user_id").unwrap(), Some("@a:hs"));
        assert_eq!(single(&params, "none").unwrap(), None);
        let repeated = read_query("user_id=a&us%65r_id=b").unwrap();
        assert_eq!(
            single(&repeated, "user_id").unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
        assert!(read_query("a=%zz").is_err());
        assert!(read_query("a=%C3%28").is_err());
        assert_eq!(write_query(&params[..2]), "user_id=%40a%3Ahs&x=a+b%2B");
    }
}
