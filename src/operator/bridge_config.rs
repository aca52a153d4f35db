//! The part of a mautrix bridge's own config that points it at asmux: the `homeserver:`
//! and `appservice:` blocks (and the username template and double-puppet secret, which
//! must match the namespace asmux gave the bridge). Printed by `asmux bridge config`.

use serde_yaml_ng::Value;

use crate::config::Config;
use crate::error::Error;
use crate::operator::registration::BridgeRegistration;
use crate::store::Bridge;

/// Which framework the bridge is built on; their config layouts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// mautrix-go bridges (whatsapp, signal, meta, slack, ... on bridgev2).
    MautrixGo,
    /// mautrix-python bridges (telegram, googlechat, ...). They only take pushed
    /// transactions: the framework has no websocket client.
    MautrixPython,
}

/// The config a bridge downloads with its config password: the operator's template for
/// its prefix (`mux.bridge_config_templates`, a YAML file) with asmux's values set in it,
/// as the original did for mautrix-imessage; without a template, the blocks
/// `asmux bridge config` prints (mautrix-go's layout for a websocket bridge, since only
/// mautrix-go has a websocket client; mautrix-python's for a push bridge).
pub fn download(
    config: &Config,
    bridge: &Bridge,
    registration: &BridgeRegistration,
) -> Result<String, Error> {
    let Some(template) = config.mux.bridge_config_templates.get(&bridge.prefix) else {
        let flavor = if bridge.push {
            Flavor::MautrixPython
        } else {
            Flavor::MautrixGo
        };
        return render(flavor, config, &bridge.owner, &bridge.prefix, registration)
            .map_err(|e| Error::internal("cannot render a bridge config", e));
    };
    let path = config
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(template);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::internal(&format!("cannot read {}", path.display()), e))?;
    let mut document: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::internal(&format!("{} is not YAML", path.display()), e))?;
    let public = config.public_base();
    let websocket = public
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let ghost_prefix = config
        .namespace()
        .bridge_localpart_prefix(&bridge.owner, &bridge.prefix);
    let domain = &config.homeserver.domain;
    for (key, value) in [
        ("homeserver.address", Value::from(public)),
        ("homeserver.websocket_proxy", websocket.into()),
        ("homeserver.domain", domain.as_str().into()),
        ("homeserver.asmux", true.into()),
        ("appservice.id", registration.id.as_str().into()),
        (
            "appservice.bot.username",
            registration.sender_localpart.as_str().into(),
        ),
        ("appservice.as_token", registration.as_token.as_str().into()),
        ("appservice.hs_token", registration.hs_token.as_str().into()),
        ("bridge.user", format!("@{}:{domain}", bridge.owner).into()),
        (
            "bridge.username_template",
            format!("{ghost_prefix}_{{{{.}}}}").into(),
        ),
        (
            "bridge.login_shared_secret",
            registration.login_shared_secret.as_str().into(),
        ),
    ] {
        set_path(&mut document, key, value);
    }
    serde_yaml_ng::to_string(&document).map_err(|e| Error::internal("cannot write YAML", e))
}

/// Sets a dotted `path` in a YAML document, making the mappings on the way.
fn set_path(document: &mut Value, path: &str, value: Value) {
    let mut node = document;
    for key in path.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else { return };
        node = map.entry(Value::from(key)).or_insert(Value::Null);
    }
    *node = value;
}

/// Seconds between the websocket pings a mautrix-go bridge sends; asmux answers them.
const GO_PING_INTERVAL_SECONDS: u32 = 15;

