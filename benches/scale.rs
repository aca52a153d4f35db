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
        Some("startup") => runtime.block_on(startup(arg(1, 10_000), arg(2, 1_000_000))),
        Some("recovery") => runtime.block_on(recovery(arg(1, 100_000))),
        _ => {
            eprintln!("usage: scale idle N | startup BRIDGES ROOMS | recovery EVENTS");
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
    server.stop();
    for socket in sockets {
        socket.abort();
    }
    json!({
        "websockets": n,
        "connect_seconds": connect_seconds,
        "rss_mib_before": baseline_rss as f64 / 1024.0,
        "rss_mib": rss as f64 / 1024.0,
        "kib_per_socket": (rss.saturating_sub(baseline_rss)) as f64 / n as f64,
        // /proc ticks are 1/100 s.
        "idle_cpu_percent": cpu_ticks_idle as f64 / window.as_secs_f64(),
    })
}

/// Scenario 4: start-up with `bridges` bridges and `rooms` rooms stored.
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
    for _ in 0..5 {
        let mut server = Server::start(data.path()).await;
        ready_ms.push(server.ready.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss_kib(server.pid());
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
    server.stop();
    json!({
        "queued_events": transactions * PER_TXN,
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
