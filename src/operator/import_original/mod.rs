//! `asmux import-original`: the PostgreSQL database of mautrix-asmux, the original,
//! carried into a new data directory. Every bridge keeps its UUID and tokens and every
//! owner her tokens, so no bridge and no homeserver registration has to change.
//!
//! The rows are read in one snapshot ([`source`]), checked and converted as a whole, and
//! written into a database built beside the target that replaces it only once complete:
//! a row that cannot be carried stops the import before anything is written.

pub mod source;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;
use uuid::Uuid;

use crate::matrix::is_valid_name;
use crate::secret::Secret;
use crate::store::replace::{holds_anything, replace_data_dir};
use crate::store::{now_ms, Bridge, ConfigPassword, PushKey, Room, StoreError, User};
use source::{BridgeRow, Original, ORIGINAL_SCHEMA_VERSION};

/// Why nothing was imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot connect to the original's database: {0}")]
    Connect(String),
    #[error("cannot read the original's database: {0}")]
    Query(String),
    #[error("not a mautrix-asmux database: it has no table \"version\" with exactly one row")]
    NotOriginal,
    #[error("{}", schema_advice(*.0))]
    SchemaVersion(i32),
    #[error("{} row(s) cannot be imported; nothing was written:\n  {}", .0.len(), .0.join("\n  "))]
    Rows(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn schema_advice(found: i32) -> String {
    if found < ORIGINAL_SCHEMA_VERSION {
        format!(
            "the database is at migration version {found}; asmux imports version \
             {ORIGINAL_SCHEMA_VERSION}, the final schema of mautrix-asmux. Start the original's \
             last release once so that it upgrades its database, stop it, and import again"
        )
    } else {
        format!(
            "the database is at migration version {found}, newer than any mautrix-asmux \
             release asmux knows (version {ORIGINAL_SCHEMA_VERSION}); nothing was imported"
        )
    }
}

/// What the import carries, converted and checked.
#[derive(Debug, Default)]
pub struct Plan {
    pub users: Vec<User>,
    pub bridges: Vec<Bridge>,
    pub rooms: Vec<(String, Room)>,
    /// What was carried with a caveat, one line each.
    pub warnings: Vec<String>,
}

/// Counts for the summary.
impl Plan {
    pub fn summary(&self) -> String {
        let push = self.bridges.iter().filter(|b| b.push).count();
        let owners: HashSet<&str> = self.bridges.iter().map(|b| b.owner.as_str()).collect();
        let deleted = self.rooms.iter().filter(|(_, r)| r.deleted).count();
        let passwords = self
            .bridges
            .iter()
            .filter(|b| b.config_password.is_some())
            .count();
        let push_keys = self.bridges.iter().filter(|b| b.push_key.is_some()).count();
        let proxies = self
            .users
            .iter()
            .filter(|u| u.proxy_config.is_some())
            .count();
        let mut text = format!(
            "users:   {} ({} without bridges, {} with proxy settings)\n\
             bridges: {} ({} HTTP push, {} websocket; {} with a config password, {} with a push key)\n\
             rooms:   {} ({} deleted, kept so that they stay deleted)\n",
            self.users.len(),
            self.users.len() - owners.len().min(self.users.len()),
            proxies,
            self.bridges.len(),
            push,
            self.bridges.len() - push,
            passwords,
            push_keys,
            self.rooms.len(),
            deleted,
        );
        for warning in &self.warnings {
            text.push_str(&format!("warning: {warning}\n"));
        }
        text.push_str(
            "not carried: transactions still queued in the original's Redis (bridge-txns-*); \
             drain them or stop the homeserver's traffic before switching\n",
        );
        text
    }
}

/// Checks every row and converts the lot; the error lists every row that cannot be
/// carried, not only the first.
pub fn plan(original: &Original) -> Result<Plan, ImportError> {
    let mut plan = Plan::default();
    let mut refused = Vec::new();
    plan_users(original, &mut plan, &mut refused);
    plan_bridges(original, &mut plan, &mut refused);
    plan_rooms(original, &mut plan, &mut refused);
    if refused.is_empty() {
        Ok(plan)
    } else {
        Err(ImportError::Rows(refused))
    }
}

/// The users to write; what cannot be carried goes to `refused`.
fn plan_users(original: &Original, plan: &mut Plan, refused: &mut Vec<String>) {
    let mut api_tokens: HashMap<&str, &str> = HashMap::new();
    for row in &original.users {
        let what = format!("user {:?}", row.id);
        if let Err(why) = addressable(&row.id) {
            refused.push(format!("{what}: its id {why}"));
            continue;
        }
        note_unusual_name(&mut plan.warnings, &what, "id", &row.id);
        if row.api_token.is_empty() || row.login_token.is_empty() {
            refused.push(format!("{what}: an empty api_token or login_token"));
            continue;
        }
        if let Some(other) = api_tokens.insert(&row.api_token, &row.id) {
            refused.push(format!(
                "{what}: the same api_token as user {other:?}; give one of them a new token"
            ));
            continue;
        }
        let proxy_config = match row.proxy_config.as_deref().map(serde_json::from_str) {
            None | Some(Ok(Value::Null)) => None,
            Some(Ok(config @ Value::Object(_))) => Some(Secret::new(config.to_string())),
            Some(_) => {
                refused.push(format!("{what}: proxy_config is not a JSON object"));
                continue;
            }
        };
        plan.users.push(User {
            id: row.id.clone(),
            api_token: Secret::new(row.api_token.as_str()),
            login_token: Secret::new(row.login_token.as_str()),
            proxy_config,
        });
    }
}

/// The bridges to write, with their tokens and UUIDs; what cannot be carried goes to
/// `refused`.
fn plan_bridges(original: &Original, plan: &mut Plan, refused: &mut Vec<String>) {
    let users: HashSet<&str> = original.users.iter().map(|u| u.id.as_str()).collect();
    let mut names = HashSet::new();
    let now = now_ms();
    for row in &original.bridges {
        let what = format!("bridge {}/{} ({})", row.owner, row.prefix, row.id);
        let Ok(id) = Uuid::try_parse(&row.id) else {
            refused.push(format!("{what}: its id is not a UUID"));
            continue;
        };
        let mut problems = Vec::new();
        for (field, value) in [("owner", &row.owner), ("prefix", &row.prefix)] {
            match addressable(value) {
                Err(why) => problems.push(format!("its {field} {why}")),
                Ok(()) => note_unusual_name(&mut plan.warnings, &what, field, value),
            }
        }
        if !users.contains(row.owner.as_str()) {
            problems.push("its owner is not a user of the database".to_owned());
        }
        if row.hs_token.is_empty() || row.as_token.is_empty() {
            problems.push("an empty hs_token or as_token".to_owned());
        }
        if !names.insert((row.owner.as_str(), row.prefix.as_str())) {
            problems.push("another bridge has the same owner and prefix".to_owned());
        }
        let config_password = config_password(row).unwrap_or_else(|why| {
            problems.push(why);
            None
        });
        if !problems.is_empty() {
            refused.push(format!("{what}: {}", problems.join("; ")));
            continue;
        }
        let push = row.push == Some(true);
        if push && row.address.is_empty() {
            plan.warnings.push(format!(
                "{what} is an HTTP push bridge without an address: its transactions queue until \
                 it is given one (PUT /_matrix/asmux/appservice/{}/{} {{\"address\": ...}})",
                row.owner, row.prefix
            ));
        }
        let push_key = match row.push_key.as_deref().map(push_key) {
            None => None,
            Some(Ok(key)) => key,
            Some(Err(why)) => {
                plan.warnings
                    .push(format!("{what}: push key dropped, {why}; the bridge sends a new one when it reconnects"));
                None
            }
        };
        plan.bridges.push(Bridge {
            id,
            owner: row.owner.clone(),
            prefix: row.prefix.clone(),
            bot: row.bot.clone(),
            address: row.address.clone(),
            push,
            hs_token: Secret::new(row.hs_token.as_str()),
            as_token: Secret::new(row.as_token.as_str()),
            push_key,
            config_password,
            created_at: now,
        });
    }
}

/// A bridge's config download password, as the original stored it (the SHA-256 of the
/// password's bytes).
fn config_password(row: &BridgeRow) -> Result<Option<ConfigPassword>, String> {
    let Some(hash) = &row.config_password_hash else {
        return Ok(None);
    };
    let sha256 = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
        format!(
            "config_password_hash has {} bytes, not the 32 of a SHA-256",
            hash.len()
        )
    })?;
    let expires_at = row
        .config_password_expiry
        .map(|e| u64::try_from(e).unwrap_or(0));
    Ok(Some(ConfigPassword { sha256, expires_at }))
}

