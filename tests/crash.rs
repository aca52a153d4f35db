//! SIGKILL at random moments while the homeserver sends transactions and a bridge
//! acknowledges them: every event of every transaction that got a 200 is delivered
//! (at least once), and nothing is invented.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

const ROOM: &str = "!crash-room";
const ROUNDS: usize = 6;

/// Acknowledges every transaction and records the event IDs it saw.
async fn collect(addr: std::net::SocketAddr, token: String, seen: Arc<Mutex<HashSet<String>>>) {
    let Ok(mut ws) = ws_connect_to(addr, &token, 3).await else {
        return;
    };
    loop {
        match ws.next_event(Duration::from_secs(30)).await {
            WsEvent::Json(frame) if frame["command"] == "transaction" => {
                seen.lock()
                    .unwrap()
                    .extend(event_ids(frame["events"].as_array().unwrap()));
                ws.ack(&frame).await;
            }
            WsEvent::Json(_) => {}
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let hs = Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(&hs.url(), port)).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut process = Process::serve(&config, port).await;
    let url = format!("{base}/_matrix/asmux/appservice/alice/whatsapp");
    let reg = send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#))
        .await
        .body;
    let token = reg["as_token"].as_str().unwrap().to_owned();
    let setup = json!({"events": [{"type": "m.room.member", "room_id": ROOM, "sender": "@alice:example.test",
        "state_key": "@_alice_whatsapp_bot:example.test", "event_id": "$setup", "content": {"membership": "invite"}}]});
    let reply = send(
        "PUT",
        &format!("{base}/_matrix/app/v1/transactions/setup"),
        Some(HS_TOKEN),
        Some(&setup.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);

    let acknowledged: Arc<Mutex<HashSet<String>>> =
        Arc::new(Mutex::new(HashSet::from(["$setup".to_owned()])));
    let sent: Arc<Mutex<HashSet<String>>> =
        Arc::new(Mutex::new(HashSet::from(["$setup".to_owned()])));
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    for round in 0..ROUNDS {
        if round > 0 {
            process = Process::serve(&config, port).await;
        }
        let collector = tokio::spawn(collect(addr, token.clone(), seen.clone()));
        let (acked, sent_ids, base) = (acknowledged.clone(), sent.clone(), base.clone());
        let driver = tokio::spawn(async move {
            for i in 0.. {
                let ids: Vec<String> = (0..3).map(|k| format!("$r{round}-{i}-{k}")).collect();
                let events: Vec<_> = ids
                    .iter()
                    .map(|id| json!({"type": "m.room.message", "room_id": ROOM, "sender": "@bob:example.test",
                                     "event_id": id, "origin_server_ts": 1, "content": {"body": id}}))
                    .collect();
                sent_ids.lock().unwrap().extend(ids.iter().cloned());
                let url = format!("{base}/_matrix/app/v1/transactions/r{round}-{i}");
                let body = json!({"events": events}).to_string();
                match try_send("PUT", &url, Some(HS_TOKEN), Some(&body)).await {
                    Some(reply) if reply.status == 200 => acked.lock().unwrap().extend(ids),
                    _ => return,
                }
            }
        });
        let delay = rand::random_range(100..600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        process.kill9();
        let _ = driver.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), collector).await;
    }

    // Final start: everything acknowledged arrives.
    let mut process = Process::serve(&config, port).await;
    let collector = tokio::spawn(collect(addr, token.clone(), seen.clone()));
    let expected = acknowledged.lock().unwrap().clone();
    assert!(
        expected.len() > 30,
        "the load produced only {} events",
        expected.len()
    );
    for _ in 0..1000 {
        if expected.is_subset(&seen.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_now = seen.lock().unwrap().clone();
    let missing: Vec<_> = expected.difference(&seen_now).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let sent_now = sent.lock().unwrap().clone();
    let invented: Vec<_> = seen_now.difference(&sent_now).collect();
    assert!(invented.is_empty(), "events nobody sent: {invented:?}");
    assert!(process.terminate().success());
    collector.abort();
}
