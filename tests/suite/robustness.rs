//! No input makes the server panic or answer anything but Matrix error JSON.

use crate::common::*;

const PATHS: &[&str] = &[
    "/",
    "//",
    "/_matrix",
    "/_matrix/app/v1/ping",
    "/_matrix/app/v1/ping?access_token=%ff",
    "/_matrix/asmux",
    "/_matrix/asmux/",
    "/_matrix/asmux/appservices",
    "/_matrix/asmux/appservice/",
    "/_matrix/asmux/appservice/alice",
    "/_matrix/asmux/appservice/alice/whatsapp",
    "/_matrix/asmux/appservice/alice/whatsapp/extra/segments",
    "/_matrix/asmux/appservice/%ff%fe/x",
    "/_matrix/asmux/appservice/00000000-0000-0000-0000-000000000000",
    "/_matrix/asmux/appservice/alice/%2e%2e",
    "/_matrix/asmux/user/",
    "/_matrix/asmux/user/alice?create=1",
    "/_matrix/asmux/user/%00",
    "/_matrix/asmux/room/%21r",
    "/_matrix/asmux/room/",
    "/_matrix/asmux/mxauth/appservice/alice/whatsapp",
    "/_matrix/asmux/mxauth/user/alice",
];

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"];

fn bodies() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"text\"".to_vec(),
        b"{\"push\": null, \"address\": 5}".to_vec(),
        b"{\"config_password_lifetime\": -99999999999999999999}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        "[".repeat(100_000).into_bytes(),
        vec![b' '; 2 * 1024 * 1024],
    ]
}

#[tokio::test]
async fn garbage_gets_json_errors_and_never_breaks_the_server() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let long_path = format!("/_matrix/asmux/appservice/{}/x", "a".repeat(10_000));
    let mut paths: Vec<&str> = PATHS.to_vec();
    paths.push(&long_path);
    let mut checked = 0;
    for path in paths {
        for method in METHODS {
            for token in [None, Some(SHARED_SECRET), Some("junk")] {
                for body in bodies() {
                    let auth = token.map(|t| format!("Bearer {t}"));
                    let reply =
                        send_raw(method, &server.url(path), auth.as_deref(), Some(body)).await;
                    assert!(
                        reply.status < 500,
                        "{method} {path}: {} {}",
                        reply.status,
                        reply.text
                    );
                    if reply.status >= 400 {
                        reply.assert_error(
                            reply.status,
                            reply.body["errcode"].as_str().unwrap_or("none"),
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000);
    // Still serving, and nothing half-made: the only bridges are ones a valid PUT made.
    let list = server.root_get("/_matrix/asmux/appservices").await;
    assert_eq!(list.status, 200);
    for bridge in list.body["appservices"].as_array().unwrap() {
        assert_eq!(bridge["owner"], "alice");
        assert_eq!(bridge["prefix"], "whatsapp");
    }
}

#[tokio::test]
async fn homeserver_ping_requires_the_hs_token() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let url = server.url("/_matrix/app/v1/ping");
    let body = Some(r#"{"transaction_id": "t1"}"#);
    let ok = send("POST", &url, Some(HS_TOKEN), body).await;
    assert_eq!((ok.status, ok.text.as_str()), (200, "{}"));
    let by_query = send(
        "POST",
        &format!("{url}?access_token={HS_TOKEN}"),
        None,
        body,
    )
    .await;
    assert_eq!(by_query.status, 200);
    for wrong in [Some("wrong"), Some(AS_TOKEN), None] {
        let reply = send("POST", &url, wrong, body).await;
        reply.assert_error(401, "M_UNKNOWN_TOKEN");
        assert_eq!(reply.body["error"], "Invalid auth token");
    }
    send("GET", &url, Some(HS_TOKEN), None)
        .await
        .assert_error(405, "M_UNRECOGNIZED");
}
