//! Configuration: a TOML file read into serde structs with defaults, unknown keys refused,
//! and every problem listed at once.

use std::collections::BTreeMap;
use std::fmt;

mod validate;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
pub use validate::is_http_url;
use validate::is_placeholder;

use serde::Deserialize;

use crate::matrix::Namespace;
use crate::secret::Secret;

/// The original's placeholder for tokens that `generate-registration` fills in.
pub const TOKEN_PLACEHOLDER: &str = "This value is generated when generating the registration";
/// `mux.shared_secret` value that asks asmux to generate the secret on first start.
pub const GENERATE: &str = "generate";
/// Where the server listens unless `mux.hostname`/`mux.port` say otherwise.
const DEFAULT_HOSTNAME: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 29326;
/// The example domain that must be replaced before the server may start.
pub const EXAMPLE_DOMAIN: &str = "example.com";
/// The configuration a package or `serve` writes when there is none, with every key documented.
pub const EXAMPLE: &str = include_str!("../../config.toml.example");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub homeserver: Homeserver,
    #[serde(default)]
    pub appservice: Appservice,
    #[serde(default)]
    pub double_puppet: DoublePuppet,
    #[serde(default)]
    pub mux: Mux,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub logging: Logging,
    /// The file this was read from; relative paths in it are relative to its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[homeserver]`: the one homeserver asmux serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Homeserver {
    /// Base URL asmux uses to reach the homeserver's client-server API.
    pub address: String,
    /// The homeserver's server name (the part after `:` in user IDs).
    pub domain: String,
    /// Synapse's shared-secret login key, used to convert bridges' login passwords.
    #[serde(default)]
    pub login_shared_secret: Option<Secret>,
    /// Seconds to wait for the homeserver on requests asmux makes itself.
    #[serde(default = "default_hs_timeout")]
    pub timeout_seconds: u64,
}

/// `[appservice]`: how the homeserver sees asmux.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Appservice {
    /// URL the homeserver uses to reach asmux (the registration's `url`).
    pub address: String,
    /// Deprecated: the listener is `mux.hostname`/`mux.port`, as in mautrix-asmux.
    pub hostname: Option<String>,
    pub port: Option<u16>,
    /// The registration's `id` and `sender_localpart`.
    pub id: String,
    pub bot_username: String,
    pub as_token: Secret,
    pub hs_token: Secret,
    pub namespace: NamespaceConfig,
}

/// `[appservice.namespace]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// The global prefix every bridge user and alias starts with.
    pub prefix: String,
    /// Whether the namespaces are registered as exclusive.
    pub exclusive: bool,
}

/// `[double_puppet]`: asmux's second registration, which pushes nothing and claims every
/// local user non-exclusively. With its token asmux lets a bridge act as its own owner
/// (automatic double puppeting of current mautrix-go bridges), never as anyone else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoublePuppet {
    /// The registration's `id` and `sender_localpart`.
    pub id: String,
    pub sender_localpart: String,
    pub as_token: Secret,
    pub hs_token: Secret,
}

/// `[mux]`: multiplexer behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mux {
    /// Address and port the server listens on (where mautrix-asmux reads them).
    pub hostname: Option<String>,
    pub port: Option<u16>,
    /// The sled database directory; relative to the config file's directory.
    pub data_dir: PathBuf,
    /// Root secret of the management API; `generate` creates one on first start.
    pub shared_secret: Secret,
    /// Public base URL of asmux, for links handed to bridges and users.
    pub public_address: String,
    pub event_filter: EventFilter,
    pub max_pdu_age_seconds: u64,
    pub queue_retention_days: u64,
    pub websocket_ping_seconds: u64,
    /// How long a write to a bridge's websocket may take before the socket is closed.
    pub websocket_write_timeout_seconds: f64,
    /// Protocol 3 acknowledgement timeout before the first miss, and after it.
    pub websocket_ack_timeout_seconds: f64,
    pub websocket_ack_retry_timeout_seconds: f64,
    /// First pause between HTTP push attempts (each next one is 1.5 times longer), and
    /// the longest pause.
    pub push_retry_delay_seconds: f64,
    pub push_retry_max_delay_seconds: f64,
    /// How long one HTTP push may take before it counts as failed.
    pub push_timeout_seconds: f64,
    /// Connections served at once; further ones wait in the listen queue. Websockets do
    /// not count: they need a bridge's token.
    pub max_connections: u32,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout_seconds: f64,
    /// Largest homeserver transaction accepted.
    pub max_body_bytes: u64,
    /// Largest management API request body accepted.
    pub max_management_body_bytes: u64,
    /// Disk space kept in reserve in the data directory, released when the disk fills
    /// (see `store::reserve`); 0 keeps none.
    pub disk_reserve_mib: u64,
    pub bridge_status_endpoint: Option<String>,
    pub remote_status_endpoint: Option<String>,
    pub message_send_checkpoint_endpoint: Option<String>,
    pub bridge_config_templates: BTreeMap<String, PathBuf>,
}

