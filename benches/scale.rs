//! Scale and recovery benchmarks of the real binary (DESIGN.md scenarios 3-5):
//!
//! - `idle N`: N websocket bridges connected and idle; the server's RSS and CPU.
//! - `startup BRIDGES ROOMS`: time from exec to READY=1 and RSS with that many bridges and
//!   rooms stored; the data directory's size against the logical size of its records,
//!   before and after `asmux compact`.
//! - `recovery EVENTS`: EVENTS queued for an offline bridge, SIGKILL, restart: time to
//!   READY=1 and time until a reconnecting bridge has acknowledged every event.
//!
//! `cargo bench --bench scale -- SCENARIO ARGS...`; each writes `target/bench/{scenario}.json`.
//! The server gets its own process so that its memory and CPU are its own.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asmux::store::Store;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;

use support::*;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    raise_nofile(std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = match args.first().map(String::as_str) {
        Some("idle") => runtime.block_on(idle(arg(1, 10_000))),
        Some("memory") => runtime.block_on(memory(arg(1, 1_000))),
        Some("deletion") => runtime.block_on(deletion(arg(1, 10_000), arg(2, 1_000_000))),
        Some("startup") => runtime.block_on(startup(arg(1, 10_000), arg(2, 1_000_000))),
        Some("recovery") => runtime.block_on(recovery(arg(1, 100_000))),
        _ => {
            eprintln!(
                "usage: scale idle N | memory BRIDGES | deletion BRIDGES ROOMS | startup BRIDGES ROOMS | recovery EVENTS"
            );
            std::process::exit(2);
        }
    };
    let name = args[0].as_str();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&result).unwrap(),
    )
    .unwrap();
}

/// Scenario 3: `n` websocket bridges connected and idle.
async fn idle(n: usize) -> Value {
    let data = tempfile::tempdir().unwrap();
    let tokens = populate(data.path(), n, 0).await;
    let mut server = Server::start(data.path()).await;
    let baseline_rss = rss_kib(server.pid());

    let connected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut sockets = Vec::with_capacity(n);
    for token in tokens {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (addr, connected) = (server.addr, connected.clone());
        sockets.push(tokio::spawn(async move {
            let socket = connect(addr, &token).await;
            connected.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            hold(socket).await
        }));
    }
    while connected.load(Ordering::SeqCst) < n as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // Let the connection set-up settle, then watch the idle server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(10);
    let cpu_before = cpu_ticks(server.pid());
    tokio::time::sleep(window).await;
    let cpu_ticks_idle = cpu_ticks(server.pid()) - cpu_before;
    let rss = rss_kib(server.pid());
    let memory = pss_json(server.pid());
    server.stop();
    for socket in sockets {
        socket.abort();
    }
    json!({
        "websockets": n,
        "memory": memory,
        "connect_seconds": connect_seconds,
        "rss_mib_before": baseline_rss as f64 / 1024.0,
        "rss_mib": rss as f64 / 1024.0,
        "kib_per_socket": (rss.saturating_sub(baseline_rss)) as f64 / n as f64,
        // /proc ticks are 1/100 s.
        "idle_cpu_percent": cpu_ticks_idle as f64 / window.as_secs_f64(),
    })
}

