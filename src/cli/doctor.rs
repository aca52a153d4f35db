//! `asmux doctor`: the setup mistakes that break bridges, found from the outside. Each
//! check asks the real component (the homeserver, the bridges, the running server or
//! the data directory) and says, on failure, the one thing to change.
//!
//! With the server stopped, the doctor holds asmux's listener itself for the duration
//! and answers the homeserver's MSC2659 ping, so the round trip through the
//! registration's URL is still checked.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use http::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::backend::{local_url, Backend};
use crate::config::Config;
use crate::http_client::{full_body, BufferedResponse, HttpClient};
use crate::secret::Secret;
use crate::service::bridge_requests::BridgeStatus;
use crate::service::management::BridgeRef;
use crate::store::now_ms;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Queued events older than this mean a bridge is not keeping up.
const OLD_QUEUE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Worth knowing, not broken.
    Warn,
    Fail,
    /// Could not be checked (what it depends on failed, or nothing can tell).
    Skip,
}

/// One line of the checklist.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(
        &mut self,
        check: &str,
        outcome: Outcome,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            check: check.to_owned(),
            outcome,
            detail: detail.into(),
            fix,
        });
    }
    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Outcome::Ok, detail, None);
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Outcome::Fail, detail, Some(fix.into()));
    }
    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Outcome::Warn, detail, Some(fix.into()));
    }
    fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Outcome::Skip, detail, None);
    }
}

/// Runs every check; `registration` is the file the homeserver should load.
pub async fn run(config_path: &Path, registration: &Path) -> Vec<Check> {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                "config",
                format!("{}: {e}", config_path.display()),
                "fix the config (`asmux check-config` lists every problem)",
            );
            return report.0;
        }
    };
    let problems = config.serve_problems();
    if problems.is_empty() {
        report.ok("config", format!("{} is valid", config_path.display()));
    } else {
        report.fail(
            "config",
            problems.join("; "),
            "fix the config (`asmux check-config` lists every problem)",
        );
    }
    let data_dir_ok = check_data_dir(&mut report, &config.data_dir());
    let Ok(client) = HttpClient::new() else {
        report.fail(
            "tls",
            "cannot load the system's TLS root certificates",
            "install the ca-certificates package",
        );
        return report.0;
    };
    let doctor = Doctor {
        config,
        client,
        report,
    };
    doctor.rest(registration, data_dir_ok).await
}

fn check_data_dir(report: &mut Report, dir: &Path) -> bool {
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

struct Doctor {
    config: Config,
    client: HttpClient,
    report: Report,
}

/// Who holds asmux's listening address.
enum Listener {
    /// Nobody: the doctor holds it and answers pings until dropped.
    Doctor(tokio::task::JoinHandle<()>),
    /// The asmux server.
    Asmux,
    /// Something the doctor cannot use.
    Unusable,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Doctor(task) = self {
            task.abort();
        }
    }
}

impl Doctor {
    async fn rest(mut self, registration: &Path, data_dir_ok: bool) -> Vec<Check> {
        let listener = self.listener().await;
        self.registration_file(registration);
        if self.homeserver().await {
            self.registration_loaded().await;
            self.round_trip(&listener).await;
            self.double_puppet().await;
        } else {
            self.report.skip(
                "homeserver registration",
                "skipped: the homeserver is not reachable",
            );
        }
        self.report.skip(
            "to-device and device lists",
            "no homeserver says from outside whether it sends them (Synapse: \
             experimental_features msc2409_to_device_messages_enabled and \
             msc3202_transaction_extensions); the registration check above says whether \
             asmux's registration asks for them",
        );
        if data_dir_ok {
            self.bridges(matches!(listener, Listener::Asmux)).await;
        }
        drop(listener);
        self.report.0
    }

    /// Binds the listener if it is free (the server is stopped), else checks that asmux
    /// is what holds it.
    async fn listener(&mut self) -> Listener {
        let addr = self.config.listen_addr();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                self.report.ok(
                    "listener",
                    format!(
                        "{addr} is free: asmux is not running (the doctor answers there meanwhile)"
                    ),
                );
                let hs_token = self.config.appservice.hs_token.clone();
                Listener::Doctor(tokio::spawn(answer_pings(listener, hs_token)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let url = format!("{}/_matrix/asmux/appservices", local_url(addr));
                let token = self.config.mux.shared_secret.clone();
                match self.call(Method::GET, &url, Some(&token), None).await {
                    Ok((StatusCode::OK, body)) if body["appservices"].is_array() => {
                        self.report
                            .ok("listener", format!("{addr} is held by asmux (running)"));
                        Listener::Asmux
                    }
                    _ => {
                        self.report.fail(
                            "listener",
                            format!("{addr} is held by another program (or an asmux with another shared secret)"),
                            "stop that program, or give asmux another mux.port",
                        );
                        Listener::Unusable
                    }
                }
            }
            Err(e) => {
                self.report.fail(
                    "listener",
                    format!("cannot listen on {addr}: {e}"),
                    "use a port above 1024 or start asmux with CAP_NET_BIND_SERVICE (the package's unit has it)",
                );
                Listener::Unusable
            }
        }
    }

