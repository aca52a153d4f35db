//! Requests asmux makes to a bridge outside of transactions: bridge state pings, exec
//! commands, homeserver user/alias queries, and status reports. Push bridges are asked
//! over HTTP; websocket bridges over their socket.

use std::time::Duration;

use data_encoding::BASE64_NOPAD;
use percent_encoding::utf8_percent_encode;
use serde_json::{json, Value};

use crate::error::Error;
use crate::http_client::{full_body, RequestError as HttpError, URL_COMPONENT};
use crate::service::delivery::connection::RequestError;
use crate::service::delivery::Delivery;
use crate::store::{now_ms, Bridge};

/// How long a bridge state ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(45);
/// How long an exec command may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a homeserver query may wait for the bridge.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a reported state stays valid.
const TTL_OK: u64 = 240;
const TTL_ERROR: u64 = 60;

/// A homeserver query the bridge owning the namespace should answer.
pub enum Query<'a> {
    User(&'a str),
    Alias(&'a str),
}

/// `bridgeState` made by asmux itself.
fn asmux_state(owner_id: &str, state: &str, error: Option<&str>) -> Value {
    let mut s = json!({
        "state_event": state,
        "timestamp": now_ms() / 1000,
        "ttl": if error.is_some() { TTL_ERROR } else { TTL_OK },
        "source": "asmux",
        "user_id": owner_id,
    });
    if let Some(error) = error {
        s["error"] = json!(error);
    }
    s
}

/// `POST /appservice/.../ping`: the bridge's GlobalBridgeState.
pub async fn global_state(delivery: &Delivery, bridge: &Bridge) -> Value {
    let owner_id = delivery.namespace.user_id(&bridge.owner);
    let unreachable = |error: &str| json!({"remoteState": null, "bridgeState": asmux_state(&owner_id, "BRIDGE_UNREACHABLE", Some(error))});
    let running =
        || json!({"remoteState": null, "bridgeState": asmux_state(&owner_id, "RUNNING", None)});
    if bridge.push {
        if bridge.address.is_empty() {
            return unreachable("ping-no-remote");
        }
        let url = format!(
            "{}/_matrix/app/com.beeper.bridge_state?user_id={}",
            bridge.address.trim_end_matches('/'),
            utf8_percent_encode(&owner_id, URL_COMPONENT)
        );
        return match call_bridge(
            delivery,
            bridge,
            http::Method::POST,
            &url,
            b"{}",
            PING_TIMEOUT,
        )
        .await
        {
            Ok((404, _)) => {
                match msc2659_ping(delivery, bridge, &format!("asmux-{}", now_ms())).await {
                    Ok(_) => running(),
                    Err(e) => unreachable(&e.code()),
                }
            }
            Ok((status, _)) if !(200..300).contains(&status) => {
                unreachable(&format!("ping-http-{status}"))
            }
            Ok((_, body)) => match serde_json::from_slice::<Value>(&body) {
                Ok(body) => interpret_state(&owner_id, body),
                Err(_) => unreachable("http-not-json"),
            },
            Err(HttpError::Timeout) => unreachable("io-timeout"),
            Err(_) => unreachable("http-connection-error"),
        };
    }
    // Websocket bridges are never sent `ping`: mautrix-go has no handler for it, and its
    // fallback for unknown commands crashes the bridge. Its appservice router answers the
    // MSC2659 ping through `http_proxy`; its state is the last `bridge_status` it sent.
    if delivery.hub.get(bridge.id).is_none() {
        return unreachable("websocket-not-connected");
    }
    let ping = json!({ "transaction_id": format!("asmux-{}", now_ms()) });
    match proxy_to_websocket(
        delivery,
        bridge,
        "POST",
        "/_matrix/app/v1/ping",
        Some(&ping),
        PING_TIMEOUT,
    )
    .await
    {
        // Any answer, an error or a refusal included, shows the bridge is alive.
        Ok(_) | Err(RequestError::Refused(_)) => match last_state(delivery, bridge) {
            Some(state) if state.get("remote_id").and_then(Value::as_str).is_some() => {
                let remote_id = state["remote_id"].as_str().unwrap_or_default().to_owned();
                json!({"remoteState": { remote_id: state }, "bridgeState": asmux_state(&owner_id, "RUNNING", None)})
            }
            Some(state) => json!({"remoteState": null, "bridgeState": state}),
            None => running(),
        },
        Err(RequestError::Timeout) => unreachable("io-timeout"),
        Err(RequestError::Closed) => unreachable("websocket-fatal-error"),
    }
}

/// The last `bridge_status` the bridge sent, if any.
fn last_state(delivery: &Delivery, bridge: &Bridge) -> Option<Value> {
    delivery
        .store
        .bridge_status(bridge.id)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
}

/// Reads a bridge's answer to a state ping: a GlobalBridgeState, or the legacy
/// `{"ok": bool, "remote_id"?...}`.
fn interpret_state(owner_id: &str, body: Value) -> Value {
    if body.get("bridgeState").is_some() {
        return body;
    }
    if let Some(ok) = body.get("ok").and_then(Value::as_bool) {
        let remote_id = body
            .get("remote_id")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let mut remote = body.clone();
        if let Some(obj) = remote.as_object_mut() {
            obj.remove("ok");
            obj.insert(
                "state_event".into(),
                json!(if ok { "CONNECTED" } else { "UNKNOWN_ERROR" }),
            );
            obj.insert("timestamp".into(), json!(now_ms() / 1000));
            obj.insert("ttl".into(), json!(if ok { TTL_OK } else { TTL_ERROR }));
            obj.insert("source".into(), json!("bridge"));
            obj.insert("remote_id".into(), json!(remote_id));
        }
        return json!({
            "remoteState": { remote_id: remote },
            "bridgeState": asmux_state(owner_id, "RUNNING", None),
        });
    }
    json!({"remoteState": null, "bridgeState": asmux_state(owner_id, "RUNNING", None)})
}

/// Why an MSC2659 ping of a push bridge failed.
#[derive(Debug)]
pub enum PingFailure {
    Status(u16, bytes::Bytes),
    Timeout,
    Connect,
}

impl PingFailure {
    /// The bridge state error code for this failure.
    pub fn code(&self) -> String {
        match self {
            PingFailure::Status(status, _) => format!("ping-http-{status}"),
            PingFailure::Timeout => "io-timeout".into(),
            PingFailure::Connect => "http-connection-error".into(),
        }
    }
}

/// MSC2659 ping of a push bridge with `transaction_id`: the round trip in ms.
pub async fn msc2659_ping(
    delivery: &Delivery,
    bridge: &Bridge,
    transaction_id: &str,
) -> Result<u64, PingFailure> {
    let url = format!(
        "{}/_matrix/app/v1/ping",
        bridge.address.trim_end_matches('/')
    );
    let body = json!({ "transaction_id": transaction_id }).to_string();
    let started = std::time::Instant::now();
    match call_bridge(
        delivery,
        bridge,
        http::Method::POST,
        &url,
        body.as_bytes(),
        PING_TIMEOUT,
    )
    .await
    {
        Ok((status, _)) if (200..300).contains(&status) => Ok(started.elapsed().as_millis() as u64),
        Ok((status, body)) => Err(PingFailure::Status(status, body)),
        Err(HttpError::Timeout) => Err(PingFailure::Timeout),
        Err(_) => Err(PingFailure::Connect),
    }
}

/// MSC2659 ping of a websocket bridge with `transaction_id`, through `http_proxy` to its
/// appservice router: the round trip in ms.
pub async fn websocket_ping(
    delivery: &Delivery,
    bridge: &Bridge,
    transaction_id: &str,
) -> Result<u64, PingFailure> {
    let started = std::time::Instant::now();
    let body = json!({ "transaction_id": transaction_id });
    match proxy_to_websocket(
        delivery,
        bridge,
        "POST",
        "/_matrix/app/v1/ping",
        Some(&body),
        PING_TIMEOUT,
    )
    .await
    {
        Ok((status, _)) if (200..300).contains(&status) => Ok(started.elapsed().as_millis() as u64),
        Ok((status, body)) => Err(PingFailure::Status(status, body.to_string().into())),
        Err(RequestError::Timeout) => Err(PingFailure::Timeout),
        Err(RequestError::Refused(data)) => Err(PingFailure::Status(502, data.to_string().into())),
        Err(RequestError::Closed) => Err(PingFailure::Connect),
    }
}

/// Sends `method path` to a websocket bridge's appservice router as `http_proxy`, the way
/// mautrix-go serves it: `path` percent-encoded (so IDs with `/` survive) and marked
/// `escaped_path`, headers as lists under their canonical names, the hs_token as the
/// homeserver would send it. Answers the status and the body (JSON, or the JSON inside
/// the base64 that mautrix-go sends for other bodies; `{}` when neither).
async fn proxy_to_websocket(
    delivery: &Delivery,
    bridge: &Bridge,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), RequestError> {
    let conn = delivery.hub.get(bridge.id).ok_or(RequestError::Closed)?;
    let request = json!({
        "method": method,
        "path": path,
        "escaped_path": true,
        "query": "",
        "headers": {
            "Authorization": [format!("Bearer {}", bridge.hs_token.expose())],
            "Content-Type": ["application/json"],
        },
        "body": body,
    });
    let answer = conn.request("http_proxy", &request, timeout).await?;
    let status = answer
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(502);
    let body = match answer.get("body") {
        Some(Value::String(b64)) => BASE64_NOPAD
            .decode(b64.trim_end_matches('=').as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({})),
        Some(body) if body.is_object() => body.clone(),
        _ => json!({}),
    };
    Ok((status, body))
}

/// Commands of the websocket protocol itself, which exec never sends. `ping` is one:
/// mautrix-go bridges have no handler for it.
const PROTOCOL_COMMANDS: &[&str] = &[
    "transaction",
    "response",
    "error",
    "connect",
    "disconnect",
    "ping",
];

/// Mxauth `POST .../exec/{command}`: runs a command on a websocket bridge. The bridge must
/// have a handler for it: mautrix-go's fallback for unknown commands crashes the bridge
/// (its library only handles transactions and `http_proxy` itself).
pub async fn exec(
    delivery: &Delivery,
    bridge: &Bridge,
    command: &str,
    body: Value,
) -> Result<(u16, Value), Error> {
    let fail = |status: u16, reason: &str| Error::Custom {
        status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY),
        errcode: "FI.MAU.WEBSOCKET_SEND_FAIL",
        message: format!("Failed to send command: {reason}"),
    };
    if bridge.push {
        return Err(Error::Custom {
            status: http::StatusCode::NOT_IMPLEMENTED,
            errcode: "FI.MAU.NOT_IMPLEMENTED",
            message: "Exec is only supported for websocket bridges".into(),
        });
    }
    if PROTOCOL_COMMANDS.contains(&command) {
        return Err(Error::BadRequest(
            format!("{command} is part of the websocket protocol, not a bridge command").into(),
        ));
    }
    let conn = delivery
        .hub
        .get(bridge.id)
        .ok_or_else(|| fail(503, "websocket not connected"))?;
    match conn.request(command, &body, EXEC_TIMEOUT).await {
        Ok(data) => Ok((200, data)),
        Err(RequestError::Refused(data)) => Ok((400, data)),
        Err(RequestError::Timeout) => Err(fail(504, "timed out")),
        Err(RequestError::Closed) => Err(fail(502, "websocket closed")),
    }
}

