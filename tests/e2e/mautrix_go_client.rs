//! A websocket bridge client that behaves as mautrix-go's appservice package does on
//! protocol 3: the same upgrade headers, transactions acknowledged with a `response`
//! carrying the txn_id, a ping request on a fixed interval, unknown requests answered
//! with an `error`, and, like its bridges, a reconnect after any disconnect except
//! `conn_replaced`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Pause before the first reconnect; doubled up to [`MAX_BACKOFF`]. (mautrix-go bridges
/// wait longer; the shape is the same.)
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// What the client has seen, for the test to assert on.
#[derive(Default)]
pub struct Counters {
    /// Upgrades that succeeded.
    pub connects: AtomicU32,
    /// Answers to its own pings.
    pub pongs: AtomicU32,
}

pub struct GoClient {
    events: mpsc::UnboundedReceiver<Value>,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GoClient {
    /// Starts the client; it keeps (re)connecting to asmux at `addr` until dropped.
    pub fn start(addr: SocketAddr, as_token: &str, ping_interval: Duration) -> GoClient {
        let (tx, events) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(
            addr,
            as_token.to_owned(),
            ping_interval,
            tx,
            counters.clone(),
        ));
        GoClient {
            events,
            counters,
            task,
        }
    }

    /// The next received event (timeline, ephemeral or to-device) that `matches`.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if matches(&event) => return event,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the client stopped while waiting for {what}"),
                Err(_) => panic!("the mautrix-go style bridge never received {what}"),
            }
        }
    }
}

async fn run(
    addr: SocketAddr,
    token: String,
    ping_interval: Duration,
    events: mpsc::UnboundedSender<Value>,
    counters: Arc<Counters>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut request_id = 0u64;
    loop {
        let url = format!("ws://{addr}/_matrix/client/unstable/fi.mau.as_sync");
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert(
            "user-agent",
            "mautrix-go-style-test-bridge".parse().unwrap(),
        );
        headers.insert("x-mautrix-process-id", "e2e-go-client".parse().unwrap());
        headers.insert("x-mautrix-websocket-version", "3".parse().unwrap());
        let Ok((socket, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        counters.connects.fetch_add(1, Ordering::SeqCst);
        backoff = FIRST_BACKOFF;
        let (mut write, mut read) = socket.split();
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        let mut pending_pings = std::collections::HashSet::new();
        let replaced = loop {
            tokio::select! {
                _ = ping.tick() => {
                    request_id += 1;
                    pending_pings.insert(request_id);
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    let ping = json!({"id": request_id, "command": "ping", "data": {"timestamp": ms}});
                    if write.send(Message::text(ping.to_string())).await.is_err() {
                        break false;
                    }
                }
                frame = read.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(close))) => {
                            break close.is_some_and(|c| c.reason.contains("conn_replaced"));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break false,
                    };
                    let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                    let command = msg["command"].as_str().unwrap_or("");
                    let reply = match command {
                        "" | "transaction" => {
                            for key in ["events", "ephemeral", "to_device", "de.sorunome.msc2409.ephemeral", "de.sorunome.msc2409.to_device"] {
                                for event in msg[key].as_array().into_iter().flatten() {
                                    let _ = events.send(event.clone());
                                }
                            }
                            Some(json!({"id": msg["id"], "command": "response", "data": {"txn_id": msg["txn_id"]}}))
                        }
                        "connect" => None,
                        "response" | "error" => {
                            if msg["id"].as_u64().is_some_and(|id| pending_pings.remove(&id)) {
                                counters.pongs.fetch_add(1, Ordering::SeqCst);
                            }
                            None
                        }
                        _ => msg["id"].as_u64().map(|id| json!({
                            "id": id,
                            "command": "error",
                            "data": {"code": "M_UNKNOWN", "message": "unknown request type"},
                        })),
                    };
                    if let Some(reply) = reply {
                        if write.send(Message::text(reply.to_string())).await.is_err() {
                            break false;
                        }
                    }
                }
            }
        };
        let _ = write.send(Message::Close(None)).await;
        if replaced {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}
