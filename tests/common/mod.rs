//! Test harness: the real server on 127.0.0.1:0 with a temporary data directory, a stub
//! homeserver, a small HTTP client, and helpers to run the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asmux::config::Config;
use asmux::http_client::{full_body, HttpClient};
use asmux::server::run;
use asmux::service::Services;
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

/// A homeserver stand-in: answers whoami from a token table, accepts registrations,
/// creates rooms, keeps account data, streams media uploads and downloads without
/// buffering them, and echoes every other request (method, path, query, headers, body) as
/// JSON. Records what it was sent (media bodies excepted).
#[derive(Clone)]
pub struct StubHomeserver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub users: Arc<Mutex<HashMap<String, String>>>,
    pub account_data: Arc<Mutex<HashMap<String, Value>>>,
}

impl StubHomeserver {
    pub async fn start() -> StubHomeserver {
        let stub = StubHomeserver {
            addr: "127.0.0.1:0".parse().unwrap(),
            requests: Arc::default(),
            users: Arc::default(),
            account_data: Arc::default(),
        };
        let state = stub.clone();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(
                move |method, path: warp::path::FullPath, query, headers, body| {
                    let state = state.clone();
                    async move {
                        state
                            .answer(method, path.as_str().to_owned(), query, headers, body)
                            .await
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        StubHomeserver { addr, ..stub }
    }

    async fn answer(
        &self,
        method: warp::http::Method,
        path: String,
        query: String,
        headers: warp::http::HeaderMap,
        body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        use warp::Reply;
        let mut body = std::pin::pin!(body);
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authorization = header("authorization");
        if path.starts_with("/_matrix/media/v3/upload") {
            // Count the upload without keeping it.
            let mut size = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                size += bytes::Buf::remaining(&chunk);
            }
            return warp::reply::json(
                &serde_json::json!({"content_uri": "mxc://example.test/up", "size": size}),
            )
            .into_response();
        }
        if path.starts_with("/_matrix/media/v3/download/") {
            let size: usize = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "size")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
            let chunks = size / chunk.len();
            let stream = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            let mut reply = warp::reply::stream(stream).into_response();
            reply
                .headers_mut()
                .insert("content-length", (chunks * 64 * 1024).into());
            reply.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("application/octet-stream"),
            );
            return reply;
        }
        let mut raw = Vec::new();
        while let Some(Ok(mut chunk)) = body.next().await {
            let n = bytes::Buf::remaining(&chunk);
            raw.extend_from_slice(&bytes::Buf::copy_to_bytes(&mut chunk, n));
        }
        let json_body: Value = serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        self.requests.lock().unwrap().push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            body: json_body.clone(),
        });
        let token = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let (status, reply) = if path == "/_matrix/client/v3/account/whoami" {
            match self.users.lock().unwrap().get(&token) {
                Some(user_id) => (200, serde_json::json!({ "user_id": user_id })),
                None => (
                    401,
                    serde_json::json!({"errcode": "M_UNKNOWN_TOKEN", "error": "nope"}),
                ),
            }
        } else if path == "/_matrix/client/v3/register" {
            (200, serde_json::json!({"user_id": "@x:example.test"}))
        } else if path.ends_with("/createRoom") {
            (
                200,
                serde_json::json!({"room_id": format!("!created{}:example.test", self.requests.lock().unwrap().len())}),
            )
        } else if path.contains("/account_data/") {
            let mut data = self.account_data.lock().unwrap();
            match method.as_str() {
                "PUT" => {
                    data.insert(path.clone(), json_body.clone());
                    (200, serde_json::json!({}))
                }
                _ => match data.get(&path) {
                    Some(v) => (200, v.clone()),
                    None => (
                        404,
                        serde_json::json!({"errcode": "M_NOT_FOUND", "error": "no data"}),
                    ),
                },
            }
        } else {
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        Value::String(v.to_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
            (
                200,
                serde_json::json!({"method": method.as_str(), "path": path, "query": query, "headers": headers, "body": json_body}),
            )
        };
        warp::reply::with_status(
            warp::reply::json(&reply),
            warp::http::StatusCode::from_u16(status).unwrap(),
        )
        .into_response()
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
}

impl TestServer {
    /// Starts asmux with a fresh data directory.
    /// Owner PDU expiry is off: fixture events are older than any sensible limit.
    pub async fn start(hs: &StubHomeserver) -> TestServer {
        TestServer::start_with(hs, "max_pdu_age_seconds = 0").await
    }

