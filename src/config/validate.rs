//! Validation of a loaded config: every problem that makes it unusable, listed at once;
//! what keeps `serve` from starting; and deprecations.

use std::net::{IpAddr, SocketAddr};

use super::{Config, EXAMPLE_DOMAIN, TOKEN_PLACEHOLDER};
use crate::matrix::is_valid_name;
use crate::secret::Secret;

impl Config {
    /// Everything that makes this configuration unusable, whatever the command.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.connection_problems(&mut problems);
        self.identity_problems(&mut problems);
        self.mux_problems(&mut problems);
        self.endpoint_problems(&mut problems);
        problems
    }

    /// The homeserver and asmux's own addresses and tokens.
    fn connection_problems(&self, problems: &mut Vec<String>) {
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(
            is_http_url(&self.homeserver.address),
            "homeserver.address must be an http:// or https:// URL",
        );
        check(
            is_server_name(&self.homeserver.domain),
            "homeserver.domain must be a server name like matrix.example.org",
        );
        check(
            (1..=3600).contains(&self.homeserver.timeout_seconds),
            "homeserver.timeout_seconds must be between 1 and 3600",
        );
        check(
            is_http_url(&self.appservice.address),
            "appservice.address must be an http:// or https:// URL",
        );
        check(
            [
                &self.appservice.as_token,
                &self.appservice.hs_token,
                &self.double_puppet.as_token,
                &self.double_puppet.hs_token,
            ]
            .iter()
            .all(|t| is_placeholder(t) || is_header_safe(t.expose())),
            "appservice and double_puppet tokens must be printable ASCII without spaces",
        );
    }

    /// The listener and the IDs and localparts of both registrations.
    fn identity_problems(&self, problems: &mut Vec<String>) {
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(
            self.listen_hostname().parse::<IpAddr>().is_ok(),
            "mux.hostname must be an IP address to listen on, like 127.0.0.1 or ::",
        );
        check(
            is_localpart(&self.appservice.bot_username),
            "appservice.bot_username must be a valid Matrix localpart",
        );
        check(
            !self.appservice.id.is_empty(),
            "appservice.id must not be empty",
        );
        check(
            !self.double_puppet.id.is_empty() && self.double_puppet.id != self.appservice.id,
            "double_puppet.id must not be empty nor appservice.id",
        );
        check(
            is_localpart(&self.double_puppet.sender_localpart)
                && self.double_puppet.sender_localpart != self.appservice.bot_username,
            "double_puppet.sender_localpart must be a valid Matrix localpart other than \
             appservice.bot_username",
        );
        check(
            !self.appservice.namespace.prefix.is_empty()
                && is_localpart(&self.appservice.namespace.prefix),
            "appservice.namespace.prefix must be a non-empty localpart prefix like _",
        );
    }

    /// Limits and timings of `[mux]`.
    fn mux_problems(&self, problems: &mut Vec<String>) {
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(
            self.mux.public_address.is_empty() || is_http_url(&self.mux.public_address),
            "mux.public_address must be empty or an http:// or https:// URL",
        );
        check(
            self.shared_secret_pending() || self.mux.shared_secret.expose().len() >= 16,
            "mux.shared_secret must be \"generate\" or at least 16 characters",
        );
        check(
            (1..=86_400).contains(&self.mux.websocket_ping_seconds),
            "mux.websocket_ping_seconds must be between 1 and 86400",
        );
        check(
            self.mux.queue_retention_days <= 3650 && self.mux.max_pdu_age_seconds <= 315_360_000,
            "mux.queue_retention_days must be at most 3650 and mux.max_pdu_age_seconds at most \
             315360000 (ten years)",
        );
        check(
            [
                self.mux.websocket_ack_timeout_seconds,
                self.mux.websocket_ack_retry_timeout_seconds,
                self.mux.websocket_write_timeout_seconds,
                self.mux.push_retry_delay_seconds,
                self.mux.push_retry_max_delay_seconds,
                self.mux.push_timeout_seconds,
                self.mux.header_read_timeout_seconds,
            ]
            .iter()
            .all(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0),
            "mux.websocket_ack_timeout_seconds, websocket_ack_retry_timeout_seconds, \
             websocket_write_timeout_seconds, push_retry_delay_seconds, \
             push_retry_max_delay_seconds, push_timeout_seconds and \
             header_read_timeout_seconds must be between 0 and 3600",
        );
        check(
            (1..=1_000_000).contains(&self.mux.max_connections),
            "mux.max_connections must be between 1 and 1000000",
        );
        check(
            self.mux.max_body_bytes >= 1024 && self.mux.max_management_body_bytes >= 1024,
            "mux.max_body_bytes and mux.max_management_body_bytes must be at least 1024",
        );
    }

    /// Reporting endpoints, config templates, metrics and logging.
    fn endpoint_problems(&self, problems: &mut Vec<String>) {
        for (name, url) in [
            ("bridge_status_endpoint", &self.mux.bridge_status_endpoint),
            ("remote_status_endpoint", &self.mux.remote_status_endpoint),
            (
                "message_send_checkpoint_endpoint",
                &self.mux.message_send_checkpoint_endpoint,
            ),
        ] {
            if url.as_deref().is_some_and(|u| !is_http_url(u)) {
                problems.push(format!("mux.{name} must be an http:// or https:// URL"));
            }
        }
        for prefix in self.mux.bridge_config_templates.keys() {
            if !is_valid_name(prefix) {
                problems.push(format!(
                    "mux.bridge_config_templates: {prefix:?} is not a valid bridge prefix"
                ));
            }
        }
        if self.metrics.enabled && self.metrics.listen.parse::<SocketAddr>().is_err() {
            problems.push("metrics.listen must be an address like 127.0.0.1:8000".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            problems.push(format!(
                "logging.level {:?} is not a valid filter (try \"info\")",
                self.logging.level
            ));
        }
    }

    /// What keeps the server from starting although the file is valid: tokens and the
    /// domain still being the example's.
    pub fn serve_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if is_placeholder(&self.appservice.as_token) || is_placeholder(&self.appservice.hs_token) {
            problems.push(
                "appservice.as_token and hs_token are not set: run `asmux generate-registration` \
                 and add the registration file to the homeserver's app_service_config_files"
                    .to_owned(),
            );
        }
        if self.homeserver.domain == EXAMPLE_DOMAIN {
            problems.push(format!(
                "homeserver.domain is still {EXAMPLE_DOMAIN:?}: set it to your homeserver's \
                 server_name"
            ));
        }
        problems
    }

    /// What is valid but should change: deprecated keys.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (old, new, set_old, set_new) in [
            (
                "hostname",
                "hostname",
                self.appservice.hostname.is_some(),
                self.mux.hostname.is_some(),
            ),
            (
                "port",
                "port",
                self.appservice.port.is_some(),
                self.mux.port.is_some(),
            ),
        ] {
            if set_old {
                let effect = if set_new {
                    "ignored, since"
                } else {
                    "read for now, but"
                };
                warnings.push(format!(
                    "appservice.{old} is deprecated and {effect} the listener is set in [mux] as \
                     mux.{new} (where mautrix-asmux has it): move it there"
                ));
            }
        }
        warnings
    }
}

/// Whether a token is still the example's placeholder (or empty).
pub(super) fn is_placeholder(token: &Secret) -> bool {
    token.expose() == TOKEN_PLACEHOLDER || token.expose().is_empty()
}

/// Whether a token can travel in an `Authorization` header and a query string.
fn is_header_safe(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `s` is an absolute http:// or https:// URL.
pub fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    })
}

fn is_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

fn is_localpart(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}