/// A homeserver user or alias query, answered by the bridge owning the namespace: its
/// 200 and body, or `None` for anything else (the homeserver then gets 404 `{}`).
pub async fn query(delivery: &Delivery, query: Query<'_>) -> Option<(u16, Value)> {
    let (sigil, id, kind) = match query {
        Query::User(id) => ('@', id, "users"),
        Query::Alias(alias) => ('#', alias, "rooms"),
    };
    let parsed = delivery.namespace.parse(sigil, id)?;
    let bridge = delivery
        .store
        .bridge_by_name(parsed.owner, parsed.prefix)
        .ok()??;
    let path = format!(
        "/_matrix/app/v1/{kind}/{}",
        utf8_percent_encode(id, URL_COMPONENT)
    );
    if bridge.push {
        if bridge.address.is_empty() {
            return None;
        }
        let url = format!("{}{path}", bridge.address.trim_end_matches('/'));
        let (status, body) = call_bridge(
            delivery,
            &bridge,
            http::Method::GET,
            &url,
            b"",
            QUERY_TIMEOUT,
        )
        .await
        .ok()
        .filter(|(status, _)| *status == 200)?;
        return Some((
            status,
            serde_json::from_slice(&body).unwrap_or_else(|_| json!({})),
        ));
    }
    proxy_to_websocket(delivery, &bridge, "GET", &path, None, QUERY_TIMEOUT)
        .await
        .ok()
        .filter(|(status, _)| *status == 200)
}

