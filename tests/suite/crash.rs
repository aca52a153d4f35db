//! Kill soak: the real binary under a mixed load (homeserver transactions for a websocket
//! and a push bridge, management writes, backups streaming) is SIGKILLed at random
//! moments, `ASMUX_SOAK_KILLS` times (default 100), and restarted each time. Afterwards:
//! every event of every transaction answered 200 reached its bridge at least once and in
//! order, no bridge got an event nobody sent, every acknowledged management write is
//! there, and the last complete backup verifies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const WS_ROOM: &str = "!soak-ws";
const PUSH_ROOM: &str = "!soak-push";

/// Event IDs in the order a bridge received them (redeliveries included).
type Received = Arc<Mutex<Vec<String>>>;

/// Acknowledges every transaction as a mautrix-go bridge does, recording what it saw.
async fn websocket_bridge(addr: std::net::SocketAddr, token: String, received: Received) {
    let Ok(mut ws) = ws_connect_to(addr, &token, 3).await else {
        return;
    };
    loop {
        match ws.next_event(Duration::from_secs(30)).await {
            WsEvent::Json(frame) if frame["command"] == "transaction" => {
                received
                    .lock()
                    .unwrap()
                    .extend(event_ids(frame["events"].as_array().unwrap()));
                ws.ack(&frame).await;
            }
            WsEvent::Json(_) => {}
            _ => return,
        }
    }
}

fn message(room: &str, id: &str) -> Value {
    json!({"type": "m.room.message", "room_id": room, "sender": "@bob:example.test",
           "event_id": id, "origin_server_ts": 1, "content": {"body": id}})
}

/// `${room}-{round}-{i}` → (round, i): the order the homeserver sent them in.
fn sequence(id: &str) -> (u64, u64) {
    let mut parts = id.rsplit('-');
    let i = parts.next().unwrap().parse().unwrap();
    let round = parts.next().unwrap().parse().unwrap();
    (round, i)
}

/// Checks one bridge's deliveries against what the homeserver sent and got a 200 for.
fn check_bridge(name: &str, received: &[String], sent: &HashSet<String>, acked: &[String]) {
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    // The setup invitations come first, before any numbered event.
    for id in received.iter().filter(|id| !id.starts_with("$setup-")) {
        assert!(sent.contains(id), "{name} got an event nobody sent: {id}");
        if seen.insert(id.clone()) {
            first_seen.push(sequence(id));
        }
    }
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{name}: {} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        first_seen.windows(2).all(|w| w[0] < w[1]),
        "{name} got events out of order"
    );
}

#[derive(Default)]
struct Ledger {
    /// Every event ID put in a transaction, answered or not.
    sent: HashSet<String>,
    /// Event IDs of transactions answered 200, per room, in sending order.
    acked_ws: Vec<String>,
    acked_push: Vec<String>,
    /// Bridges whose provisioning was answered with success, and their as_token.
    provisioned: Vec<(String, String)>,
    /// Backups that streamed completely (the last one is kept in a file).
    backups: usize,
}

/// Sends transactions (one event per room each) until the server goes away.
async fn homeserver(base: String, round: u64, ledger: Arc<Mutex<Ledger>>) {
    for i in 0.. {
        let (ws_id, push_id) = (format!("$ws-{round}-{i}"), format!("$push-{round}-{i}"));
        {
            let mut ledger = ledger.lock().unwrap();
            ledger.sent.insert(ws_id.clone());
            ledger.sent.insert(push_id.clone());
        }
        let body =
            json!({"events": [message(WS_ROOM, &ws_id), message(PUSH_ROOM, &push_id)]}).to_string();
        let url = format!("{base}/_matrix/app/v1/transactions/soak-{round}-{i}");
        match try_send("PUT", &url, Some(HS_TOKEN), Some(&body)).await {
            Some(reply) if reply.status == 200 => {
                let mut ledger = ledger.lock().unwrap();
                ledger.acked_ws.push(ws_id);
                ledger.acked_push.push(push_id);
            }
            _ => return,
        }
    }
}