    /// Starts asmux with extra `[mux]` lines in its config.
    pub async fn start_with(hs: &StubHomeserver, extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            config_text_with(&hs.url(), 0, extra),
        )
        .unwrap();
        TestServer::start_in(dir).await
    }

    /// Starts asmux on the config and data already in `dir`.
    pub async fn start_in(dir: TempDir) -> TestServer {
        let config = Config::load(&dir.path().join("config.toml")).unwrap();
        let store = Arc::new(open_store(&config.data_dir()));
        let services = Services::new(config, store).unwrap();
        let listener = asmux::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(run(listener, services, async {
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

    /// `GET path` with the shared secret.
    pub async fn root_get(&self, path: &str) -> Reply {
        send("GET", &self.url(path), Some(SHARED_SECRET), None).await
    }

    /// Starts asmux pointed at a homeserver address where nothing listens.
    pub async fn start_with_homeserver_down() -> TestServer {
        // Nothing listens on this port once the probing listener is dropped.
        let closed = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(&format!("http://127.0.0.1:{closed}"), 0);
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        TestServer::start_in(dir).await
    }

    /// Stops the server gracefully and hands back its directory.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
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

// ---------------------------------------------------------------------------------------
// Bridges and the homeserver's side of the appservice API.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

/// The body of a Synapse fixture.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../shared/fixtures/synapse-1.163/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["body"].clone()
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

/// A websocket bridge client, as mautrix bridges connect.
pub struct WsBridge {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Connects to asmux's as_sync endpoint with `token` and protocol `version`.
pub async fn ws_connect(
    server: &TestServer,
    token: &str,
    version: u8,
) -> Result<WsBridge, tungstenite::Error> {
    ws_connect_to(server.addr, token, version).await
}

/// [`ws_connect`] to the server at `addr`.
pub async fn ws_connect_to(
    addr: SocketAddr,
    token: &str,
    version: u8,
) -> Result<WsBridge, tungstenite::Error> {
    let url = format!("ws://{addr}/_matrix/client/unstable/fi.mau.as_sync");
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert(
        "x-mautrix-websocket-version",
        version.to_string().parse().unwrap(),
    );
    headers.insert("x-mautrix-process-id", "test-process".parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(WsBridge { socket })
}

/// What the next read from a websocket gave.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Closed(u16, String),
    Timeout,
}

impl WsBridge {
    /// Connects and reads the `connect` greeting.
    pub async fn connect(server: &TestServer, token: &str, version: u8) -> WsBridge {
        let mut ws = ws_connect(server, token, version).await.unwrap();
        let hello = ws.next_json().await;
        assert_eq!(
            hello,
            serde_json::json!({"command": "connect", "status": "connected"})
        );
        ws
    }

    /// The next text frame as JSON (waiting at most 10 s).
    pub async fn next_json(&mut self) -> Value {
        match self.next_event(Duration::from_secs(10)).await {
            WsEvent::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next text frame or close, skipping pings; `Timeout` after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> WsEvent {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return WsEvent::Timeout,
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return WsEvent::Json(serde_json::from_str(&text).unwrap())
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return WsEvent::Closed(code, reason);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return WsEvent::Closed(0, e.to_string()),
                None => return WsEvent::Closed(0, "stream ended".into()),
            }
        }
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// Acknowledges transaction frame `frame`.
    pub async fn ack(&mut self, frame: &Value) {
        let ack = serde_json::json!({"command": "response", "id": frame["id"], "data": {"txn_id": frame["txn_id"]}});
        self.send_json(&ack).await;
    }

    /// Reads transaction frames, acknowledging each, until `events` events arrived.
    pub async fn receive_events(&mut self, events: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < events {
            let frame = self.next_json().await;
            assert_eq!(frame["command"], "transaction", "{frame}");
            self.ack(&frame).await;
            out.extend(frame["events"].as_array().cloned().unwrap_or_default());
        }
        out
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// A transaction an HTTP push bridge received.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub txn_id: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// An HTTP push bridge that fails its first `failures` requests with 500.
#[derive(Clone)]
pub struct PushBridge {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Pushed>>>,
    pub failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl PushBridge {
    pub async fn start(failures: usize) -> PushBridge {
        let received: Arc<Mutex<Vec<Pushed>>> = Arc::default();
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(failures));
        let (rec, fail) = (received.clone(), failures.clone());
        let route = warp::put()
            .and(warp::path!(
                "_matrix" / "app" / "v1" / "transactions" / String
            ))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::json())
            .map(
                move |txn_id: String, query: String, authorization: Option<String>, body: Value| {
                    let txn_id = percent_encoding::percent_decode_str(&txn_id)
                        .decode_utf8_lossy()
                        .into_owned();
                    rec.lock().unwrap().push(Pushed {
                        txn_id,
                        query,
                        authorization,
                        body,
                    });
                    let failing = fail
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |n| n.checked_sub(1),
                        )
                        .is_ok();
                    let status = if failing { 500 } else { 200 };
                    warp::reply::with_status(
                        warp::reply::json(&serde_json::json!({})),
                        warp::http::StatusCode::from_u16(status).unwrap(),
                    )
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        PushBridge {
            addr,
            received,
            failures,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Pushed> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Pushed> {
        for _ in 0..1000 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "push bridge got {} requests, expected {n}",
            self.received().len()
        );
    }
}

/// Event IDs of a list of events.
pub fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("").to_owned())
        .collect()
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

/// An HTTP server answering each path from a table (404 `{}` otherwise), recording
/// every request: a stand-in for a push bridge's non-transaction endpoints.
#[derive(Clone)]
pub struct Scripted {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    answers: Arc<Mutex<HashMap<String, (u16, String)>>>,
}

impl Scripted {
    pub async fn start() -> Scripted {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let answers: Arc<Mutex<HashMap<String, (u16, String)>>> = Arc::default();
        let (reqs, table) = (requests.clone(), answers.clone());
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      authorization: Option<String>,
                      body: bytes::Bytes| {
                    let path = path.as_str().to_owned();
                    reqs.lock().unwrap().push(Recorded {
                        method: method.to_string(),
                        path: path.clone(),
                        query,
                        authorization,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    let (status, body) = table
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, "{}".into()));
                    warp::http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap()
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Scripted {
            addr,
            requests,
            answers,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `path` with `status` and `body` from now on.
    pub fn answer(&self, path: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.into(), (status, body.into()));
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

/// Opens a data directory a server (in this process or another) just let go of.
pub fn open_store(dir: &Path) -> Store {
    Store::open_when_free(dir, Duration::from_secs(10)).unwrap()
}
