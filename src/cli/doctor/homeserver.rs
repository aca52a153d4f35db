//! The doctor's checks of the homeserver side: the registration file, the homeserver's
//! API, asmux's and the double-puppet registrations as the homeserver sees them, and the
//! MSC2659 round trip through the registration's URL.

use std::path::Path;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::standin::Listener;
use super::Doctor;
use crate::store::now_ms;

impl Doctor {
    /// The registration file on disk says what the homeserver should have loaded.
    pub(super) fn registration_file(&mut self, path: &Path) {
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

    pub(super) async fn homeserver(&mut self) -> bool {
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
    pub(super) async fn registration_loaded(&mut self) {
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
    pub(super) async fn round_trip(&mut self, listener: &Listener) {
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

    pub(super) async fn double_puppet(&mut self) {
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
}