/// Scenario 4: start-up with `bridges` bridges and `rooms` rooms stored.
/// The server's memory (PSS) with nothing to do: empty, 3 s after READY; with `n` push
/// bridges provisioned, idle 5 s; with `n` protocol-3 websockets connected, idle 5 s.
async fn memory(n: usize) -> Value {
    let empty = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty.path()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let empty_pss = pss_json(server.pid());
    server.stop();

    let push = tempfile::tempdir().unwrap();
    populate_as(push.path(), n, 0, true).await;
    let mut server = Server::start(push.path()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let push_pss = pss_json(server.pid());
    server.stop();

    let websockets = tempfile::tempdir().unwrap();
    let tokens = populate(websockets.path(), n, 0).await;
    let mut server = Server::start(websockets.path()).await;
    let mut sockets = Vec::with_capacity(n);
    for token in tokens {
        let socket = connect(server.addr, &token).await;
        sockets.push(tokio::spawn(hold(socket)));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let websockets_pss = pss_json(server.pid());
    server.stop();
    for socket in sockets {
        socket.abort();
    }
    json!({
        "bridges": n,
        "empty": empty_pss,
        "push_bridges_idle": push_pss,
        "websockets_idle": websockets_pss,
    })
}

/// A bridge deleted from a store of `rooms` rooms while the homeserver sends transactions
/// (8 in flight, 50 events each, into other bridges' rooms): the PUT latency in the 10 s
/// before the deletion and while its rooms are swept, and how long the sweep takes.
async fn deletion(bridges: usize, rooms: usize) -> Value {
    let data = tempfile::tempdir().unwrap();
    let rooms_each = rooms / bridges.max(1);
    populate(data.path(), bridges, rooms_each).await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("asmux.log");
    let mut server = Server::start_with_log(data.path(), Some(&log)).await;
    let base = format!("http://{}", server.addr);
    let client = asmux::http_client::HttpClient::new().unwrap();
    let started = Instant::now();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let txn = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (client, base, running, txn) =
            (client.clone(), base.clone(), running.clone(), txn.clone());
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while running.load(Ordering::Relaxed) {
                let t = txn.fetch_add(1, Ordering::Relaxed) as usize;
                let events: Vec<Value> = (0..50)
                    .map(|e| {
                        // Bridges 1.. only: bridge 0 is the one deleted.
                        let room = room_id(1 + (t * 50 + e) % (bridges - 1), e % rooms_each);
                        json!({"type": "m.room.message", "room_id": room, "sender": format!("@user:{DOMAIN}"),
                               "event_id": format!("$d{t}-{e}"), "origin_server_ts": 1, "content": {"body": "x"}})
                    })
                    .collect();
                let request = http::Request::put(format!("{base}/_matrix/app/v1/transactions/d{t}"))
                    .header("authorization", format!("Bearer {HS_TOKEN}"))
                    .body(asmux::http_client::full_body(serde_json::to_vec(&json!({"events": events})).unwrap()))
                    .unwrap();
                let sent = Instant::now();
                let response = client.send_buffered(request, Duration::from_secs(60)).await.unwrap();
                assert_eq!(response.status, 200);
                latencies.push((sent.duration_since(started), sent.elapsed()));
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let deleted_at = started.elapsed();
    let delete = http::Request::delete(format!("{base}/_matrix/asmux/appservice/owner0/bridge"))
        .header("authorization", "Bearer bench-shared-secret-0123456789")
        .body(asmux::http_client::full_body(Vec::new()))
        .unwrap();
    let answered = client
        .send_buffered(delete, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(answered.status, 204);
    let delete_ms = (started.elapsed() - deleted_at).as_secs_f64() * 1000.0;
    let swept = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("swept the rooms of deleted bridges"))
        {
            break line
                .split("seconds=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no sweep within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let swept_at = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let mut before = Vec::new();
    let mut during = Vec::new();
    for sender in senders {
        for (at, latency) in sender.await.unwrap() {
            if at < deleted_at {
                before.push(latency);
            } else if at < swept_at {
                during.push(latency);
            }
        }
    }
    let memory = pss_json(server.pid());
    server.stop();
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() * 99 / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    json!({
        "bridges": bridges, "rooms": rooms,
        "delete_answered_ms": delete_ms,
        "sweep_seconds": swept,
        "puts_before": before.len(), "put_p99_ms_before": p99(before.clone()),
        "puts_during": during.len(), "put_p99_ms_during": p99(during),
        "memory": memory,
    })
}

async fn startup(bridges: usize, rooms: usize) -> Value {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    populate(data.path(), bridges, rooms / bridges.max(1)).await;
    let populate_seconds = started.elapsed().as_secs_f64();
    let logical = {
        let store = Store::open(data.path()).unwrap();
        store.logical_bytes().unwrap()
    };
    let disk = dir_bytes(data.path());
    let mut ready_ms = Vec::new();
    let mut rss = 0;
    let mut memory = Value::Null;
    for _ in 0..5 {
        let mut server = Server::start(data.path()).await;
        ready_ms.push(server.ready.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss_kib(server.pid());
        memory = pss_json(server.pid());
        server.stop();
    }
    // sled reclaims log segments in the background; see whether running shrank them.
    let disk_after = dir_bytes(data.path());
    // `asmux compact`, then one more start on the compacted directory.
    let started = Instant::now();
    let compaction = asmux::store::replace::compact(data.path()).unwrap();
    let compact_seconds = started.elapsed().as_secs_f64();
    let mut server = Server::start(data.path()).await;
    let ready_ms_compacted = server.ready.as_secs_f64() * 1000.0;
    server.stop();
    let disk_compacted = dir_bytes(data.path());
    ready_ms.sort_by(f64::total_cmp);
    json!({
        "bridges": bridges,
        "rooms": rooms,
        "populate_seconds": populate_seconds,
        "ready_ms_median": ready_ms[ready_ms.len() / 2],
        "ready_ms_max": ready_ms[ready_ms.len() - 1],
        "rss_mib": rss as f64 / 1024.0,
        "memory": memory,
        "logical_mib": logical as f64 / 1048576.0,
        "disk_mib": disk as f64 / 1048576.0,
        "space_amplification": disk as f64 / logical as f64,
        "disk_mib_after_restarts": disk_after as f64 / 1048576.0,
        "space_amplification_after_restarts": disk_after as f64 / logical as f64,
        "compact_seconds": compact_seconds,
        "compacted_records": compaction.records,
        "disk_mib_compacted": disk_compacted as f64 / 1048576.0,
        "space_amplification_compacted": disk_compacted as f64 / logical as f64,
        "ready_ms_compacted": ready_ms_compacted,
    })
}

/// Scenario 5: restart after SIGKILL with `events` queued for an offline bridge.
async fn recovery(events: usize) -> Value {
    const PER_TXN: usize = 50;
    let data = tempfile::tempdir().unwrap();
    let token = populate(data.path(), 1, 1).await.remove(0);
    let mut server = Server::start(data.path()).await;
    let client = asmux::http_client::HttpClient::new().unwrap();
    let transactions = events.div_ceil(PER_TXN);
    for t in 0..transactions {
        let batch: Vec<Value> = (0..PER_TXN)
            .map(|e| {
                json!({"type": "m.room.message", "room_id": room_id(0, 0), "sender": format!("@user:{DOMAIN}"),
                       "event_id": format!("$r{t}-{e}"), "origin_server_ts": 1,
                       "content": {"msgtype": "m.text", "body": format!("queued {t}-{e}")}})
            })
            .collect();
        let request = http::Request::put(format!(
            "http://{}/_matrix/app/v1/transactions/r{t}",
            server.addr
        ))
        .header("authorization", format!("Bearer {HS_TOKEN}"))
        .header("content-type", "application/json")
        .body(asmux::http_client::full_body(
            serde_json::to_vec(&json!({ "events": batch })).unwrap(),
        ))
        .unwrap();
        let answer = client
            .send_buffered(request, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    server.kill();
    let disk = dir_bytes(data.path());

    let mut server = Server::start(data.path()).await;
    let ready = server.ready;
    let started = Instant::now();
    let mut socket = connect(server.addr, &token).await;
    let mut received = 0;
    while received < transactions * PER_TXN {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            panic!("the socket closed after {received} events");
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["command"] == "transaction" {
            received += frame["events"].as_array().map_or(0, Vec::len);
            let ack = json!({"command": "response", "id": frame["id"], "data": {}});
            socket.send(Message::text(ack.to_string())).await.unwrap();
        }
    }
    let drain = started.elapsed();
    let memory = pss_json(server.pid());
    server.stop();
    json!({
        "queued_events": transactions * PER_TXN,
        "memory": memory,
        "data_dir_mib_at_kill": disk as f64 / 1048576.0,
        "ready_ms_after_kill": ready.as_secs_f64() * 1000.0,
        "drain_seconds": drain.as_secs_f64(),
        "drain_events_per_second": received as f64 / drain.as_secs_f64(),
    })
}

/// Keeps a socket open, answering what an idle bridge gets (pings are answered by
/// tungstenite itself while reading).
async fn hold(mut socket: Socket) {
    while let Some(Ok(_)) = socket.next().await {}
}