    /// The registration file on disk says what the homeserver should have loaded.
    fn registration_file(&mut self, path: &Path) {
        let name = "registration file";
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                self.report.warn(
                    name,
                    format!("cannot read {}: {e}", path.display()),
                    "name the file the homeserver loads with --registration",
                );
                return;
            }
        };
        let Ok(file) = serde_yaml_ng::from_str::<Value>(&text) else {
            self.report.fail(
                name,
                format!("{} is not YAML", path.display()),
                "write it again with `asmux generate-registration`",
            );
            return;
        };
        let app = &self.config.appservice;
        let mut wrong = Vec::new();
        if file["as_token"].as_str() != Some(app.as_token.expose()) {
            wrong.push("its as_token is not asmux's".to_owned());
        }
        if file["hs_token"].as_str() != Some(app.hs_token.expose()) {
            wrong.push("its hs_token is not asmux's".to_owned());
        }
        if file["url"].as_str().map(|u| u.trim_end_matches('/'))
            != Some(app.address.trim_end_matches('/'))
        {
            wrong.push(format!(
                "its url is {}, not appservice.address ({})",
                file["url"].as_str().unwrap_or("missing"),
                app.address
            ));
        }
        let exclusive = file["namespaces"]["users"]
            .as_array()
            .is_some_and(|users| users.iter().all(|u| u["exclusive"] == true));
        if app.namespace.exclusive && !exclusive {
            wrong.push("its user namespace is not exclusive".to_owned());
        }
        if !wrong.is_empty() {
            self.report.fail(
                name,
                format!("{}: {}", path.display(), wrong.join("; ")),
                "write it again with `asmux generate-registration` (or fix those keys), then restart the homeserver",
            );
            return;
        }
        let ephemeral = file["receive_ephemeral"] == true
            || file["de.sorunome.msc2409.push_ephemeral"] == true
            || file["push_ephemeral"] == true;
        let msc3202 = file["org.matrix.msc3202"] == true;
        if !(ephemeral && msc3202) {
            self.report.warn(
                name,
                format!(
                    "{} does not ask for ephemeral events and to-device events/device lists \
                     (receive_ephemeral, org.matrix.msc3202): encrypted bridges miss them",
                    path.display()
                ),
                "write it again with `asmux generate-registration`",
            );
            return;
        }
        self.report.ok(
            name,
            format!(
                "{} matches the config and asks for to-device events and device lists",
                path.display()
            ),
        );
    }

    async fn homeserver(&mut self) -> bool {
        let address = self
            .config
            .homeserver
            .address
            .trim_end_matches('/')
            .to_owned();
        let url = format!("{address}/_matrix/client/versions");
        match self.call(Method::GET, &url, None, None).await {
            Ok((StatusCode::OK, body)) => {
                let versions = body["versions"].as_array().cloned().unwrap_or_default();
                let newest = versions
                    .last()
                    .and_then(Value::as_str)
                    .unwrap_or("none listed");
                self.report.ok(
                    "homeserver",
                    format!("{address} answers (client-server API up to {newest})"),
                );
                true
            }
            Ok((status, _)) => {
                self.report.fail(
                    "homeserver",
                    format!("{url} answered {status}"),
                    "set homeserver.address to the homeserver's client-server API URL",
                );
                false
            }
            Err(e) => {
                self.report.fail(
                    "homeserver",
                    format!("cannot reach {address}: {e}"),
                    "start the homeserver, or set homeserver.address to where it listens",
                );
                false
            }
        }
    }

    /// The homeserver accepts asmux's as_token as the bot of a loaded registration.
    async fn registration_loaded(&mut self) {
        let name = "homeserver registration";
        let expected = format!(
            "@{}:{}",
            self.config.appservice.bot_username, self.config.homeserver.domain
        );
        let token = self.config.appservice.as_token.clone();
        match self.whoami(&token).await {
            Ok(user) if user == expected => self.report.ok(
                name,
                format!("the homeserver knows asmux's registration (as_token is {user})"),
            ),
            Ok(user) => self.report.fail(
                name,
                format!("asmux's as_token is {user} on the homeserver, not {expected}"),
                "check homeserver.domain and appservice.bot_username against the registration the homeserver loaded",
            ),
            Err(e) => self.report.fail(
                name,
                format!("the homeserver refuses asmux's as_token: {e}"),
                "add the registration file to the homeserver's app_service_config_files and restart it",
            ),
        }
    }

    /// MSC2659: the homeserver calls asmux back through the registration's URL.
    async fn round_trip(&mut self, listener: &Listener) {
        let name = "homeserver -> asmux";
        if matches!(listener, Listener::Unusable) {
            self.report
                .skip(name, "skipped: asmux's listener is held by another program");
            return;
        }
        let url = format!(
            "{}/_matrix/client/v1/appservice/{}/ping",
            self.config.homeserver.address.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(
                &self.config.appservice.id,
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let body = json!({"transaction_id": format!("asmux-doctor-{}", now_ms())});
        let token = self.config.appservice.as_token.clone();
        match self
            .call(Method::POST, &url, Some(&token), Some(body))
            .await
        {
            Ok((StatusCode::OK, body)) => self.report.ok(
                name,
                format!(
                    "the homeserver reached asmux at {} in {} ms",
                    self.config.appservice.address, body["duration_ms"]
                ),
            ),
            Ok((status, body)) => {
                let errcode = body["errcode"].as_str().unwrap_or("");
                let fix = match errcode {
                    "M_URL_NOT_SET" => "set url in the registration file to appservice.address and restart the homeserver",
                    "M_BAD_STATUS" => "the registration's hs_token is not asmux's: write the registration again and restart the homeserver",
                    _ => "set url in the registration file the homeserver loads to an address where the homeserver reaches asmux, then restart the homeserver",
                };
                self.report.fail(
                    name,
                    format!(
                        "the homeserver could not reach asmux ({status} {errcode}: {})",
                        body["error"].as_str().unwrap_or("")
                    ),
                    fix,
                );
            }
            Err(e) => self.report.fail(
                name,
                format!("the ping request failed: {e}"),
                "check that the homeserver supports MSC2659 (Synapse 1.84 or later)",
            ),
        }
    }

    async fn double_puppet(&mut self) {
        let name = "double puppeting";
        let token = self.config.double_puppet.as_token.clone();
        if token.expose().is_empty() {
            self.report.skip(name, "not configured");
            return;
        }
        match self.whoami(&token).await {
            Ok(_) => self.report.ok(name, "the homeserver knows the double-puppet registration"),
            Err(e) => self.report.fail(
                name,
                format!("the homeserver refuses the double-puppet as_token: {e}"),
                "add doublepuppet.yaml (next to the registration) to app_service_config_files and restart the homeserver",
            ),
        }
    }

    async fn bridges(&mut self, server_running: bool) {
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
            self.report.fail(
                &name,
                format!("websocket bridge that never connected; {queue}"),
                format!(
                    "configure the bridge with `asmux bridge config {}/{}` and start it",
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

    async fn whoami(&self, token: &Secret) -> Result<String, String> {
        let url = format!(
            "{}/_matrix/client/v3/account/whoami",
            self.config.homeserver.address.trim_end_matches('/')
        );
        match self.call(Method::GET, &url, Some(token), None).await? {
            (StatusCode::OK, body) => body["user_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "no user_id in the answer".to_owned()),
            (status, body) => Err(format!(
                "{status} {} {}",
                body["errcode"].as_str().unwrap_or(""),
                body["error"].as_str().unwrap_or("")
            )),
        }
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&Secret>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let response = self.send(method, url, token, body).await?;
        let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        Ok((response.status, json))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&Secret>,
        body: Option<Value>,
    ) -> Result<BufferedResponse, String> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(token) = token {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            );
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(full_body(bytes))
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        self.client
            .send_buffered(request, TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Answers the homeserver's MSC2659 ping (with asmux's hs_token) while asmux is stopped.
async fn answer_pings(listener: tokio::net::TcpListener, hs_token: Secret) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hs_token = hs_token.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let authorized = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(crate::secret::bearer)
                .is_some_and(|t| hs_token.matches(t));
            let (status, body) = match (request.uri().path(), authorized) {
                ("/_matrix/app/v1/ping", true) => (StatusCode::OK, "{}"),
                ("/_matrix/app/v1/ping", false) => (
                    StatusCode::FORBIDDEN,
                    r#"{"errcode":"M_FORBIDDEN","error":"Bad hs_token"}"#,
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"errcode":"M_UNKNOWN","error":"asmux is not running (asmux doctor holds its address)"}"#,
                ),
            };
            let response = http::Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(full_body(body));
            async move { response }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Prints the checklist (or JSON); exit status 0 only when nothing failed.
pub fn print(checks: &[Check], json: bool) -> Result<std::process::ExitCode> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "checks": checks }))?
        );
    } else {
        for check in checks {
            let mark = match check.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "--  ",
            };
            println!("[{mark}] {}: {}", check.check, check.detail);
            if let Some(fix) = &check.fix {
                println!("       fix: {fix}");
            }
        }
    }
    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The registration file next to the config, where `asmux serve` writes it first.
pub fn default_registration(config_path: &Path) -> PathBuf {
    config_path.with_file_name("registration.yaml")
}