/// Renders the config blocks for the bridge `owner`/`prefix` with `registration`.
pub fn render(
    flavor: Flavor,
    config: &Config,
    owner: &str,
    prefix: &str,
    registration: &BridgeRegistration,
) -> Result<String, String> {
    let push = push_listener(&registration.url)?;
    let ghost_prefix = format!(
        "{}_",
        config.namespace().bridge_localpart_prefix(owner, prefix)
    );
    let domain = config.homeserver.domain.as_str();
    let homeserver = vec![
        ("address", Value::from(config.public_base())),
        ("domain", domain.into()),
        ("software", "standard".into()),
    ];
    let mut appservice = Vec::new();
    if let Some(push) = &push {
        appservice.extend([
            ("address", Value::from(push.address.as_str())),
            ("hostname", push.host.as_str().into()),
            ("port", push.port.into()),
        ]);
    }
    appservice.push(("id", registration.id.as_str().into()));
    let blocks = Blocks {
        homeserver,
        appservice,
        domain,
        ghost_prefix,
        registration,
    };
    let document = match flavor {
        Flavor::MautrixGo => {
            blocks.mautrix_go(push.is_none(), config.double_puppet_token().is_some())
        }
        Flavor::MautrixPython if push.is_none() => {
            return Err(format!(
                "{owner}/{prefix} is a websocket bridge, and mautrix-python bridges can only be \
                 pushed to: provision it with --address URL first"
            ))
        }
        Flavor::MautrixPython => blocks.mautrix_python(),
    };
    serde_yaml_ng::to_string(&document).map_err(|e| e.to_string())
}

/// The keys both frameworks share, before each adds its own.
struct Blocks<'a> {
    homeserver: Vec<(&'a str, Value)>,
    appservice: Vec<(&'a str, Value)>,
    domain: &'a str,
    /// Localpart prefix of the bridge's ghosts, `{gp}{owner}_{prefix}_`.
    ghost_prefix: String,
    registration: &'a BridgeRegistration,
}

impl Blocks<'_> {
    fn mautrix_go(mut self, websocket: bool, double_puppet: bool) -> Value {
        let r = self.registration;
        self.homeserver.push(("websocket", websocket.into()));
        if websocket {
            self.homeserver
                .push(("ping_interval_seconds", GO_PING_INTERVAL_SECONDS.into()));
        }
        self.appservice.extend([
            (
                "bot",
                map([("username", r.sender_localpart.as_str().into())]),
            ),
            ("as_token", r.as_token.as_str().into()),
            ("hs_token", r.hs_token.as_str().into()),
            (
                "username_template",
                format!("{}{{{{.}}}}", self.ghost_prefix).into(),
            ),
        ]);
        // With the double-puppet registration the bridge acts as its owner with its own
        // token; without it, only shared-secret login remains.
        let secret = if double_puppet {
            format!("as_token:{}", r.as_token)
        } else {
            r.login_shared_secret.clone()
        };
        map([
            ("homeserver", map(self.homeserver)),
            ("appservice", map(self.appservice)),
            (
                "double_puppet",
                map([("secrets", map([(self.domain, secret.into())]))]),
            ),
        ])
    }

    fn mautrix_python(mut self) -> Value {
        let r = self.registration;
        self.appservice.extend([
            ("bot_username", r.sender_localpart.as_str().into()),
            ("as_token", r.as_token.as_str().into()),
            ("hs_token", r.hs_token.as_str().into()),
        ]);
        let secrets = map([(self.domain, r.login_shared_secret.as_str().into())]);
        map([
            ("homeserver", map(self.homeserver)),
            ("appservice", map(self.appservice)),
            (
                "bridge",
                map([
                    (
                        "username_template",
                        format!("{}{{userid}}", self.ghost_prefix).into(),
                    ),
                    ("login_shared_secret_map", secrets),
                ]),
            ),
        ])
    }
}

/// A YAML mapping with its keys in the given order.
fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect(),
    )
}

/// Where a push bridge listens: `(address, host, port)` from its registered URL.
struct PushListener {
    address: String,
    host: String,
    port: u16,
}

