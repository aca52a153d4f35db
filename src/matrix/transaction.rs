//! Transactions: what the homeserver sends asmux (both spellings of every key) and what
//! asmux sends a bridge (stable names only). Events stay raw JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A raw JSON value, never re-serialised.
pub type Raw = Box<RawValue>;

/// `device_lists`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLists {
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub left: Vec<String>,
}

impl DeviceLists {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }

    /// Adds the users of `other` not already listed.
    pub fn union(&mut self, other: &DeviceLists) {
        for (mine, theirs) in [
            (&mut self.changed, &other.changed),
            (&mut self.left, &other.left),
        ] {
            for user in theirs {
                if !mine.contains(user) {
                    mine.push(user.clone());
                }
            }
        }
    }
}

/// A transaction from the homeserver, with stable and unstable keys resolved (stable wins).
#[derive(Debug, Default)]
pub struct HomeserverTransaction {
    pub events: Vec<Raw>,
    pub ephemeral: Vec<Raw>,
    pub to_device: Vec<Raw>,
    pub device_lists: DeviceLists,
    /// User ID -> device -> algorithm -> count, per user as received.
    pub one_time_keys_count: BTreeMap<String, Raw>,
    /// User ID -> device -> algorithms, per user as received.
    pub fallback_key_types: BTreeMap<String, Raw>,
}

/// Why a transaction body was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("Request body is not JSON")]
    NotJson,
    #[error("{0}")]
    BadJson(String),
}

#[derive(Deserialize)]
struct Wire {
    events: Option<Vec<Raw>>,
    ephemeral: Option<Vec<Raw>>,
    #[serde(rename = "de.sorunome.msc2409.ephemeral")]
    ephemeral_unstable: Option<Vec<Raw>>,
    to_device: Option<Vec<Raw>>,
    #[serde(rename = "de.sorunome.msc2409.to_device")]
    to_device_unstable: Option<Vec<Raw>>,
    device_lists: Option<DeviceLists>,
    #[serde(rename = "org.matrix.msc3202.device_lists")]
    device_lists_unstable: Option<DeviceLists>,
    device_one_time_keys_count: Option<BTreeMap<String, Raw>>,
    #[serde(rename = "org.matrix.msc3202.device_one_time_keys_count")]
    otk_unstable: Option<BTreeMap<String, Raw>>,
    #[serde(rename = "org.matrix.msc3202.device_one_time_key_counts")]
    otk_unstable_alt: Option<BTreeMap<String, Raw>>,
    device_unused_fallback_key_types: Option<BTreeMap<String, Raw>>,
    #[serde(rename = "org.matrix.msc3202.device_unused_fallback_key_types")]
    fallback_unstable: Option<BTreeMap<String, Raw>>,
}

impl HomeserverTransaction {
    pub fn parse(body: &[u8]) -> Result<HomeserverTransaction, TransactionError> {
        let wire: Wire = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                TransactionError::BadJson(format!("Invalid transaction: {e}"))
            }
            _ => TransactionError::NotJson,
        })?;
        let events = wire
            .events
            .ok_or_else(|| TransactionError::BadJson("Missing events".into()))?;
        Ok(HomeserverTransaction {
            events,
            ephemeral: wire
                .ephemeral
                .or(wire.ephemeral_unstable)
                .unwrap_or_default(),
            to_device: wire
                .to_device
                .or(wire.to_device_unstable)
                .unwrap_or_default(),
            device_lists: wire
                .device_lists
                .or(wire.device_lists_unstable)
                .unwrap_or_default(),
            one_time_keys_count: wire
                .device_one_time_keys_count
                .or(wire.otk_unstable)
                .or(wire.otk_unstable_alt)
                .unwrap_or_default(),
            fallback_key_types: wire
                .device_unused_fallback_key_types
                .or(wire.fallback_unstable)
                .unwrap_or_default(),
        })
    }
}

/// A transaction for one bridge: the body of an HTTP push and the payload of a
/// websocket `transaction` command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BridgeTransaction {
    pub txn_id: String,
    pub events: Vec<Raw>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral: Vec<Raw>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_device: Vec<Raw>,
    #[serde(default, skip_serializing_if = "DeviceLists::is_empty")]
    pub device_lists: DeviceLists,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_one_time_keys_count: BTreeMap<String, Raw>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_unused_fallback_key_types: BTreeMap<String, Raw>,
}

