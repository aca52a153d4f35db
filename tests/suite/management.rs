//! The management API (spec 6) against the real server and a stub homeserver.

use crate::common::*;
use data_encoding::BASE64;
use serde_json::json;

const WA: &str = "/_matrix/asmux/appservice/alice/whatsapp";

async fn provision(server: &TestServer, path: &str, token: &str, body: &str) -> Reply {
    send("PUT", &server.url(path), Some(token), Some(body)).await
}

async fn user_token(server: &TestServer, user: &str) -> String {
    let reply = send(
        "PUT",
        &server.url(&format!("/_matrix/asmux/user/{user}")),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["api_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn provisioning_returns_the_exact_registration() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;

    let created = provision(&server, WA, SHARED_SECRET, r#"{"push": false}"#).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("access-control-allow-origin"), Some("*"));
    let body = &created.body;
    let id = body["id"].as_str().unwrap();
    assert!(uuid::Uuid::try_parse(id).is_ok());
    let as_token = body["as_token"].as_str().unwrap();
    assert!(as_token.starts_with(&format!("{id}-")));
    assert_eq!(as_token.len(), 36 + 1 + 27);
    assert_eq!(body["hs_token"].as_str().unwrap().len(), 64);

    let alice = server.root_get("/_matrix/asmux/user/alice").await;
    assert_eq!(alice.status, 200, "root created the owner: {}", alice.text);
    let login = alice.body["login_token"].clone();

    // Key order and every value as the original sends them.
    let expected = json!({
        "id": id,
        "as_token": as_token,
        "hs_token": body["hs_token"],
        "login_shared_secret": login,
        "com.beeper.asmux": {"login_shared_secret": login},
        "namespaces": {
            "users": [{"regex": "@_alice_whatsapp_.+:example\\.test", "exclusive": true}],
            "aliases": [{"regex": "#_alice_whatsapp_.+:example\\.test", "exclusive": true}]
        },
        "url": "",
        "sender_localpart": "_alice_whatsapp_bot",
        "rate_limited": true
    });
    assert_eq!(created.body, expected);
    assert!(
        created
            .text
            .starts_with(&format!("{{\"id\":\"{id}\",\"as_token\"")),
        "{}",
        created.text
    );

    // The bot was registered on the homeserver with asmux's own token.
    let registers = hs.requests_to("/_matrix/client/v3/register");
    assert_eq!(registers.len(), 1);
    assert_eq!(registers[0].query, "kind=user");
    assert_eq!(
        registers[0].authorization.as_deref(),
        Some(&*format!("Bearer {AS_TOKEN}"))
    );
    assert_eq!(
        registers[0].body,
        json!({"type": "m.login.application_service", "username": "_alice_whatsapp_bot"})
    );

    // Same PUT again: 200, same body, no second registration.
    let again = provision(&server, WA, SHARED_SECRET, r#"{"push": false}"#).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, expected);
    assert_eq!(hs.requests_to("/_matrix/client/v3/register").len(), 1);

    // GET by name and by UUID.
    for path in [WA.to_owned(), format!("/_matrix/asmux/appservice/{id}")] {
        let got = server.root_get(&path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.body, expected, "{path}");
    }
}

#[tokio::test]
async fn updates_change_address_and_push_only_when_given() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let first = provision(
        &server,
        WA,
        SHARED_SECRET,
        r#"{"address": "http://127.0.0.1:9/wa", "bot": "wabot"}"#,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["url"], "http://127.0.0.1:9/wa");
    assert_eq!(first.body["sender_localpart"], "_alice_whatsapp_wabot");

    let id = first.body["id"].as_str().unwrap();
    let by_id = format!("/_matrix/asmux/appservice/{id}");
    let updated = provision(
        &server,
        &by_id,
        SHARED_SECRET,
        r#"{"address": "http://127.0.0.1:10"}"#,
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["url"], "http://127.0.0.1:10");
    assert_eq!(updated.body["sender_localpart"], "_alice_whatsapp_wabot");
    assert_eq!(updated.body["as_token"], first.body["as_token"]);

    let list = server.root_get("/_matrix/asmux/appservices").await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.body["appservices"],
        json!([{"id": id, "owner": "alice", "prefix": "whatsapp", "bot": "wabot", "push": true, "address": "http://127.0.0.1:10"}])
    );

    // PUT by an unknown UUID cannot create anything.
    let unknown = format!("/_matrix/asmux/appservice/{}", uuid::Uuid::new_v4());
    provision(&server, &unknown, SHARED_SECRET, "{}")
        .await
        .assert_error(404, "M_NOT_FOUND");

    let bad = provision(&server, WA, SHARED_SECRET, r#"{"address": "not a url"}"#).await;
    bad.assert_error(400, "M_BAD_REQUEST");
    let bad = provision(&server, WA, SHARED_SECRET, r#"{"push": "yes"}"#).await;
    bad.assert_error(400, "M_BAD_JSON");
}

#[tokio::test]
async fn config_password_is_generated_on_request() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let reply = provision(
        &server,
        WA,
        SHARED_SECRET,
        r#"{"generate_config": true, "config_password_lifetime": 99999}"#,
    )
    .await;
    assert_eq!(reply.status, 201);
    let extras = &reply.body["com.beeper.asmux"];
    assert_eq!(
        extras["config_password"].as_str().unwrap().len(),
        52,
        "32 bytes as unpadded base32"
    );
    assert_eq!(extras["config_password_lifetime"], 3600, "clamped");
    let got = server.root_get(WA).await;
    assert!(got.body["com.beeper.asmux"]
        .get("config_password")
        .is_none());
}

#[tokio::test]
async fn authentication_matrix() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let alice = user_token(&server, "alice").await;
    let bob = user_token(&server, "bob").await;
    let url = server.url(WA);

    // No header, not Bearer, unknown token: 403 with the spec's messages.
    let none = send_raw("GET", &url, None, None).await;
    none.assert_error(403, "M_MISSING_TOKEN");
    assert_eq!(none.body["error"], "Missing authorization header");
    let basic = send_raw("GET", &url, Some("Basic YWxpY2U6cHc="), None).await;
    basic.assert_error(403, "M_UNKNOWN_TOKEN");
    assert_eq!(basic.body["error"], "Invalid authorization header");
    let unknown = send("GET", &url, Some("wrong-token"), None).await;
    unknown.assert_error(403, "M_UNKNOWN_TOKEN");
    assert_eq!(unknown.body["error"], "Invalid authorization token");
    // Errors carry CORS too, so browsers can read them.
    assert_eq!(unknown.header("access-control-allow-origin"), Some("*"));

    // The owner provisions with their own token.
    let created = provision(&server, WA, &alice, "{}").await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let by_id = server.url(&format!("/_matrix/asmux/appservice/{id}"));
    assert_eq!(send("GET", &url, Some(&alice), None).await.status, 200);
    assert_eq!(send("GET", &by_id, Some(&alice), None).await.status, 200);

    // Another user: 401 on the name, on the UUID, and on a UUID that does not exist, so
    // existence never leaks.
    send("GET", &url, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    send("GET", &by_id, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    send("DELETE", &by_id, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    provision(&server, WA, &bob, "{}")
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let missing = server.url(&format!(
        "/_matrix/asmux/appservice/{}",
        uuid::Uuid::new_v4()
    ));
    send("GET", &missing, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    send("GET", &missing, Some(SHARED_SECRET), None)
        .await
        .assert_error(404, "M_NOT_FOUND");
    let missing_name = server.url("/_matrix/asmux/appservice/alice/signal");
    send("GET", &missing_name, Some(&alice), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let root_missing = send("GET", &missing_name, Some(SHARED_SECRET), None).await;
    root_missing.assert_error(404, "M_NOT_FOUND");
    assert_eq!(root_missing.body["error"], "Application service not found.");

    // Listing is scoped to the caller.
    let list = |token: String| {
        let url = server.url("/_matrix/asmux/appservices");
        async move {
            send("GET", &url, Some(&token), None).await.body["appservices"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(list(alice.clone()).await, 1);
    assert_eq!(list(bob.clone()).await, 0);
    assert_eq!(list(SHARED_SECRET.into()).await, 1);

    // Users read only themselves and cannot delete rooms.
    let bob_reads_alice = send(
        "GET",
        &server.url("/_matrix/asmux/user/alice"),
        Some(&bob),
        None,
    )
    .await;
    bob_reads_alice.assert_error(401, "M_UNAUTHORIZED");
    let own = send(
        "GET",
        &server.url("/_matrix/asmux/user/bob"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(own.body["api_token"], bob.as_str());
    let room = server.url("/_matrix/asmux/room/%21abc");
    send("DELETE", &room, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    assert_eq!(
        send("DELETE", &room, Some(SHARED_SECRET), None)
            .await
            .status,
        204
    );

    // The owner deletes: 204, then 404 for root and 401 for the owner.
    let deleted = send("DELETE", &by_id, Some(&alice), None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.text, "");
    send("DELETE", &by_id, Some(SHARED_SECRET), None)
        .await
        .assert_error(404, "M_NOT_FOUND");
    send("GET", &url, Some(&alice), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn mxauth_resolves_matrix_tokens_through_whoami() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    user_token(&server, "alice").await;
    provision(&server, WA, SHARED_SECRET, "{}").await;
    hs.add_token("alice-matrix-token", "@alice:example.test");
    hs.add_token("carol-matrix-token", "@carol:example.test");
    hs.add_token("remote-matrix-token", "@alice:elsewhere.test");

    let url = server.url("/_matrix/asmux/mxauth/appservice/alice/whatsapp");
    let ok = send("GET", &url, Some("alice-matrix-token"), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["sender_localpart"], "_alice_whatsapp_bot");
    // Cached: a second call does not ask the homeserver again.
    assert_eq!(
        send("GET", &url, Some("alice-matrix-token"), None)
            .await
            .status,
        200
    );
    assert_eq!(hs.requests_to("/_matrix/client/v3/account/whoami").len(), 1);

    send("GET", &url, Some("carol-matrix-token"), None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    send("GET", &url, Some("remote-matrix-token"), None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    send("GET", &url, Some("bogus"), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    send("GET", &url, None, None)
        .await
        .assert_error(403, "M_MISSING_TOKEN");
    // The shared secret is not a Matrix token.
    send("GET", &url, Some(SHARED_SECRET), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn invalid_names_and_uuids() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let owner = provision(
        &server,
        "/_matrix/asmux/appservice/Alice_X/whatsapp",
        SHARED_SECRET,
        "{}",
    )
    .await;
    owner.assert_error(400, "M_BAD_REQUEST");
    assert_eq!(
        owner.body["error"],
        "Appservice owner must match [a-z0-9=.-]{1,32}"
    );
    let prefix = provision(
        &server,
        "/_matrix/asmux/appservice/alice/Bad_Prefix",
        SHARED_SECRET,
        "{}",
    )
    .await;
    prefix.assert_error(400, "M_BAD_REQUEST");
    assert_eq!(
        prefix.body["error"],
        "Appservice prefix must match [a-z0-9=.-]{1,32}"
    );
    let long = format!("/_matrix/asmux/appservice/{}/x", "a".repeat(33));
    provision(&server, &long, SHARED_SECRET, "{}")
        .await
        .assert_error(400, "M_BAD_REQUEST");
    let uuid = server
        .root_get("/_matrix/asmux/appservice/not-a-uuid")
        .await;
    uuid.assert_error(400, "M_BAD_REQUEST");
    assert_eq!(uuid.body["error"], "Invalid UUID");
    let not_json = provision(&server, WA, SHARED_SECRET, "not json").await;
    not_json.assert_error(400, "M_NOT_JSON");
    // Percent-encoded segments are decoded before validation.
    let encoded = provision(
        &server,
        "/_matrix/asmux/appservice/al%69ce/whatsapp",
        SHARED_SECRET,
        "{}",
    )
    .await;
    assert_eq!(encoded.status, 201, "{}", encoded.text);
    assert_eq!(encoded.body["sender_localpart"], "_alice_whatsapp_bot");
}

#[tokio::test]
async fn user_records() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let url = |q: &str| server.url(&format!("/_matrix/asmux/user/dave{q}"));
    let missing = send("GET", &url(""), Some(SHARED_SECRET), None).await;
    missing.assert_error(404, "M_NOT_FOUND");
    assert_eq!(missing.body["error"], "User not found.");
    send("GET", &url("?create=no"), Some(SHARED_SECRET), None)
        .await
        .assert_error(404, "M_NOT_FOUND");

    let created = send("GET", &url("?create=1"), Some(SHARED_SECRET), None).await;
    assert_eq!(created.status, 200, "create answers 200, not 201");
    assert_eq!(created.body["id"], "dave");
    assert_eq!(created.body["api_token"].as_str().unwrap().len(), 64);
    assert_eq!(created.body["login_token"].as_str().unwrap().len(), 64);
    assert_eq!(created.body.as_object().unwrap().len(), 3);

    for create in ["?create=true", "?create=yes", "?create=t", "?create=Y"] {
        let again = send("GET", &url(create), Some(SHARED_SECRET), None).await;
        assert_eq!(again.body, created.body, "{create} returns the same user");
    }
    let put = send("PUT", &url(""), Some(SHARED_SECRET), None).await;
    assert_eq!(put.body, created.body);

    let invalid = send(
        "PUT",
        &server.url("/_matrix/asmux/user/Not_Valid"),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    invalid.assert_error(400, "M_BAD_REQUEST");
    // The new user's token works for the management API.
    let token = created.body["api_token"].as_str().unwrap();
    let own = send("GET", &url(""), Some(token), None).await;
    assert_eq!(own.body, created.body);
}

#[tokio::test]
async fn cors_and_options() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    for path in [
        "/_matrix/asmux/user/alice",
        "/_matrix/asmux/appservice/alice/whatsapp",
        "/_matrix/asmux/anything/else",
    ] {
        let reply = send_raw("OPTIONS", &server.url(path), None, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.text, "");
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert_eq!(
            reply.header("access-control-allow-headers"),
            Some("Authorization, Content-Type")
        );
        assert_eq!(
            reply.header("access-control-allow-methods"),
            Some("GET, PUT, POST, OPTIONS")
        );
    }
    let unknown = server.root_get("/_matrix/asmux/nothing").await;
    unknown.assert_error(404, "M_UNRECOGNIZED");
    assert_eq!(unknown.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn data_survives_restart() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let created = provision(&server, WA, SHARED_SECRET, r#"{"push": false}"#).await;
    let user = server.root_get("/_matrix/asmux/user/alice").await;
    let room = server.url("/_matrix/asmux/room/%21gone%3Aexample.test");
    assert_eq!(
        send("DELETE", &room, Some(SHARED_SECRET), None)
            .await
            .status,
        204
    );

    let server = server.restart().await;
    let after = server.root_get(WA).await;
    assert_eq!(after.body, created.body);
    let user_after = server.root_get("/_matrix/asmux/user/alice").await;
    assert_eq!(user_after.body, user.body);
    // The user's token still authenticates after the restart.
    let token = user.body["api_token"].as_str().unwrap();
    assert_eq!(
        send("GET", &server.url(WA), Some(token), None).await.status,
        200
    );
    let dir = server.stop().await;
    let store = open_store(&dir.path().join("data"));
    assert!(store.room("!gone:example.test").unwrap().unwrap().deleted);
}

#[tokio::test]
async fn homeserver_down_does_not_fail_provisioning() {
    let server = TestServer::start_with_homeserver_down().await;
    let created = provision(&server, WA, SHARED_SECRET, "{}").await;
    assert_eq!(created.status, 201, "{}", created.text);
    // mxauth needs the homeserver: a clear 502.
    let mx = send(
        "GET",
        &server.url("/_matrix/asmux/mxauth/appservice/alice/whatsapp"),
        Some("tok"),
        None,
    )
    .await;
    mx.assert_error(502, "M_BAD_GATEWAY");
}

#[tokio::test]
async fn bodies_are_limited() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    // The test config allows 64 KiB of management body.
    let big = format!(r#"{{"address": "http://x/{}"}}"#, "a".repeat(70_000));
    provision(&server, WA, SHARED_SECRET, &big)
        .await
        .assert_error(413, "M_TOO_LARGE");
    // Nothing was provisioned by the refused request.
    server.root_get(WA).await.assert_error(404, "M_NOT_FOUND");
}

/// A body far over the limit is refused before it is read; the client is still writing
/// it then, and must get the 413 rather than a connection reset (the rest is read and
/// dropped after the answer).
#[tokio::test]
async fn an_oversized_body_gets_its_answer_while_still_being_sent() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let huge = format!(r#"{{"address": "http://x/{}"}}"#, "a".repeat(8 << 20));
    for _ in 0..3 {
        provision(&server, WA, SHARED_SECRET, &huge)
            .await
            .assert_error(413, "M_TOO_LARGE");
    }
    server.root_get(WA).await.assert_error(404, "M_NOT_FOUND");
}

/// `GET /_matrix/asmux/public/config/{prefix}/{what}` with HTTP Basic `alice:password`.
async fn config_get(
    server: &TestServer,
    prefix: &str,
    what: &str,
    password: Option<&str>,
) -> Reply {
    let url = server.url(&format!("/_matrix/asmux/public/config/{prefix}/{what}"));
    let auth =
        password.map(|p| format!("Basic {}", BASE64.encode(format!("alice:{p}").as_bytes())));
    send_raw("GET", &url, auth.as_deref(), None).await
}

/// Provisions websocket bridge `alice/{prefix}` with a config password; the password.
async fn one_time_password(server: &TestServer, prefix: &str) -> String {
    let path = format!("/_matrix/asmux/appservice/alice/{prefix}");
    let body = r#"{"push": false, "generate_config": true}"#;
    let reg = provision(server, &path, SHARED_SECRET, body).await;
    assert!(reg.status == 201 || reg.status == 200, "{}", reg.text);
    reg.body["com.beeper.asmux"]["config_password"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The config download of section 9: the one-time password from provisioning is traded
/// once for a lasting one (303 to the download URL carrying it), then used to download the
/// operator's template filled in; a used or expired password is refused.
#[tokio::test]
async fn config_passwords_are_one_time_and_expire() {
    let hs = Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("imessage.yaml"),
        "homeserver:\n  address: http://old\nbridge:\n  permissions:\n    '@alice:example.test': admin\n",
    )
    .unwrap();
    let extra = "max_pdu_age_seconds = 0\npublic_address = \"https://asmux.example.test/\"\n\
                 bridge_config_templates = { imessage = \"imessage.yaml\" }";
    std::fs::write(
        dir.path().join("config.toml"),
        config_text_with(&hs.url(), 0, extra),
    )
    .unwrap();
    let server = TestServer::start_in(dir).await;
    let reg = provision(
        &server,
        "/_matrix/asmux/appservice/alice/imessage",
        SHARED_SECRET,
        r#"{"push": false, "generate_config": true}"#,
    )
    .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let first = reg.body["com.beeper.asmux"]["config_password"]
        .as_str()
        .unwrap()
        .to_owned();

    let registered = config_get(&server, "imessage", "register", Some(&first)).await;
    assert_eq!(registered.status, 303, "{}", registered.text);
    let location = registered.header("location").unwrap().to_owned();
    let lasting = location
        .strip_prefix("https://alice:")
        .and_then(|rest| {
            rest.strip_suffix("@asmux.example.test/_matrix/asmux/public/config/imessage/download")
        })
        .unwrap_or_else(|| panic!("download URL {location}"))
        .to_owned();
    assert_ne!(lasting, first);

    // The one-time password is spent.
    config_get(&server, "imessage", "register", Some(&first))
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    config_get(&server, "imessage", "download", Some(&first))
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    config_get(&server, "imessage", "download", None)
        .await
        .assert_error(403, "M_MISSING_TOKEN");
    config_get(&server, "whatsapp", "download", Some(&lasting))
        .await
        .assert_error(404, "M_NOT_FOUND");

    let download = config_get(&server, "imessage", "download", Some(&lasting)).await;
    assert_eq!(download.status, 200, "{}", download.text);
    assert_eq!(download.header("content-type"), Some("text/yaml"));
    let config: serde_json::Value = serde_yaml_ng::from_str(&download.text).unwrap();
    assert_eq!(
        config["homeserver"]["address"],
        "https://asmux.example.test"
    );
    assert_eq!(
        config["homeserver"]["websocket_proxy"],
        "wss://asmux.example.test"
    );
    assert_eq!(config["homeserver"]["asmux"], true);
    assert_eq!(config["appservice"]["as_token"], reg.body["as_token"]);
    assert_eq!(config["appservice"]["hs_token"], reg.body["hs_token"]);
    assert_eq!(config["bridge"]["user"], "@alice:example.test");
    assert_eq!(
        config["bridge"]["username_template"],
        "_alice_imessage_{{.}}"
    );
    assert_eq!(
        config["bridge"]["permissions"]["@alice:example.test"], "admin",
        "the template's own keys stay"
    );
    // Downloading again works: the lasting password does not expire.
    let again = config_get(&server, "imessage", "download", Some(&lasting)).await;
    assert_eq!(again.status, 200);

    // An expired one-time password is refused.
    let password = one_time_password(&server, "telegram").await;
    let dir = server.stop().await;
    {
        let store = open_store(&dir.path().join("data"));
        let bridge = store.bridge_by_name("alice", "telegram").unwrap().unwrap();
        store
            .modify_bridge(bridge.id, |b| {
                if let Some(p) = b.config_password.as_mut() {
                    p.expires_at = Some(1);
                }
            })
            .unwrap();
        store.flush().await.unwrap();
    }
    let server = TestServer::start_in(dir).await;
    config_get(&server, "telegram", "register", Some(&password))
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    server.stop().await;
}

/// `/user/{id}/proxy`: absent until set; a PUT makes an encrypted Ed25519 key and SOCKS
/// credentials once and then only replaces the SSH settings (unless `regenerate`); the
/// private key is shown only to the user's own Matrix token; it survives a restart.
#[tokio::test]
async fn proxy_settings_keep_their_key_and_show_it_only_to_the_user() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let alice = user_token(&server, "alice").await;
    let bob = user_token(&server, "bob").await;
    hs.add_token("alice-matrix-token", "@alice:example.test");
    let url = server.url("/_matrix/asmux/user/alice/proxy");

    let missing = send("GET", &url, Some(&alice), None).await;
    missing.assert_error(404, "M_NOT_FOUND");
    assert_eq!(missing.body["error"], "Proxy config not set.");
    send("PUT", &url, Some(&alice), Some("not json"))
        .await
        .assert_error(400, "M_NOT_JSON");
    send("GET", &url, Some(&bob), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");

    let settings = r#"{"host": "proxy.example.test", "port": 22, "publicKey": "forged"}"#;
    let first = send("PUT", &url, Some(&alice), Some(settings)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let public_key = first.body["ssh"]["publicKey"].as_str().unwrap().to_owned();
    assert!(public_key.starts_with("ssh-ed25519 "), "{public_key}");
    assert_eq!(first.body["ssh"]["host"], "proxy.example.test");
    assert_eq!(first.body["socks"]["username"], "nova-alice-proxy");
    assert!(first.body["ssh"].get("privateKey").is_none());

    let second = send("PUT", &url, Some(&alice), Some(r#"{"host": "h2"}"#)).await;
    assert_eq!(second.body["ssh"]["publicKey"], public_key.as_str());
    assert_eq!(second.body["socks"], first.body["socks"]);
    assert_eq!(second.body["ssh"]["host"], "h2");
    assert!(second.body["ssh"].get("port").is_none(), "{}", second.text);

    let server = server.restart().await;
    let url = server.url("/_matrix/asmux/user/alice/proxy");
    let mxauth = server.url("/_matrix/asmux/mxauth/user/alice/proxy");
    let shown = send("GET", &url, Some(SHARED_SECRET), None).await;
    assert_eq!(shown.body, second.body);
    let private = send("GET", &mxauth, Some("alice-matrix-token"), None).await;
    assert_eq!(private.status, 200, "{}", private.text);
    let key =
        ssh_key::PrivateKey::from_openssh(private.body["ssh"]["privateKey"].as_str().unwrap())
            .unwrap();
    let passphrase = private.body["ssh"]["passphrase"].as_str().unwrap();
    let key = key.decrypt(passphrase).unwrap();
    assert_eq!(key.public_key().to_openssh().unwrap(), public_key);

    let regenerated = send(
        "PUT",
        &format!("{url}?regenerate=true"),
        Some(&alice),
        Some("{}"),
    )
    .await;
    assert_eq!(regenerated.status, 200, "{}", regenerated.text);
    assert_ne!(regenerated.body["ssh"]["publicKey"], public_key.as_str());
    assert_ne!(
        regenerated.body["socks"]["password"],
        first.body["socks"]["password"]
    );
    server.stop().await;
}

/// Sync proxying belonged to the original's hosted stack: its error callback says so.
#[tokio::test]
async fn syncproxy_errors_are_answered_as_unsupported() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let url = server.url("/_matrix/app/unstable/fi.mau.syncproxy/error/txn1");
    send("PUT", &url, None, Some("{}"))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    let reply = send("PUT", &url, Some(HS_TOKEN), Some("{}")).await;
    reply.assert_error(501, "M_UNRECOGNIZED");
    assert!(
        reply.text.contains("does not support sync proxying"),
        "{}",
        reply.text
    );
}

/// Without `mux.public_address`, config download links point where the homeserver
/// reaches asmux.
#[tokio::test]
async fn download_links_fall_back_to_the_appservice_address() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let password = one_time_password(&server, "imessage").await.to_lowercase();
    let registered = config_get(&server, "imessage", "register", Some(&password)).await;
    assert_eq!(registered.status, 303, "{}", registered.text);
    let location = registered.header("location").unwrap();
    assert!(
        location.starts_with("http://alice:")
            && location.ends_with("@localhost:29326/_matrix/asmux/public/config/imessage/download"),
        "{location}"
    );
    server.stop().await;
}
