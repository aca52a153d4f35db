//! asmux under test: in this process on 127.0.0.1:0 with a temporary data directory
//! ([`TestServer`]), or the real binary ([`Process`], [`cli`]); and a small HTTP client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asmux::config::Config;
use asmux::http_client::{full_body, HttpClient};
use asmux::store::Store;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Stub, AS_TOKEN, DOMAIN, HS_TOKEN, SHARED_SECRET};

/// The text of a config for tests, pointing at `homeserver`, listening on `port`.
pub fn config_text(homeserver: &str, port: u16) -> String {
    config_text_with(homeserver, port, "max_pdu_age_seconds = 0")
}

/// [`config_text`] with more lines at the end of `[mux]`.
pub fn config_text_with(homeserver: &str, port: u16, extra: &str) -> String {
    format!(
        r#"[homeserver]
address = "{homeserver}"
domain = "{DOMAIN}"
timeout_seconds = 5

[appservice]
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"

[mux]
port = {port}
data_dir = "data"
shared_secret = "{SHARED_SECRET}"
max_management_body_bytes = 65536
disk_reserve_mib = 1
websocket_ack_timeout_seconds = 0.3
websocket_ack_retry_timeout_seconds = 0.4
push_retry_delay_seconds = 0.02
push_retry_max_delay_seconds = 0.1
{extra}
"#
    )
}

/// asmux running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The server's tasks, to check that none outlives it.
    tasks: asmux::tasks::Tasks,
    /// A port held bound but not listening, for a homeserver that refuses connections.
    _closed_port: Option<tokio::net::TcpSocket>,
}

impl TestServer {
    /// Starts asmux with a fresh data directory.
    /// Owner PDU expiry is off: fixture events are older than any sensible limit.
    pub async fn start(hs: &Stub) -> TestServer {
        TestServer::start_with(hs, "max_pdu_age_seconds = 0").await
    }

