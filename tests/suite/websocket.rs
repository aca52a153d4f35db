//! The websocket protocol (spec 4.2) with a real websocket client.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WA_ROOM: &str = "!o-Qzij4pVy-fGxdFgb8LDLJ5y9ykdPENMse-TF2O8zQ";

/// A websocket bridge alice/whatsapp that owns the fixtures' WhatsApp room.
async fn setup() -> (Stub, TestServer, String) {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    // The bridge bot joining the room makes the room the bridge's.
    let sent = hs_transaction(&server, "1", &fixture("a2-bridge-bot-join.json")).await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    (hs, server, reg["as_token"].as_str().unwrap().to_owned())
}

fn message(n: usize) -> serde_json::Value {
    json!({"type": "m.room.message", "room_id": WA_ROOM, "sender": "@alice:example.test",
           "event_id": format!("$m{n}"), "origin_server_ts": 1, "content": {"body": format!("m{n}"), "msgtype": "m.text"}})
}

#[tokio::test]
async fn protocol_3_transactions_are_acknowledged() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["command"], "transaction");
    assert_eq!(frame["status"], "ok");
    let first_txn = frame["txn_id"].as_str().unwrap().to_owned();
    assert_ne!(
        first_txn, "1",
        "the homeserver's txn id is not passed through"
    );
    assert!(frame["id"].as_u64().is_some());
    // The event is passed on exactly as Synapse sent it.
    assert_eq!(
        frame["events"],
        fixture("a2-bridge-bot-join.json")["events"]
    );
    ws.ack(&frame).await;

    let sent = hs_transaction(&server, "2", &json!({"events": [message(1)]})).await;
    assert_eq!(sent.status, 200);
    let frame = ws.next_json().await;
    assert_ne!(
        frame["txn_id"],
        first_txn.as_str(),
        "a new delivery, a new id"
    );
    assert_eq!(frame["events"][0]["event_id"], "$m1");
    ws.ack(&frame).await;
}

/// Synapse on SQLite restarts its txn ids at 1, and bridges drop any txn_id they have
/// seen: every delivery needs an id of asmux's own, also after asmux restarts.
#[tokio::test]
async fn delivery_ids_are_never_reused_but_stable_for_a_resend() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let mut seen = std::collections::HashSet::new();
    let frame = ws.next_json().await;
    seen.insert(frame["txn_id"].as_str().unwrap().to_owned());
    ws.ack(&frame).await;
    // The homeserver reuses id 1 for new events: a new delivery id.
    hs_transaction(&server, "1", &json!({"events": [message(1)]})).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["events"][0]["event_id"], "$m1");
    assert!(seen.insert(frame["txn_id"].as_str().unwrap().to_owned()));
    ws.ack(&frame).await;
    wait_queue_empty(&server, "alice/whatsapp").await;

    // A delivery not acknowledged before a restart comes back with the same id.
    hs_transaction(&server, "2", &json!({"events": [message(2)]})).await;
    let unacked = ws.next_json().await;
    assert_eq!(unacked["events"][0]["event_id"], "$m2");
    let unacked_id = unacked["txn_id"].as_str().unwrap().to_owned();
    assert!(seen.insert(unacked_id.clone()));
    ws.close().await;
    let server = server.restart().await;
    hs_transaction(&server, "1", &json!({"events": [message(3)]})).await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let resent = ws.next_json().await;
    assert_eq!(resent["txn_id"], unacked_id.as_str());
    assert_eq!(
        event_ids(resent["events"].as_array().unwrap()),
        ["$m2"],
        "the resend carries exactly the first delivery's events"
    );
    ws.ack(&resent).await;
    // What came after it is a new delivery, with an id never used before the restart.
    let next = ws.next_json().await;
    assert_eq!(event_ids(next["events"].as_array().unwrap()), ["$m3"]);
    assert!(seen.insert(next["txn_id"].as_str().unwrap().to_owned()));
    ws.ack(&next).await;
}

