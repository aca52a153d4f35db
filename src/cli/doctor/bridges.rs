//! The doctor's checks of asmux's own side: the data directory and every bridge (push
//! bridges pinged, websocket bridges' connections, queues and their oldest events).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use super::report::Report;
use super::Doctor;
use crate::cli::backend::Backend;
use crate::secret::Secret;
use crate::service::bridge_requests::BridgeStatus;
use crate::service::management::BridgeRef;
use crate::store::now_ms;

/// Queued events older than this mean a bridge is not keeping up.
const OLD_QUEUE: Duration = Duration::from_secs(5 * 60);

/// Checks the data directory: present, owned by this user, private. False when the
/// bridges cannot be read from it.
pub(super) fn check_data_dir(report: &mut Report, dir: &Path) -> bool {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.warn(
                "data directory",
                format!("{shown} does not exist yet (no bridges to check)"),
                "`asmux serve` creates it; if asmux ran before, point mux.data_dir at its directory",
            );
            return false;
        }
        Err(e) => {
            report.fail(
                "data directory",
                format!("{shown}: {e}"),
                "run the doctor as the user asmux runs as",
            );
            return false;
        }
    };
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|uid| uid != meta.uid()) {
        report.fail(
            "data directory",
            format!("{shown} belongs to uid {}, not to this user", meta.uid()),
            format!("run as the user asmux runs as, or `chown -R <that user> {shown}`"),
        );
        return false;
    }
    if meta.mode() & 0o777 != 0o700 {
        report.fail(
            "data directory",
            format!(
                "{shown} has mode {:o}; it holds every token",
                meta.mode() & 0o777
            ),
            format!("chmod 700 {shown}"),
        );
        return true;
    }
    report.ok("data directory", format!("{shown}, private to its owner"));
    true
}

impl Doctor {
    pub(super) async fn bridges(&mut self, server_running: bool) {
        let config = &self.config;
        let listed = async {
            let backend = Backend::open(config)?;
            let statuses = backend.statuses().await?;
            anyhow::Ok((backend, statuses))
        }
        .await;
        let (backend, statuses) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                self.report.fail(
                    "bridges",
                    format!("cannot read the bridges: {e:#}"),
                    "run the doctor as the user asmux runs as",
                );
                return;
            }
        };
        if statuses.is_empty() {
            self.report.ok("bridges", "none provisioned yet");
        }
        for status in statuses {
            self.bridge(&backend, &status, server_running).await;
        }
    }

    async fn bridge(&mut self, backend: &Backend, status: &BridgeStatus, server_running: bool) {
        let name = format!("bridge {}/{}", status.owner, status.prefix);
        let mut notes = Vec::new();
        if status.queue_depth > 0 {
            let age = status.oldest_queued_age_ms.unwrap_or(0) / 1000;
            notes.push(format!("{} queued, oldest {age} s", status.queue_depth));
        }
        let old_queue = status
            .oldest_queued_age_ms
            .is_some_and(|ms| ms > OLD_QUEUE.as_millis() as u64);
        let queue = if notes.is_empty() {
            "queue empty".to_owned()
        } else {
            notes.join(", ")
        };
        if status.push {
            if status.address.is_empty() {
                self.report.fail(
                    &name,
                    format!("push bridge without an address; {queue}"),
                    format!(
                        "PUT /_matrix/asmux/appservice/{}/{} {{\"address\": \"http://...\"}}",
                        status.owner, status.prefix
                    ),
                );
                return;
            }
            match self.ping_bridge(backend, status).await {
                Ok(ms) if !old_queue => self.report.ok(
                    &name,
                    format!("push to {} answers its ping in {ms} ms; {queue}", status.address),
                ),
                Ok(_) => self.report.warn(
                    &name,
                    format!("reachable at {}, but {queue}", status.address),
                    "check the bridge's log: it takes transactions too slowly",
                ),
                Err(e) => self.report.fail(
                    &name,
                    format!("push to {} fails: {e}; {queue}", status.address),
                    "start the bridge, or set its address to where it listens (its registration's url)",
                ),
            }
            return;
        }
        if !server_running {
            self.report.skip(
                &name,
                format!("websocket bridge; asmux is not running; {queue}"),
            );
            return;
        }
        let never = status.connected_since.is_none()
            && status.last_delivery.is_none()
            && status.bridge_state.is_none();
        if status.connected {
            let state = status
                .bridge_state
                .as_ref()
                .and_then(|s| s["state_event"].as_str())
                .unwrap_or("no state reported");
            let detail = format!(
                "websocket connected (protocol {}, {state}); {queue}",
                status.protocol.map_or("?".to_owned(), |p| p.to_string())
            );
            if old_queue {
                self.report.warn(
                    &name,
                    detail,
                    "check the bridge's log: it acknowledges transactions too slowly",
                );
            } else {
                self.report.ok(&name, detail);
            }
        } else if never {
            // Connections and deliveries are known since asmux started; a state, once
            // reported, is kept in the store.
            self.report.fail(
                &name,
                format!(
                    "websocket bridge not connected since asmux started, and it never reported a state; {queue}"
                ),
                format!(
                    "start the bridge (a new one: configure it with `asmux bridge config {}/{}` first)",
                    status.owner, status.prefix
                ),
            );
        } else {
            self.report.fail(
                &name,
                format!("websocket not connected; {queue}"),
                "start the bridge; check that it reaches mux.public_address (or appservice.address)",
            );
        }
    }

    /// The bridge's own MSC2659 ping; the round trip in milliseconds.
    async fn ping_bridge(&self, backend: &Backend, status: &BridgeStatus) -> Result<u64, String> {
        let bridge = backend
            .registration(&BridgeRef::Id(status.id))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let url = format!(
            "{}/_matrix/app/v1/ping",
            status.address.trim_end_matches('/')
        );
        let started = std::time::Instant::now();
        let token = Secret::new(bridge.hs_token.as_str());
        let body = json!({"transaction_id": format!("asmux-doctor-{}", now_ms())});
        match self
            .call(Method::POST, &url, Some(&token), Some(body))
            .await
        {
            Ok((StatusCode::OK, _)) => Ok(started.elapsed().as_millis() as u64),
            Ok((status, body)) => Err(format!(
                "it answered {status} {}",
                body["errcode"].as_str().unwrap_or("")
            )),
            Err(e) => Err(e),
        }
    }
}