fn push_listener(url: &str) -> Result<Option<PushListener>, String> {
    if url.is_empty() {
        return Ok(None);
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("the bridge's address {url:?} is not a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("the bridge's address {url:?} has no host"))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Ok(Some(PushListener {
        address: url.to_owned(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::registration::{AsmuxExtras, Namespaces};

    fn config(public: &str) -> Config {
        let mut config = Config::parse(
            "[homeserver]\naddress = \"http://127.0.0.1:8008\"\ndomain = \"example.test\"\n\
             [appservice]\naddress = \"http://10.0.0.2:29326\"\n",
            std::path::Path::new("config.toml"),
        )
        .unwrap();
        config.mux.public_address = public.to_owned();
        config
    }

    fn registration(url: &str) -> BridgeRegistration {
        BridgeRegistration {
            id: "4d1c7b0e-0000-4000-8000-000000000001".into(),
            as_token: "4d1c7b0e-0000-4000-8000-000000000001-astok".into(),
            hs_token: "hstok".into(),
            login_shared_secret: "login".into(),
            asmux: AsmuxExtras {
                login_shared_secret: "login".into(),
                config_password: None,
                config_password_lifetime: None,
            },
            namespaces: Namespaces {
                users: vec![],
                aliases: vec![],
            },
            url: url.into(),
            sender_localpart: "_alice_wa_bot".into(),
            rate_limited: true,
        }
    }

    fn yaml(text: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn mautrix_go_websocket_block() {
        let text = render(
            Flavor::MautrixGo,
            &config(""),
            "alice",
            "wa",
            &registration(""),
        )
        .unwrap();
        let v = yaml(&text);
        assert_eq!(v["homeserver"]["address"], "http://10.0.0.2:29326");
        assert_eq!(v["homeserver"]["domain"], "example.test");
        assert_eq!(v["homeserver"]["websocket"], true);
        assert_eq!(v["homeserver"]["ping_interval_seconds"], 15);
        assert_eq!(v["appservice"]["as_token"], registration("").as_token);
        assert_eq!(v["appservice"]["hs_token"], "hstok");
        assert_eq!(v["appservice"]["bot"]["username"], "_alice_wa_bot");
        assert_eq!(v["appservice"]["username_template"], "_alice_wa_{{.}}");
        assert!(v["appservice"]["port"].is_null(), "{text}");
        // Without the double-puppet registration: the owner's login secret.
        assert_eq!(v["double_puppet"]["secrets"]["example.test"], "login");
        let mut with_dp = config("");
        with_dp.double_puppet.as_token = crate::secret::Secret::new("dp-as");
        with_dp.double_puppet.hs_token = crate::secret::Secret::new("dp-hs");
        let v = yaml(
            &render(
                Flavor::MautrixGo,
                &with_dp,
                "alice",
                "wa",
                &registration(""),
            )
            .unwrap(),
        );
        assert_eq!(
            v["double_puppet"]["secrets"]["example.test"],
            format!("as_token:{}", registration("").as_token)
        );
    }

    #[test]
    fn push_blocks_listen_where_asmux_pushes() {
        let reg = registration("http://127.0.0.1:29318");
        let go = yaml(
            &render(
                Flavor::MautrixGo,
                &config("https://asmux.example.test"),
                "alice",
                "wa",
                &reg,
            )
            .unwrap(),
        );
        assert_eq!(go["homeserver"]["address"], "https://asmux.example.test");
        assert_eq!(go["homeserver"]["websocket"], false);
        assert_eq!(go["appservice"]["address"], "http://127.0.0.1:29318");
        assert_eq!(go["appservice"]["hostname"], "127.0.0.1");
        assert_eq!(go["appservice"]["port"], 29318);

        let py = yaml(&render(Flavor::MautrixPython, &config(""), "alice", "tg", &reg).unwrap());
        assert_eq!(py["appservice"]["bot_username"], "_alice_wa_bot");
        assert_eq!(py["appservice"]["port"], 29318);
        assert_eq!(py["bridge"]["username_template"], "_alice_tg_{userid}");
        assert_eq!(
            py["bridge"]["login_shared_secret_map"]["example.test"],
            "login"
        );
    }

    #[test]
    fn python_bridges_cannot_use_websockets() {
        let err = render(
            Flavor::MautrixPython,
            &config(""),
            "alice",
            "tg",
            &registration(""),
        )
        .unwrap_err();
        assert!(err.contains("--address"), "{err}");
    }

    #[test]
    fn default_ports_follow_the_scheme() {
        let p = push_listener("https://bridge.example.test/as")
            .unwrap()
            .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("bridge.example.test", 443));
        let p = push_listener("http://[::1]/").unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 80));
    }
}
