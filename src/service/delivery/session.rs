//! A bridge's websocket session (spec 4.2): replaces the older connection, answers the
//! bridge's requests, routes responses to asmux's requests, pings, and hands the
//! connection to the bridge's delivery worker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use super::connection::{with_header, Connection};
use super::Delivery;
use crate::error::Error;
use crate::metrics::BridgeLabels;
use crate::service::management::bearer_token;
use crate::store::{now_ms, Bridge, PushKey};
use prometheus_client::metrics::gauge::Gauge;

/// Frames waiting for the writer at most; a bridge that reads slower than this holds up
/// its own deliveries, never the server.
const OUTGOING_FRAMES: usize = 64;
/// How long the writer may take to send the close frame once the session ends.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a disconnected bridge has to come back before it is reported unreachable.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);
/// The close reason sent to a connection a newer one of the same bridge replaces.
pub const REPLACED_REASON: &str = r#"{"command":"disconnect","status":"conn_replaced"}"#;

/// Whom a websocket may be opened for: the bridge whose token `authorization` carries,
/// when it is a websocket bridge and asmux is not shutting down, with the protocol it
/// asks for (`X-Mautrix-Websocket-Version`, 1 to 3; 1 when absent or unreadable).
pub fn admit(
    delivery: &Delivery,
    authorization: Option<&str>,
    version: Option<&str>,
) -> Result<(Arc<Bridge>, u8), Error> {
    if delivery.is_shutting_down() {
        return Err(Error::Custom {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            errcode: "COM.BEEPER.SHUTTING_DOWN",
            message: "Server is shutting down".into(),
        });
    }
    let token = bearer_token(authorization)?;
    let bridge = (delivery.store)
        .bridge_by_token(token)?
        .ok_or(Error::UnknownToken("Invalid access token"))?;
    if bridge.push {
        return Err(Error::Custom {
            status: http::StatusCode::UNAUTHORIZED,
            errcode: "COM.BEEPER.TXN_WS_NOT_ENABLED",
            message: "This appservice is set to receive transactions over HTTP".into(),
        });
    }
    let protocol = version
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(1)
        .clamp(1, 3);
    Ok((bridge, protocol))
}

/// A bridge's upgraded connection.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// A frame from the bridge.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(default)]
    command: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    data: Value,
}

/// Runs the session until the socket closes, the bridge is replaced or asmux stops.
pub async fn run(
    delivery: Arc<Delivery>,
    bridge: Arc<Bridge>,
    socket: WebSocket,
    protocol: u8,
    process_id: String,
) {
    let span = tracing::info_span!("websocket", bridge = %bridge.name());
    serve(delivery, bridge, socket, protocol, process_id)
        .instrument(span)
        .await
}

async fn serve(
    delivery: Arc<Delivery>,
    bridge: Arc<Bridge>,
    socket: WebSocket,
    protocol: u8,
    process_id: String,
) {
    let (sink, stream) = socket.split();
    let (out, outgoing) = mpsc::channel::<Message>(OUTGOING_FRAMES);
    let conn = Arc::new(Connection::new(
        bridge.id,
        delivery.next_serial(),
        protocol,
        process_id,
        now_ms(),
        out,
        delivery.websocket_write_timeout,
    ));

    let writer = delivery
        .tasks
        .spawn_here(write(sink, outgoing, conn.clone()));

    let connected = announce(&delivery, &bridge, &conn).await;
    read(&delivery, &bridge, &conn, stream).await;
    finish(delivery, bridge, conn, connected, writer).await;
}

/// Makes `conn` the bridge's connection (closing the one it replaces), counts it and
/// tells the bridge it is connected; returns its gauge.
async fn announce(delivery: &Arc<Delivery>, bridge: &Bridge, conn: &Arc<Connection>) -> Gauge {
    if let Some(old) = delivery.hub.insert(conn.clone()) {
        tracing::info!(old_serial = old.serial, "replacing the older connection");
        old.close(4001, REPLACED_REASON);
    }
    // Deleted between the upgrade and now: deletion closed whatever was connected before.
    if matches!(delivery.store.bridge(bridge.id), Ok(None)) {
        conn.close(1000, super::DELETED_REASON);
    }
    tracing::info!(protocol = conn.protocol, serial = conn.serial, process_id = %conn.process_id, "bridge connected");
    let connected = delivery
        .metrics
        .connected_websockets
        .get_or_create(&BridgeLabels::new(&bridge.owner, &bridge.prefix))
        .clone();
    connected.inc();
    delivery.note_reachable(bridge.id);
    conn.send_text(r#"{"command":"connect","status":"connected"}"#.to_owned())
        .await;
    delivery.wake(bridge.id);
    connected
}

/// Reads the bridge's frames and pings it until the connection ends: closed by either
/// side, a ping unanswered, or asmux shutting down.
async fn read(
    delivery: &Delivery,
    bridge: &Bridge,
    conn: &Connection,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
) {
    let mut shutdown = delivery.shutdown_signal();
    let mut ping = tokio::time::interval(delivery.ping_interval);
    ping.tick().await;
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    handle_text(delivery, bridge, conn, text.as_str()).await;
                }
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Close(close))) => {
                    tracing::info!(close = ?close, "bridge closed the websocket");
                    break;
                }
                Some(Ok(Message::Binary(_))) => tracing::debug!("ignoring a binary frame"),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::info!(error = %e, "websocket error");
                    break;
                }
                None => break,
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    tracing::warn!("no pong since the last ping, closing");
                    conn.close(1011, r#"{"command":"disconnect","status":"ping_timeout"}"#);
                    break;
                }
                awaiting_pong = true;
                let _ = conn_ping(conn).await;
            }
            _ = conn.wait_closed() => break,
            _ = shutdown.changed() => {
                conn.close(1012, super::SHUTDOWN_REASON);
                break;
            }
        }
    }
}

