//! Fan-in/out benchmark (DESIGN.md scenario 2): the release binary in its own process,
//! BRIDGES websocket bridges (acknowledging as mautrix-go does) and a homeserver in this
//! one. The homeserver PUTs transactions of 50 events over the bridges' rooms, CONCURRENCY
//! at a time, with durability on (every 200 waits for the fsync). Measures events/s from
//! the first PUT to the last bridge acknowledgement, the PUT latency and the server's CPU.
//!
//! `cargo bench --bench fanout [-- BRIDGES TRANSACTIONS CONCURRENCY]` (default 20 2000 8);
//! prints a table and writes `target/bench/fanout.json`.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asmux::http_client::{full_body, HttpClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const ROOMS_PER_BRIDGE: usize = 10;
const EVENTS_PER_TXN: usize = 50;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(bench(arg(0, 20), arg(1, 2000), arg(2, 8)));
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("fanout.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

async fn bench(bridges: usize, transactions: usize, concurrency: usize) -> Value {
    let data = tempfile::tempdir().unwrap();
    let tokens = populate(data.path(), bridges, ROOMS_PER_BRIDGE).await;
    let server = Server::start(data.path()).await;
    let disk_before = dir_bytes(data.path());
    let delivered = Arc::new(AtomicU64::new(0));
    for token in &tokens {
        let socket = connect(server.addr, token).await;
        tokio::spawn(bridge(socket, delivered.clone()));
    }
    let base = format!("http://{}", server.addr);
    let client = HttpClient::new().unwrap();

    // Transactions are built before the clock starts.
    let rooms: Vec<String> = (0..bridges)
        .flat_map(|b| (0..ROOMS_PER_BRIDGE).map(move |r| room_id(b, r)))
        .collect();
    let bodies: Vec<Vec<u8>> = (0..transactions)
        .map(|t| {
            let events: Vec<Value> = (0..EVENTS_PER_TXN)
                .map(|e| {
                    let room = &rooms[(t * 7 + e * 13) % rooms.len()];
                    json!({"type": "m.room.message", "room_id": room, "sender": format!("@user:{DOMAIN}"),
                           "event_id": format!("$e{t}-{e}"), "origin_server_ts": 1,
                           "content": {"msgtype": "m.text", "body": format!("message {t}-{e}")}})
                })
                .collect();
            serde_json::to_vec(&json!({"events": events})).unwrap()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_ticks(server.pid());
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let (client, base, bodies, next) =
            (client.clone(), base.clone(), bodies.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed) as usize;
                if t >= bodies.len() {
                    return latencies;
                }
                let request = http::Request::put(format!("{base}/_matrix/app/v1/transactions/{t}"))
                    .header("authorization", format!("Bearer {HS_TOKEN}"))
                    .body(full_body(bodies[t].clone()))
                    .unwrap();
                let sent = Instant::now();
                let response = client
                    .send_buffered(request, Duration::from_secs(60))
                    .await
                    .unwrap();
                assert_eq!(response.status, 200);
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for sender in senders {
        latencies.extend(sender.await.unwrap());
    }
    let put_done = started.elapsed();
    let total = (transactions * EVENTS_PER_TXN) as u64;
    wait_for(&delivered, total).await;
    let elapsed = started.elapsed();
    let cpu_percent = (cpu_ticks(server.pid()) - cpu_before) as f64 / elapsed.as_secs_f64();
    // Memory right after the burst, then each second until it stops coming down (at most
    // 60 s): the time it takes to give memory back.
    let (pss_end, _) = pss_kib(server.pid());
    let mut settled = (pss_end, 0);
    for second in 1..=60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (pss, _) = pss_kib(server.pid());
        if pss + 256 < settled.0 {
            settled = (pss, second);
        } else if second >= settled.1 + 10 {
            break;
        }
    }
    let memory_after = pss_json(server.pid());
    let disk_after = dir_bytes(data.path());
    let mut server = server;
    server.stop();
    let records = asmux::store::Store::open(data.path())
        .unwrap()
        .logical_bytes()
        .unwrap();
    let disk_compacted = compacted_size(data.path());
    latencies.sort();
    let ms = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    let events_per_s = total as f64 / elapsed.as_secs_f64();
    println!("fan-in/out: {bridges} websocket bridges, {transactions} transactions x {EVENTS_PER_TXN} events, {concurrency} PUTs in flight");
    println!("| metric | value |\n|---|---|");
    println!("| events delivered and acknowledged | {total} |");
    println!(
        "| wall time (first PUT to last ack) | {:.2} s |",
        elapsed.as_secs_f64()
    );
    println!("| events/s (PUT to ack, durable) | {events_per_s:.0} |");
    println!(
        "| transactions/s accepted | {:.0} |",
        transactions as f64 / put_done.as_secs_f64()
    );
    println!(
        "| PUT latency p50 / p99 | {:.2} / {:.2} ms |",
        ms(0.50),
        ms(0.99)
    );
    println!("| asmux CPU | {cpu_percent:.0} % |");
    println!(
        "| memory (PSS) at the end / settled, after | {:.1} / {:.1} MiB, {} s |",
        pss_end as f64 / 1024.0,
        settled.0 as f64 / 1024.0,
        settled.1
    );
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    println!(
        "| data dir before / after (every queue drained) | {:.1} / {:.1} MiB |",
        mib(disk_before),
        mib(disk_after)
    );
    println!(
        "| records kept (processed transactions for 24 h, bridges, rooms) | {:.1} MiB |",
        mib(records)
    );
    println!(
        "| data dir after a backup and restore | {:.1} MiB |",
        mib(disk_compacted)
    );
    json!({
        "scenario": "fan-in/out", "bridges": bridges, "transactions": transactions,
        "events_per_transaction": EVENTS_PER_TXN, "concurrency": concurrency,
        "events": total, "seconds": elapsed.as_secs_f64(), "events_per_second": events_per_s,
        "put_p50_ms": ms(0.50), "put_p99_ms": ms(0.99), "asmux_cpu_percent": cpu_percent,
        "data_dir_mib_before": mib(disk_before), "data_dir_mib_after": mib(disk_after),
        "data_dir_mib_after_backup_and_restore": mib(disk_compacted),
        "records_mib": mib(records),
        "pss_mib_at_end": pss_end as f64 / 1024.0, "settle_seconds": settled.1,
        "memory_settled": memory_after,
    })
}

/// The size of `dir`'s data written into a new directory by a backup and a restore: the
/// operator's way of compacting it.
fn compacted_size(dir: &std::path::Path) -> u64 {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup");
    let store = asmux::store::Store::open(dir).unwrap();
    store
        .write_backup(std::fs::File::create(&file).unwrap(), 0)
        .unwrap();
    drop(store);
    let restored = work.path().join("restored");
    asmux::store::backup::restore(&file, &restored, false).unwrap();
    dir_bytes(&restored)
}

/// A bridge that acknowledges every transaction as mautrix-go does, and counts its events.
async fn bridge(mut socket: Socket, delivered: Arc<AtomicU64>) {
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Frame = serde_json::from_str(&text).unwrap();
        if frame.command != "transaction" {
            continue;
        }
        let ack = json!({"command": "response", "id": frame.id, "data": {"txn_id": frame.txn_id}});
        socket.send(Message::text(ack.to_string())).await.unwrap();
        delivered.fetch_add(frame.events.len() as u64, Ordering::Relaxed);
    }
}

/// Just what a bridge needs to acknowledge a transaction; events stay unparsed.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    command: &'a str,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    txn_id: &'a str,
    #[serde(default, borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

async fn wait_for(counter: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events arrived",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