#[tokio::test]
async fn unacknowledged_transactions_are_resent_then_4002() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let mut ids = Vec::new();
    let mut txn_ids = std::collections::HashSet::new();
    for _ in 0..7 {
        let frame = ws.next_json().await;
        txn_ids.insert(frame["txn_id"].as_str().unwrap().to_owned());
        ids.push(frame["id"].as_u64().unwrap());
    }
    assert_eq!(txn_ids.len(), 1, "the same delivery is resent: {txn_ids:?}");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "new request ids: {ids:?}"
    );
    match ws.next_event(Duration::from_secs(5)).await {
        WsEvent::Closed(code, reason) => {
            assert_eq!(code, 4002);
            assert_eq!(
                reason,
                r#"{"command":"disconnect","status":"transactions_not_acknowledged"}"#
            );
        }
        other => panic!("expected 4002, got {other:?}"),
    }
    // Nothing was lost: the next connection gets the same transaction.
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let frame = ws.next_json().await;
    assert!(txn_ids.contains(frame["txn_id"].as_str().unwrap()));
    ws.ack(&frame).await;
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_with_4001() {
    let (_hs, server, token) = setup().await;
    let mut first = WsBridge::connect(&server, &token, 3).await;
    let unacked = first.next_json().await;
    let mut second = WsBridge::connect(&server, &token, 3).await;
    match first.next_event(Duration::from_secs(5)).await {
        WsEvent::Closed(code, reason) => {
            assert_eq!(code, 4001);
            assert_eq!(
                reason,
                r#"{"command":"disconnect","status":"conn_replaced"}"#
            );
        }
        other => panic!("expected 4001, got {other:?}"),
    }
    // The unacknowledged transaction goes to the new connection.
    let frame = second.next_json().await;
    assert_eq!(frame["txn_id"], unacked["txn_id"]);
    second.ack(&frame).await;
}

#[tokio::test]
async fn bridge_requests_get_answers() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let txn = ws.next_json().await;
    ws.ack(&txn).await;

    ws.send_json(&json!({"command": "ping", "id": 1})).await;
    let pong = ws.next_json().await;
    assert_eq!(pong["command"], "response");
    assert_eq!(pong["id"], 1);
    let ts = pong["data"]["timestamp"].as_u64().unwrap();
    assert!(ts > 1_700_000_000_000);

    // Binary and non-JSON frames are ignored; the connection keeps working.
    ws.send_raw(Message::binary(vec![0u8, 1, 2])).await;
    ws.send_raw(Message::text("not json")).await;
    ws.send_json(&json!({"command": "frobnicate", "id": 2, "data": {}}))
        .await;
    let error = ws.next_json().await;
    assert_eq!(
        error,
        json!({"command": "error", "id": 2, "data": {"code": "UnknownCommand", "message": "Unknown command frobnicate"}})
    );

    // A response with an unknown id is ignored; bridge_status is stored.
    ws.send_json(&json!({"command": "response", "id": 999, "data": {}}))
        .await;
    ws.send_json(&json!({"command": "bridge_status", "id": 3, "data": {"state_event": "CONNECTED", "ttl": 240}})).await;
    let ok = ws.next_json().await;
    assert_eq!(
        (ok["command"].as_str(), ok["id"].as_u64()),
        (Some("response"), Some(3))
    );
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/whatsapp/status")
        .await;
    assert_eq!(status.status, 200, "{}", status.text);
    assert_eq!(status.body["connected"], true);
    assert_eq!(status.body["protocol"], 3);
    assert_eq!(status.body["process_id"], "test-process");
    assert_eq!(status.body["bridge_state"]["state_event"], "CONNECTED");

    ws.send_json(&json!({"command": "push_key", "id": 4, "data": {"url": "https://push.example", "app_id": "a", "pushkey": "k"}})).await;
    assert_eq!(ws.next_json().await["id"], 4);
}

