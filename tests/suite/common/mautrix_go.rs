//! A websocket bridge that behaves on the wire as mautrix-go's `appservice` package does
//! (read from its source, v0.29: `websocket.go`, `wshttp.go`, `http.go`, `txnid.go`, and
//! `bridgev2/matrix/websocket.go` for the ping loop and reconnects):
//! - the upgrade headers: `Authorization`, `User-Agent`, `X-Mautrix-Process-ID`,
//!   `X-Mautrix-Websocket-Version: 3`;
//! - a transaction whose txn_id is among the last 128 it handled is acknowledged but not
//!   handled again; the ack is `{"id","command":"response","data":{"txn_id"}}`;
//! - `http_proxy` goes through its appservice router: the hs_token must be in
//!   `Authorization` (headers are lists under canonical names), `path` is unescaped only
//!   when `escaped_path` is set, a non-JSON answer body comes back as unpadded base64;
//! - any other command from the server **crashes the process**: the library's fallback
//!   dereferences a context it never sets. The client then drops the socket without a
//!   close frame and never comes back; [`GoBridge::assert_alive`] fails the test;
//! - a frame that is not JSON ends the connection;
//! - its own `ping` request on an interval, a reconnect with back-off after any
//!   disconnect but `conn_replaced`, after which the process exits.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use data_encoding::BASE64_NOPAD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Pause before the first reconnect; doubled up to [`MAX_BACKOFF`]. (bridgev2 starts at
/// 2 s and caps at 2 min; the shape is the same, shorter for tests.)
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// `NewTransactionIDCache(128)`.
const TXN_ID_CACHE: usize = 128;

/// What the bridge has seen and done, for the test to assert on.
#[derive(Default)]
pub struct GoState {
    /// Upgrades that succeeded.
    pub connects: AtomicU32,
    /// Answers to its own pings.
    pub pongs: AtomicU32,
    /// Transactions acknowledged without being handled (txn_id seen before).
    pub duplicates: AtomicU32,
    /// The command that crashed it, if one did.
    pub crashed: Mutex<Option<String>>,
    /// Every `http_proxy` request it served: (method, path as the router saw it, status).
    pub proxied: Mutex<Vec<(String, String, u16)>>,
    /// User IDs and aliases its query handler knows.
    pub known: Mutex<HashSet<String>>,
}

pub struct GoBridge {
    events: mpsc::UnboundedReceiver<Value>,
    outgoing: mpsc::UnboundedSender<Value>,
    pub state: Arc<GoState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GoBridge {
    /// Starts the bridge; it keeps (re)connecting to asmux at `addr` until dropped.
    pub fn start(
        addr: SocketAddr,
        as_token: &str,
        hs_token: &str,
        ping_interval: Duration,
    ) -> GoBridge {
        let (tx, events) = mpsc::unbounded_channel();
        let (outgoing, from_test) = mpsc::unbounded_channel();
        let state = Arc::new(GoState::default());
        let task = tokio::spawn(run(
            Endpoint {
                addr,
                as_token: as_token.to_owned(),
                hs_token: hs_token.to_owned(),
            },
            ping_interval,
            tx,
            from_test,
            state.clone(),
        ));
        GoBridge {
            events,
            outgoing,
            state,
            task,
        }
    }

    /// The next event handled (timeline, ephemeral or to-device) that `matches`.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_alive();
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if matches(&event) => return event,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the bridge stopped while waiting for {what}"),
                Err(_) => panic!("the mautrix-go style bridge never received {what}"),
            }
        }
    }

    /// Waits (bounded) until the bridge has connected `n` times.
    pub async fn connected(&self, n: u32) {
        for _ in 0..500 {
            self.assert_alive();
            if self.state.connects.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the mautrix-go style bridge did not connect {n} times");
    }

    /// Sends `{"command":"bridge_status","data":state}` as bridgev2 does on every change
    /// (no id: it expects no answer).
    pub fn send_bridge_status(&self, state: Value) {
        let _ = self
            .outgoing
            .send(json!({"command": "bridge_status", "data": state}));
    }

    /// Makes the query handler answer 200 for this user ID or alias.
    pub fn know(&self, id: &str) {
        self.state.known.lock().unwrap().insert(id.to_owned());
    }

    /// Fails the test if asmux sent a command the real library would have crashed on.
    #[track_caller]
    pub fn assert_alive(&self) {
        if let Some(command) = self.state.crashed.lock().unwrap().as_ref() {
            panic!("asmux sent {command:?}, which crashes a mautrix-go bridge");
        }
    }
}

struct Endpoint {
    addr: SocketAddr,
    as_token: String,
    hs_token: String,
}

/// How one connection ended.
enum Ended {
    Reconnect,
    Replaced,
    Crashed,
}

