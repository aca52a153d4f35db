//! A bridge attacking the client-server proxy. Every request is sent as raw bytes on its
//! own connection, and the check is on what reached the homeserver stand-in: nothing, or
//! a request that keeps the bridge inside its namespace or acting as its own owner under
//! every reading of it (first or last of repeated parameters, `&` or `;` between them,
//! any JSON parser).

use std::collections::BTreeMap;

use crate::common::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OWNER: &str = "@alice:example.test";
const DP_TOKEN: &str = "dp-as-token";

/// alice/whatsapp (its token returned) and bob/whatsapp, with double puppeting set up.
async fn setup() -> (Stub, TestServer, String) {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(
        &hs,
        &format!("max_pdu_age_seconds = 0\n\n[double_puppet]\nas_token = \"{DP_TOKEN}\"\nhs_token = \"dp-hs-token\""),
    )
    .await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    provision(&server, "bob", "whatsapp", json!({"push": false})).await;
    (hs, server, reg["as_token"].as_str().unwrap().to_owned())
}

/// Sends `method target` with `headers` and `body` exactly as given, on a connection of
/// its own; answers the status and the JSON body.
async fn raw(
    server: &TestServer,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: asmux\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("asmux answers")
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A bridge's request with its token.
async fn bridge(
    server: &TestServer,
    token: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    raw(server, method, target, &[("authorization", &auth)], body).await
}

/// Every value of `name` in `query` under the widest reading: `&` and `;` both separate,
/// escapes decoded leniently.
fn values(query: &str, name: &str) -> Vec<String> {
    query
        .split(['&', ';'])
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k) == name).then(|| decode(v))
        })
        .collect()
}

/// Whether `user` is in alice/whatsapp's namespace under every way of splitting it.
fn in_namespace(user: &str) -> bool {
    let local = user.strip_prefix("@_alice_whatsapp_").unwrap_or("");
    user.ends_with(":example.test") && !local.is_empty() && local.matches(':').count() == 1
}

/// Asserts that what the homeserver got keeps alice's bridge in its namespace, or acting
/// as alice herself with the double-puppet token and no device, under every reading.
#[track_caller]
fn assert_confined(request: &Recorded) {
    let context = format!("{request:?}");
    let user_ids = values(&request.query, "user_id");
    assert_eq!(user_ids.len(), 1, "one user_id: {context}");
    assert!(
        values(&request.query, "access_token").is_empty(),
        "{context}"
    );
    let devices = [
        values(&request.query, "device_id"),
        values(&request.query, "org.matrix.msc3202.device_id"),
    ];
    assert!(devices.iter().all(|d| d.len() <= 1), "{context}");
    let authorizations: Vec<&(String, String)> = request
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .collect();
    assert_eq!(authorizations.len(), 1, "{context}");
    if user_ids[0] == OWNER {
        assert_eq!(
            authorizations[0].1,
            format!("Bearer {DP_TOKEN}"),
            "{context}"
        );
        assert!(
            devices.iter().all(Vec::is_empty),
            "no device as the owner: {context}"
        );
        let words: Vec<&str> = request.path.split('/').collect();
        for word in ["login", "register", "devices", "logout"] {
            assert!(!words.contains(&word), "the owner's account: {context}");
        }
    } else {
        assert!(in_namespace(&user_ids[0]), "{context}");
        assert_eq!(
            authorizations[0].1,
            format!("Bearer {AS_TOKEN}"),
            "{context}"
        );
    }
    let decoded = percent_encoding::percent_decode_str(&request.path).decode_utf8_lossy();
    assert!(
        !decoded.split('/').any(|s| s == "." || s == ".."),
        "{context}"
    );
    let endpoint = decoded
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if ["login", "register", "createRoom"].contains(&endpoint) && !request.raw_body.is_empty() {
        // The body is asmux's own serialisation: one key each, no escapes to reread.
        let parsed: Value = serde_json::from_str(&request.raw_body).expect(&context);
        assert_eq!(parsed.to_string(), request.raw_body, "canonical: {context}");
        let names: &[&Value] = match endpoint {
            "login" => &[&parsed["identifier"]["user"], &parsed["user"]],
            "register" => &[&parsed["username"], &parsed["user"]],
            _ => &[],
        };
        for name in names.iter().filter_map(|n| n.as_str()) {
            let full = match name.starts_with('@') && endpoint == "login" {
                true => name.to_owned(),
                false => format!("@{name}:example.test"),
            };
            assert!(in_namespace(&full), "{context}");
        }
        if let Some(alias) = parsed["room_alias_name"]
            .as_str()
            .filter(|_| endpoint == "createRoom")
        {
            assert!(alias.starts_with("_alice_whatsapp_"), "{context}");
        }
    }
    if decoded.contains("/directory/room/") && request.method != "GET" {
        // One alias under every reading: the raw last segment, and the decoded path.
        assert_eq!(decoded.matches("/directory/room/").count(), 1, "{context}");
        let raw_alias = request
            .path
            .rsplit_once("/directory/room/")
            .expect(&context)
            .1;
        assert!(!raw_alias.contains('/'), "{context}");
        let alias = percent_encoding::percent_decode_str(raw_alias).decode_utf8_lossy();
        assert!(alias.starts_with("#_alice_whatsapp_"), "{context}");
    }
}