#[tokio::test]
async fn protocol_1_needs_no_acknowledgement() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 1).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["command"], "transaction");
    assert!(
        frame.get("id").is_none(),
        "protocol 1 has no request ids: {frame}"
    );
    hs_transaction(&server, "2", &json!({"events": [message(1)]})).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["events"][0]["event_id"], "$m1");
}

#[tokio::test]
async fn protocol_2_drops_unacknowledged_transactions() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 2).await;
    let first = ws.next_json().await;
    assert_eq!(
        first["events"][0]["event_id"],
        fixture("a2-bridge-bot-join.json")["events"][0]["event_id"]
    );
    // Sent once the first is out, so that it cannot join the first delivery.
    hs_transaction(&server, "2", &json!({"events": [message(1)]})).await;
    // Not acknowledged: after the timeout the next one comes, the first is not resent.
    let next = ws.next_json().await;
    assert_eq!(event_ids(next["events"].as_array().unwrap()), ["$m1"]);
    assert_ne!(next["txn_id"], first["txn_id"]);
    ws.ack(&next).await;
    // The first is not resent later either: a new message is the very next frame.
    hs_transaction(&server, "3", &json!({"events": [message(9)]})).await;
    let after = ws.next_json().await;
    assert_eq!(event_ids(after["events"].as_array().unwrap()), ["$m9"]);
    ws.ack(&after).await;
}

