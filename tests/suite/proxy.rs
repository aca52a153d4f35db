//! The client-server API proxy (spec 5) against a stub homeserver that echoes what it got.

use crate::common::*;
use serde_json::{json, Value};

/// A server with the bridge alice/whatsapp (websocket); returns its token.
async fn setup(extra: &str) -> (Stub, TestServer, Value) {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(&hs, &format!("max_pdu_age_seconds = 0\n{extra}")).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    (hs, server, reg)
}

fn token(reg: &Value) -> &str {
    reg["as_token"].as_str().unwrap()
}

/// The query the homeserver saw, decoded.
fn query_of(echo: &Value) -> Vec<(String, String)> {
    form_urlencoded::parse(echo["query"].as_str().unwrap().as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn other_tokens_pass_through_untouched() {
    let (_hs, server, _reg) = setup("").await;
    let url = server.url("/_matrix/client/v3/rooms/%21r%3Aexample.test/send/m.room.message/t1?access_token=syt_user_token&x=1");
    let reply = send_raw(
        "PUT",
        &url,
        Some("Bearer syt_user_token"),
        Some(br#"{"body":"hi"}"#.to_vec()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let echo = &reply.body;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(
        echo["path"],
        "/_matrix/client/v3/rooms/%21r%3Aexample.test/send/m.room.message/t1"
    );
    assert_eq!(echo["query"], "access_token=syt_user_token&x=1");
    assert_eq!(echo["headers"]["authorization"], "Bearer syt_user_token");
    assert!(echo["headers"].get("x-beeper-bridge").is_none());
    assert_eq!(echo["body"], json!({"body": "hi"}));

    let versions = send("GET", &server.url("/_matrix/client/versions"), None, None).await;
    assert_eq!(versions.body["path"], "/_matrix/client/versions");
    let media = send(
        "GET",
        &server.url("/_matrix/media/v3/config"),
        Some("syt_x"),
        None,
    )
    .await;
    assert_eq!(media.body["path"], "/_matrix/media/v3/config");
}

#[tokio::test]
async fn bridge_tokens_are_swapped_and_confined() {
    let (_hs, server, reg) = setup("").await;
    let url = server.url("/_matrix/client/v3/joined_rooms");
    let echo = send("GET", &url, Some(token(&reg)), None).await.body;
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {AS_TOKEN}")
    );
    assert_eq!(echo["headers"]["x-beeper-bridge"], "alice/whatsapp");
    assert_ne!(echo["headers"]["host"], server.addr.to_string());
    assert_eq!(
        query_of(&echo),
        [(
            "user_id".to_owned(),
            "@_alice_whatsapp_bot:example.test".to_owned()
        )]
    );

    // Token in the query: accepted, and removed before forwarding.
    let with_query = server.url(&format!("/_matrix/client/v3/joined_rooms?access_token={}&user_id=%40_alice_whatsapp_123%3Aexample.test", token(&reg)));
    let echo = send("GET", &with_query, None, None).await.body;
    assert_eq!(
        query_of(&echo),
        [(
            "user_id".to_owned(),
            "@_alice_whatsapp_123:example.test".to_owned()
        )]
    );
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {AS_TOKEN}")
    );

    // Masquerading outside the namespace.
    for (user, message) in [
        (
            "@alice:example.test",
            "Double puppeting is not set up on this asmux (run asmux generate-registration \
             and load doublepuppet.yaml)",
        ),
        (
            "@bob:example.test",
            "Application service cannot masquerade as this local user.",
        ),
        (
            "@_alice_whatsapp2_1:example.test",
            "Application service cannot masquerade as this local user.",
        ),
        (
            "@_bob_whatsapp_1:example.test",
            "Application service cannot masquerade as this local user.",
        ),
        (
            "@_alice_whatsapp_1:other.test",
            "Application service cannot masquerade as user on external homeserver.",
        ),
    ] {
        let encoded: String = form_urlencoded::byte_serialize(user.as_bytes()).collect();
        let reply = send(
            "GET",
            &format!("{url}?user_id={encoded}"),
            Some(token(&reg)),
            None,
        )
        .await;
        reply.assert_error(403, "M_FORBIDDEN");
        assert_eq!(reply.body["error"], message, "{user}");
    }

    // Bridge-shaped tokens that match no bridge.
    let id = reg["id"].as_str().unwrap();
    send("GET", &url, Some(&format!("{id}-wrongsecret")), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    send(
        "GET",
        &url,
        Some(&format!("{}-x", uuid::Uuid::new_v4())),
        None,
    )
    .await
    .assert_error(403, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn names_in_bodies_and_paths_are_confined() {
    let (hs, server, reg) = setup("").await;
    let t = token(&reg);
    let register = server.url("/_matrix/client/v3/register");
    let ok = send(
        "POST",
        &register,
        Some(t),
        Some(r#"{"type":"m.login.application_service","username":"_alice_whatsapp_491"}"#),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let refused = send(
        "POST",
        &register,
        Some(t),
        Some(r#"{"type":"m.login.application_service","username":"_alice_signal_491"}"#),
    )
    .await;
    refused.assert_error(403, "M_EXCLUSIVE");
    send("POST", &register, Some(t), Some(r#"{"username":"alice"}"#))
        .await
        .assert_error(403, "M_EXCLUSIVE");
    assert_eq!(
        hs.requests_to("/_matrix/client/v3/register")
            .iter()
            .filter(|r| r.body["username"] != "_alice_whatsapp_bot")
            .count(),
        1
    );

    let login = server.url("/_matrix/client/v3/login");
    let inside = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "_alice_whatsapp_491"}});
    assert_eq!(
        send("POST", &login, Some(t), Some(&inside.to_string()))
            .await
            .status,
        200
    );
    let outside = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "@alice:example.test"}});
    send("POST", &login, Some(t), Some(&outside.to_string()))
        .await
        .assert_error(403, "M_FORBIDDEN");

    for (alias, ok) in [
        ("%23_alice_whatsapp_group%3Aexample.test", true),
        ("%23_alice_whatsapp2_group%3Aexample.test", false),
        ("%23general%3Aexample.test", false),
        ("%23_alice_whatsapp_group%3Aother.test", false),
    ] {
        for method in ["PUT", "DELETE"] {
            let url = server.url(&format!("/_matrix/client/v3/directory/room/{alias}"));
            let reply = send(method, &url, Some(t), Some(r#"{"room_id":"!r"}"#)).await;
            if ok {
                assert_eq!(reply.status, 200, "{method} {alias}");
            } else {
                reply.assert_error(403, "M_FORBIDDEN");
            }
        }
    }
    // Reading an alias is not restricted.
    let read = server.url("/_matrix/client/v3/directory/room/%23general%3Aexample.test");
    assert_eq!(send("GET", &read, Some(t), None).await.status, 200);

    let create = server.url("/_matrix/client/v3/createRoom");
    send(
        "POST",
        &create,
        Some(t),
        Some(r#"{"room_alias_name":"_alice_signal_x"}"#),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
}

/// A refusal that comes before the body (here a token of no bridge) reaches a client
/// still sending a large upload as the Matrix error, not as a reset connection.
#[tokio::test]
async fn a_refused_upload_gets_its_answer_while_still_being_sent() {
    let (hs, server, reg) = setup("").await;
    let url = server.url("/_matrix/media/v3/upload?filename=big.bin");
    let wrong = format!("{}-wrongsecret", reg["id"].as_str().unwrap());
    let upload = "x".repeat(8 << 20);
    for _ in 0..3 {
        send("POST", &url, Some(&wrong), Some(&upload))
            .await
            .assert_error(403, "M_UNKNOWN_TOKEN");
    }
    assert!(hs.requests_to("/_matrix/media/v3/upload").is_empty());
}

#[tokio::test]
async fn created_rooms_belong_to_the_bridge() {
    let (_hs, server, reg) = setup("").await;
    let create = server.url("/_matrix/client/v3/createRoom");
    let reply = send(
        "POST",
        &create,
        Some(token(&reg)),
        Some(r#"{"room_alias_name":"_alice_whatsapp_chat"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let room_id = reply.body["room_id"].as_str().unwrap().to_owned();
    // Events of the new room now reach the bridge.
    let mut ws = WsBridge::connect(&server, token(&reg), 3).await;
    let event = json!({"type": "m.room.message", "room_id": room_id, "sender": "@bob:example.test", "event_id": "$in-new-room", "content": {"body": "hi"}});
    let sent = hs_transaction(&server, "1", &json!({"events": [event]})).await;
    assert_eq!(
        sent.body["com.beeper.asmux.sent_to"][reg["id"].as_str().unwrap()],
        "ok"
    );
    assert_eq!(event_ids(&ws.receive_events(1).await), ["$in-new-room"]);
}

#[tokio::test]
async fn also_allow_user_is_asmux_only() {
    let (_hs, server, reg) = setup("").await;
    let batch = server.url("/_matrix/client/unstable/org.matrix.msc2716/rooms/%21r/batch_send?prev_event_id=%24p&com.beeper.also_allow_user=%40evil%3Aexample.test");
    let echo = send("POST", &batch, Some(token(&reg)), Some("{}"))
        .await
        .body;
    let query = query_of(&echo);
    let allowed: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "com.beeper.also_allow_user")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(allowed, ["@alice:example.test"]);
    assert!(query.contains(&("prev_event_id".into(), "$p".into())));

    let plain = server
        .url("/_matrix/client/v3/sync?com.beeper.also_allow_user=%40evil%3Aexample.test&since=s1");
    let echo = send("GET", &plain, Some("syt_user"), None).await.body;
    assert_eq!(query_of(&echo), [("since".to_owned(), "s1".to_owned())]);
}

#[tokio::test]
async fn login_passwords_are_converted_with_the_shared_secret() {
    let (_hs, server, reg) = setup("").await;
    drop(reg);
    let dir = server.stop().await;
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "timeout_seconds = 5",
        "timeout_seconds = 5\nlogin_shared_secret = \"synapse-secret\"",
    );
    std::fs::write(&config, text).unwrap();
    let server = TestServer::start_in(dir).await;
    let alice = server.root_get("/_matrix/asmux/user/alice").await.body;
    let login_token = alice["login_token"].as_str().unwrap();
    let hmac = |key: &str, user: &str| {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(user.as_bytes());
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    };
    let login = server.url("/_matrix/client/r0/login");
    for user in ["@_alice_whatsapp_491:example.test", "@alice:example.test"] {
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": hmac(login_token, user)});
        let echo = send("POST", &login, None, Some(&body.to_string()))
            .await
            .body;
        assert_eq!(
            echo["body"]["password"],
            hmac("synapse-secret", user),
            "{user}"
        );
        assert_eq!(
            echo["headers"]["content-length"],
            echo["body"].to_string().len().to_string()
        );
    }
    // Only the login route itself converts: a message whose event type is `login` would
    // otherwise show the bridge the homeserver-side password.
    let user = "@alice:example.test";
    let body =
        json!({"type": "m.login.password", "user": user, "password": hmac(login_token, user)});
    for path in [
        "/_matrix/client/v3/rooms/!r:example.test/send/login",
        "/_matrix/client/v3/logi%6E",
        "/_matrix/client/v3/login/",
    ] {
        let echo = send(
            "POST",
            &server.url(path),
            Some("syt_ghost"),
            Some(&body.to_string()),
        )
        .await
        .body;
        assert_eq!(echo["body"]["password"], hmac(login_token, user), "{path}");
    }
    let wrong =
        json!({"type": "m.login.password", "user": "@alice:example.test", "password": "hunter2"});
    let echo = send("POST", &login, None, Some(&wrong.to_string()))
        .await
        .body;
    assert_eq!(echo["body"]["password"], "hunter2");

    let user = "@_alice_whatsapp_491:example.test";
    let delete = json!({"devices": ["A"], "auth": {"type": "m.login.password", "user": user, "password": hmac(login_token, user)}});
    let echo = send(
        "POST",
        &server.url("/_matrix/client/v3/delete_devices"),
        Some("syt_ghost"),
        Some(&delete.to_string()),
    )
    .await
    .body;
    assert_eq!(
        echo["body"]["auth"]["password"],
        hmac("synapse-secret", user)
    );
    let echo = send(
        "DELETE",
        &server.url("/_matrix/client/v3/devices/A"),
        Some("syt_ghost"),
        Some(&json!({"auth": delete["auth"]}).to_string()),
    )
    .await
    .body;
    assert_eq!(
        echo["body"]["auth"]["password"],
        hmac("synapse-secret", user)
    );
}

#[tokio::test]
async fn dm_account_data() {
    let (hs, server, reg) = setup("").await;
    hs.add_token("alice-token", "@alice:example.test");
    hs.add_token("bob-token", "@bob:example.test");
    let url = server.url("/_matrix/client/unstable/com.beeper.asmux/dms");
    let put = |method: &'static str, token: &'static str, body: Value| {
        let url = url.clone();
        let bridge = token_owned(&reg);
        async move {
            let client_req = http::Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", format!("Bearer {token}"))
                .header("x-asmux-auth", bridge)
                .body(asmux::http_client::full_body(body.to_string()))
                .unwrap();
            let response = asmux::http_client::HttpClient::new()
                .unwrap()
                .send_buffered(client_req, std::time::Duration::from_secs(10))
                .await
                .unwrap();
            (
                response.status.as_u16(),
                serde_json::from_slice::<Value>(&response.body).unwrap(),
            )
        }
    };
    let key = "/_matrix/client/v3/user/%40alice%3Aexample.test/account_data/m.direct";
    hs.account_data.lock().unwrap().insert(
        key.into(),
        json!({
            "@bob:example.test": ["!bob"],
            "@_alice_whatsapp_1:example.test": ["!old"],
            "@_alice_whatsapp_bot:example.test": ["!bot"],
            "@_alice_signal_1:example.test": ["!signal"],
        }),
    );
    assert_eq!(
        put(
            "PUT",
            "alice-token",
            json!({"@_alice_whatsapp_2:example.test": ["!new"]})
        )
        .await,
        (200, json!({}))
    );
    assert_eq!(
        hs.account_data.lock().unwrap()[key],
        json!({
            "@bob:example.test": ["!bob"],
            "@_alice_whatsapp_bot:example.test": ["!bot"],
            "@_alice_signal_1:example.test": ["!signal"],
            "@_alice_whatsapp_2:example.test": ["!new"],
        })
    );
    assert_eq!(
        put(
            "PATCH",
            "alice-token",
            json!({"@_alice_whatsapp_3:example.test": ["!three"]})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        hs.account_data.lock().unwrap()[key]["@_alice_whatsapp_2:example.test"],
        json!(["!new"])
    );
    assert_eq!(
        hs.account_data.lock().unwrap()[key]["@_alice_whatsapp_3:example.test"],
        json!(["!three"])
    );
    let (status, body) = put("PUT", "bob-token", json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_FORBIDDEN"))
    );
}

fn token_owned(reg: &Value) -> String {
    token(reg).to_owned()
}

/// Current mautrix-go bridges double-puppet with `as_token:<their token>` and
/// `?user_id=@owner`: asmux forwards that with its double-puppet registration's token,
/// for the bridge's own owner only.
#[tokio::test]
async fn a_bridge_acts_as_its_owner_through_the_double_puppet_registration() {
    let (_hs, server, reg) =
        setup("\n[double_puppet]\nas_token = \"dp-as-token\"\nhs_token = \"dp-hs-token\"").await;
    let url = server.url("/_matrix/client/v3/rooms/!r:example.test/send/m.room.message/t1");
    let reply = send(
        "PUT",
        &format!("{url}?user_id=%40alice%3Aexample.test"),
        Some(token(&reg)),
        Some(r#"{"msgtype":"m.text","body":"as alice"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["headers"]["authorization"], "Bearer dp-as-token");
    assert_eq!(
        query_of(&reply.body),
        [("user_id".to_owned(), "@alice:example.test".to_owned())]
    );
    // Its ghosts still go with asmux's own token.
    let ghost = send(
        "PUT",
        &format!("{url}?user_id=%40_alice_whatsapp_1%3Aexample.test"),
        Some(token(&reg)),
        Some("{}"),
    )
    .await;
    assert_eq!(
        ghost.body["headers"]["authorization"],
        format!("Bearer {AS_TOKEN}")
    );
    // Any other local user, or another bridge's owner, stays refused.
    provision(&server, "bob", "signal", json!({"push": false})).await;
    for user in ["%40bob%3Aexample.test", "%40carol%3Aexample.test"] {
        send(
            "PUT",
            &format!("{url}?user_id={user}"),
            Some(token(&reg)),
            Some("{}"),
        )
        .await
        .assert_error(403, "M_FORBIDDEN");
    }
}

#[tokio::test]
async fn msc2659_pings_are_answered_by_asmux() {
    let (hs, server, reg) = setup("").await;
    let id = reg["id"].as_str().unwrap();
    let url = |id: &str| server.url(&format!("/_matrix/client/v1/appservice/{id}/ping"));
    let body = Some(r#"{"transaction_id": "mautrix-go_1"}"#);
    // Websocket bridge, not connected.
    send("POST", &url(id), Some(token(&reg)), body)
        .await
        .assert_error(502, "M_CONNECTION_FAILED");
    // Connected: the ping reaches the bridge's router through http_proxy.
    let mut ws = WsBridge::connect(&server, token(&reg), 3).await;
    let pinging = tokio::spawn({
        let (url, t) = (url(id), token_owned(&reg));
        async move { send("POST", &url, Some(&t), Some(r#"{"transaction_id": "x"}"#)).await }
    });
    let request = ws.next_json().await;
    assert_eq!(request["command"], "http_proxy");
    assert_eq!(
        request["data"],
        json!({"method": "POST", "path": "/_matrix/app/v1/ping", "escaped_path": true, "query": "",
               "headers": {"Authorization": [format!("Bearer {}", reg["hs_token"].as_str().unwrap())],
                           "Content-Type": ["application/json"]},
               "body": {"transaction_id": "x"}})
    );
    ws.send_json(&json!({"command": "response", "id": request["id"], "data": {"status": 200, "headers": {}, "body": {}}}))
        .await;
    let reply = pinging.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.body["duration_ms"].is_u64());
    // The bridge's router refuses: a bad status, as for push bridges.
    let pinging = tokio::spawn({
        let (url, t) = (url(id), token_owned(&reg));
        async move { send("POST", &url, Some(&t), Some(r#"{"transaction_id": "y"}"#)).await }
    });
    let request = ws.next_json().await;
    ws.send_json(&json!({"command": "response", "id": request["id"], "data": {"status": 401, "headers": {}, "body": {"errcode": "M_UNKNOWN_TOKEN"}}}))
        .await;
    let refused = pinging.await.unwrap();
    refused.assert_error(502, "M_BAD_STATUS");
    assert_eq!(refused.body["status"], 401);
    // Another bridge's id.
    send(
        "POST",
        &url(&uuid::Uuid::new_v4().to_string()),
        Some(token(&reg)),
        body,
    )
    .await
    .assert_error(403, "M_FORBIDDEN");

    // Push bridges: ok, bad status, unreachable, no URL; the unstable path too.
    let bridge = Stub::bridge().await;
    let push = provision(&server, "alice", "signal", json!({"address": bridge.url()})).await;
    let pid = push["id"].as_str().unwrap();
    bridge.answer("/_matrix/app/v1/ping", 200, "{}");
    let unstable = server.url(&format!(
        "/_matrix/client/unstable/fi.mau.msc2659/appservice/{pid}/ping"
    ));
    let ok = send("POST", &unstable, Some(token(&push)), body).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let pinged = bridge.requests_to("/_matrix/app/v1/ping");
    assert_eq!(pinged[0].body["transaction_id"], "mautrix-go_1");
    assert_eq!(
        pinged[0].authorization.as_deref(),
        Some(&*format!("Bearer {}", push["hs_token"].as_str().unwrap()))
    );
    bridge.answer("/_matrix/app/v1/ping", 500, r#"{"oops": true}"#);
    let bad = send("POST", &url(pid), Some(token(&push)), body).await;
    bad.assert_error(502, "M_BAD_STATUS");
    assert_eq!(bad.body["status"], 500);
    assert_eq!(bad.body["body"], r#"{"oops": true}"#);
    provision(
        &server,
        "alice",
        "signal",
        json!({"address": format!("http://127.0.0.1:{}", free_port())}),
    )
    .await;
    send("POST", &url(pid), Some(token(&push)), body)
        .await
        .assert_error(502, "M_CONNECTION_FAILED");
    provision(&server, "alice", "signal", json!({"address": ""})).await;
    send("POST", &url(pid), Some(token(&push)), body)
        .await
        .assert_error(400, "M_URL_NOT_SET");
    // Never forwarded to the homeserver.
    assert!(hs
        .requests()
        .iter()
        .all(|r| !r.path.contains("/appservice/")));
}

#[tokio::test]
async fn homeserver_down_is_a_bad_gateway() {
    let server = TestServer::start_with_homeserver_down().await;
    let reply = send("GET", &server.url("/_matrix/client/versions"), None, None).await;
    reply.assert_error(502, "M_BAD_GATEWAY");
    assert_eq!(reply.body["error"], "Failed to contact homeserver");
}

#[tokio::test]
async fn hop_by_hop_headers_stay_behind() {
    let (_hs, server, _reg) = setup("").await;
    let client = asmux::http_client::HttpClient::new().unwrap();
    let request = http::Request::get(server.url("/_matrix/client/v3/capabilities"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-public", "kept")
        .body(asmux::http_client::full_body(""))
        .unwrap();
    let response = client
        .send_buffered(request, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let echo: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(echo["headers"]["x-public"], "kept");
    assert!(echo["headers"].get("x-private").is_none());
}

/// A homeserver stand-in at the socket level: counts its connections, records the `Host`
/// of every request and answers each with an event ID. With `close_idle_after`, it closes
/// a connection that long after each answer without announcing it, as a homeserver's
/// keep-alive timeout does.
struct RawHomeserver {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    hosts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawHomeserver {
    async fn start(close_idle_after: Option<std::time::Duration>) -> RawHomeserver {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = RawHomeserver {
            addr: listener.local_addr().unwrap(),
            connections: Default::default(),
            hosts: Default::default(),
        };
        let (connections, hosts) = (server.connections.clone(), server.hosts.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let hosts = hosts.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            let next = stream.read_line(&mut line);
                            let read = match close_idle_after {
                                Some(idle) => match tokio::time::timeout(idle, next).await {
                                    Ok(read) => read,
                                    Err(_) => return,
                                },
                                None => next.await,
                            };
                            if read.unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if let Some(v) = lower.strip_prefix("host:") {
                                hosts.lock().unwrap().push(v.trim().to_owned());
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        let answer = r#"{"event_id":"$raw"}"#;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if stream
                            .get_mut()
                            .write_all(response.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        server
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One client connection to asmux, as a bridge keeps it.
async fn bridge_connection(
    server: &TestServer,
) -> hyper::client::conn::http1::SendRequest<asmux::http_client::Body> {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends an event on `connection` with `token`; the status and the event ID.
async fn send_on(
    connection: &mut hyper::client::conn::http1::SendRequest<asmux::http_client::Body>,
    token: &str,
    txn: &str,
) -> (u16, Value) {
    use http_body_util::BodyExt;
    connection.ready().await.unwrap();
    let request = http::Request::put(format!(
        "/_matrix/client/v3/rooms/%21r%3Aexample.test/send/m.room.message/{txn}"
    ))
    .header("host", "asmux.test")
    .header("authorization", format!("Bearer {token}"))
    .body(asmux::http_client::full_body(
        r#"{"msgtype":"m.text","body":"hi"}"#,
    ))
    .unwrap();
    let response = connection.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Starts asmux in front of `homeserver` with the bridge alice/whatsapp; its token.
async fn behind(homeserver: &RawHomeserver) -> (TestServer, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text_with(
        &format!("http://{}", homeserver.addr),
        0,
        "max_pdu_age_seconds = 0",
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let server = TestServer::start_in(dir).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    (server, token(&reg).to_owned())
}

#[tokio::test]
async fn each_bridge_connection_keeps_one_homeserver_connection() {
    let homeserver = RawHomeserver::start(None).await;
    let (server, token) = behind(&homeserver).await;
    let before = homeserver.connections();
    let mut first = bridge_connection(&server).await;
    let mut second = bridge_connection(&server).await;
    for i in 0..10 {
        for (connection, name) in [(&mut first, "a"), (&mut second, "b")] {
            let (status, body) = send_on(connection, &token, &format!("{name}{i}")).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["event_id"], "$raw");
        }
    }
    assert_eq!(
        homeserver.connections() - before,
        2,
        "twenty requests on two bridge connections"
    );
    let hosts = homeserver.hosts.lock().unwrap().clone();
    let expected = homeserver.addr.to_string();
    assert!(
        hosts.iter().rev().take(20).all(|h| *h == expected),
        "the homeserver is named in Host, not asmux: {hosts:?}"
    );
}

#[tokio::test]
async fn a_homeserver_closing_idle_connections_loses_no_request() {
    let idle = std::time::Duration::from_millis(100);
    let homeserver = RawHomeserver::start(Some(idle)).await;
    let (server, token) = behind(&homeserver).await;
    let mut connection = bridge_connection(&server).await;
    let before = homeserver.connections();
    for i in 0..3 {
        let (status, body) = send_on(&mut connection, &token, &format!("t{i}")).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["event_id"], "$raw");
        // The homeserver closes the connection meanwhile.
        tokio::time::sleep(idle * 3).await;
    }
    assert_eq!(
        homeserver.connections() - before,
        3,
        "a new homeserver connection after each close"
    );
}
