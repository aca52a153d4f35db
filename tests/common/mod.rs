//! Test harness: the real server on 127.0.0.1:0 with a temporary data directory, a stub
//! homeserver, a small HTTP client, and helpers to run the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asmux::app::{run, AppState};
use asmux::config::Config;
use asmux::http_client::{full_body, HttpClient};
use asmux::store::Store;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;

pub const DOMAIN: &str = "example.test";
pub const SHARED_SECRET: &str = "root-secret-for-tests-0123456789";
pub const AS_TOKEN: &str = "asmux-as-token-for-tests";
pub const HS_TOKEN: &str = "asmux-hs-token-for-tests";

/// A request the stub homeserver received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A homeserver that answers whoami from a token table, accepts every registration and
/// records what it was sent.
#[derive(Clone)]
pub struct StubHomeserver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub users: Arc<Mutex<HashMap<String, String>>>,
}

impl StubHomeserver {
    pub async fn start() -> StubHomeserver {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let users: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (reqs, tokens) = (requests.clone(), users.clone());
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(move |method: warp::http::Method, path: warp::path::FullPath, query: String, auth: Option<String>, body: bytes::Bytes| {
                let recorded = Recorded {
                    method: method.to_string(),
                    path: path.as_str().to_owned(),
                    query,
                    authorization: auth.clone(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                reqs.lock().unwrap().push(recorded.clone());
                let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
                let (status, body) = match recorded.path.as_str() {
                    "/_matrix/client/v3/account/whoami" => match tokens.lock().unwrap().get(token) {
                        Some(user_id) => (200, serde_json::json!({ "user_id": user_id })),
                        None => (401, serde_json::json!({"errcode": "M_UNKNOWN_TOKEN", "error": "nope"})),
                    },
                    "/_matrix/client/v3/register" => (200, serde_json::json!({"user_id": "@x:example.test"})),
                    _ => (404, serde_json::json!({"errcode": "M_UNRECOGNIZED", "error": "stub"})),
                };
                warp::reply::with_status(warp::reply::json(&body), warp::http::StatusCode::from_u16(status).unwrap())
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        StubHomeserver {
            addr,
            requests,
            users,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `token` resolve to `user_id` in whoami.
    pub fn add_token(&self, token: &str, user_id: &str) {
        self.users
            .lock()
            .unwrap()
            .insert(token.into(), user_id.into());
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// The text of a config for tests, pointing at `homeserver`, listening on `port`.
pub fn config_text(homeserver: &str, port: u16) -> String {
    format!(
        r#"[homeserver]
address = "{homeserver}"
domain = "{DOMAIN}"
timeout_seconds = 5

[appservice]
port = {port}
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"

[mux]
data_dir = "data"
shared_secret = "{SHARED_SECRET}"
max_management_body_bytes = 65536
"#
    )
}

/// asmux running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts asmux with a fresh data directory.
    pub async fn start(hs: &StubHomeserver) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config_text(&hs.url(), 0)).unwrap();
        TestServer::start_in(dir).await
    }

    /// Starts asmux on the config and data already in `dir`.
    pub async fn start_in(dir: TempDir) -> TestServer {
        let config = Config::load(&dir.path().join("config.toml")).unwrap();
        let store = Arc::new(Store::open(&config.data_dir()).unwrap());
        let state = AppState::new(config, store).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(run(listener, state, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server gracefully and hands back its directory.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
        // The state (and with it the sled lock) is dropped with the server task.
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
    let client = CLIENT.with(Clone::clone);
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    let request = request.body(full_body(body.unwrap_or_default())).unwrap();
    let response = client
        .send_buffered(request, Duration::from_secs(30))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response.body).into_owned();
    Reply {
        status: response.status.as_u16(),
        headers: response.headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
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

/// A free port on 127.0.0.1 for the real binary, which binds from its config.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let process = Process(child);
        for _ in 0..500 {
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
