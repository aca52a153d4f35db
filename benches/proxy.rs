//! Proxy benchmark (DESIGN.md scenario 1): `PUT /rooms/{room}/send/m.room.message/{txn}`
//! with a bridge token, sent by wrk (its own process, `-t2 -c64`) to a minimal homeserver
//! directly, through nginx and through asmux, in the same run. Every party is its own
//! process: the homeserver is a one-worker nginx answering a fixed event ID, the nginx
//! baseline is configured as an operator would for speed (`worker_processes auto`,
//! `access_log off`, `keepalive_requests` raised on both sides, upstream `keepalive 256`),
//! and asmux is the release binary.
//!
//! `cargo bench --bench proxy [-- SECONDS]`; needs `nginx` (Debian's nginx-light) and
//! `wrk`. Prints a table and writes `target/bench/proxy.json`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use asmux::http_client::{full_body, HttpClient};
use serde_json::{json, Value};

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
    requests_per_second: f64,
    /// PSS of the process(es) serving the row, right after its load, in MiB.
    pss_mib: f64,
    /// Latency percentiles in ms: 50, 99, 99.9.
    p50: f64,
    p99: f64,
    p999: f64,
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
    runtime.block_on(bench(seconds));
}

async fn bench(seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let nginx = nginx_binary().expect("nginx is needed: apt install nginx-light");
    let hs_port = free_port();
    let homeserver = start_nginx(
        nginx,
        &dir.path().join("hs"),
        &homeserver_conf(hs_port),
        hs_port,
    )
    .await;

    // asmux, the release binary, as a separate process like nginx.
    let asmux_port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[homeserver]\naddress = \"http://127.0.0.1:{hs_port}\"\ndomain = \"bench.test\"\n\
             [appservice]\nas_token = \"bench-as\"\nhs_token = \"bench-hs\"\n\
             [mux]\nport = {asmux_port}\nshared_secret = \"{SECRET}\"\n[logging]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let asmux = Killed(
        Command::new(env!("CARGO_BIN_EXE_asmux"))
            .args(["-c", config.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(asmux_port).await;
    let client = HttpClient::new().unwrap();
    let reg = call(
        &client,
        "PUT",
        &format!("http://127.0.0.1:{asmux_port}/_matrix/asmux/appservice/owner/bridge"),
        SECRET,
        "{}",
    )
    .await;
    let bridge_token = reg["as_token"].as_str().unwrap().to_owned();

    let proxy_port = free_port();
    let proxy = start_nginx(
        nginx,
        &dir.path().join("proxy"),
        &proxy_conf(proxy_port, hs_port),
        proxy_port,
    )
    .await;

    let script = dir.path().join("put.lua");
    let measured = |mut row: Row, server: &Killed| {
        row.pss_mib = pss_tree_kib(server.0.id()) as f64 / 1024.0;
        row
    };
    let rows = vec![
        measured(
            wrk("direct", hs_port, "syt_bench", seconds, &script),
            &homeserver,
        ),
        measured(
            wrk("nginx", proxy_port, "syt_bench", seconds, &script),
            &proxy,
        ),
        measured(
            wrk("asmux", asmux_port, &bridge_token, seconds, &script),
            &asmux,
        ),
    ];

    println!("proxy: PUT /rooms/{{room}}/send/m.room.message/{{txn}}, wrk -t2 -c{CONNECTIONS}, {seconds} s each");
    println!(
        "| target | req/s | p50 ms | p99 ms | p99.9 ms | PSS MiB |\n|---|---|---|---|---|---|"
    );
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} |",
            row.name, row.requests_per_second, row.p50, row.p99, row.p999, row.pss_mib
        );
    }
    let report: Vec<Value> = rows
        .iter()
        .map(|r| json!({"target": r.name, "requests_per_second": r.requests_per_second, "p50_ms": r.p50, "p99_ms": r.p99, "p999_ms": r.p999, "pss_mib": r.pss_mib}))
        .collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("proxy.json"),
        serde_json::to_string_pretty(
            &json!({"connections": CONNECTIONS, "load": "wrk -t2", "rows": report}),
        )
        .unwrap(),
    )
    .unwrap();
}

/// PSS in KiB of process `pid` and its descendants (nginx's master and its workers).
fn pss_tree_kib(pid: u32) -> u64 {
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|rollup| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pss + children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(pss_tree_kib)
        .sum::<u64>()
}

/// The homeserver: one nginx worker answering every request with a fixed event ID.
fn homeserver_conf(port: u16) -> String {
    format!(
        "worker_processes 1;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
         default_type application/json;\n      return 200 '{{\"event_id\":\"bench\"}}';\n    }}\n  }}\n}}\n"
    )
}

/// The baseline: nginx as an operator tunes a reverse proxy for speed.
fn proxy_conf(port: u16, upstream: u16) -> String {
    format!(
        "worker_processes auto;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         upstream hs {{ server 127.0.0.1:{upstream}; keepalive 256; keepalive_requests 1000000; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://hs;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Runs nginx with `conf` (its `daemon`, pid, log and temp paths under `dir`).
async fn start_nginx(binary: &str, dir: &std::path::Path, conf: &str, port: u16) -> Killed {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let paths = format!("daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n");
    let temp = format!(
        "http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
    );
    let conf = paths + &conf.replacen("http {\n", &temp, 1);
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(binary)
        .args(["-c", path.to_str().unwrap(), "-p", &d.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_listening(port).await;
    child
}

/// wrk with `CONNECTIONS` connections on 2 threads for `seconds`, each request a send
/// with a fresh txn ID; the percentiles come from its own histogram.
fn wrk(name: &'static str, port: u16, token: &str, seconds: u64, script: &std::path::Path) -> Row {
    let lua = format!(
        r#"wrk.method = "PUT"
wrk.body = '{{"msgtype":"m.text","body":"hello from the benchmark"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/_matrix/client/v3/rooms/%21room%3Abench.test/send/m.room.message/t" .. n)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %f %f %f %f\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3))
end
"#
    );
    std::fs::write(script, lua).unwrap();
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("wrk is needed: apt install wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let result: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{name}: wrk printed no result:\n{text}"))
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        !text.contains("Non-2xx"),
        "{name}: some requests failed:\n{text}"
    );
    Row {
        name,
        requests_per_second: result[0] / result[1],
        p50: result[2],
        p99: result[3],
        p999: result[4],
        pss_mib: 0.0,
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
