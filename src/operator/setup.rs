//! The files asmux writes for its operator: a first configuration, generated secrets
//! written back into a commented config, and the homeserver registration.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{Config, EXAMPLE};
use crate::operator::registration::{AsmuxRegistration, DoublePuppetRegistration};
use crate::secret::{lowercase_alphanumeric, urlsafe_token};

/// Registration files hold the homeserver's tokens; the group bit lets an operator hand
/// the file to the homeserver's group without making it world-readable.
const REGISTRATION_MODE: u32 = 0o640;
pub const CONFIG_MODE: u32 = 0o600;

/// The double-puppet registration's file, next to asmux's registration.
pub fn double_puppet_registration_path(registration_path: &Path) -> PathBuf {
    registration_path.with_file_name("doublepuppet.yaml")
}

/// Generates the tokens of asmux's two registrations (and the shared secret, if still
/// `generate`), writes them into the config and writes both registration files (the
/// double-puppet one beside `registration_path`). Returns the new config.
pub fn generate_registration(config_path: &Path, registration_path: &Path) -> Result<Config> {
    let config = Config::load(config_path)?;
    let token = || lowercase_alphanumeric(64).expose().to_owned();
    let mut edits = vec![
        (["appservice", "as_token"], token()),
        (["appservice", "hs_token"], token()),
        (["double_puppet", "as_token"], token()),
        (["double_puppet", "hs_token"], token()),
    ];
    if config.shared_secret_pending() {
        edits.push((
            ["mux", "shared_secret"],
            urlsafe_token(48).expose().to_owned(),
        ));
    }
    edit_config(config_path, &edits)?;
    let config = Config::load(config_path)?;
    write_registration(&config, registration_path)?;
    Ok(config)
}

/// Writes asmux's two registrations for the homeserver: its own at `path`, the
/// double-puppet one beside it.
pub fn write_registration(config: &Config, path: &Path) -> Result<()> {
    let files = [
        (path.to_owned(), AsmuxRegistration::new(config).to_yaml()),
        (
            double_puppet_registration_path(path),
            DoublePuppetRegistration::new(config).to_yaml(),
        ),
    ];
    for (path, yaml) in files {
        write_atomically(&path, yaml.as_bytes(), REGISTRATION_MODE)
            .with_context(|| format!("cannot write registration {}", path.display()))?;
    }
    Ok(())
}

/// Replaces `mux.shared_secret = "generate"` with a real secret in the file.
pub fn ensure_shared_secret(config: Config) -> Result<Config> {
    if !config.shared_secret_pending() {
        return Ok(config);
    }
    edit_config(
        &config.path,
        &[(
            ["mux", "shared_secret"],
            urlsafe_token(48).expose().to_owned(),
        )],
    )?;
    Ok(Config::load(&config.path)?)
}

/// Writes a complete first configuration at `path` (from the documented example, with
/// the given homeserver, data directory and fresh secrets) and a registration next to it.
/// Returns the registration's path.
pub fn init_config(
    path: &Path,
    domain: &str,
    homeserver_url: &str,
    data_dir: Option<&str>,
) -> Result<PathBuf> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomically(path, EXAMPLE.as_bytes(), CONFIG_MODE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut edits = vec![
        (["homeserver", "domain"], domain.to_owned()),
        (["homeserver", "address"], homeserver_url.to_owned()),
    ];
    if let Some(dir) = data_dir {
        edits.push((["mux", "data_dir"], dir.to_owned()));
    }
    edit_config(path, &edits)?;
    let registration = path.with_file_name("registration.yaml");
    generate_registration(path, &registration)?;
    Ok(registration)
}