impl BridgeTransaction {
    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.ephemeral.is_empty()
            && self.to_device.is_empty()
            && self.device_lists.is_empty()
            && self.device_one_time_keys_count.is_empty()
            && self.device_unused_fallback_key_types.is_empty()
    }

    /// Appends `next` after `self`: lists concatenated, device lists unioned, key counts
    /// replaced by the newer ones. The txn_id stays `self`'s: a merged delivery gets its
    /// own.
    pub fn merge(&mut self, next: BridgeTransaction) {
        self.events.extend(next.events);
        self.ephemeral.extend(next.ephemeral);
        self.to_device.extend(next.to_device);
        self.device_lists.union(&next.device_lists);
        self.device_one_time_keys_count
            .extend(next.device_one_time_keys_count);
        self.device_unused_fallback_key_types
            .extend(next.device_unused_fallback_key_types);
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Raw values and strings always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/synapse-1.163/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::to_vec(&value["body"]).unwrap()
    }

    #[test]
    fn unstable_keys_are_read_and_stable_wins() {
        let t = HomeserverTransaction::parse(&fixture("e1-to-device.json")).unwrap();
        assert_eq!(t.to_device.len(), 1);
        assert_eq!(t.one_time_keys_count.len(), 1);
        assert_eq!(t.fallback_key_types.len(), 1);

        let both = br#"{"events":[],"ephemeral":[{"type":"a"}],"de.sorunome.msc2409.ephemeral":[{"type":"b"}]}"#;
        let t = HomeserverTransaction::parse(both).unwrap();
        assert_eq!(t.ephemeral.len(), 1);
        assert_eq!(t.ephemeral[0].get(), r#"{"type":"a"}"#);
    }

    #[test]
    fn events_keep_their_bytes() {
        let body = br#"{"events":[{"type":"m.reaction","content":{"m.relates_to":{"key":"\ud83d\udc4d"}},"unknown":[1,2.50]}]}"#;
        let t = HomeserverTransaction::parse(body).unwrap();
        assert_eq!(
            t.events[0].get(),
            r#"{"type":"m.reaction","content":{"m.relates_to":{"key":"\ud83d\udc4d"}},"unknown":[1,2.50]}"#
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            HomeserverTransaction::parse(b"nope"),
            Err(TransactionError::NotJson)
        ));
        assert!(matches!(
            HomeserverTransaction::parse(b"[]"),
            Err(TransactionError::BadJson(_))
        ));
        assert!(matches!(
            HomeserverTransaction::parse(b"{}"),
            Err(TransactionError::BadJson(_))
        ));
        assert!(matches!(
            HomeserverTransaction::parse(br#"{"events":{}}"#),
            Err(TransactionError::BadJson(_))
        ));
    }

    #[test]
    fn merging() {
        let a: BridgeTransaction = serde_json::from_str(
            r#"{"txn_id":"1","events":[{"n":1}],"device_lists":{"changed":["@a:x"],"left":[]},"device_one_time_keys_count":{"@g:x":{"D":{"c":3}}}}"#,
        )
        .unwrap();
        let b: BridgeTransaction = serde_json::from_str(
            r#"{"txn_id":"2","events":[{"n":2}],"to_device":[{"t":1}],"device_lists":{"changed":["@a:x","@b:x"],"left":["@c:x"]},"device_one_time_keys_count":{"@g:x":{"D":{"c":2}}}}"#,
        )
        .unwrap();
        let mut merged = BridgeTransaction {
            txn_id: "d1".into(),
            ..Default::default()
        };
        merged.merge(a);
        merged.merge(b);
        assert_eq!(
            String::from_utf8(merged.to_json()).unwrap(),
            r#"{"txn_id":"d1","events":[{"n":1},{"n":2}],"to_device":[{"t":1}],"device_lists":{"changed":["@a:x","@b:x"],"left":["@c:x"]},"device_one_time_keys_count":{"@g:x":{"D":{"c":2}}}}"#
        );
        let empty = BridgeTransaction {
            txn_id: "3".into(),
            ..Default::default()
        };
        assert!(empty.is_empty());
        assert_eq!(
            String::from_utf8(empty.to_json()).unwrap(),
            r#"{"txn_id":"3","events":[]}"#
        );
    }
}
