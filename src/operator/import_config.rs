//! `asmux import-config`: the `config.yaml` of mautrix-asmux, the original, translated
//! into asmux's TOML. The result is asmux's documented example with the old file's values
//! set in it; the tokens are kept as they are, so the homeserver's registration stays
//! valid. What has no equivalent is listed, never silently lost.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde_yaml_ng::Value as Yaml;
use toml_edit::{DocumentMut, Item, Table};

use crate::config::EXAMPLE;

/// What the original ran with for the keys its loader never copied from the user's file.
const ORIGINAL_NAMESPACE_PREFIX: &str = "_";
const ORIGINAL_METRICS_PORT: i64 = 8000;

/// A translated config: the TOML text and what the operator should know about it.
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// Translates the original's config text.
pub fn translate(yaml: &str) -> Result<Imported> {
    let old: Yaml = serde_yaml_ng::from_str(yaml).context("not a YAML document")?;
    anyhow::ensure!(
        old.is_mapping(),
        "not a mautrix-asmux config: no keys at the top"
    );
    let doc: DocumentMut = EXAMPLE
        .parse()
        .context("the built-in example config is not TOML")?;
    let mut t = Translation {
        old,
        doc,
        notes: Vec::new(),
        read: BTreeSet::new(),
    };
    t.homeserver_and_appservice()?;
    t.mux()?;
    t.metrics_and_logging()?;
    t.dropped();
    t.unknown_keys();
    Ok(Imported {
        toml: t.doc.to_string(),
        notes: t.notes,
    })
}

struct Translation {
    old: Yaml,
    doc: DocumentMut,
    notes: Vec<String>,
    /// Dotted paths of the old keys accounted for (a whole subtree when a prefix).
    read: BTreeSet<String>,
}

impl Translation {
    /// The old value at a dotted path, unless absent or null (the original then used its
    /// default, as asmux will).
    fn take(&mut self, path: &str) -> Option<Yaml> {
        self.read.insert(path.to_owned());
        let mut value = &self.old;
        for key in path.split('.') {
            value = value.get(key)?;
        }
        (!value.is_null()).then(|| value.clone())
    }

    /// Sets `key` of the (dotted) `table` in the new config, keeping the example's comment
    /// above it.
    fn set(&mut self, table: &str, key: &str, value: impl Into<toml_edit::Value>) -> Result<()> {
        let mut node: &mut Table = self.doc.as_table_mut();
        for part in table.split('.') {
            node = node
                .entry(part)
                .or_insert_with(toml_edit::table)
                .as_table_mut()
                .with_context(|| format!("{table} is not a table in the example config"))?;
        }
        let mut value = value.into();
        if let Some(existing) = node.get(key).and_then(Item::as_value) {
            *value.decor_mut() = existing.decor().clone();
        }
        node[key] = Item::Value(value);
        Ok(())
    }

    /// Copies an old key to `table.key` when set: strings, numbers and booleans as such.
    fn copy(&mut self, from: &str, table: &str, key: &str) -> Result<()> {
        let Some(value) = self.take(from) else {
            return Ok(());
        };
        let value: toml_edit::Value = match value {
            Yaml::Bool(b) => b.into(),
            Yaml::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default().into(),
            Yaml::String(s) => s.into(),
            other => {
                self.notes.push(format!(
                    "{from}: {} is not a plain value; left at asmux's default",
                    describe(&other)
                ));
                return Ok(());
            }
        };
        self.set(table, key, value)
    }