/// Takes the connection out of the hub, lets the writer send the close frame, and reports
/// the bridge unreachable if it does not come back.
async fn finish(
    delivery: Arc<Delivery>,
    bridge: Arc<Bridge>,
    conn: Arc<Connection>,
    connected: Gauge,
    mut writer: tokio::task::JoinHandle<()>,
) {
    if delivery.hub.remove(&conn) && !delivery.is_shutting_down() {
        delivery.note_unreachable(bridge.id);
    }
    connected.dec();
    if !conn.is_closed() {
        conn.close(1000, "");
    }
    // Let the writer send the close frame, but never wait on a dead peer for long.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    tracing::info!("bridge disconnected");
    if !delivery.is_shutting_down() {
        report_if_still_gone(delivery, bridge);
    }
}

/// Writes the connection's frames to the socket until a close frame or the end. Every
/// write has a deadline: a peer that stops reading (or a half-open connection) gets its
/// socket closed instead of holding the writer forever.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::Receiver<Message>,
    conn: Arc<Connection>,
) {
    while let Some(message) = outgoing.recv().await {
        let closing = matches!(message, Message::Close(_));
        match tokio::time::timeout(conn.write_timeout, sink.send(message)).await {
            Ok(Ok(())) if !closing => {}
            Ok(_) => break,
            Err(_) => {
                conn.close_stalled();
                // Dropping the sink drops the socket: no close handshake with a peer
                // that does not read.
                return;
            }
        }
    }
    let _ = tokio::time::timeout(conn.write_timeout, sink.close()).await;
}

/// Reports the bridge unreachable if it has not reconnected after a grace period: bridges
/// reconnect right away after a network blip or a restart.
fn report_if_still_gone(delivery: Arc<Delivery>, bridge: Arc<Bridge>) {
    delivery.tasks.clone().spawn(async move {
        tokio::time::sleep(UNREACHABLE_GRACE).await;
        if delivery.hub.get(bridge.id).is_none() && !delivery.is_shutting_down() {
            if let Ok(Some(current)) = delivery.store.bridge(bridge.id) {
                tracing::info!(bridge = %current.name(), "bridge did not reconnect");
                delivery.reporter.bridge_unreachable(&current);
            }
        }
    });
}

async fn conn_ping(conn: &Connection) -> bool {
    // Ping frames go through the same writer as everything else.
    conn.send_frame(Message::Ping(Default::default())).await
}

async fn handle_text(delivery: &Delivery, bridge: &Bridge, conn: &Connection, text: &str) {
    let Ok(frame) = serde_json::from_str::<Incoming>(text) else {
        tracing::debug!("ignoring a frame that is not a JSON command");
        return;
    };
    let answer = match frame.command.as_str() {
        "response" | "error" => {
            if let Some(id) = frame.id {
                let result = if frame.command == "response" {
                    Ok(frame.data)
                } else {
                    Err(frame.data)
                };
                conn.resolve(id, result);
            }
            return;
        }
        "ping" => Ok(json!({ "timestamp": now_ms() })),
        "bridge_status" => {
            if let Err(e) = delivery
                .store
                .set_bridge_status(bridge.id, frame.data.to_string().as_bytes())
            {
                tracing::error!(error = %e, "cannot store bridge status");
            }
            delivery.reporter.remote_status(bridge, &frame.data);
            Ok(json!({}))
        }
        "message_checkpoint" => {
            delivery.reporter.bridge_checkpoints(bridge, &frame.data);
            Ok(json!({}))
        }
        "push_key" => store_push_key(delivery, bridge, frame.data),
        other => {
            Err(json!({"code": "UnknownCommand", "message": format!("Unknown command {other}")}))
        }
    };
    let Some(id) = frame.id else { return };
    let (command, data) = match answer {
        Ok(data) => ("response", data),
        Err(data) => ("error", data),
    };
    conn.send_text(with_header(
        command,
        Some(id),
        &json!({ "data": data }).to_string(),
    ))
    .await;
}

fn store_push_key(delivery: &Delivery, bridge: &Bridge, data: Value) -> Result<Value, Value> {
    #[derive(Deserialize)]
    struct Input {
        #[serde(default)]
        url: String,
        #[serde(default)]
        app_id: String,
        #[serde(default)]
        pushkey: String,
        pushkey_ts: Option<i64>,
        data: Option<Value>,
    }
    let input: Input = serde_json::from_value(data)
        .map_err(|e| json!({"code": "BadRequest", "message": format!("Invalid push key: {e}")}))?;
    let push_key = (!input.pushkey.is_empty()).then(|| PushKey {
        url: input.url,
        app_id: input.app_id,
        pushkey: input.pushkey,
        pushkey_ts: input.pushkey_ts,
        data: input.data.map(|d| d.to_string()),
    });
    // Only the push key changes, on the bridge's current record: the snapshot this session
    // started with may be outdated, or the bridge deleted meanwhile.
    delivery
        .store
        .modify_bridge(bridge.id, |current| current.push_key = push_key)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store push key");
            json!({"code": "InternalError", "message": "Failed to store push key"})
        })?;
    Ok(json!({}))
}
