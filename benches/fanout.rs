//! Fan-in/out benchmark (DESIGN.md scenario 2): a homeserver PUTs transactions of 50
//! events over mixed rooms for 100 bridges, half websocket and half HTTP push, with
//! durability on (every 200 waits for the fsync). Measures events/s from the first PUT to
//! the last bridge acknowledgement, and the homeserver's PUT latency.
//!
//! `cargo bench --bench fanout [-- TRANSACTIONS CONCURRENCY]`; prints a table and writes
//! `target/bench/fanout.json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asmux::config::Config;
use asmux::http_client::{full_body, HttpClient};
use asmux::server::run;
use asmux::service::Services;
use asmux::store::Store;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use warp::Filter;

const BRIDGES: usize = 100;
const ROOMS_PER_BRIDGE: usize = 10;
const EVENTS_PER_TXN: usize = 50;
const HS_TOKEN: &str = "bench-hs-token";
const SECRET: &str = "bench-shared-secret-0123456789";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let transactions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(transactions, concurrency));
}

async fn bench(transactions: usize, concurrency: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[homeserver]\naddress = \"http://127.0.0.1:9\"\ndomain = \"bench.test\"\ntimeout_seconds = 1\n\
             [appservice]\nas_token = \"bench-as\"\nhs_token = \"{HS_TOKEN}\"\n\
             [mux]\nshared_secret = \"{SECRET}\"\nmax_pdu_age_seconds = 0\n\
             [logging]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let store = Arc::new(Store::open(&config.data_dir()).unwrap());
    let services = Services::new(config, store).unwrap();
    let listener = asmux::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(run(listener, services, std::future::pending()));
    let base = format!("http://{addr}");
    let client = HttpClient::new().unwrap();

    // Push bridges share one stub server, one path prefix each.
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    let push_route = warp::put()
        .and(warp::path::tail())
        .and(warp::body::bytes())
        .map(move |_: warp::path::Tail, body: bytes::Bytes| {
            let frame: Frame = serde_json::from_slice(&body).unwrap();
            counter.fetch_add(frame.events.len() as u64, Ordering::Relaxed);
            warp::reply::json(&json!({}))
        });
    let push_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let push_addr = push_listener.local_addr().unwrap();
    tokio::spawn(warp::serve(push_route).incoming(push_listener).run());

    let mut rooms = Vec::new();
    let mut setup_events = Vec::new();
    for b in 0..BRIDGES {
        let websocket = b % 2 == 0;
        let body = if websocket {
            json!({"push": false})
        } else {
            json!({"address": format!("http://{push_addr}/b{b}")})
        };
        let reg = call(
            &client,
            "PUT",
            &format!("{base}/_matrix/asmux/appservice/owner{b}/bridge"),
            SECRET,
            &body,
        )
        .await;
        if websocket {
            tokio::spawn(ws_bridge(
                addr,
                reg["as_token"].as_str().unwrap().to_owned(),
                delivered.clone(),
            ));
        }
        for r in 0..ROOMS_PER_BRIDGE {
            let room = format!("!room{b}-{r}");
            setup_events.push(json!({"type": "m.room.member", "room_id": room, "sender": "@user:bench.test",
                "state_key": format!("@_owner{b}_bridge_bot:bench.test"), "event_id": format!("$setup{b}-{r}"),
                "content": {"membership": "invite"}}));
            rooms.push(room);
        }
    }
    let setup_count = setup_events.len() as u64;
    call(
        &client,
        "PUT",
        &format!("{base}/_matrix/app/v1/transactions/setup"),
        HS_TOKEN,
        &json!({"events": setup_events}),
    )
    .await;
    wait_for(&delivered, setup_count).await;
    delivered.store(0, Ordering::SeqCst);

    // Transactions are built before the clock starts.
    let bodies: Vec<Vec<u8>> = (0..transactions)
        .map(|t| {
            let events: Vec<Value> = (0..EVENTS_PER_TXN)
                .map(|e| {
                    let room = &rooms[(t * 7 + e * 13) % rooms.len()];
                    json!({"type": "m.room.message", "room_id": room, "sender": "@user:bench.test",
                           "event_id": format!("$e{t}-{e}"), "origin_server_ts": 1,
                           "content": {"msgtype": "m.text", "body": format!("message {t}-{e}")}})
                })
                .collect();
            serde_json::to_vec(&json!({"events": events})).unwrap()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
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
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let events_per_s = total as f64 / elapsed.as_secs_f64();
    println!("fan-in/out: {BRIDGES} bridges (half websocket, half push), {transactions} transactions x {EVENTS_PER_TXN} events, {concurrency} concurrent PUTs");
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
        "| PUT latency p50 | {:.2} ms |",
        pct(0.50).as_secs_f64() * 1000.0
    );
    println!(
        "| PUT latency p99 | {:.2} ms |",
        pct(0.99).as_secs_f64() * 1000.0
    );
    let report = json!({
        "scenario": "fan-in/out", "bridges": BRIDGES, "transactions": transactions,
        "events_per_transaction": EVENTS_PER_TXN, "concurrency": concurrency,
        "events": total, "seconds": elapsed.as_secs_f64(), "events_per_second": events_per_s,
        "put_p50_ms": pct(0.50).as_secs_f64() * 1000.0, "put_p99_ms": pct(0.99).as_secs_f64() * 1000.0,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("fanout.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

async fn call(client: &HttpClient, method: &str, url: &str, token: &str, body: &Value) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(full_body(body.to_string()))
        .unwrap();
    let response = client
        .send_buffered(request, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(response.status.is_success(), "{url}: {}", response.status);
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// A websocket bridge that acknowledges every transaction and counts its events.
async fn ws_bridge(addr: std::net::SocketAddr, token: String, delivered: Arc<AtomicU64>) {
    let mut request = format!("ws://{addr}/_matrix/client/unstable/fi.mau.as_sync")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert("x-mautrix-websocket-version", "3".parse().unwrap());
    // Bridges written in Go disable Nagle's algorithm, as this does.
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .unwrap();
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
