//! The part of a mautrix bridge's own config that points it at asmux: the `homeserver:`
//! and `appservice:` blocks (and the username template and double-puppet secret, which
//! must match the namespace asmux gave the bridge). Printed by `asmux bridge config`.

use crate::config::Config;
use crate::registration::BridgeRegistration;

/// Which framework the bridge is built on; their config layouts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// mautrix-go bridges (whatsapp, signal, meta, slack, ... on bridgev2).
    MautrixGo,
    /// mautrix-python bridges (telegram, googlechat, ...). They only take pushed
    /// transactions: the framework has no websocket client.
    MautrixPython,
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
    let block = Block {
        homeserver: homeserver_url(config),
        domain: &config.homeserver.domain,
        registration,
        push,
        ghost_prefix,
    };
    match flavor {
        Flavor::MautrixGo => Ok(block.mautrix_go()),
        Flavor::MautrixPython if block.push.is_none() => Err(format!(
            "{owner}/{prefix} is a websocket bridge, and mautrix-python bridges can only be \
             pushed to: provision it with --address URL first"
        )),
        Flavor::MautrixPython => Ok(block.mautrix_python()),
    }
}

/// The URL bridges reach asmux at: the public address, else the one the homeserver uses.
fn homeserver_url(config: &Config) -> &str {
    if config.mux.public_address.is_empty() {
        &config.appservice.address
    } else {
        &config.mux.public_address
    }
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

struct Block<'a> {
    homeserver: &'a str,
    domain: &'a str,
    registration: &'a BridgeRegistration,
    push: Option<PushListener>,
    /// Localpart prefix of the bridge's ghosts, `{gp}{owner}_{prefix}_`.
    ghost_prefix: String,
}

impl Block<'_> {
    fn mautrix_go(&self) -> String {
        let r = self.registration;
        let transport = match self.push {
            None => format!(
                "    websocket: true\n    ping_interval_seconds: {GO_PING_INTERVAL_SECONDS}\n"
            ),
            Some(_) => "    websocket: false\n".to_owned(),
        };
        format!(
            "{homeserver}{transport}appservice:\n{listener}    id: {id}\n    bot:\n        \
             username: {bot}\n    as_token: {as_token}\n    hs_token: {hs_token}\n    \
             username_template: {template}\ndouble_puppet:\n    secrets:\n        \
             {domain}: {secret}\n",
            homeserver = self.homeserver_lines(),
            listener = self.listener_lines(),
            id = quote(&r.id),
            bot = quote(&r.sender_localpart),
            as_token = quote(&r.as_token),
            hs_token = quote(&r.hs_token),
            template = quote(&format!("{}{{{{.}}}}", self.ghost_prefix)),
            domain = quote(self.domain),
            secret = quote(&r.login_shared_secret),
        )
    }

    fn mautrix_python(&self) -> String {
        let r = self.registration;
        format!(
            "{homeserver}appservice:\n{listener}    id: {id}\n    bot_username: {bot}\n    \
             as_token: {as_token}\n    hs_token: {hs_token}\nbridge:\n    \
             username_template: {template}\n    login_shared_secret_map:\n        \
             {domain}: {secret}\n",
            homeserver = self.homeserver_lines(),
            listener = self.listener_lines(),
            id = quote(&r.id),
            bot = quote(&r.sender_localpart),
            as_token = quote(&r.as_token),
            hs_token = quote(&r.hs_token),
            template = quote(&format!("{}{{userid}}", self.ghost_prefix)),
            domain = quote(self.domain),
            secret = quote(&r.login_shared_secret),
        )
    }

    /// `homeserver:` and the keys both frameworks share.
    fn homeserver_lines(&self) -> String {
        format!(
            "homeserver:\n    address: {}\n    domain: {}\n    software: standard\n",
            quote(self.homeserver),
            quote(self.domain)
        )
    }

    /// Where a push bridge listens; nothing for a websocket bridge.
    fn listener_lines(&self) -> String {
        self.push.as_ref().map_or(String::new(), |push| {
            format!(
                "    address: {}\n    hostname: {}\n    port: {}\n",
                quote(&push.address),
                quote(&push.host),
                push.port
            )
        })
    }
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::{AsmuxExtras, Namespaces};

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
        assert_eq!(v["double_puppet"]["secrets"]["example.test"], "login");
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