/// Which routed PDUs are forwarded to bridges (spec 3.1 rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventFilter {
    #[default]
    All,
    OwnerMessages,
}

/// `[metrics]`: Prometheus exposition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub enabled: bool,
    pub listen: String,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// A tracing filter: `info`, `asmux=debug,warp=info`, ...
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

fn default_hs_timeout() -> u64 {
    30
}

impl Default for Appservice {
    fn default() -> Self {
        Appservice {
            address: "http://localhost:29326".into(),
            hostname: None,
            port: None,
            id: "asmux".into(),
            bot_username: "asmuxbot".into(),
            as_token: Secret::new(TOKEN_PLACEHOLDER),
            hs_token: Secret::new(TOKEN_PLACEHOLDER),
            namespace: NamespaceConfig::default(),
        }
    }
}

impl Default for DoublePuppet {
    fn default() -> Self {
        DoublePuppet {
            id: "asmux-doublepuppet".into(),
            sender_localpart: "asmux-doublepuppet".into(),
            as_token: Secret::new(TOKEN_PLACEHOLDER),
            hs_token: Secret::new(TOKEN_PLACEHOLDER),
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            prefix: "_".into(),
            exclusive: true,
        }
    }
}

impl Default for Mux {
    fn default() -> Self {
        Mux {
            hostname: None,
            port: None,
            data_dir: PathBuf::from("data"),
            shared_secret: Secret::new(GENERATE),
            public_address: String::new(),
            event_filter: EventFilter::All,
            max_pdu_age_seconds: 180,
            queue_retention_days: 7,
            websocket_ping_seconds: 60,
            websocket_write_timeout_seconds: 30.0,
            websocket_ack_timeout_seconds: 5.0,
            websocket_ack_retry_timeout_seconds: 30.0,
            push_retry_delay_seconds: 1.0,
            push_retry_max_delay_seconds: 60.0,
            push_timeout_seconds: 10.0,
            max_connections: 4096,
            header_read_timeout_seconds: 60.0,
            max_body_bytes: 100 * 1024 * 1024,
            max_management_body_bytes: 1024 * 1024,
            disk_reserve_mib: 16,
            bridge_status_endpoint: None,
            remote_status_endpoint: None,
            message_send_checkpoint_endpoint: None,
            bridge_config_templates: BTreeMap::new(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: false,
            listen: "127.0.0.1:8000".into(),
        }
    }
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// A configuration that could not be used; `Display` names the file and every problem.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.path.display()),
            many => {
                write!(f, "{}: {} problems", self.path.display(), many.len())?;
                many.iter().try_for_each(|p| write!(f, "\n  - {p}"))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problem: String| ConfigError {
            path: path.to_owned(),
            problems: vec![problem],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` and validates it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            // toml's message already names the line, column and key.
            problems: vec![e.to_string().trim_end().replace('\n', "\n    ")],
        })?;
        config.path = path.to_owned();
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// The as_token of the double-puppet registration, when it was generated.
    pub fn double_puppet_token(&self) -> Option<&Secret> {
        let dp = &self.double_puppet;
        (!is_placeholder(&dp.as_token) && !is_placeholder(&dp.hs_token)).then_some(&dp.as_token)
    }

    /// How long queued transactions are kept (zero: forever).
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.mux.disk_reserve_mib.saturating_mul(1024 * 1024)
    }

    pub fn queue_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.mux.queue_retention_days.saturating_mul(24 * 3600))
    }

    /// The data directory, resolved against the config file's directory.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.mux.data_dir)
    }

    /// `path`, resolved against the config file's directory when relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// The address the server listens on: `mux.hostname`/`mux.port`, else the deprecated
    /// `appservice.hostname`/`appservice.port`, else 127.0.0.1:29326.
    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `problems`; the fallback only guards a config built by hand.
        let ip = self
            .listen_hostname()
            .parse()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let port = self
            .mux
            .port
            .or(self.appservice.port)
            .unwrap_or(DEFAULT_PORT);
        SocketAddr::new(ip, port)
    }

    fn listen_hostname(&self) -> &str {
        self.mux
            .hostname
            .as_deref()
            .or(self.appservice.hostname.as_deref())
            .unwrap_or(DEFAULT_HOSTNAME)
    }

    /// The URL bridges and users reach asmux at: `mux.public_address`, else the one the
    /// homeserver uses; without a trailing `/`.
    pub fn public_base(&self) -> &str {
        let url = if self.mux.public_address.is_empty() {
            &self.appservice.address
        } else {
            &self.mux.public_address
        };
        url.trim_end_matches('/')
    }

    /// asmux's namespace on the homeserver.
    pub fn namespace(&self) -> Namespace {
        Namespace::new(
            self.appservice.namespace.prefix.clone(),
            self.homeserver.domain.clone(),
        )
    }

    /// Whether the shared secret is still to be generated.
    pub fn shared_secret_pending(&self) -> bool {
        self.mux.shared_secret.expose() == GENERATE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/asmux/config.toml"))
    }

    const MINIMAL: &str =
        "[homeserver]\naddress = \"http://localhost:8008\"\ndomain = \"example.test\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen_addr(), "127.0.0.1:29326".parse().unwrap());
        assert!(c.warnings().is_empty());
        assert_eq!(c.appservice.namespace.prefix, "_");
        assert!(c.appservice.namespace.exclusive);
        assert_eq!(c.mux.event_filter, EventFilter::All);
        assert_eq!(c.mux.max_pdu_age_seconds, 180);
        assert_eq!(c.data_dir(), PathBuf::from("/etc/asmux/data"));
        assert!(c.shared_secret_pending());
        // Tokens are the original's placeholders until generate-registration runs.
        assert_eq!(c.serve_problems().len(), 1);
    }

    #[test]
    fn example_config_is_valid_and_documents_every_section() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.homeserver.domain, EXAMPLE_DOMAIN);
        assert_eq!(c.serve_problems().len(), 2);
        for section in [
            "[homeserver]",
            "[appservice]",
            "[appservice.namespace]",
            "[double_puppet]",
            "[mux]",
            "[metrics]",
            "[logging]",
        ] {
            assert!(
                EXAMPLE.contains(section),
                "{section} missing from the example"
            );
        }
    }

    #[test]
    fn the_listener_is_read_where_mautrix_asmux_has_it() {
        let c = parse(&format!(
            "{MINIMAL}[mux]\nhostname = \"0.0.0.0\"\nport = 29400\n"
        ))
        .unwrap();
        assert_eq!(c.listen_addr(), "0.0.0.0:29400".parse().unwrap());
        assert!(c.warnings().is_empty());
        // The old place still works, with a warning; [mux] wins when both are set.
        let old = parse(&format!("{MINIMAL}[appservice]\nport = 29500\n")).unwrap();
        assert_eq!(old.listen_addr().port(), 29500);
        assert!(
            old.warnings()[0].contains("appservice.port is deprecated"),
            "{:?}",
            old.warnings()
        );
        let both = parse(&format!(
            "{MINIMAL}[appservice]\nport = 29500\n[mux]\nport = 29400\n"
        ))
        .unwrap();
        assert_eq!(both.listen_addr().port(), 29400);
        assert!(
            both.warnings()[0].contains("ignored"),
            "{:?}",
            both.warnings()
        );
        let bad = parse(&format!("{MINIMAL}[mux]\nhostname = \"localhost\"\n")).unwrap_err();
        assert!(bad.to_string().contains("mux.hostname"), "{bad}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse(&format!("{MINIMAL}[mux]\ndata_dri = \"x\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/asmux/config.toml: "), "{msg}");
        assert!(msg.contains("data_dri"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let msg = parse("[homeserver]\naddress = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("domain"), "{msg}");
    }

    #[test]
    fn every_problem_is_listed() {
        let err = parse(
            "[homeserver]\naddress = \"ftp://x\"\ndomain = \"\"\n[mux]\nhostname = \"localhost\"\nshared_secret = \"short\"\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
    }
}
