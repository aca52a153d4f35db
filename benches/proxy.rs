//! Proxy benchmark (DESIGN.md scenario 1): bridges PUT `m.room.message` events through
//! asmux to a minimal homeserver; the same load goes directly to that homeserver and
//! through nginx as a plain reverse proxy, in the same run. 64 connections each.
//!
//! `cargo bench --bench proxy [-- SECONDS]`; needs `nginx` on the PATH (Debian's
//! nginx-light) for the nginx row. Prints a table and writes `target/bench/proxy.json`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asmux::http_client::{full_body, HttpClient};
use serde_json::{json, Value};
use warp::Filter;

const CONNECTIONS: usize = 64;
const SECRET: &str = "bench-shared-secret-0123456789";

struct Killed(Child);

impl Drop for Killed {
    /// SIGTERM, so that nginx's master stops its workers too (SIGKILL would orphan them,
    /// and they would keep the bench's output pipe open).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

struct Row {
    name: &'static str,
    requests: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Row {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 * p) as usize)
            .min(self.latencies.len().saturating_sub(1));
        self.latencies
            .get(i)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(Duration::from_secs(seconds)));
}

async fn bench(duration: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let hs_addr = stub_homeserver().await;

    // asmux, the release binary, as a separate process like nginx.
    let asmux_port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[homeserver]\naddress = \"http://{hs_addr}\"\ndomain = \"bench.test\"\n\
             [appservice]\nas_token = \"bench-as\"\nhs_token = \"bench-hs\"\n\
             [mux]\nport = {asmux_port}\nshared_secret = \"{SECRET}\"\n[logging]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let _asmux = Killed(
        Command::new(env!("CARGO_BIN_EXE_asmux"))
            .args(["-c", config.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(asmux_port).await;
    let client = HttpClient::new().unwrap();
    let asmux = format!("http://127.0.0.1:{asmux_port}");
    let reg = call(
        &client,
        "PUT",
        &format!("{asmux}/_matrix/asmux/appservice/owner/bridge"),
        SECRET,
        "{}",
    )
    .await;
    let bridge_token = reg["as_token"].as_str().unwrap().to_owned();

    let nginx = start_nginx(dir.path(), hs_addr).await;

    let mut rows = vec![
        run(
            "direct",
            &format!("http://{hs_addr}"),
            "syt_bench",
            duration,
        )
        .await,
    ];
    if let Some((_, port)) = &nginx {
        rows.push(
            run(
                "nginx",
                &format!("http://127.0.0.1:{port}"),
                "syt_bench",
                duration,
            )
            .await,
        );
    } else {
        eprintln!("nginx not found: install nginx-light for the nginx row");
    }
    rows.push(run("asmux", &asmux, &bridge_token, duration).await);

    println!("proxy: PUT /rooms/{{room}}/send/m.room.message/{{txn}}, {CONNECTIONS} connections, {} s each", duration.as_secs());
    println!("| target | req/s | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} |",
            row.name,
            row.rps(),
            row.pct(0.5),
            row.pct(0.99),
            row.pct(0.999)
        );
    }
    let report: Vec<Value> = rows
        .iter()
        .map(|r| json!({"target": r.name, "requests_per_second": r.rps(), "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "p999_ms": r.pct(0.999)}))
        .collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("proxy.json"),
        serde_json::to_string_pretty(&json!({"connections": CONNECTIONS, "rows": report})).unwrap(),
    )
    .unwrap();
}

/// The smallest homeserver that answers a send.
async fn stub_homeserver() -> SocketAddr {
    let route = warp::any().map(|| warp::reply::json(&json!({"event_id": "$bench"})));
    let listener = asmux::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

async fn start_nginx(dir: &std::path::Path, upstream: SocketAddr) -> Option<(Killed, u16)> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream hs {{ server {upstream}; keepalive 64; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://hs;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_request_buffering off;\n\
         proxy_buffering off;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(binary)
        .args(["-c", path.to_str().unwrap(), "-p", &d.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = Killed(child);
    wait_listening(port).await;
    Some((child, port))
}

/// `CONNECTIONS` tasks sending sends back to back for `duration` after a 1 s warm-up.
async fn run(name: &'static str, base: &str, token: &str, duration: Duration) -> Row {
    let client = HttpClient::new().unwrap();
    let body = br#"{"msgtype":"m.text","body":"hello from the benchmark"}"#;
    let counter = Arc::new(AtomicU64::new(0));
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + duration;
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (client, base, token, counter) = (
            client.clone(),
            base.to_owned(),
            token.to_owned(),
            counter.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    return latencies;
                }
                n += 1;
                let url = format!("{base}/_matrix/client/v3/rooms/%21room%3Abench.test/send/m.room.message/c{c}-{n}");
                let request = http::Request::put(url)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(full_body(&body[..]))
                    .unwrap();
                let response = client.send_buffered(request, Duration::from_secs(10)).await.unwrap();
                assert_eq!(response.status, 200, "{name}: {}", String::from_utf8_lossy(&response.body));
                if now >= warmup {
                    latencies.push(now.elapsed());
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort();
    Row {
        name,
        requests: counter.load(Ordering::Relaxed),
        seconds: duration.as_secs_f64(),
        latencies,
    }
}

async fn call(client: &HttpClient, method: &str, url: &str, token: &str, body: &str) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(full_body(body.to_owned()))
        .unwrap();
    let response = client
        .send_buffered(request, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(response.status.is_success(), "{url}: {}", response.status);
    serde_json::from_slice(&response.body).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on port {port}");
}