/// Sets string keys in a TOML file, keeping its comments and layout.
fn edit_config(path: &Path, edits: &[([&str; 2], String)]) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    for ([table, key], value) in edits {
        let table = doc
            .entry(table)
            .or_insert_with(toml_edit::table)
            .as_table_mut()
            .with_context(|| format!("{table} in {} is not a table", path.display()))?;
        match table.get_mut(key).and_then(|item| item.as_value_mut()) {
            // Assigning through the value keeps the comments around it.
            Some(existing) => {
                let decor = existing.decor().clone();
                *existing = value.as_str().into();
                *existing.decor_mut() = decor;
            }
            None => table[*key] = toml_edit::value(value.as_str()),
        }
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(CONFIG_MODE);
    write_atomically(path, doc.to_string().as_bytes(), mode & CONFIG_MODE)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `contents` to a temporary file beside `path`, syncs it and renames it over
/// `path`, so a crash leaves either the old or the new file, never half of one.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = directory_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    rename_durably(&tmp, path)
}

/// Renames the synced file `from` to `to`, then syncs the directory holding `to`, so the
/// new name survives a crash: the last step of every atomic file write.
pub fn rename_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    std::fs::File::open(directory_of(to))?.sync_all()
}

/// The directory a file named by `path` is in (`.` for a bare name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn init_writes_a_servable_config_and_registration() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        let reg = init_config(&path, "example.test", "http://127.0.0.1:8008", None).unwrap();
        let config = Config::load(&path).unwrap();
        assert!(
            config.serve_problems().is_empty(),
            "{:?}",
            config.serve_problems()
        );
        assert!(!config.shared_secret_pending());
        assert_eq!(config.appservice.as_token.expose().len(), 64);
        assert_ne!(config.appservice.as_token, config.appservice.hs_token);
        // Comments of the example survive the edits.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# The homeserver's server_name"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&reg).unwrap()).unwrap();
        assert_eq!(
            yaml["as_token"].as_str(),
            Some(config.appservice.as_token.expose())
        );
        assert_eq!(
            yaml["hs_token"].as_str(),
            Some(config.appservice.hs_token.expose())
        );
        assert_eq!(
            yaml["namespaces"]["users"][0]["regex"].as_str(),
            Some(r"@_.+:example\.test")
        );
        assert_eq!(
            yaml["namespaces"]["aliases"][0]["regex"].as_str(),
            Some(r"#_.+:example\.test")
        );
        assert_eq!(yaml["sender_localpart"].as_str(), Some("asmuxbot"));
        assert_eq!(yaml["url"].as_str(), Some("http://localhost:29326"));
        for flag in [
            "push_ephemeral",
            "de.sorunome.msc2409.push_ephemeral",
            "receive_ephemeral",
            "org.matrix.msc3202",
        ] {
            assert_eq!(yaml[flag].as_bool(), Some(true), "{flag}");
        }
        assert_eq!(yaml["rate_limited"].as_bool(), Some(false));

        // The double-puppet registration: no URL, every local user, not exclusive.
        let dp_path = double_puppet_registration_path(&reg);
        let dp: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&dp_path).unwrap()).unwrap();
        assert_eq!(dp["id"].as_str(), Some("asmux-doublepuppet"));
        assert!(dp["url"].is_null(), "{dp:?}");
        assert_eq!(
            dp["as_token"].as_str(),
            config.double_puppet_token().map(|t| t.expose())
        );
        assert_ne!(dp["as_token"], yaml["as_token"]);
        assert_eq!(
            dp["namespaces"]["users"][0]["regex"].as_str(),
            Some(r"@.*:example\.test")
        );
        assert_eq!(
            dp["namespaces"]["users"][0]["exclusive"].as_bool(),
            Some(false)
        );
        let mode = std::fs::metadata(&dp_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn regenerating_replaces_tokens_and_keeps_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        init_config(&path, "example.test", "http://127.0.0.1:8008", None).unwrap();
        let before = Config::load(&path).unwrap();
        let after = generate_registration(&path, &tmp.path().join("r.yaml")).unwrap();
        assert_ne!(before.appservice.as_token, after.appservice.as_token);
        assert_eq!(before.mux.shared_secret, after.mux.shared_secret);
        assert_ne!(after.mux.shared_secret, Secret::new("generate"));
    }
}