    fn homeserver_and_appservice(&mut self) -> Result<()> {
        for key in ["domain", "address", "login_shared_secret"] {
            self.copy(&format!("homeserver.{key}"), "homeserver", key)?;
        }
        for key in ["address", "id", "bot_username", "as_token", "hs_token"] {
            self.copy(&format!("appservice.{key}"), "appservice", key)?;
        }
        // The original's loader never copied these from the file: it always ran with the
        // example's values, which are asmux's defaults too.
        if let Some(prefix) = self.take("appservice.namespace.prefix") {
            if prefix.as_str() != Some(ORIGINAL_NAMESPACE_PREFIX) {
                self.notes.push(format!(
                    "appservice.namespace.prefix is {} in the old file, but mautrix-asmux \
                     ignored it and ran with \"_\"; asmux keeps \"_\" so that bridge user \
                     IDs stay the same",
                    describe(&prefix)
                ));
            }
        }
        if let Some(exclusive) = self.take("appservice.namespace.exclusive") {
            if exclusive.as_bool() != Some(true) {
                self.notes.push(
                    "appservice.namespace.exclusive is false in the old file, but \
                     mautrix-asmux ignored it and ran exclusive; asmux keeps it exclusive"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }

    fn mux(&mut self) -> Result<()> {
        for key in [
            "hostname",
            "port",
            "public_address",
            "shared_secret",
            "remote_status_endpoint",
            "bridge_status_endpoint",
            "message_send_checkpoint_endpoint",
        ] {
            self.copy(&format!("mux.{key}"), "mux", key)?;
        }
        // The legacy single endpoint, as the original's loader upgraded it.
        if let Some(Yaml::String(legacy)) = self.take("mux.status_endpoint") {
            if self.take("mux.remote_status_endpoint").is_none() {
                self.set("mux", "remote_status_endpoint", legacy.as_str())?;
            }
            if self.take("mux.bridge_status_endpoint").is_none() {
                let bridge = legacy.replace("/state", "/bridge_state");
                self.set("mux", "bridge_status_endpoint", bridge)?;
            }
        }
        self.config_templates()?;
        if self.take("mux.database").is_some() {
            self.notes.push(
                "mux.database: move the data with `asmux import-original --database URL` \
                 (the same URL)"
                    .to_owned(),
            );
        }
        if self.take("mux.redis").is_some() {
            self.notes.push(
                "mux.redis: asmux needs no Redis; events queued there are not carried over, \
                 so let mautrix-asmux deliver its queues before stopping it"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// `mux.bridge_config_template_files`: prefix -> template file.
    fn config_templates(&mut self) -> Result<()> {
        let Some(templates) = self.take("mux.bridge_config_template_files") else {
            return Ok(());
        };
        let Some(templates) = templates.as_mapping() else {
            self.notes.push(
                "mux.bridge_config_template_files is not a mapping of prefix to file; \
                 left out"
                    .to_owned(),
            );
            return Ok(());
        };
        for (prefix, path) in templates {
            match (prefix.as_str(), path.as_str()) {
                (Some(prefix), Some(path)) => {
                    self.set("mux.bridge_config_templates", prefix, path)?;
                }
                _ => self.notes.push(format!(
                    "mux.bridge_config_template_files: the entry {} is not a prefix and \
                     a path; left out",
                    describe(prefix)
                )),
            }
        }
        if !templates.is_empty() {
            self.notes.push(
                "mux.bridge_config_templates: relative template paths are now relative to \
                 the config file's directory, not to the directory mautrix-asmux ran in"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn metrics_and_logging(&mut self) -> Result<()> {
        self.copy("metrics.enabled", "metrics", "enabled")?;
        // Never copied by the original's loader: it always listened on 0.0.0.0:8000.
        if let Some(port) = self.take("metrics.listen_port") {
            if port.as_i64() != Some(ORIGINAL_METRICS_PORT) {
                self.notes.push(format!(
                    "metrics.listen_port is {} in the old file, but mautrix-asmux ignored it \
                     and listened on port 8000",
                    describe(&port)
                ));
            }
        }
        let enabled = self.doc["metrics"]["enabled"].as_bool() == Some(true);
        if enabled {
            self.set(
                "metrics",
                "listen",
                format!("0.0.0.0:{ORIGINAL_METRICS_PORT}"),
            )?;
            self.notes.push(
                "metrics.listen is 0.0.0.0:8000 (every interface), as mautrix-asmux listened; \
                 127.0.0.1:8000 keeps the metrics private to this machine"
                    .to_owned(),
            );
        }
        if self.take("metrics.port").is_some() {
            self.notes
                .push("metrics.port was never read by mautrix-asmux; left out".to_owned());
        }
        if let Some(level) = self.take("logging.root.level") {
            if let Some(level) = level.as_str() {
                self.set("logging", "level", level.to_ascii_lowercase())?;
            }
        }
        // The rest of Python's logging dictConfig (handlers, files, formatters) has no
        // counterpart: asmux logs to stderr, which systemd's journal keeps.
        self.read.insert("logging".to_owned());
        Ok(())
    }

    /// Keys of features asmux does not have: said only when they were in use.
    fn dropped(&mut self) {
        for key in ["appservice.bot_displayname", "appservice.bot_avatar"] {
            self.take(key);
        }
        if self.take("sentry.enabled").and_then(|v| v.as_bool()) == Some(true) {
            self.notes
                .push("sentry: error reporting to Sentry is not supported; left out".to_owned());
        }
        self.read.insert("sentry".to_owned());
        for analytics in ["segment", "posthog"] {
            if self.take(&format!("{analytics}.token")).is_some() {
                self.notes.push(format!(
                    "{analytics}: analytics are not supported; left out"
                ));
            }
            self.read.insert(analytics.to_owned());
        }
        if self.take("mux.sync_proxy.url").is_some() {
            self.notes.push(
                "mux.sync_proxy: sync proxying (mautrix-syncproxy) is not supported; asmux \
                 answers its requests with an error"
                    .to_owned(),
            );
        }
        self.read.insert("mux.sync_proxy".to_owned());
    }

    /// Every key of the old file that nothing above accounted for.
    fn unknown_keys(&mut self) {
        let mut leaves = Vec::new();
        collect_leaves(&self.old, String::new(), &mut leaves);
        for path in leaves {
            let known = self
                .read
                .iter()
                .any(|read| path == *read || path.starts_with(&format!("{read}.")));
            if !known {
                self.notes
                    .push(format!("{path}: no equivalent in asmux; left out"));
            }
        }
    }
}

fn collect_leaves(value: &Yaml, path: String, out: &mut Vec<String>) {
    match value.as_mapping() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = key.as_str().map_or_else(|| describe(key), str::to_owned);
                let child_path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                collect_leaves(child, child_path, out);
            }
        }
        _ if !path.is_empty() => out.push(path),
        _ => {}
    }
}

/// A short rendering of a YAML value for a message.
fn describe(value: &Yaml) -> String {
    serde_yaml_ng::to_string(value)
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parsed(imported: &Imported) -> Config {
        Config::parse(
            &imported.toml,
            std::path::Path::new("/etc/asmux/config.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml))
    }

    #[test]
    fn tokens_and_addresses_carry_over() {
        let imported = translate(
            "homeserver: {domain: beeper.example, address: 'https://hs.example', login_shared_secret: s3cret}\n\
             appservice: {address: 'http://asmux:29326', id: asmux, bot_username: muxbot, as_token: aaa, hs_token: hhh}\n\
             mux: {hostname: 0.0.0.0, port: 29327, shared_secret: rootsecret0123456789, public_address: 'https://asmux.example'}\n",
        )
        .unwrap();
        let config = parsed(&imported);
        assert_eq!(config.homeserver.domain, "beeper.example");
        assert_eq!(config.homeserver.address, "https://hs.example");
        assert_eq!(
            config
                .homeserver
                .login_shared_secret
                .as_ref()
                .map(|s| s.expose()),
            Some("s3cret")
        );
        assert_eq!(config.appservice.as_token.expose(), "aaa");
        assert_eq!(config.appservice.hs_token.expose(), "hhh");
        assert_eq!(config.appservice.bot_username, "muxbot");
        assert_eq!(config.mux.port, Some(29327));
        assert_eq!(config.mux.shared_secret.expose(), "rootsecret0123456789");
        assert!(imported.notes.is_empty(), "{:?}", imported.notes);
        // The example's comments stay.
        assert!(imported
            .toml
            .contains("# The registration's id and sender_localpart."));
    }

    #[test]
    fn the_legacy_status_endpoint_becomes_both_and_templates_move() {
        let imported = translate(
            "homeserver: {domain: d, address: 'http://hs'}\n\
             mux: {status_endpoint: 'https://status.example/{owner}/{prefix}/state', \
                   bridge_config_template_files: {imessage: ./imessage.yaml}}\n",
        )
        .unwrap();
        let config = parsed(&imported);
        assert_eq!(
            config.mux.remote_status_endpoint.as_deref(),
            Some("https://status.example/{owner}/{prefix}/state")
        );
        assert_eq!(
            config.mux.bridge_status_endpoint.as_deref(),
            Some("https://status.example/{owner}/{prefix}/bridge_state")
        );
        assert_eq!(
            config.mux.bridge_config_templates.get("imessage"),
            Some(&std::path::PathBuf::from("./imessage.yaml"))
        );
    }

    #[test]
    fn what_has_no_equivalent_is_listed() {
        let imported = translate(
            "homeserver: {domain: d, address: 'http://hs'}\n\
             appservice: {namespace: {prefix: x_, exclusive: true}}\n\
             mux: {sync_proxy: {url: 'http://sp'}, unheard_of: 1}\n\
             extra: {deep: {key: 1}}\n",
        )
        .unwrap();
        let notes = imported.notes.join("\n");
        assert!(notes.contains("mux.unheard_of: no equivalent"), "{notes}");
        assert!(notes.contains("extra.deep.key: no equivalent"), "{notes}");
        assert!(notes.contains("namespace.prefix is x_"), "{notes}");
        assert!(notes.contains("mux.sync_proxy"), "{notes}");
        assert_eq!(parsed(&imported).appservice.namespace.prefix, "_");
    }

    #[test]
    fn not_a_config_is_refused() {
        assert!(translate("- a list\n").is_err());
        assert!(translate("key: [unclosed\n").is_err());
    }
}
