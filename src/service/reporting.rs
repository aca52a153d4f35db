//! Optional reporting to external endpoints (spec 8): bridge states and message
//! checkpoints. Every report is fire-and-forget with a short timeout; failures are only
//! logged, so reporting can never hold up delivery.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::http_client::{full_body, HttpClient};
use crate::matrix::{BridgeTransaction, EventMeta, Raw};
use crate::store::now_ms;
use crate::store::Bridge;
use crate::tasks::Tasks;

const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A message checkpoint asmux makes itself (spec 8).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    pub step: &'static str,
    pub status: &'static str,
    pub retry_num: u32,
    pub info: Option<&'a str>,
}

impl<'a> Checkpoint<'a> {
    /// The homeserver's events reached asmux's queue.
    pub const RECEIVED: Checkpoint<'static> = Checkpoint {
        step: "HOMESERVER",
        status: "SUCCESS",
        retry_num: 0,
        info: None,
    };

    /// What became of the events on their way to the bridge.
    pub fn bridge(status: &'static str, retry_num: u32, info: Option<&'a str>) -> Self {
        Checkpoint {
            step: "BRIDGE",
            status,
            retry_num,
            info,
        }
    }
}

/// The configured endpoints.
#[derive(Clone)]
pub struct Reporter {
    client: HttpClient,
    remote_status: Option<String>,
    checkpoints: Option<String>,
    bridge_status: Option<String>,
    tasks: Tasks,
}

impl Reporter {
    pub fn new(config: &Config, client: HttpClient, tasks: Tasks) -> Reporter {
        Reporter {
            client,
            tasks,
            remote_status: config.mux.remote_status_endpoint.clone(),
            checkpoints: config.mux.message_send_checkpoint_endpoint.clone(),
            bridge_status: config.mux.bridge_status_endpoint.clone(),
        }
    }

    /// Forwards a `bridge_status` a websocket bridge sent.
    pub fn remote_status(&self, bridge: &Bridge, status: &Value) {
        if let Some(url) = &self.remote_status {
            self.post(url.clone(), Some(bridge.real_as_token()), status.clone());
        }
    }

    /// Forwards `message_checkpoint` data a bridge sent.
    pub fn bridge_checkpoints(&self, bridge: &Bridge, data: &Value) {
        let checkpoints = data
            .get("checkpoints")
            .cloned()
            .unwrap_or_else(|| json!([data]));
        self.checkpoints(bridge, checkpoints);
    }

    /// Reports checkpoints asmux made itself (`reported_by: ASMUX`).
    pub fn checkpoints(&self, bridge: &Bridge, checkpoints: Value) {
        if let Some(base) = &self.checkpoints {
            let url = format!(
                "{}/bridgebox/{}/bridge/{}/send_message_metrics",
                base.trim_end_matches('/'),
                bridge.owner,
                bridge.prefix
            );
            self.post(
                url,
                Some(bridge.real_as_token()),
                json!({ "checkpoints": checkpoints }),
            );
        }
    }

    /// Whether message checkpoints are reported at all.
    pub fn wants_checkpoints(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Reports `checkpoint` for each message-like event in `events`.
    pub fn event_checkpoints(&self, bridge: &Bridge, events: &[Raw], checkpoint: Checkpoint<'_>) {
        if !self.wants_checkpoints() {
            return;
        }
        let now = now_ms();
        let mut checkpoints = Vec::new();
        for raw in events {
            let Some(meta) = EventMeta::parse(raw) else {
                continue;
            };
            if !meta.is_message() {
                continue;
            }
            let mut entry = json!({
                "event_id": meta.event_id,
                "room_id": meta.room_id,
                "step": checkpoint.step,
                "timestamp": now,
                "status": checkpoint.status,
                "event_type": meta.kind(),
                "reported_by": "ASMUX",
                "retry_num": checkpoint.retry_num,
            });
            if let Some(info) = checkpoint.info {
                entry["info"] = json!(info);
            }
            checkpoints.push(entry);
        }
        if !checkpoints.is_empty() {
            self.checkpoints(bridge, Value::Array(checkpoints));
        }
    }

    /// Reports PERM_FAILURE for the events of a queued sub-transaction that is dropped.
    pub fn dropped(&self, bridge: &Bridge, body: &[u8], reason: &str) {
        if !self.wants_checkpoints() {
            return;
        }
        if let Ok(txn) = serde_json::from_slice::<BridgeTransaction>(body) {
            let checkpoint = Checkpoint::bridge("PERM_FAILURE", 0, Some(reason));
            self.event_checkpoints(bridge, &txn.events, checkpoint);
        }
    }

    /// Tells the status endpoint a websocket bridge became unreachable.
    pub fn bridge_unreachable(&self, bridge: &Bridge) {
        if bridge.prefix == "androidsms" {
            return;
        }
        if let Some(template) = &self.bridge_status {
            let url = template
                .replace("{owner}", &bridge.owner)
                .replace("{prefix}", &bridge.prefix);
            self.post(
                url,
                Some(bridge.real_as_token()),
                json!({"stateEvent": "BRIDGE_UNREACHABLE"}),
            );
        }
    }

    fn post(&self, url: String, token: Option<String>, body: Value) {
        let client = self.client.clone();
        self.tasks.spawn(async move {
            let mut request =
                http::Request::post(&url).header(http::header::CONTENT_TYPE, "application/json");
            if let Some(token) = token {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let Ok(request) = request.body(full_body(body.to_string())) else {
                tracing::warn!(%url, "invalid reporting URL");
                return;
            };
            match client.send_buffered(request, REPORT_TIMEOUT).await {
                Ok(r) if r.status.is_success() => {}
                Ok(r) => tracing::warn!(%url, status = %r.status, "report refused"),
                Err(e) => tracing::warn!(%url, error = %e, "report failed"),
            }
        });
    }
}
