//! What the benchmarks of the real binary share: the server in its own process, a store
//! filled before it starts, bridges' websockets, and readings from `/proc`.
//!
//! Each benchmark uses a part of it.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use asmux::secret::Secret;
use asmux::store::{Bridge, Store};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const HS_TOKEN: &str = "bench-hs-token";
pub const DOMAIN: &str = "bench.test";

pub fn room_id(bridge: usize, room: usize) -> String {
    format!("!r{bridge}x{room}:{DOMAIN}")
}

/// Writes `bridges` websocket bridges (one owner each) with `rooms_each` rooms into a new
/// store at `dir`; returns their tokens.
pub async fn populate(dir: &Path, bridges: usize, rooms_each: usize) -> Vec<String> {
    populate_as(dir, bridges, rooms_each, false).await
}

/// [`populate`] with push bridges (`push`, an address nobody answers) or websocket ones.
pub async fn populate_as(dir: &Path, bridges: usize, rooms_each: usize, push: bool) -> Vec<String> {
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
            address: if push {
                "http://127.0.0.1:9".into()
            } else {
                String::new()
            },
            push,
            hs_token: Secret::new(format!("hs{b}")),
            as_token: Secret::new(format!("as{b}-0123456789abcdef")),
            push_key: None,
            config_password: None,
            created_at: 0,
        };
        let (bridge, _) = store.insert_bridge(bridge).unwrap();
        for r in 0..rooms_each {
            store
                .add_room_owner(&room_id(b, r), bridge.id, None)
                .unwrap();
        }
        tokens.push(bridge.real_as_token());
    }
    store.flush().await.unwrap();
    tokens
}

/// The release binary serving a data directory, started under a notify socket.
pub struct Server {
    child: Child,
    pub addr: std::net::SocketAddr,
    /// From exec to READY=1.
    pub ready: Duration,
    /// Kept open for the server's later notifications (STOPPING=1).
    _notify: UnixDatagram,
    _config: tempfile::TempDir,
}

impl Server {
    pub async fn start(data: &Path) -> Server {
        Server::start_with_log(data, None).await
    }

    /// [`Server::start`], its log (at info level) written to `log` when given.
    pub async fn start_with_log(data: &Path, log: Option<&Path>) -> Server {
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
                 [logging]\nlevel = \"{}\"\n",
                data.display(),
                if log.is_some() { "info" } else { "warn" },
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
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            })
            .spawn()
            .unwrap();
        raise_nofile(child.id());
        let (ready, notify) = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            let n = socket.recv(&mut buf).expect("READY=1 within 120 s");
            assert_eq!(&buf[..n], b"READY=1\n");
            (started.elapsed(), socket)
        })
        .await
        .unwrap();
        Server {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            ready,
            _notify: notify,
            _config: config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(&mut self) {
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

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_asmux"))
}

/// Raises a process's soft descriptor limit to its hard limit with util-linux's prlimit
/// (a soft limit of 1024 would cap the number of sockets; the unit sets LimitNOFILE).
pub fn raise_nofile(pid: u32) {
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

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(addr: std::net::SocketAddr, token: &str) -> Socket {
    let url = format!("ws://{addr}/_matrix/client/unstable/fi.mau.as_sync");
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    // The headers mautrix-go's appservice sends when it opens the socket.
    headers.insert("x-mautrix-websocket-version", "3".parse().unwrap());
    let process_id = format!("bench-{}", uuid::Uuid::new_v4());
    headers.insert("x-mautrix-process-id", process_id.parse().unwrap());
    // Go's dialer disables Nagle's algorithm, as this does.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .unwrap();
    socket
}

/// Proportional set size and its anonymous part, in KiB (`/proc/PID/smaps_rollup`): the
/// memory a process costs, shared pages counted in proportion.
pub fn pss_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Pss_Anon:"))
}

/// PSS as the bench tables print it: `{total} MiB PSS ({anon} anonymous)`.
pub fn pss_json(pid: u32) -> serde_json::Value {
    let (pss, anon) = pss_kib(pid);
    serde_json::json!({"pss_mib": pss as f64 / 1024.0, "pss_anon_mib": anon as f64 / 1024.0})
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub fn dir_bytes(dir: &Path) -> u64 {
    asmux::store::replace::allocated_bytes(dir).unwrap()
}
