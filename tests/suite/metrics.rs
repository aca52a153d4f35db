//! Prometheus metrics on their own listener.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn metrics_count_events_sockets_and_requests() {
    let hs = Stub::homeserver().await;
    let port = free_port();
    let extra = format!(
        "max_pdu_age_seconds = 0\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\""
    );
    let server = TestServer::start_with(&hs, &extra).await;
    let reg = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let token = reg["as_token"].as_str().unwrap();
    let events = json!({"events": [
        {"type": "m.room.member", "room_id": "!r", "sender": "@alice:example.test", "state_key": "@_alice_whatsapp_bot:example.test", "event_id": "$1", "content": {"membership": "join"}},
        {"type": "m.room.message", "room_id": "!r", "sender": "@alice:example.test", "event_id": "$2", "content": {"body": "hi"}},
        {"type": "m.room.message", "room_id": "!elsewhere", "sender": "@alice:example.test", "event_id": "$3", "content": {"body": "hi"}},
    ]});
    hs_transaction(&server, "1", &events).await;
    let mut ws = WsBridge::connect(&server, token, 3).await;
    ws.receive_events(2).await;
    wait_queue_empty(&server, "alice/whatsapp").await;
    send(
        "GET",
        &server.url("/_matrix/client/v3/joined_rooms"),
        Some(token),
        None,
    )
    .await;
    // Transaction IDs of lowercase letters and digits, as Element's and many others are.
    for txn in ["m1701.1", "m1701.2", "abc"] {
        let path =
            format!("/_matrix/client/v3/rooms/%21r%3Aexample.test/send/m.room.message/{txn}");
        send("PUT", &server.url(&path), Some(token), Some("{}")).await;
    }

    let scrape = send(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        None,
        None,
    )
    .await;
    assert_eq!(scrape.status, 200);
    assert!(scrape
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = scrape.text;
    for line in [
        r#"asmux_received_events_total{type="m.room.message"} 2"#,
        r#"asmux_received_events_total{type="m.room.member"} 1"#,
        r#"asmux_dropped_events_total{type="m.room.message",reason="unowned_room"} 1"#,
        r#"asmux_accepted_events_total{owner="alice",bridge="whatsapp",type="m.room.message"} 1"#,
        r#"asmux_successful_events_total{owner="alice",bridge="whatsapp"} 2"#,
        r#"asmux_connected_websockets{owner="alice",bridge="whatsapp"} 1"#,
        r#"asmux_requests_received_total{bridge="alice/whatsapp",method="GET",endpoint="/_matrix/client/v3/joined_rooms"} 1"#,
        r#"asmux_requests_handled_total{bridge="alice/whatsapp",method="GET",endpoint="/_matrix/client/v3/joined_rooms"} 1"#,
        r#"asmux_requests_handled_total{bridge="alice/whatsapp",method="PUT",endpoint="/_matrix/client/v3/rooms/{}/send/m.room.message/{}"} 3"#,
        r#"asmux_queue_depth{owner="alice",bridge="whatsapp"} 0"#,
        r#"asmux_bridge_unreachable_since_seconds{owner="alice",bridge="whatsapp"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert_eq!(
        text.matches("asmux_requests_received_total{").count(),
        2,
        "one series per kind of request, not per transaction ID:\n{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "));
    assert!(text.contains("process_open_fds "));
    assert!(text.trim_end().ends_with("# EOF"));

    ws.close().await;
    // The gauges follow the disconnect.
    for _ in 0..200 {
        let text = send(
            "GET",
            &format!("http://127.0.0.1:{port}/metrics"),
            None,
            None,
        )
        .await
        .text;
        let unreachable_since = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"asmux_bridge_unreachable_since_seconds{owner="alice",bridge="whatsapp"} "#,
                )
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if text
            .lines()
            .any(|l| l == r#"asmux_connected_websockets{owner="alice",bridge="whatsapp"} 0"#)
            && unreachable_since > 1_700_000_000
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the websocket gauges did not follow the disconnect");
}
