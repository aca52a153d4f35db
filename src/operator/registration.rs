//! Registration documents: asmux's own (for the homeserver, spec 2) and each bridge's
//! (returned by the management API and exported by the CLI, spec 6).

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::matrix::Namespace;
use crate::store::{Bridge, User};

/// One namespace regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceEntry {
    pub regex: String,
    pub exclusive: bool,
}

/// The `namespaces` object of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub users: Vec<NamespaceEntry>,
    pub aliases: Vec<NamespaceEntry>,
}

/// asmux's registration file, loaded by the homeserver.
#[derive(Debug, Serialize)]
pub struct AsmuxRegistration<'a> {
    pub id: &'a str,
    pub as_token: &'a str,
    pub hs_token: &'a str,
    pub namespaces: Namespaces,
    pub url: &'a str,
    pub sender_localpart: &'a str,
    pub rate_limited: bool,
    pub push_ephemeral: bool,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    pub msc2409_push_ephemeral: bool,
    /// Makes Synapse send ephemeral events under the stable key too.
    pub receive_ephemeral: bool,
    /// Makes Synapse send to-device events, device lists and one-time-key counts.
    #[serde(rename = "org.matrix.msc3202")]
    pub msc3202: bool,
}

impl<'a> AsmuxRegistration<'a> {
    pub fn new(config: &'a Config) -> Self {
        let ns = config.namespace();
        let exclusive = config.appservice.namespace.exclusive;
        let entry = |sigil| NamespaceEntry {
            regex: ns.global_regex(sigil),
            exclusive,
        };
        AsmuxRegistration {
            id: &config.appservice.id,
            as_token: config.appservice.as_token.expose(),
            hs_token: config.appservice.hs_token.expose(),
            namespaces: Namespaces {
                users: vec![entry('@')],
                aliases: vec![entry('#')],
            },
            url: &config.appservice.address,
            sender_localpart: &config.appservice.bot_username,
            rate_limited: false,
            push_ephemeral: true,
            msc2409_push_ephemeral: true,
            receive_ephemeral: true,
            msc3202: true,
        }
    }

    pub fn to_yaml(&self) -> String {
        // Plain strings and bools always serialise.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

/// asmux's second registration: no URL (the homeserver pushes nothing to it), every local
/// user non-exclusively. Its token is how asmux lets a bridge act as its own owner.
#[derive(Debug, Serialize)]
pub struct DoublePuppetRegistration<'a> {
    pub id: &'a str,
    pub url: Option<&'a str>,
    pub as_token: &'a str,
    pub hs_token: &'a str,
    pub sender_localpart: &'a str,
    pub rate_limited: bool,
    pub namespaces: Namespaces,
}

impl<'a> DoublePuppetRegistration<'a> {
    pub fn new(config: &'a Config) -> Self {
        let dp = &config.double_puppet;
        DoublePuppetRegistration {
            id: &dp.id,
            url: None,
            as_token: dp.as_token.expose(),
            hs_token: dp.hs_token.expose(),
            sender_localpart: &dp.sender_localpart,
            rate_limited: false,
            namespaces: Namespaces {
                users: vec![NamespaceEntry {
                    regex: config.namespace().server_regex('@'),
                    exclusive: false,
                }],
                aliases: Vec::new(),
            },
        }
    }

    pub fn to_yaml(&self) -> String {
        // Plain strings and bools always serialise.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

/// What a bridge needs to talk to asmux: the registration the management API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRegistration {
    pub id: String,
    /// `{id}-{as_token}`: the token the bridge presents.
    pub as_token: String,
    pub hs_token: String,
    pub login_shared_secret: String,
    #[serde(rename = "com.beeper.asmux")]
    pub asmux: AsmuxExtras,
    pub namespaces: Namespaces,
    pub url: String,
    pub sender_localpart: String,
    pub rate_limited: bool,
}

/// The `com.beeper.asmux` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsmuxExtras {
    pub login_shared_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_password_lifetime: Option<u64>,
}

impl BridgeRegistration {
    pub fn new(bridge: &Bridge, owner: &User, ns: &Namespace, exclusive: bool) -> Self {
        let entry = |sigil| NamespaceEntry {
            regex: ns.bridge_regex(sigil, &bridge.owner, &bridge.prefix),
            exclusive,
        };
        let login = owner.login_token.expose().to_owned();
        BridgeRegistration {
            id: bridge.id.to_string(),
            as_token: bridge.real_as_token(),
            hs_token: bridge.hs_token.expose().to_owned(),
            login_shared_secret: login.clone(),
            asmux: AsmuxExtras {
                login_shared_secret: login,
                config_password: None,
                config_password_lifetime: None,
            },
            namespaces: Namespaces {
                users: vec![entry('@')],
                aliases: vec![entry('#')],
            },
            url: bridge.address.clone(),
            sender_localpart: ns.bot_localpart(&bridge.owner, &bridge.prefix, &bridge.bot),
            rate_limited: true,
        }
    }
}