/// `GET /appservice/.../status`: what asmux knows of the bridge's delivery.
pub fn status(delivery: &Delivery, bridge: &Bridge) -> Result<BridgeStatus, Error> {
    let conn = delivery.hub.get(bridge.id);
    let (queue_depth, oldest_queued) = delivery.store.queue_stats(bridge.id)?;
    let bridge_state = delivery
        .store
        .bridge_status(bridge.id)?
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
    Ok(BridgeStatus {
        id: bridge.id,
        owner: bridge.owner.clone(),
        prefix: bridge.prefix.clone(),
        push: bridge.push,
        address: bridge.address.clone(),
        connected: conn.is_some(),
        protocol: conn.as_ref().map(|c| c.protocol),
        process_id: conn.as_ref().map(|c| c.process_id.clone()),
        connected_since: conn.as_ref().map(|c| c.connected_at_ms),
        queue_depth,
        oldest_queued,
        oldest_queued_age_ms: oldest_queued.map(|t| now_ms().saturating_sub(t)),
        last_delivery: delivery.last_delivery(bridge.id),
        unreachable_since: delivery.unreachable_since(bridge.id),
        bridge_state,
    })
}

/// What `GET /appservice/.../status` answers (times are Unix milliseconds).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BridgeStatus {
    pub id: uuid::Uuid,
    pub owner: String,
    pub prefix: String,
    pub push: bool,
    pub address: String,
    pub connected: bool,
    pub protocol: Option<u8>,
    pub process_id: Option<String>,
    pub connected_since: Option<u64>,
    pub queue_depth: u64,
    pub oldest_queued: Option<u64>,
    pub oldest_queued_age_ms: Option<u64>,
    pub last_delivery: Option<u64>,
    /// Since when pushes fail or the websocket is gone (cleared by the next success or
    /// connection; unknown before asmux's start).
    #[serde(default)]
    pub unreachable_since: Option<u64>,
    /// The bridge's latest `bridge_status` report, as it sent it.
    pub bridge_state: Option<Value>,
}

/// One request to a push bridge with its hs_token: `(status, body)`.
async fn call_bridge(
    delivery: &Delivery,
    bridge: &Bridge,
    method: http::Method,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), HttpError> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{url}{separator}access_token={}",
        utf8_percent_encode(bridge.hs_token.expose(), URL_COMPONENT)
    );
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", bridge.hs_token.expose()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(body.to_vec()))
        .map_err(|e| HttpError::Invalid(e.to_string()))?;
    let response = delivery.client.send_buffered(request, timeout).await?;
    Ok((response.status.as_u16(), response.body))
}