    /// Starts asmux with extra `[mux]` lines in its config.
    pub async fn start_with(hs: &Stub, extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            config_text_with(&hs.url(), 0, extra),
        )
        .unwrap();
        TestServer::start_in(dir).await
    }

    /// Starts asmux on the config and data already in `dir`, as `asmux serve` does.
    pub async fn start_in(dir: TempDir) -> TestServer {
        let config = Config::load(&dir.path().join("config.toml")).unwrap();
        let store = Arc::new(open_store(&config.data_dir()));
        let started = asmux::server::start(config, store).unwrap();
        let (addr, tasks) = (started.addr, started.services.tasks.clone());
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(started.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
            tasks,
            _closed_port: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` with the shared secret.
    pub async fn root_get(&self, path: &str) -> Reply {
        send("GET", &self.url(path), Some(SHARED_SECRET), None).await
    }

    /// Starts asmux pointed at a homeserver address where nothing listens.
    pub async fn start_with_homeserver_down() -> TestServer {
        // Bound but never listening: connections are refused, and no other process can
        // take the port while the test runs.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = socket.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(&format!("http://127.0.0.1:{closed}"), 0);
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        TestServer {
            _closed_port: Some(socket),
            ..TestServer::start_in(dir).await
        }
    }

    /// Stops the server gracefully and hands back its directory. Nothing of the server
    /// runs any more then.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
        assert_eq!(self.tasks.running(), 0, "tasks outlived the server");
        // The services (and with them the sled lock) are dropped with the server task.
        self.dir
    }

    pub async fn restart(self) -> TestServer {
        let dir = self.stop().await;
        TestServer::start_in(dir).await
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
    pub bytes: bytes::Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a Matrix error with this status and errcode.
    #[track_caller]
    pub fn assert_error(&self, status: u16, errcode: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.body["errcode"], errcode, "body: {}", self.text);
        assert!(self.body["error"].is_string(), "body: {}", self.text);
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

thread_local! {
    /// One pooled client per test: each test runs its runtime on its own thread, and a
    /// client must not outlive the runtime its connections were spawned on.
    static CLIENT: HttpClient = HttpClient::new().unwrap();
}

/// Sends a request; `token` goes into `Authorization: Bearer`.
pub async fn send(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    send_raw(
        method,
        url,
        token.map(|t| format!("Bearer {t}")).as_deref(),
        body.map(|b| b.as_bytes().to_vec()),
    )
    .await
}

/// Sends a request with a raw `Authorization` header value.
pub async fn send_raw(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    try_send_raw(method, url, authorization, body)
        .await
        .expect("the server answers")
}

/// Like [`send`], but `None` when the server could not be reached or did not answer.
pub async fn try_send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<Reply> {
    let auth = token.map(|t| format!("Bearer {t}"));
    try_send_raw(
        method,
        url,
        auth.as_deref(),
        body.map(|b| b.as_bytes().to_vec()),
    )
    .await
}

async fn try_send_raw(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> Option<Reply> {
    let client = CLIENT.with(Clone::clone);
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    let request = request.body(full_body(body.unwrap_or_default())).unwrap();
    let response = client
        .send_buffered(request, Duration::from_secs(30))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    Some(Reply {
        status: response.status.as_u16(),
        headers: response.headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        bytes: response.body,
    })
}

/// The asmux binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_asmux"))
}

/// Runs `asmux -c CONFIG args...` to completion.
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// [`cli`], which must succeed; its standard output.
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let output = cli(config, args);
    assert!(
        output.status.success(),
        "asmux {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Provisions the websocket bridge `owner`/`prefix` with `asmux bridge create`; its
/// registration.
pub fn cli_create_websocket_bridge(config: &Path, owner: &str, prefix: &str) -> Value {
    let args = [
        "bridge",
        "create",
        owner,
        prefix,
        "--websocket",
        "--format",
        "json",
    ];
    serde_json::from_str(&cli_ok(config, &args)).unwrap()
}

/// A free port on 127.0.0.1 for the real binary, which binds from its config.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary serving a new data directory: its directory, config file and port.
pub struct Served {
    pub dir: TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub process: Process,
}

impl Served {
    pub async fn start(homeserver: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text(homeserver, port)).unwrap();
        let process = Process::serve(&config, port).await;
        Served {
            dir,
            config,
            port,
            process,
        }
    }
}

/// The real binary serving `config`, killed when dropped.
pub struct Process(pub Child);

impl Process {
    /// Starts `asmux serve` and waits (bounded) until it accepts connections on `port`.
    pub async fn serve(config: &Path, port: u16) -> Process {
        let child = Command::new(binary())
            .arg("-c")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Process::listening(child, port).await
    }

    /// Waits (bounded) until `child`, an asmux process, accepts connections on `port`.
    pub async fn listening(child: Child, port: u16) -> Process {
        let mut process = Process(child);
        for _ in 0..500 {
            if let Some(status) = process.0.try_wait().unwrap() {
                panic!("asmux exited before listening: {status}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("asmux did not start listening on port {port}");
    }

    pub fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        self.0.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PUTs a homeserver transaction with the hs_token.
pub async fn hs_transaction(server: &TestServer, txn_id: &str, body: &Value) -> Reply {
    let url = server.url(&format!("/_matrix/app/v1/transactions/{txn_id}"));
    send("PUT", &url, Some(HS_TOKEN), Some(&body.to_string())).await
}

/// Provisions `owner`/`prefix` and returns its registration.
pub async fn provision(server: &TestServer, owner: &str, prefix: &str, body: Value) -> Value {
    let url = server.url(&format!("/_matrix/asmux/appservice/{owner}/{prefix}"));
    let reply = send("PUT", &url, Some(SHARED_SECRET), Some(&body.to_string())).await;
    assert!(reply.status == 201 || reply.status == 200, "{}", reply.text);
    reply.body
}

/// Waits (bounded) until the bridge's queue is empty: acknowledgements were processed.
pub async fn wait_queue_empty(server: &TestServer, bridge: &str) {
    let url = server.url(&format!("/_matrix/asmux/appservice/{bridge}/status"));
    for _ in 0..500 {
        if send("GET", &url, Some(SHARED_SECRET), None).await.body["queue_depth"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the queue of {bridge} did not drain");
}

/// Opens a data directory a server (in this process or another) just let go of.
pub fn open_store(dir: &Path) -> Store {
    Store::open_when_free(dir, Duration::from_secs(10)).unwrap()
}