#[tokio::test]
async fn refusals_before_the_upgrade() {
    let (_hs, server, token) = setup().await;
    let url = server.url("/_matrix/client/unstable/fi.mau.as_sync");
    send("GET", &url, None, None)
        .await
        .assert_error(403, "M_MISSING_TOKEN");
    send("GET", &url, Some("nonsense"), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    let wrong = format!("{}x", token);
    send("GET", &url, Some(&wrong), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
    send("GET", &url, Some(&token), None)
        .await
        .assert_error(400, "M_BAD_REQUEST");

    let push = provision(
        &server,
        "alice",
        "signal",
        json!({"address": "http://127.0.0.1:9"}),
    )
    .await;
    let err = ws_connect(&server, push["as_token"].as_str().unwrap(), 3)
        .await
        .err()
        .unwrap();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["errcode"], "COM.BEEPER.TXN_WS_NOT_ENABLED");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let frame = ws.next_json().await;
    ws.ack(&frame).await;
    let stopping = tokio::spawn(server.stop());
    match ws.next_event(Duration::from_secs(10)).await {
        WsEvent::Closed(code, reason) => {
            assert_eq!(code, 1012);
            assert_eq!(
                reason,
                r#"{"command":"disconnect","status":"server_shutting_down"}"#
            );
        }
        other => panic!("expected 1012, got {other:?}"),
    }
    ws.close().await;
    stopping.await.unwrap();
}

#[tokio::test]
async fn deleting_the_bridge_closes_its_socket() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let frame = ws.next_json().await;
    ws.ack(&frame).await;
    let deleted = send(
        "DELETE",
        &server.url("/_matrix/asmux/appservice/alice/whatsapp"),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    assert!(matches!(
        ws.next_event(Duration::from_secs(5)).await,
        WsEvent::Closed(..)
    ));
    assert!(
        ws_connect(&server, &token, 3).await.is_err(),
        "the token is gone"
    );
}

/// A partial update from a session (its push key) changes only that field of the current
/// record: it used to write back the whole record as it was when the socket connected.
#[tokio::test]
async fn a_push_key_does_not_undo_a_reprovisioning() {
    let (_hs, server, token) = setup().await;
    let mut ws = WsBridge::connect(&server, &token, 3).await;
    let txn = ws.next_json().await;
    ws.ack(&txn).await;
    wait_queue_empty(&server, "alice/whatsapp").await;
    provision(
        &server,
        "alice",
        "whatsapp",
        json!({"address": "http://10.0.0.9:29318"}),
    )
    .await;
    ws.send_json(&json!({"command": "push_key", "id": 7, "data": {"url": "https://push.example", "app_id": "a", "pushkey": "k"}})).await;
    let answer = ws.next_json().await;
    assert_eq!(
        (answer["command"].as_str(), answer["id"].as_u64()),
        (Some("response"), Some(7))
    );
    let registration = server
        .root_get("/_matrix/asmux/appservice/alice/whatsapp")
        .await;
    assert_eq!(registration.body["url"], "http://10.0.0.9:29318");
}

/// A bridge that stops reading: its socket is closed after the write deadline, what it
/// did not acknowledge stays queued, and neither another bridge nor shutdown waits on it.
#[tokio::test]
async fn a_bridge_that_stops_reading_holds_up_nothing() {
    let hs = Stub::homeserver().await;
    // Acknowledgement timeouts far away: only the write deadline may end the socket.
    let config = config_text_with(&hs.url(), 0, "max_pdu_age_seconds = 0")
        .replace(
            "websocket_ack_timeout_seconds = 0.3",
            "websocket_ack_timeout_seconds = 60",
        )
        .replace(
            "websocket_ack_retry_timeout_seconds = 0.4",
            "websocket_write_timeout_seconds = 1",
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let server = TestServer::start_in(dir).await;
    let stalled = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let healthy = provision(&server, "alice", "telegram", json!({"push": false})).await;
    let member = |bridge: &str, room: &str| {
        json!({"type": "m.room.member", "room_id": room, "sender": "@alice:example.test",
               "state_key": format!("@_alice_{bridge}_bot:example.test"), "event_id": format!("$join-{bridge}"),
               "content": {"membership": "join"}})
    };
    let setup = json!({"events": [member("whatsapp", WA_ROOM), member("telegram", "!tg")]});
    assert_eq!(hs_transaction(&server, "1", &setup).await.status, 200);
    let mut tg = WsBridge::connect(&server, healthy["as_token"].as_str().unwrap(), 3).await;
    tg.receive_events(1).await;

    // Queued first, so that the first delivery holds far more than socket buffers.
    let big: Vec<_> = (0..8)
        .map(|i| json!({"type": "m.room.message", "room_id": WA_ROOM, "sender": "@bob:example.test",
                        "event_id": format!("$big{i}"), "content": {"msgtype": "m.text", "body": "x".repeat(1 << 20)}}))
        .collect();
    assert_eq!(
        hs_transaction(&server, "2", &json!({"events": big}))
            .await
            .status,
        200
    );
    // A peer with a tiny receive buffer that never reads after the upgrade.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = format!(
        "ws://{}/_matrix/client/unstable/fi.mau.as_sync",
        server.addr
    )
    .into_client_request()
    .unwrap();
    let bearer = format!("Bearer {}", stalled["as_token"].as_str().unwrap());
    request
        .headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
        .headers_mut()
        .insert("x-mautrix-websocket-version", "3".parse().unwrap());
    let (_not_reading, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();

    // The other bridge is served meanwhile.
    let small = json!({"events": [{"type": "m.room.message", "room_id": "!tg", "sender": "@bob:example.test",
                                   "event_id": "$small", "content": {"msgtype": "m.text", "body": "hi"}}]});
    assert_eq!(hs_transaction(&server, "3", &small).await.status, 200);
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$small"]);

    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = server
            .root_get("/_matrix/asmux/appservice/alice/whatsapp/status")
            .await
            .body;
        if status["connected"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status["connected"], false,
        "the stalled socket was closed: {status}"
    );
    assert!(
        status["queue_depth"].as_u64().unwrap() >= 1,
        "still queued: {status}"
    );
    // Shutdown does not wait on the peer either.
    tokio::time::timeout(Duration::from_secs(15), server.stop())
        .await
        .expect("shutdown finished");
}