/// Provisions a new bridge now and then until the server goes away.
async fn operator(base: String, round: u64, ledger: Arc<Mutex<Ledger>>) {
    for i in 0.. {
        let prefix = format!("p{round}x{i}");
        let url = format!("{base}/_matrix/asmux/appservice/carol/{prefix}");
        match try_send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#)).await {
            Some(reply) if reply.status == 200 || reply.status == 201 => {
                let token = reply.body["as_token"].as_str().unwrap().to_owned();
                ledger.lock().unwrap().provisioned.push((prefix, token));
            }
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Streams backups until the server goes away, keeping the last complete one.
async fn backup_taker(base: String, file: std::path::PathBuf, ledger: Arc<Mutex<Ledger>>) {
    let url = format!("{base}/_matrix/asmux/admin/backup");
    loop {
        match try_send("GET", &url, Some(SHARED_SECRET), None).await {
            Some(reply) if reply.status == 200 => {
                std::fs::write(&file, &reply.bytes).unwrap();
                ledger.lock().unwrap().backups += 1;
            }
            _ => return,
        }
    }
}

fn kills() -> usize {
    std::env::var("ASMUX_SOAK_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

async fn setup(base: &str, push_url: &str) -> String {
    let url = format!("{base}/_matrix/asmux/appservice/alice/whatsapp");
    let reg = send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#)).await;
    let token = reg.body["as_token"].as_str().unwrap().to_owned();
    let url = format!("{base}/_matrix/asmux/appservice/alice/signal");
    let body = json!({"address": push_url}).to_string();
    assert!(
        send("PUT", &url, Some(SHARED_SECRET), Some(&body))
            .await
            .status
            < 300
    );
    let invite = |room: &str, prefix: &str| {
        json!({"type": "m.room.member", "room_id": room, "sender": "@alice:example.test",
               "state_key": format!("@_alice_{prefix}_bot:example.test"),
               "event_id": format!("$setup-{prefix}"), "content": {"membership": "join"}})
    };
    let setup = json!({"events": [invite(WS_ROOM, "whatsapp"), invite(PUSH_ROOM, "signal")]});
    let url = format!("{base}/_matrix/app/v1/transactions/setup");
    let reply = send("PUT", &url, Some(HS_TOKEN), Some(&setup.to_string())).await;
    assert_eq!(reply.status, 200);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_under_mixed_load_lose_nothing_acknowledged() {
    let hs = Stub::homeserver().await;
    let push = Stub::bridge().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(&hs.url(), port)).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let backup_file = dir.path().join("last-backup.bin");

    let mut process = Process::serve(&config, port).await;
    let token = setup(&base, &push.url()).await;
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let ws_received: Received = Arc::default();
    let kills = kills();
    for round in 0..kills as u64 {
        if round > 0 {
            process = Process::serve(&config, port).await;
        }
        let bridge = tokio::spawn(websocket_bridge(addr, token.clone(), ws_received.clone()));
        let load = [
            tokio::spawn(homeserver(base.clone(), round, ledger.clone())),
            tokio::spawn(operator(base.clone(), round, ledger.clone())),
            tokio::spawn(backup_taker(
                base.clone(),
                backup_file.clone(),
                ledger.clone(),
            )),
        ];
        tokio::time::sleep(Duration::from_millis(rand::random_range(20..400))).await;
        process.kill9();
        for task in load {
            task.await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), bridge)
            .await
            .expect("the bridge notices the server is gone")
            .unwrap();
    }

    // The last start: everything acknowledged arrives.
    let mut process = Process::serve(&config, port).await;
    let bridge = tokio::spawn(websocket_bridge(addr, token.clone(), ws_received.clone()));
    let (acked_ws, acked_push) = {
        let ledger = ledger.lock().unwrap();
        (ledger.acked_ws.clone(), ledger.acked_push.clone())
    };
    assert!(
        acked_ws.len() > kills,
        "the load produced only {} transactions",
        acked_ws.len()
    );
    let push_received = || -> Vec<String> {
        push.transactions()
            .iter()
            .flat_map(|t| event_ids(t.body["events"].as_array().unwrap()))
            .collect()
    };
    for _ in 0..1500 {
        let ws: HashSet<String> = ws_received.lock().unwrap().iter().cloned().collect();
        let pushed: HashSet<String> = push_received().into_iter().collect();
        if acked_ws.iter().all(|id| ws.contains(id))
            && acked_push.iter().all(|id| pushed.contains(id))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let ws_now = ws_received.lock().unwrap().clone();
    check_bridge("the websocket bridge", &ws_now, &ledger.sent, &acked_ws);
    check_bridge(
        "the push bridge",
        &push_received(),
        &ledger.sent,
        &acked_push,
    );

    assert!(
        !ledger.provisioned.is_empty(),
        "no management write was answered"
    );
    for (prefix, token) in &ledger.provisioned {
        let url = format!("{base}/_matrix/asmux/appservice/carol/{prefix}");
        let reply = send("GET", &url, Some(SHARED_SECRET), None).await;
        assert_eq!(
            reply.status, 200,
            "acknowledged bridge carol/{prefix} is gone"
        );
        assert_eq!(reply.body["as_token"], token.as_str());
    }
    assert!(ledger.backups > 0, "no backup completed");
    let verify = cli(
        &config,
        &["backup", "verify", backup_file.to_str().unwrap()],
    );
    assert!(verify.status.success(), "{verify:?}");
    eprintln!(
        "{kills} SIGKILLs: {} transactions and {} events acknowledged and delivered, \
         {} bridges provisioned, {} backups streamed",
        acked_ws.len(),
        acked_ws.len() + acked_push.len(),
        ledger.provisioned.len(),
        ledger.backups
    );
    assert!(process.terminate().success());
    bridge.abort();
}
