//! Requests asmux makes of bridges: state pings, exec commands, homeserver queries.

use std::time::Duration;

use crate::common::mautrix_go::GoBridge;
use crate::common::*;
use serde_json::{json, Value};

const STATE: &str = "/_matrix/app/com.beeper.bridge_state";

async fn ping(server: &TestServer, bridge: &str) -> Value {
    let reply = send(
        "POST",
        &server.url(&format!("/_matrix/asmux/appservice/{bridge}/ping")),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

#[tokio::test]
async fn push_bridge_states() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let bridge = Stub::bridge().await;
    let reg = provision(&server, "alice", "signal", json!({"address": bridge.url()})).await;

    // A modern bridge answers with its GlobalBridgeState: passed on.
    let global = json!({"remoteState": {"+49": {"state_event": "CONNECTED"}}, "bridgeState": {"state_event": "RUNNING", "source": "bridge"}});
    bridge.answer(STATE, 200, &global.to_string());
    assert_eq!(ping(&server, "alice/signal").await, global);
    let request = &bridge.requests_to(STATE)[0];
    assert_eq!(request.method, "POST");
    assert!(
        request.query.contains("user_id=%40alice%3Aexample.test"),
        "{}",
        request.query
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(&*format!("Bearer {}", reg["hs_token"].as_str().unwrap()))
    );

    // The legacy answer becomes a remote state under its remote_id.
    bridge.answer(
        STATE,
        200,
        r#"{"ok": false, "remote_id": "+49", "error": "logged-out"}"#,
    );
    let state = ping(&server, "alice/signal").await;
    assert_eq!(state["bridgeState"]["state_event"], "RUNNING");
    assert_eq!(state["bridgeState"]["user_id"], "@alice:example.test");
    assert_eq!(state["remoteState"]["+49"]["state_event"], "UNKNOWN_ERROR");
    assert_eq!(state["remoteState"]["+49"]["error"], "logged-out");

    // No state endpoint (404): fall back to the MSC2659 ping.
    bridge.answer(STATE, 404, "{}");
    bridge.answer("/_matrix/app/v1/ping", 200, "{}");
    assert_eq!(
        ping(&server, "alice/signal").await["bridgeState"]["state_event"],
        "RUNNING"
    );
    assert!(bridge.requests_to("/_matrix/app/v1/ping")[0].body["transaction_id"].is_string());

    bridge.answer(STATE, 500, "{}");
    let state = ping(&server, "alice/signal").await;
    assert_eq!(state["bridgeState"]["state_event"], "BRIDGE_UNREACHABLE");
    assert_eq!(state["bridgeState"]["error"], "ping-http-500");
    bridge.answer(STATE, 200, "not json");
    assert_eq!(
        ping(&server, "alice/signal").await["bridgeState"]["error"],
        "http-not-json"
    );

    let closed = format!("http://127.0.0.1:{}", free_port());
    provision(&server, "alice", "signal", json!({"address": closed})).await;
    assert_eq!(
        ping(&server, "alice/signal").await["bridgeState"]["error"],
        "http-connection-error"
    );
    provision(&server, "alice", "signal", json!({"address": ""})).await;
    assert_eq!(
        ping(&server, "alice/signal").await["bridgeState"]["error"],
        "ping-no-remote"
    );
}

#[tokio::test]
async fn websocket_bridge_states_and_exec() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let token = reg["as_token"].as_str().unwrap();
    hs.add_token("alice-token", "@alice:example.test");

    let state = ping(&server, "alice/whatsapp").await;
    assert_eq!(state["bridgeState"]["state_event"], "BRIDGE_UNREACHABLE");
    assert_eq!(state["bridgeState"]["error"], "websocket-not-connected");
    let exec_url = server.url("/_matrix/asmux/mxauth/appservice/alice/whatsapp/exec/delete_portal");
    let offline = send("POST", &exec_url, Some("alice-token"), Some("{}")).await;
    offline.assert_error(503, "FI.MAU.WEBSOCKET_SEND_FAIL");

    // A bridge built on mautrix-go: the ping reaches its appservice router through
    // http_proxy, never as a `ping` command (which would crash it), and reports the
    // state it last sent.
    let mut go = GoBridge::start(
        server.addr,
        token,
        reg["hs_token"].as_str().unwrap(),
        Duration::from_secs(3600),
    );
    go.connected(1).await;
    let state = ping(&server, "alice/whatsapp").await;
    go.assert_alive();
    assert_eq!(state["bridgeState"]["state_event"], "RUNNING", "{state}");
    assert_eq!(state["bridgeState"]["source"], "asmux");
    assert_eq!(
        go.state.proxied.lock().unwrap().as_slice(),
        [("POST".to_owned(), "/_matrix/app/v1/ping".to_owned(), 200)],
        "the ping went through the router with the hs_token"
    );
    go.send_bridge_status(
        json!({"state_event": "TRANSIENT_DISCONNECT", "source": "bridge", "ttl": 240}),
    );
    let mut state = Value::Null;
    for _ in 0..100 {
        state = ping(&server, "alice/whatsapp").await;
        if state["bridgeState"]["state_event"] == "TRANSIENT_DISCONNECT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state["bridgeState"]["state_event"], "TRANSIENT_DISCONNECT",
        "{state}"
    );
    assert_eq!(state["remoteState"], Value::Null);
    // A remote (login) state is reported under its remote_id.
    go.send_bridge_status(
        json!({"state_event": "CONNECTED", "source": "bridge", "remote_id": "4915", "ttl": 240}),
    );
    for _ in 0..100 {
        state = ping(&server, "alice/whatsapp").await;
        if !state["remoteState"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state["remoteState"]["4915"]["state_event"], "CONNECTED",
        "{state}"
    );
    assert_eq!(state["bridgeState"]["state_event"], "RUNNING");
    // Its transactions keep flowing between pings.
    let invite = json!({"events": [{"type": "m.room.member", "room_id": "!r", "event_id": "$invite",
        "sender": "@alice:example.test", "state_key": "@_alice_whatsapp_bot:example.test",
        "content": {"membership": "join"}}]});
    assert_eq!(hs_transaction(&server, "1", &invite).await.status, 200);
    go.wait_for("the invite", |e| e["event_id"] == "$invite")
        .await;
    ping(&server, "alice/whatsapp").await;
    go.assert_alive();
    drop(go);

    // A bridge with handlers of its own for exec commands.
    let mut ws = WsBridge::connect(&server, token, 3).await;
    // One without an http_proxy handler answers the ping with an error whose data has
    // no `code`, as mautrix-go's errors do: alive all the same.
    let pinging = tokio::spawn({
        let url = server.url("/_matrix/asmux/appservice/alice/whatsapp/ping");
        async move { send("POST", &url, Some(SHARED_SECRET), None).await }
    });
    let request = ws.next_json().await;
    assert_eq!(request["command"], "http_proxy");
    ws.send_json(&json!({"command": "error", "id": request["id"], "data": {"message": "unknown request type"}}))
        .await;
    let state = pinging.await.unwrap().body;
    assert_eq!(state["bridgeState"]["state_event"], "RUNNING", "{state}");
    assert_eq!(
        state["remoteState"]["4915"]["state_event"], "CONNECTED",
        "{state}"
    );
    // Exec goes over the socket; the bridge's answer or error comes back.
    for (answer, status) in [("response", 200), ("error", 400)] {
        let execing = tokio::spawn({
            let url = exec_url.clone();
            async move {
                send(
                    "POST",
                    &url,
                    Some("alice-token"),
                    Some(r#"{"portal": "!x"}"#),
                )
                .await
            }
        });
        let request = ws.next_json().await;
        assert_eq!(request["command"], "delete_portal");
        assert_eq!(request["data"], json!({"portal": "!x"}));
        ws.send_json(&json!({"command": answer, "id": request["id"], "data": {"done": answer}}))
            .await;
        let reply = execing.await.unwrap();
        assert_eq!(reply.status, status);
        assert_eq!(reply.body, json!({"done": answer}));
    }
    // Commands of the protocol itself are never sent.
    let ping_exec = server.url("/_matrix/asmux/mxauth/appservice/alice/whatsapp/exec/ping");
    send("POST", &ping_exec, Some("alice-token"), Some("{}"))
        .await
        .assert_error(400, "M_BAD_REQUEST");
    // Exec needs a Matrix token, not the shared secret.
    send("POST", &exec_url, Some(SHARED_SECRET), Some("{}"))
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    // Not for push bridges.
    provision(
        &server,
        "alice",
        "signal",
        json!({"address": "http://127.0.0.1:9"}),
    )
    .await;
    let push_exec = server.url("/_matrix/asmux/mxauth/appservice/alice/signal/exec/x");
    send("POST", &push_exec, Some("alice-token"), Some("{}"))
        .await
        .assert_error(501, "FI.MAU.NOT_IMPLEMENTED");
}

#[tokio::test]
async fn homeserver_queries_reach_the_owning_bridge() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let push = Stub::bridge().await;
    provision(&server, "alice", "signal", json!({"address": push.url()})).await;
    let ws_reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;

    let user = "@_alice_signal_123:example.test";
    let user_path = "/_matrix/app/v1/users/%40_alice_signal_123%3Aexample.test";
    push.answer(user_path, 200, "{}");
    let url = server.url(&format!(
        "/_matrix/app/v1/users/{}",
        "%40_alice_signal_123%3Aexample.test"
    ));
    let reply = send("GET", &url, Some(HS_TOKEN), None).await;
    assert_eq!((reply.status, reply.body.clone()), (200, json!({})));
    assert_eq!(
        push.requests_to(user_path).len(),
        1,
        "asked the signal bridge for {user}"
    );
    let missing = server.url("/_matrix/app/v1/users/%40_alice_signal_404%3Aexample.test");
    assert_eq!(
        send("GET", &missing, Some(HS_TOKEN), None).await.status,
        404
    );

    // Outside any bridge, or a websocket bridge that is offline: 404 {}.
    for id in [
        "%40bob%3Aexample.test",
        "%40_alice_whatsapp_1%3Aexample.test",
        "%40_nobody_x_1%3Aexample.test",
    ] {
        let reply = send(
            "GET",
            &server.url(&format!("/_matrix/app/v1/users/{id}")),
            Some(HS_TOKEN),
            None,
        )
        .await;
        assert_eq!((reply.status, reply.body.clone()), (404, json!({})), "{id}");
    }
    send("GET", &url, Some("wrong"), None)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");

    // A websocket bridge answers through http_proxy, as mautrix-go's router does: the
    // hs_token in the headers, the path escaped (an alias may hold a `/`).
    let go = GoBridge::start(
        server.addr,
        ws_reg["as_token"].as_str().unwrap(),
        ws_reg["hs_token"].as_str().unwrap(),
        Duration::from_secs(3600),
    );
    go.connected(1).await;
    go.know("#_alice_whatsapp_a/b:example.test");
    go.know("@_alice_whatsapp_4915:example.test");
    for (path, status) in [
        ("rooms/%23_alice_whatsapp_a%2Fb%3Aexample.test", 200),
        ("users/%40_alice_whatsapp_4915%3Aexample.test", 200),
        // The bridge's 404 (and any other failure) is the homeserver's 404 {}.
        ("rooms/%23_alice_whatsapp_unknown%3Aexample.test", 404),
        ("users/%40_alice_whatsapp_1%3Aexample.test", 404),
    ] {
        let url = server.url(&format!("/_matrix/app/v1/{path}"));
        let reply = send("GET", &url, Some(HS_TOKEN), None).await;
        assert_eq!(
            (reply.status, reply.body.clone()),
            (status, json!({})),
            "{path}"
        );
    }
    let proxied = go.state.proxied.lock().unwrap().clone();
    assert_eq!(
        proxied
            .iter()
            .map(|(_, path, status)| (path.as_str(), *status))
            .collect::<Vec<_>>(),
        [
            (
                "/_matrix/app/v1/rooms/#_alice_whatsapp_a/b:example.test",
                200
            ),
            (
                "/_matrix/app/v1/users/@_alice_whatsapp_4915:example.test",
                200
            ),
            (
                "/_matrix/app/v1/rooms/#_alice_whatsapp_unknown:example.test",
                404
            ),
            ("/_matrix/app/v1/users/@_alice_whatsapp_1:example.test", 404),
        ]
    );
    go.assert_alive();
}

#[tokio::test]
async fn reporting_endpoints_receive_checkpoints_and_states() {
    let hs = Stub::homeserver().await;
    let sink = Stub::bridge().await;
    let extra = format!(
        "max_pdu_age_seconds = 0\nmessage_send_checkpoint_endpoint = \"{0}\"\nremote_status_endpoint = \"{0}/remote\"",
        sink.url()
    );
    let server = TestServer::start_with(&hs, &extra).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let token = reg["as_token"].as_str().unwrap();
    let invite = fixture("a1-invite-bridge-bot.json");
    hs_transaction(&server, "1", &invite).await;
    hs_transaction(&server, "1b", &fixture("a2-bridge-bot-join.json")).await;
    hs_transaction(&server, "2", &fixture("b1-text-message.json")).await;

    let path = "/bridgebox/alice/bridge/whatsapp/send_message_metrics";
    let mut checkpoints = Vec::new();
    for _ in 0..500 {
        checkpoints = sink.requests_to(path);
        if !checkpoints.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        checkpoints.len(),
        1,
        "only the message, not the invite, is checkpointed"
    );
    let checkpoint = &checkpoints[0].body["checkpoints"][0];
    assert_eq!(checkpoint["step"], "HOMESERVER");
    assert_eq!(checkpoint["status"], "SUCCESS");
    assert_eq!(checkpoint["reported_by"], "ASMUX");
    assert_eq!(
        checkpoint["event_id"],
        fixture("b1-text-message.json")["events"][0]["event_id"]
    );
    assert_eq!(
        checkpoints[0].authorization.as_deref(),
        Some(&*format!("Bearer {token}"))
    );

    let mut ws = WsBridge::connect(&server, token, 3).await;
    ws.send_json(&json!({"command": "bridge_status", "data": {"state_event": "CONNECTED"}}))
        .await;
    for _ in 0..500 {
        if !sink.requests_to("/remote").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sink.requests_to("/remote")[0].body,
        json!({"state_event": "CONNECTED"})
    );

    // A push bridge that is down: WILL_RETRY for each failed attempt, PERM_FAILURE only
    // when the events are dropped (here by the operator).
    let down = Stub::failing_bridge(usize::MAX).await;
    provision(&server, "alice", "signal", json!({"address": down.url()})).await;
    let room = "!signal-room";
    let setup = json!({"events": [
        {"type": "m.room.member", "room_id": room, "sender": "@alice:example.test", "event_id": "$join",
         "state_key": "@_alice_signal_bot:example.test", "content": {"membership": "join"}},
        {"type": "m.room.message", "room_id": room, "sender": "@alice:example.test", "event_id": "$hello",
         "content": {"msgtype": "m.text", "body": "hello"}}]});
    hs_transaction(&server, "3", &setup).await;
    let signal_path = "/bridgebox/alice/bridge/signal/send_message_metrics";
    let statuses = |sink: &Stub| -> Vec<(String, String, u64)> {
        sink.requests_to(signal_path)
            .iter()
            .flat_map(|r| {
                r.body["checkpoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|c| {
                (
                    c["step"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                    c["retry_num"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    for _ in 0..500 {
        if statuses(&sink)
            .iter()
            .filter(|c| c.1 == "WILL_RETRY")
            .count()
            >= 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = statuses(&sink);
    let retries: Vec<u64> = seen
        .iter()
        .filter(|c| c.1 == "WILL_RETRY")
        .map(|c| c.2)
        .collect();
    assert!(retries.len() >= 3 && retries[..3] == [1, 2, 3], "{seen:?}");
    assert!(seen.iter().all(|c| c.1 != "PERM_FAILURE"), "{seen:?}");
    let cleared = send(
        "DELETE",
        &server.url("/_matrix/asmux/appservice/alice/signal/queue"),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(cleared.body["dropped"], 1, "{}", cleared.text);
    for _ in 0..500 {
        if statuses(&sink).iter().any(|c| c.1 == "PERM_FAILURE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        statuses(&sink).contains(&("BRIDGE".into(), "PERM_FAILURE".into(), 0)),
        "{:?}",
        statuses(&sink)
    );
}
