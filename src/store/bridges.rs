//! Bridges: the appservices provisioned behind asmux, indexed by UUID and by owner/prefix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use uuid::Uuid;

use super::{decode, encode, tx_result, Store, StoreError};
use crate::secret::Secret;

/// One provisioned bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub id: Uuid,
    pub owner: String,
    pub prefix: String,
    /// Localpart suffix of the bridge bot (`bot` by default).
    pub bot: String,
    /// Base URL for HTTP push; may be empty.
    pub address: String,
    /// true: asmux pushes transactions over HTTP; false: the bridge opens a websocket.
    pub push: bool,
    /// Token asmux presents to the bridge.
    pub hs_token: Secret,
    /// Secret part of the token the bridge presents, `{id}-{as_token}`.
    pub as_token: Secret,
    pub push_key: Option<PushKey>,
    pub config_password: Option<ConfigPassword>,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// A push key a websocket bridge registered for wake-up pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushKey {
    pub url: String,
    pub app_id: String,
    pub pushkey: String,
    pub pushkey_ts: Option<i64>,
    /// Opaque JSON object, kept as text.
    pub data: Option<String>,
}

/// The password that unlocks a bridge's config download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPassword {
    pub sha256: [u8; 32],
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<u64>,
}

impl Bridge {
    /// `{owner}/{prefix}`, the bridge's name in logs and headers.
    pub fn name(&self) -> String {
        format!("{}/{}", self.owner, self.prefix)
    }

    /// The token the bridge presents: `{id}-{as_token}`.
    pub fn real_as_token(&self) -> String {
        format!("{}-{}", self.id, self.as_token.expose())
    }

    /// The user ID of the bridge's bot in `ns`.
    pub fn bot_id(&self, ns: &crate::matrix::Namespace) -> String {
        ns.user_id(&ns.bot_localpart(&self.owner, &self.prefix, &self.bot))
    }
}

/// A websocket bridge with fresh tokens, for unit tests.
#[cfg(test)]
pub(crate) fn test_bridge(owner: &str, prefix: &str) -> Bridge {
    Bridge {
        id: Uuid::new_v4(),
        owner: owner.into(),
        prefix: prefix.into(),
        bot: "bot".into(),
        address: String::new(),
        push: false,
        hs_token: crate::secret::urlsafe_token(48),
        as_token: crate::secret::urlsafe_token(20),
        push_key: None,
        config_password: None,
        created_at: 0,
    }
}

fn name_key(owner: &str, prefix: &str) -> String {
    format!("{owner}/{prefix}")
}

impl Store {
    /// The bridge with UUID `id`.
    pub fn bridge(&self, id: Uuid) -> Result<Option<Arc<Bridge>>, StoreError> {
        self.bridges.get(&id, &self.lock, || {
            self.bridgeid_bridge
                .get(id.as_bytes())?
                .map(|v| decode("bridgeid_bridge", &v))
                .transpose()
        })
    }

    /// The bridge `owner`/`prefix`.
    pub fn bridge_by_name(
        &self,
        owner: &str,
        prefix: &str,
    ) -> Result<Option<Arc<Bridge>>, StoreError> {
        match self.ownerprefix_bridgeid.get(name_key(owner, prefix))? {
            Some(id) => match Uuid::from_slice(&id) {
                Ok(id) => self.bridge(id),
                Err(_) => Err(StoreError::Corrupt {
                    tree: "ownerprefix_bridgeid",
                    source: postcard::Error::DeserializeBadEncoding,
                }),
            },
            None => Ok(None),
        }
    }

    /// The bridge whose presented token is `{id}-{secret}`, compared in constant time.
    pub fn bridge_by_token(&self, token: &str) -> Result<Option<Arc<Bridge>>, StoreError> {
        let (Some(id), Some(secret)) = (token.get(..36), token.get(37..)) else {
            return Ok(None);
        };
        if token.as_bytes()[36] != b'-' {
            return Ok(None);
        }
        let Ok(id) = Uuid::try_parse(id) else {
            return Ok(None);
        };
        Ok(self.bridge(id)?.filter(|b| b.as_token.matches(secret)))
    }

