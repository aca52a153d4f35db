//! Scale and recovery benchmarks of the real binary (DESIGN.md scenarios 3-5):
//!
//! - `idle N`: N websocket bridges connected and idle; the server's RSS and CPU.
//! - `startup BRIDGES ROOMS`: time from exec to READY=1 and RSS with that many bridges and
//!   rooms stored; the data directory's size against the logical size of its records.
//! - `recovery EVENTS`: EVENTS queued for an offline bridge, SIGKILL, restart: time to
//!   READY=1 and time until a reconnecting bridge has acknowledged every event.
//!
//! `cargo bench --bench scale -- SCENARIO ARGS...`; each writes `target/bench/{scenario}.json`.
//! The server gets its own process so that its memory and CPU are its own.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asmux::secret::Secret;
use asmux::store::{Bridge, Store};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const HS_TOKEN: &str = "bench-hs-token";
const DOMAIN: &str = "bench.test";

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

fn room_id(bridge: usize, room: usize) -> String {
    format!("!r{bridge}x{room}:{DOMAIN}")
}

/// Writes `bridges` websocket bridges (one owner each) with `rooms_each` rooms into a new
/// store at `dir`; returns their tokens.
async fn populate(dir: &Path, bridges: usize, rooms_each: usize) -> Vec<String> {
    let store = Store::open(dir).unwrap();
    let mut tokens = Vec::with_capacity(bridges);
    for b in 0..bridges {
        let owner = format!("owner{b}");
        store.get_or_create_user(&owner).unwrap();
        let bridge = Bridge {
            id: uuid::Uuid::new_v4(),
            owner,
            prefix: "bridge".into(),
            bot: "bot".into(),
            address: String::new(),
            push: false,
            hs_token: Secret::new(format!("hs{b}")),
            as_token: Secret::new(format!("as{b}-0123456789abcdef")),
            push_key: None,
            config_password: None,
            created_at: 0,
        };
        let (bridge, _) = store.insert_bridge(bridge).unwrap();
        for r in 0..rooms_each {
            store.add_room_owner(&room_id(b, r), bridge.id).unwrap();
        }
        tokens.push(bridge.real_as_token());
    }
    store.flush().await.unwrap();
    tokens
}

/// The release binary serving a data directory, started under a notify socket.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    /// From exec to READY=1.
    ready: Duration,
    _config: tempfile::TempDir,
}

impl Server {
    async fn start(data: &Path) -> Server {
        let config = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = config.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[homeserver]\naddress = \"http://127.0.0.1:9\"\ndomain = \"{DOMAIN}\"\ntimeout_seconds = 1\n\
                 [appservice]\nas_token = \"bench-as\"\nhs_token = \"{HS_TOKEN}\"\n\
                 [mux]\nport = {port}\ndata_dir = \"{}\"\nshared_secret = \"bench-shared-secret-0123456789\"\nmax_pdu_age_seconds = 0\n\
                 [logging]\nlevel = \"warn\"\n",
                data.display()
            ),
        )
        .unwrap();
        let socket_path = config.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let started = Instant::now();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .arg("serve")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        raise_nofile(child.id());
        let ready = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            let n = socket.recv(&mut buf).expect("READY=1 within 120 s");
            assert_eq!(&buf[..n], b"READY=1\n");
            started.elapsed()
        })
        .await
        .unwrap();
        Server {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            ready,
            _config: config,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(&mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_asmux"))
}

/// Raises a process's soft descriptor limit to its hard limit with util-linux's prlimit
/// (a soft limit of 1024 would cap the number of sockets; the unit sets LimitNOFILE).
fn raise_nofile(pid: u32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .to_owned();
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit failed");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, token: &str) -> Socket {
    let url = format!("ws://{addr}/_matrix/client/unstable/fi.mau.as_sync");
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-mautrix-websocket-version", "3".parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

/// Keeps a socket open, answering what an idle bridge gets (pings are answered by
/// tungstenite itself while reading).
async fn hold(mut socket: Socket) {
    while let Some(Ok(_)) = socket.next().await {}
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                // Allocated blocks, as `du` counts them.
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512
            }
        })
        .sum()
}