/// The rooms to write, each owned by its imported bridge (deleted ones stay deleted).
fn plan_rooms(original: &Original, plan: &mut Plan, refused: &mut Vec<String>) {
    let imported: HashSet<Uuid> = plan.bridges.iter().map(|b| b.id).collect();
    for row in &original.rooms {
        let what = format!("room {:?}", row.id);
        match Uuid::try_parse(&row.owner) {
            _ if row.id.is_empty() => refused.push("a room with an empty id".to_owned()),
            Ok(owner) if imported.contains(&owner) => plan.rooms.push((
                row.id.clone(),
                Room {
                    owners: vec![owner],
                    deleted: row.deleted,
                },
            )),
            // Its bridge's refusal already stops the import.
            _ if original.bridges.iter().any(|b| b.id == row.owner) => {}
            _ => refused.push(format!("{what}: its owner {} is not a bridge", row.owner)),
        }
    }
}

/// Whether a name can be a path segment of the management API and a part of
/// `{owner}/{prefix}`.
fn addressable(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('/') {
        Err("contains \"/\", which no management API path can name")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(())
    }
}

fn note_unusual_name(warnings: &mut Vec<String>, what: &str, field: &str, name: &str) {
    if !is_valid_name(name) {
        warnings.push(format!(
            "{what}: {field} {name:?} is outside [a-z0-9=.-]{{1,32}} (made by hand): imported as \
             it is, but new rooms are only recognised for bridges whose names are inside it"
        ));
    }
}

