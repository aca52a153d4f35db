//! `asmux doctor`: the setup mistakes that break bridges, found from the outside. Each
//! check asks the real component (the homeserver, the bridges, the running server or
//! the data directory) and says, on failure, the one thing to change.
//!
//! With the server stopped, the doctor holds asmux's listener itself for the duration
//! and answers the homeserver's MSC2659 ping, so the round trip through the
//! registration's URL is still checked.

mod bridges;
mod homeserver;
mod report;
mod standin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use serde_json::Value;

use crate::config::Config;
use crate::http_client::{full_body, BufferedResponse, HttpClient};
use crate::secret::Secret;
use report::Report;
pub use report::{print, Check};
use standin::Listener;

/// How long any one request of the doctor may take.
const TIMEOUT: Duration = Duration::from_secs(10);

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
    let data_dir_ok = bridges::check_data_dir(&mut report, &config.data_dir());
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

struct Doctor {
    config: Config,
    client: HttpClient,
    report: Report,
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

/// The registration file next to the config, where `asmux serve` writes it first.
pub fn default_registration(config_path: &Path) -> PathBuf {
    config_path.with_file_name("registration.yaml")
}