/// The requests the homeserver got since `before` of them, each confined.
#[track_caller]
fn confined_since(hs: &Stub, before: usize) -> Vec<Recorded> {
    let new: Vec<Recorded> = hs.requests().into_iter().skip(before).collect();
    for request in &new {
        assert_confined(request);
    }
    new
}

/// The admin-token attack: an appservice login naming the server admin, in a body
/// serde_json cannot read but Python can, with and without the owner's `user_id`; and the
/// same bodies on register and createRoom. None reaches the homeserver.
#[tokio::test]
async fn bodies_asmux_cannot_read_never_reach_the_homeserver() {
    let (hs, server, token) = setup().await;
    let before = hs.requests().len();
    let admin = r#""identifier":{"type":"m.id.user","user":"@admin:example.test"}"#;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for pad in [r#""\ud800""#, "1e400", "NaN", deep.as_str()] {
        let login = format!(r#"{{"type":"m.login.application_service",{admin},"pad":{pad}}}"#);
        let register =
            format!(r#"{{"type":"m.login.application_service","username":"admin2","pad":{pad}}}"#);
        let create = format!(r#"{{"room_alias_name":"_bob_whatsapp_main","pad":{pad}}}"#);
        for (path, body) in [
            ("/_matrix/client/v3/login", &login),
            ("/_matrix/client/v3/register", &register),
            ("/_matrix/client/v3/createRoom", &create),
        ] {
            let (status, answer) = bridge(&server, &token, "POST", path, body.as_bytes()).await;
            assert_eq!(
                (status, &answer["errcode"]),
                (400, &json!("M_NOT_JSON")),
                "{path} {pad}"
            );
            let as_owner = format!("{path}?user_id=%40alice%3Aexample.test");
            let (status, _) = bridge(&server, &token, "POST", &as_owner, body.as_bytes()).await;
            assert!(status == 400 || status == 403, "{as_owner}: {status}");
        }
    }
    // Readable, but naming the admin: refused too.
    let login = format!(r#"{{"type":"m.login.application_service",{admin}}}"#);
    let (status, _) = bridge(
        &server,
        &token,
        "POST",
        "/_matrix/client/v3/login",
        login.as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    let as_owner = "/_matrix/client/v3/login?user_id=%40alice%3Aexample.test";
    let (status, answer) = bridge(&server, &token, "POST", as_owner, login.as_bytes()).await;
    assert_eq!((status, &answer["errcode"]), (403, &json!("M_FORBIDDEN")));
    assert!(
        confined_since(&hs, before).is_empty(),
        "{:?}",
        hs.requests()
    );
}

/// The table of the issue: every request asmux read one way and the homeserver another.
#[tokio::test]
async fn one_reading_of_queries_and_paths() {
    let (hs, server, token) = setup().await;
    let before = hs.requests().len();
    let send = "/_matrix/client/v3/rooms/!r:example.test/send/m.room.message/t1";
    for (target, status, errcode) in [
        (format!("{send}?user_id=%40alice%3Aexample.test&user_id=%40carol%3Aexample.test"), 400, "M_INVALID_PARAM"),
        (format!("{send}?user_id=%40_alice_whatsapp_x%3Aexample.test&user_id=%40carol%3Aexample.test"), 400, "M_INVALID_PARAM"),
        (format!("{send}?user_id=%40_alice_whatsapp_x%3Aexample.test&us%65r_id=%40carol%3Aexample.test"), 400, "M_INVALID_PARAM"),
        (format!("{send}?access_token={token}&access_token=x"), 400, "M_INVALID_PARAM"),
        (format!("{send}?user_id=%40alice%3Aexample.test&device_id=PHONE"), 403, "M_FORBIDDEN"),
        (format!("{send}?user_id=%40alice%3Aexample.test&org.matrix.msc3202.device_id=PHONE"), 403, "M_FORBIDDEN"),
        (format!("{send}?user_id=%40_alice_whatsapp_x%3Aexample.test&device_id=A&org.matrix.msc3202.device_id=B"), 400, "M_INVALID_PARAM"),
        (format!("{send}?user_id=%40_alice_whatsapp_x%3Aevil%3Aexample.test"), 403, "M_FORBIDDEN"),
        (format!("{send}?user_id=%40_alice_whatsapp_x%3Aexample.test;user_id=%40carol%3Aexample.test"), 403, "M_FORBIDDEN"),
        (format!("{send}?user_id=%ZZ"), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/../../_synapse/admin/v2/users".into(), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/%2e%2e/%2e%2e/_synapse/admin/v2/users".into(), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/x%2f..%2f..%2f_synapse/admin/v2/users".into(), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/./account/whoami".into(), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/login/../account/password?user_id=%40alice%3Aexample.test".into(), 400, "M_INVALID_PARAM"),
        ("/_matrix/client/v3/account/password?user_id=%40alice%3Aexample.test".into(), 403, "M_FORBIDDEN"),
        ("/_matrix/client/v1/login/get_token?user_id=%40alice%3Aexample.test".into(), 403, "M_FORBIDDEN"),
        ("/_matrix/client/v3/user/%40alice%3Aexample.test/openid/request_token?user_id=%40alice%3Aexample.test".into(), 403, "M_FORBIDDEN"),
    ] {
        let (got, answer) = bridge(&server, &token, "POST", &target, b"{}").await;
        assert_eq!((got, answer["errcode"].as_str()), (status, Some(errcode)), "{target}: {answer}");
    }
    for (method, alias) in [
        (
            "PUT",
            "%23_bob_whatsapp_main%2Fdirectory%2Froom%2F%23_alice_whatsapp_y%3Aexample.test",
        ),
        (
            "DELETE",
            "%23_alice_whatsapp_y%3Aexample.test/..%2F%23_bob_whatsapp_main%3Aexample.test",
        ),
        ("PUT", "%23_alice_whatsapp_y%3Aexample.test/extra"),
    ] {
        let target = format!("/_matrix/client/v3/directory/room/{alias}");
        let (status, _) = bridge(&server, &token, method, &target, br#"{"room_id":"!r"}"#).await;
        assert_eq!(status, 400, "{target}");
    }
    assert!(
        confined_since(&hs, before).is_empty(),
        "{:?}",
        hs.requests()
    );

    // What is forwarded carries each parameter once, as checked; `;` is no separator to
    // asmux, so it stays inside the value it was read in.
    for query in [
        "user_id=%40_alice_whatsapp_x%3Aexample.test&device_id=D&org.matrix.msc3202.device_id=D",
        "x=1;user_id=%40carol%3Aexample.test&user_id=%40_alice_whatsapp_x%3Aexample.test",
        "user_id=%40alice%3Aexample.test&com.beeper.also_allow_user=%40carol%3Aexample.test",
        "user_id=@_alice_whatsapp_x:example.test&x=a+b;c",
    ] {
        let (status, _) = bridge(&server, &token, "PUT", &format!("{send}?{query}"), b"{}").await;
        assert_eq!(status, 200, "{query}");
    }
    let forwarded = confined_since(&hs, before);
    assert_eq!(forwarded.len(), 4);
    assert_eq!(values(&forwarded[0].query, "device_id"), ["D"]);
    assert_eq!(
        values(&forwarded[1].query, "user_id"),
        ["@_alice_whatsapp_x:example.test"]
    );
    assert!(values(&forwarded[2].query, "com.beeper.also_allow_user").is_empty());
    // A legitimate alias with an encoded `/` passes, read from its raw segment.
    let before = hs.requests().len();
    let alias = "/_matrix/client/v3/directory/room/%23_alice_whatsapp_a%2Fb%3Aexample.test";
    let (status, _) = bridge(&server, &token, "PUT", alias, br#"{"room_id":"!r"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(confined_since(&hs, before).len(), 1);
}

/// Bodies that name users twice, in fields the homeserver may prefer, or as a type it
/// may read another way.
#[tokio::test]
async fn every_name_in_a_body_is_checked() {
    let (hs, server, token) = setup().await;
    let before = hs.requests().len();
    for (path, body, status, errcode) in [
        (
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "_alice_whatsapp_x"}, "user": "_bob_whatsapp_x"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "user": "@admin:example.test"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "admin@example.test"}}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": ["_alice_whatsapp_x"]}}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service", "username": "_alice_whatsapp_x", "user": "_bob_whatsapp_x"}),
            403,
            "M_EXCLUSIVE",
        ),
        (
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service", "username": "@_alice_whatsapp_x:example.test"}),
            403,
            "M_EXCLUSIVE",
        ),
        (
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service", "username": 5}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/register",
            json!({"type": "m.login.application_service"}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/register",
            json!(["_alice_whatsapp_x"]),
            400,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/createRoom",
            json!({"room_alias_name": null}),
            400,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/createRoom",
            json!({"room_alias_name": "_bob_whatsapp_main"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            "/_matrix/client/r0/register/",
            json!({"type": "m.login.application_service", "username": "admin2"}),
            403,
            "M_EXCLUSIVE",
        ),
        (
            "/_matrix/client/v3/regist%65r",
            json!({"type": "m.login.application_service", "username": "admin2"}),
            403,
            "M_EXCLUSIVE",
        ),
    ] {
        let (got, answer) =
            bridge(&server, &token, "POST", path, body.to_string().as_bytes()).await;
        assert_eq!(
            (got, answer["errcode"].as_str()),
            (status, Some(errcode)),
            "{path} {body}: {answer}"
        );
    }
    // A repeated key is forwarded as the one asmux read, alone.
    let twice = br#"{"type":"m.login.application_service","identifier":{"type":"m.id.user","user":"_bob_whatsapp_x"},"identifier":{"type":"m.id.user","user":"_alice_whatsapp_x"}}"#;
    let (status, _) = bridge(&server, &token, "POST", "/_matrix/client/v3/login", twice).await;
    assert_eq!(status, 200);
    let forwarded = confined_since(&hs, before);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].raw_body.matches("identifier").count(), 1);
    // An encoded body asmux cannot read is refused.
    let auth = format!("Bearer {token}");
    let (status, _) = raw(
        &server,
        "POST",
        "/_matrix/client/v3/login",
        &[("authorization", &auth), ("content-encoding", "gzip")],
        b"\x1f\x8b",
    )
    .await;
    assert_eq!(status, 400);
}

/// Twisted merges a POSTed form body into the query's arguments: a `user_id` there would
/// replace the one asmux checked. Such bodies are refused from bridges.
#[tokio::test]
async fn form_bodies_never_carry_parameters_past_asmux() {
    let (hs, server, token) = setup().await;
    let before = hs.requests().len();
    let auth = format!("Bearer {token}");
    let invite = "/_matrix/client/v3/rooms/!r:example.test/invite?user_id=%40alice%3Aexample.test";
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "multipart/form-data; boundary=x",
        "application/json (x)",
    ] {
        let (status, answer) = raw(
            &server,
            "POST",
            invite,
            &[("authorization", &auth), ("content-type", content_type)],
            br#"{"user_id":"@_alice_whatsapp_bot:example.test","x":"&user_id=%40admin%3Aexample.test&"}"#,
        )
        .await;
        assert_eq!(
            (status, &answer["errcode"]),
            (400, &json!("M_INVALID_PARAM")),
            "{content_type}"
        );
    }
    let (status, _) = raw(
        &server,
        "POST",
        invite,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(confined_since(&hs, before).is_empty());
    // JSON is forwarded.
    let (status, _) = raw(
        &server,
        "POST",
        invite,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(confined_since(&hs, before).len(), 1);
}

/// A guest registration is no registration in the bridge's namespace.
#[tokio::test]
async fn a_bridge_registers_no_guests() {
    let (hs, server, token) = setup().await;
    let before = hs.requests().len();
    let body = json!({"type": "m.login.application_service", "username": "_alice_whatsapp_x"});
    let (status, _) = bridge(
        &server,
        &token,
        "POST",
        "/_matrix/client/v3/register?kind=guest",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = bridge(
        &server,
        &token,
        "POST",
        "/_matrix/client/v3/register?kind=user",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(confined_since(&hs, before).len(), 1);
}

/// Headers: one Authorization per request, and only asmux names the bridge.
#[tokio::test]
async fn headers_are_read_once_and_asmux_names_the_bridge() {
    let (hs, server, token) = setup().await;
    let auth = format!("Bearer {token}");
    let (status, answer) = raw(
        &server,
        "GET",
        "/_matrix/client/v3/account/whoami",
        &[
            ("authorization", "Bearer syt_someone"),
            ("authorization", &auth),
        ],
        b"",
    )
    .await;
    assert_eq!(
        (status, &answer["errcode"]),
        (400, &json!("M_INVALID_PARAM"))
    );
    let before = hs.requests().len();
    let (status, _) = raw(
        &server,
        "GET",
        "/_matrix/client/v3/joined_rooms",
        &[
            ("authorization", "Bearer syt_someone"),
            ("x-beeper-bridge", "bob/whatsapp"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let got = &hs.requests()[before];
    assert!(
        got.headers.iter().all(|(k, _)| k != "x-beeper-bridge"),
        "{got:?}"
    );
}

/// Generated requests from a bridge: paths with dot segments and encoded separators,
/// queries with repeats and encodings, bodies with escapes, surrogates, huge numbers,
/// nesting and repeated keys. Whatever reaches the homeserver is confined; asmux never
/// fails with a 5xx of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_stay_confined() {
    use proptest::strategy::ValueTree;
    let (hs, server, token) = setup().await;
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = proptest::test_runner::TestRunner::default();
    let mut outcomes = BTreeMap::<u16, usize>::new();
    for _ in 0..cases {
        let (method, target, body) = request().new_tree(&mut runner).unwrap().current();
        let before = hs.requests().len();
        let (status, answer) = bridge(&server, &token, method, &target, body.as_bytes()).await;
        assert!(
            status < 500 || status == 502,
            "{method} {target} {body}: {status} {answer}"
        );
        *outcomes.entry(status).or_default() += 1;
        confined_since(&hs, before);
    }
    eprintln!("outcomes: {outcomes:?}");
    // Both outcomes happen: the generator is no mere refusal test.
    assert!(
        outcomes.get(&200).is_some_and(|n| *n > cases / 20),
        "{outcomes:?}"
    );
    assert!(outcomes.keys().any(|s| *s >= 400), "{outcomes:?}");
}

/// A user ID, spelled in one of the ways a bridge could try.
fn user() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "@_alice_whatsapp_x:example.test",
        "@_alice_whatsapp_bot:example.test",
        "@alice:example.test",
        "@_bob_whatsapp_x:example.test",
        "@carol:example.test",
        "@admin:example.test",
        "@_alice_whatsapp_x:evil:example.test",
        "_alice_whatsapp_y",
        "admin",
    ])
    .prop_map(str::to_owned)
}

/// `s` percent-encoded in part: each character encoded or not.
fn spelled(s: String) -> impl Strategy<Value = String> {
    let len = s.chars().count();
    proptest::collection::vec(any::<bool>(), len).prop_map(move |encode| {
        s.chars()
            .zip(encode)
            .map(|(c, e)| match e {
                true => percent_encoding::utf8_percent_encode(
                    c.encode_utf8(&mut [0; 4]),
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
                false if "&;#? %".contains(c) => format!("%{:02X}", c as u32),
                false => c.to_string(),
            })
            .collect()
    })
}

fn query() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "user_id",
        "device_id",
        "org.matrix.msc3202.device_id",
        "access_token",
        "com.beeper.also_allow_user",
        "x",
    ]);
    let pair = (name, user()).prop_flat_map(|(k, v)| (spelled(k.to_owned()), spelled(v)));
    (
        proptest::collection::vec(pair, 0..4),
        prop::sample::select(vec!["&", ";", "&&"]),
    )
        .prop_map(|(pairs, separator)| {
            pairs
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(separator)
        })
}

fn path() -> impl Strategy<Value = (&'static str, String)> {
    let endpoint = prop::sample::select(vec![
        ("POST", "login"),
        ("POST", "register"),
        ("POST", "createRoom"),
        ("PUT", "directory/room/#_alice_whatsapp_a:example.test"),
        ("DELETE", "directory/room/#_bob_whatsapp_a:example.test"),
        (
            "PUT",
            "directory/room/#_bob_whatsapp_a/directory/room/#_alice_whatsapp_b:example.test",
        ),
        ("PUT", "rooms/!r:example.test/send/m.room.message/t1"),
        ("POST", "account/password"),
        ("DELETE", "devices/PHONE"),
        ("POST", "../../_synapse/admin/v1/register"),
    ]);
    let version = prop::sample::select(vec!["v3", "r0", "unstable", "v3/.", "v3//"]);
    (endpoint, version).prop_flat_map(|((method, endpoint), version)| {
        (Just(method), spelled(endpoint.to_owned()), Just(version)).prop_map(
            |(method, endpoint, version)| (method, format!("/_matrix/client/{version}/{endpoint}")),
        )
    })
}

fn body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        user().prop_map(|u| json!(u).to_string()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""_bob\u005fwhatsapp_x""#.to_owned()),
        Just("1e400".to_owned()),
        Just("NaN".to_owned()),
        Just(format!("{}1{}", "[".repeat(150), "]".repeat(150))),
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let field = prop::sample::select(vec![
        "user",
        "username",
        "room_alias_name",
        "identifier",
        "medium",
    ]);
    let entry = (field, value.clone(), value).prop_map(|(field, value, user)| match field {
        "identifier" => format!(r#""identifier":{{"type":"m.id.user","user":{user}}}"#),
        _ => format!(r#""{field}":{value}"#),
    });
    (
        prop::sample::select(vec!["m.login.application_service", "m.login.password"]),
        proptest::collection::vec(entry, 0..4),
    )
        .prop_map(|(kind, entries)| {
            let mut all = vec![format!(r#""type":"{kind}""#)];
            all.extend(entries);
            format!("{{{}}}", all.join(","))
        })
}

fn request() -> impl Strategy<Value = (&'static str, String, String)> {
    (path(), query(), body()).prop_map(|((method, path), query, body)| {
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        (method, target, body)
    })
}