/// A stored push key, as the websocket command `push_key` stores it.
fn push_key(json: &str) -> Result<Option<PushKey>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    if value.is_null() {
        return Ok(None);
    }
    let text = |key: &str| -> Result<String, String> {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("it has no text {key:?}"))
    };
    let pushkey = text("pushkey")?;
    if pushkey.is_empty() {
        return Ok(None);
    }
    Ok(Some(PushKey {
        url: text("url")?,
        app_id: text("app_id")?,
        pushkey,
        pushkey_ts: value.get("pushkey_ts").and_then(Value::as_i64),
        data: value
            .get("data")
            .filter(|d| d.is_object())
            .map(Value::to_string),
    }))
}

/// How an import runs.
#[derive(Debug)]
pub struct Options {
    /// A `postgres://` URL or libpq's `key=value` form.
    pub database: String,
    pub data_dir: PathBuf,
    /// Read and check only.
    pub dry_run: bool,
    /// Replace a non-empty data directory.
    pub force: bool,
}

/// Reads, checks and (unless a dry run) writes; returns what was (or would be) imported.
pub async fn run(options: &Options) -> Result<Plan, ImportError> {
    if !options.dry_run && !options.force && holds_anything(&options.data_dir) {
        return Err(StoreError::NotEmpty(options.data_dir.clone()).into());
    }
    let original = source::read(&options.database).await?;
    let plan = plan(&original)?;
    if options.dry_run {
        return Ok(plan);
    }
    let dir = options.data_dir.clone();
    let force = options.force;
    tokio::task::spawn_blocking(move || {
        replace_data_dir(&dir, force, |store| -> Result<(), ImportError> {
            for user in &plan.users {
                store.insert_user(user)?;
            }
            for bridge in &plan.bridges {
                store.insert_bridge(bridge.clone())?;
            }
            for (room_id, room) in &plan.rooms {
                for owner in &room.owners {
                    store.add_room_owner(room_id, *owner, None)?;
                }
                if room.deleted {
                    store.mark_room_deleted(room_id)?;
                }
            }
            Ok(())
        })?;
        Ok(plan)
    })
    .await
    .map_err(|e| ImportError::Io(std::io::Error::other(e)))?
}
