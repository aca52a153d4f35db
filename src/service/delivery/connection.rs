//! One bridge's websocket: numbered requests with responses, and closing with a code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// How a request over the websocket failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// No response in time.
    Timeout,
    /// The connection closed first.
    Closed,
    /// The bridge answered with an `error` command; its data.
    Refused(Value),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Timeout => f.write_str("timed out waiting for the bridge"),
            RequestError::Closed => f.write_str("websocket closed"),
            RequestError::Refused(data) => write!(f, "bridge answered with an error: {data}"),
        }
    }
}

type Pending = oneshot::Sender<Result<Value, Value>>;

/// The close reason for a bridge that stopped reading.
pub const STALLED_REASON: &str = r#"{"command":"disconnect","status":"write_timeout"}"#;

/// A connected websocket bridge.
pub struct Connection {
    pub bridge_id: Uuid,
    /// Distinguishes this connection from the bridge's earlier and later ones.
    pub serial: u64,
    /// `X-Mautrix-Websocket-Version`: 1, 2 or 3.
    pub protocol: u8,
    /// `X-Mautrix-Process-ID`.
    pub process_id: String,
    pub connected_at_ms: u64,
    /// Frames for the writer task; bounded so a stuck bridge applies back-pressure.
    out: mpsc::Sender<Message>,
    /// How long a frame may wait for room in `out`, and the writer for the socket.
    pub write_timeout: Duration,
    next_id: AtomicU64,
    /// Requests from asmux waiting for the bridge's response, by id.
    pending: Mutex<HashMap<u64, Pending>>,
    closed: AtomicBool,
    closed_notify: Notify,
}

impl Connection {
    pub fn new(
        bridge_id: Uuid,
        serial: u64,
        protocol: u8,
        process_id: String,
        connected_at_ms: u64,
        out: mpsc::Sender<Message>,
        write_timeout: Duration,
    ) -> Connection {
        Connection {
            bridge_id,
            serial,
            protocol,
            process_id,
            connected_at_ms,
            out,
            write_timeout,
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        crate::sync::lock(&self.pending)
    }

    /// Sends a text frame; false when the connection is gone.
    pub async fn send_text(&self, text: String) -> bool {
        self.send_frame(Message::text(text)).await
    }

    /// Queues a frame for the writer; false when the connection is gone. A bridge that
    /// stops reading fills the queue: after [`Connection::write_timeout`] without room
    /// the connection is closed, so no caller waits on it for longer.
    pub async fn send_frame(&self, message: Message) -> bool {
        if self.is_closed() {
            return false;
        }
        tokio::select! {
            sent = self.out.send(message) => sent.is_ok(),
            _ = self.wait_closed() => false,
            _ = tokio::time::sleep(self.write_timeout) => {
                self.close_stalled();
                false
            }
        }
    }

    /// Closes a connection whose peer stopped reading.
    pub fn close_stalled(&self) {
        tracing::warn!(bridge = %self.bridge_id, "the bridge stopped reading its websocket, closing");
        self.close(1011, STALLED_REASON);
    }

    /// Sends `{"command": command, "id": N, <fields>}` and waits for the response.
    /// `fields` is the JSON text of an object whose members go next to `command`/`id`.
    pub async fn request_raw(
        &self,
        command: &str,
        fields: &str,
        timeout: Duration,
    ) -> Result<Value, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let frame = with_header(command, Some(id), fields);
        if !self.send_text(frame).await {
            self.pending().remove(&id);
            return Err(RequestError::Closed);
        }
        let result = tokio::select! {
            r = rx => match r {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(data)) => Err(RequestError::Refused(data)),
                Err(_) => Err(RequestError::Closed),
            },
            _ = tokio::time::sleep(timeout) => Err(RequestError::Timeout),
            _ = self.wait_closed() => Err(RequestError::Closed),
        };
        self.pending().remove(&id);
        result
    }

    /// Sends `{"command": command, "id": N, "data": data}` and waits for the response.
    pub async fn request(
        &self,
        command: &str,
        data: &Value,
        timeout: Duration,
    ) -> Result<Value, RequestError> {
        self.request_raw(command, &format!("{{\"data\":{data}}}"), timeout)
            .await
    }

    /// Hands a bridge's `response` (`Ok`) or `error` (`Err`) to the request waiting for it.
    /// Unknown ids are ignored.
    pub fn resolve(&self, id: u64, result: Result<Value, Value>) {
        if let Some(tx) = self.pending().remove(&id) {
            let _ = tx.send(result);
        }
    }

    /// Closes the socket with `code` and `reason`; pending requests fail.
    pub fn close(&self, code: u16, reason: &str) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.out.try_send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })));
        self.pending().clear();
        self.closed_notify.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Completes once [`Connection::close`] was called.
    pub async fn wait_closed(&self) {
        let notified = self.closed_notify.notified();
        if self.is_closed() {
            return;
        }
        notified.await;
    }
}

/// `{"command":...,"id":N,` followed by the members of the object `fields`.
pub fn with_header(command: &str, id: Option<u64>, fields: &str) -> String {
    let mut frame = format!("{{\"command\":{}", Value::from(command));
    if let Some(id) = id {
        frame.push_str(&format!(",\"id\":{id}"));
    }
    let members = fields.trim().strip_prefix('{').unwrap_or("}").trim_start();
    if members != "}" {
        frame.push(',');
    }
    frame.push_str(members);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_goes_in_front_of_the_fields() {
        assert_eq!(
            with_header(
                "transaction",
                Some(3),
                r#"{"status":"ok","txn_id":"1","events":[]}"#
            ),
            r#"{"command":"transaction","id":3,"status":"ok","txn_id":"1","events":[]}"#
        );
        assert_eq!(
            with_header("connect", None, r#"{"status":"connected"}"#),
            r#"{"command":"connect","status":"connected"}"#
        );
        assert_eq!(with_header("x", Some(1), "{}"), r#"{"command":"x","id":1}"#);
        for frame in [
            with_header("t", Some(1), r#"{"a":1}"#),
            with_header("t", None, "{ }"),
        ] {
            serde_json::from_str::<Value>(&frame).unwrap();
        }
    }
}