    /// Stores a new bridge unless its owner/prefix is taken; returns the stored bridge and
    /// whether it is the new one.
    pub fn insert_bridge(&self, bridge: Bridge) -> Result<(Arc<Bridge>, bool), StoreError> {
        self.ensure_space()?;
        let name = name_key(&bridge.owner, &bridge.prefix);
        let guard = self.write_lock();
        let existing = tx_result::<_, StoreError>(
            (&self.bridgeid_bridge, &self.ownerprefix_bridgeid).transaction(|(bridges, names)| {
                if let Some(id) = names.get(&name)? {
                    return Ok(Some(id));
                }
                bridges.insert(bridge.id.as_bytes(), encode(&bridge))?;
                names.insert(name.as_bytes(), bridge.id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(None)
            }),
        )?;
        self.bridges.invalidate(&bridge.id);
        drop(guard);
        match existing {
            Some(_) => {
                let stored = self.bridge_by_name(&bridge.owner, &bridge.prefix)?;
                stored
                    .map(|b| (b, false))
                    .ok_or(StoreError::Sled(sled::Error::ReportableBug(
                        "bridge index points nowhere".into(),
                    )))
            }
            None => Ok((Arc::new(bridge), true)),
        }
    }

    /// Changes the bridge's current record with `change`, under the write lock, so that
    /// concurrent partial updates (a push key from its socket, a new address from the
    /// management API) never undo each other. Nothing happens to a bridge that is gone:
    /// `None`. Owner, prefix and id never change.
    pub fn modify_bridge(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut Bridge),
    ) -> Result<Option<Arc<Bridge>>, StoreError> {
        let _guard = self.write_lock();
        let Some(current) = self.bridgeid_bridge.get(id.as_bytes())? else {
            return Ok(None);
        };
        let mut bridge: Bridge = decode("bridgeid_bridge", &current)?;
        change(&mut bridge);
        bridge.id = id;
        self.bridgeid_bridge
            .insert(id.as_bytes(), encode(&bridge))?;
        self.bridges.invalidate(&id);
        Ok(Some(Arc::new(bridge)))
    }

    /// Removes a bridge, its name, its queue and its last state at once, and asks for its
    /// room ownerships to be swept (see [`super::sweep`]). Returns false when unknown.
    pub fn delete_bridge(&self, id: Uuid) -> Result<bool, StoreError> {
        let _guard = self.write_lock();
        let Some(bridge) = self.bridgeid_bridge.get(id.as_bytes())? else {
            return Ok(false);
        };
        let bridge: Bridge = decode("bridgeid_bridge", &bridge)?;
        let meta: &sled::Tree = &self.db;
        tx_result::<_, StoreError>(
            (&self.bridgeid_bridge, &self.ownerprefix_bridgeid, meta).transaction(
                |(bridges, names, meta)| {
                    bridges.remove(id.as_bytes())?;
                    names.remove(name_key(&bridge.owner, &bridge.prefix).as_bytes())?;
                    Store::want_sweep(meta)
                },
            ),
        )?;
        self.bridges.invalidate(&id);
        self.clear_queue(id, |_| {})?;
        self.bridgeid_status.remove(id.as_bytes())?;
        self.sweep_signal.notify_one();
        Ok(true)
    }

    /// Every bridge, or those of `owner`, in owner/prefix order.
    pub fn bridges(&self, owner: Option<&str>) -> Result<Vec<Arc<Bridge>>, StoreError> {
        let prefix = owner.map(|o| format!("{o}/")).unwrap_or_default();
        let mut out = Vec::new();
        for id in self.ownerprefix_bridgeid.scan_prefix(prefix).values() {
            let id = id?;
            let id = Uuid::from_slice(&id).map_err(|_| StoreError::Corrupt {
                tree: "ownerprefix_bridgeid",
                source: postcard::Error::DeserializeBadEncoding,
            })?;
            out.extend(self.bridge(id)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_updates_change_the_current_record_and_never_revive_a_deleted_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (bridge, _) = store
            .insert_bridge(test_bridge("alice", "whatsapp"))
            .unwrap();
        // Two writers holding the same old snapshot: neither undoes the other.
        store
            .modify_bridge(bridge.id, |b| b.address = "http://new".into())
            .unwrap();
        store.modify_bridge(bridge.id, |b| b.push = true).unwrap();
        let current = store.bridge(bridge.id).unwrap().unwrap();
        assert_eq!(
            (current.address.as_str(), current.push),
            ("http://new", true)
        );

        assert!(store.delete_bridge(bridge.id).unwrap());
        let revived = store
            .modify_bridge(bridge.id, |b| b.address = "http://late".into())
            .unwrap();
        assert!(revived.is_none());
        store.set_bridge_status(bridge.id, b"{}").unwrap();
        assert!(store.bridge(bridge.id).unwrap().is_none());
        assert!(store.bridge_status(bridge.id).unwrap().is_none());
        assert!(store
            .bridge_by_token(&bridge.real_as_token())
            .unwrap()
            .is_none());
    }
}
