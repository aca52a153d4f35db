//! A websocket bridge client speaking the as_sync protocol frame by frame, for tests
//! that drive each frame themselves.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

use super::TestServer;

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