async fn run(
    endpoint: Endpoint,
    ping_interval: Duration,
    events: mpsc::UnboundedSender<Value>,
    mut from_test: mpsc::UnboundedReceiver<Value>,
    state: Arc<GoState>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut processed = VecDeque::<String>::new();
    let mut request_id = 0u64;
    loop {
        let url = format!(
            "ws://{}/_matrix/client/unstable/fi.mau.as_sync",
            endpoint.addr
        );
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        let bearer = format!("Bearer {}", endpoint.as_token);
        headers.insert("authorization", bearer.parse().unwrap());
        headers.insert(
            "user-agent",
            "mautrix-go-style-test-bridge".parse().unwrap(),
        );
        headers.insert("x-mautrix-process-id", "go-style-bridge".parse().unwrap());
        headers.insert("x-mautrix-websocket-version", "3".parse().unwrap());
        let Ok((socket, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        state.connects.fetch_add(1, Ordering::SeqCst);
        backoff = FIRST_BACKOFF;
        let (mut write, mut read) = socket.split();
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        let mut pending_pings = HashSet::new();
        let ended = loop {
            let reply = tokio::select! {
                _ = ping.tick() => {
                    request_id += 1;
                    pending_pings.insert(request_id);
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    Some(json!({"id": request_id, "command": "ping", "data": {"timestamp": ms}}))
                }
                Some(frame) = from_test.recv() => Some(frame),
                frame = read.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(close))) => {
                            let replaced = close.is_some_and(|c| c.reason.contains("conn_replaced"));
                            break if replaced { Ended::Replaced } else { Ended::Reconnect };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break Ended::Reconnect,
                    };
                    // Unparseable JSON stops the websocket.
                    let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                        break Ended::Reconnect;
                    };
                    match msg["command"].as_str().unwrap_or("") {
                        "" | "transaction" => {
                            let txn_id = msg["txn_id"].as_str().unwrap_or("").to_owned();
                            if txn_id.is_empty() || !processed.contains(&txn_id) {
                                for key in ["events", "ephemeral", "to_device", "de.sorunome.msc2409.ephemeral", "de.sorunome.msc2409.to_device"] {
                                    for event in msg[key].as_array().into_iter().flatten() {
                                        let _ = events.send(event.clone());
                                    }
                                }
                                if !txn_id.is_empty() {
                                    processed.push_back(txn_id.clone());
                                    if processed.len() > TXN_ID_CACHE {
                                        processed.pop_front();
                                    }
                                }
                            } else {
                                state.duplicates.fetch_add(1, Ordering::SeqCst);
                            }
                            response(&msg, "response", json!({"txn_id": txn_id}))
                        }
                        "connect" => None,
                        "response" | "error" => {
                            if msg["id"].as_u64().is_some_and(|id| pending_pings.remove(&id)) {
                                state.pongs.fetch_add(1, Ordering::SeqCst);
                            }
                            None
                        }
                        "http_proxy" => {
                            let answer = serve_http(&endpoint.hs_token, &msg["data"], &state);
                            response(&msg, "response", answer)
                        }
                        other => {
                            *state.crashed.lock().unwrap() = Some(other.to_owned());
                            break Ended::Crashed;
                        }
                    }
                }
            };
            if let Some(reply) = reply {
                if write.send(Message::text(reply.to_string())).await.is_err() {
                    break Ended::Reconnect;
                }
            }
        };
        match ended {
            // A crashed process sends nothing more, not even a close frame.
            Ended::Crashed => return,
            Ended::Replaced => {
                let _ = write.send(Message::Close(None)).await;
                return;
            }
            Ended::Reconnect => {
                let _ = write.send(Message::Close(None)).await;
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// `MakeResponse`: nothing for a request without an id.
fn response(msg: &Value, command: &str, data: Value) -> Option<Value> {
    let id = msg["id"].as_u64().filter(|id| *id != 0)?;
    Some(json!({"id": id, "command": command, "data": data}))
}

/// The appservice router behind `http_proxy`: the answer `{status, headers, body}`.
fn serve_http(hs_token: &str, request: &Value, state: &GoState) -> Value {
    let method = request["method"].as_str().unwrap_or("");
    let raw_path = request["path"].as_str().unwrap_or("");
    // Without escaped_path, the path is taken as already unescaped.
    let segments: Vec<String> = raw_path
        .split('/')
        .map(|s| {
            if request["escaped_path"] == true {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            } else {
                s.to_owned()
            }
        })
        .collect();
    // http.Header lookups use the canonical name.
    let authorization = request["headers"]["Authorization"][0]
        .as_str()
        .unwrap_or("");
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (status, body) = match (method, segments.as_slice()) {
        ("GET", ["", "_matrix", "app", "v1", "users", _])
        | ("GET", ["", "_matrix", "app", "v1", "rooms", _])
        | ("POST", ["", "_matrix", "app", "v1", "ping"]) => {
            match authorization.strip_prefix("Bearer ") {
                None => (
                    401,
                    json!({"errcode": "M_MISSING_TOKEN", "error": "Missing access token"}),
                ),
                Some(token) if token != hs_token => (
                    401,
                    json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token"}),
                ),
                Some(_) => match segments.as_slice() {
                    [.., "ping"] => (200, json!({})),
                    [.., id] if state.known.lock().unwrap().contains(*id) => (200, json!({})),
                    [.., "users", _] => (
                        404,
                        json!({"errcode": "M_NOT_FOUND", "error": "User not found"}),
                    ),
                    _ => (
                        404,
                        json!({"errcode": "M_NOT_FOUND", "error": "Alias not found"}),
                    ),
                },
            }
        }
        _ => {
            // Go's ServeMux: a plain-text 404, which the proxy sends as base64.
            let text = BASE64_NOPAD.encode(b"404 page not found\n");
            state
                .proxied
                .lock()
                .unwrap()
                .push((method.to_owned(), segments.join("/"), 404));
            return json!({"status": 404, "headers": {"Content-Type": ["text/plain; charset=utf-8"]}, "body": text});
        }
    };
    state
        .proxied
        .lock()
        .unwrap()
        .push((method.to_owned(), segments.join("/"), status));
    json!({"status": status, "headers": {"Content-Type": ["application/json"]}, "body": body})
}
