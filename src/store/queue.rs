//! Per-bridge delivery queues, the deliveries in flight and bridges' last states.
//!
//! Trees:
//! - `queue`: bridge UUID (16) ++ sequence (u64 BE) -> enqueued-at unix ms (u64 BE) ++
//!   the bridge transaction as JSON bytes
//! - `bridgeid_status`: bridge UUID -> the bridge's last `bridge_status` (JSON)
//! - `bridgeid_inflight`: bridge UUID -> [`InFlight`], the delivery being attempted
//!
//! Sequence numbers come from [`Store`]'s own counter, which starts above the highest
//! queued sequence at every open: sled's `generate_id` restarts at zero in a restored
//! database, which would put new entries in front of (or over) restored ones.

use serde::{Deserialize, Serialize};
use sled::IVec;
use uuid::Uuid;

use super::{decode, encode, Store, StoreError};

/// The delivery a bridge's worker is attempting: its txn_id and the last queue entry in
/// it. Kept so that a resend, also after a restart, carries the same entries under the
/// same txn_id, which the bridge's own deduplication then absorbs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub txn_id: String,
    pub last_sequence: u64,
}

/// One queued sub-transaction.
#[derive(Debug, Clone)]
pub struct QueuedEntry {
    key: IVec,
    pub enqueued_at_ms: u64,
    /// The bridge transaction, JSON.
    pub body: IVec,
}

impl QueuedEntry {
    pub fn sequence(&self) -> u64 {
        sequence_of(&self.key)
    }
}

/// The sequence number in a queue key (checked to be 24 bytes long when read).
fn sequence_of(key: &[u8]) -> u64 {
    key.get(16..24)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or_default()
}

pub(super) fn queue_key(bridge: Uuid, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(bridge.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Up to `max` of the oldest entries of `bridge`'s queue, left in place; only those up
    /// to sequence `through` when given.
    pub fn queue_batch(
        &self,
        bridge: Uuid,
        max: usize,
        through: Option<u64>,
    ) -> Result<Vec<QueuedEntry>, StoreError> {
        let end = queue_key(bridge, through.unwrap_or(u64::MAX));
        self.queue
            .range(queue_key(bridge, 0)..=end)
            .take(max)
            .map(|item| {
                let (key, value) = item?;
                entry(key, value)
            })
            .collect()
    }

    /// The delivery `bridge`'s worker was attempting, if it recorded one.
    pub fn in_flight(&self, bridge: Uuid) -> Result<Option<InFlight>, StoreError> {
        self.bridgeid_inflight
            .get(bridge.as_bytes())?
            .map(|v| decode("bridgeid_inflight", &v))
            .transpose()
    }

    /// Records the delivery `bridge`'s worker is about to attempt. Made durable by the
    /// next flush: a crash before it only costs the bridge a duplicate.
    pub fn set_in_flight(&self, bridge: Uuid, in_flight: &InFlight) -> Result<(), StoreError> {
        self.bridgeid_inflight
            .insert(bridge.as_bytes(), encode(in_flight))?;
        Ok(())
    }

    /// One more than the highest sequence number queued or named by a delivery in flight.
    /// A number a recorded delivery names must never be given to a new entry: that entry
    /// would be sent under the old delivery's txn_id, which the bridge drops as seen.
    pub(super) fn first_free_sequence(
        queue: &sled::Tree,
        in_flight: &sled::Tree,
    ) -> Result<u64, StoreError> {
        let mut next = 0;
        for bridge in queued_bridges(queue)? {
            if let Some(key) = queue.scan_prefix(bridge.as_bytes()).keys().next_back() {
                next = next.max(sequence_of(&key?).saturating_add(1));
            }
        }
        for value in in_flight.iter().values() {
            let recorded: InFlight = decode("bridgeid_inflight", &value?)?;
            next = next.max(recorded.last_sequence.saturating_add(1));
        }
        Ok(next)
    }

    /// Removes delivered (or given up) entries, oldest first.
    ///
    /// One by one, not as a sled batch: every batch or transaction makes sled write and
    /// sync its log buffer twice on the spot, which on the delivery path cost more than
    /// everything else together. Atomicity is not needed here. sled recovers a prefix of
    /// its log, so a crash can only leave the newest entries of an acknowledged delivery;
    /// the worker resends them under the txn_id recorded for that delivery, which the
    /// bridge has seen and drops.
    pub fn remove_queued(&self, entries: &[QueuedEntry]) -> Result<(), StoreError> {
        for e in entries {
            self.queue.remove(&e.key)?;
        }
        Ok(())
    }

    /// Number of queued entries of `bridge` and when the oldest was queued.
    pub fn queue_stats(&self, bridge: Uuid) -> Result<(u64, Option<u64>), StoreError> {
        let mut depth = 0;
        let mut oldest = None;
        for item in self.queue.scan_prefix(bridge.as_bytes()) {
            let (key, value) = item?;
            if oldest.is_none() {
                oldest = Some(entry(key, value)?.enqueued_at_ms);
            }
            depth += 1;
        }
        Ok((depth, oldest))
    }

    /// Every bridge with a non-empty queue.
    pub fn queued_bridges(&self) -> Result<Vec<Uuid>, StoreError> {
        queued_bridges(&self.queue)
    }

    /// Drops every queue entry of `bridge` (handing each body to `dropped` first) and its
    /// delivery in flight; returns how many entries went.
    pub fn clear_queue(
        &self,
        bridge: Uuid,
        mut dropped: impl FnMut(&[u8]),
    ) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for item in self.queue.scan_prefix(bridge.as_bytes()) {
            let (key, value) = item?;
            dropped(&entry(key.clone(), value)?.body);
            batch.remove(key);
            count += 1;
        }
        self.queue.apply_batch(batch)?;
        self.bridgeid_inflight.remove(bridge.as_bytes())?;
        Ok(count)
    }

    /// Drops queue entries queued before `before_ms`, handing each bridge and body to
    /// `dropped` first; returns how many.
    pub fn trim_queues(
        &self,
        before_ms: u64,
        mut dropped: impl FnMut(Uuid, &[u8]),
    ) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut trimmed = 0;
        for item in self.queue.iter() {
            let (key, value) = item?;
            let queued = entry(key.clone(), value)?;
            if queued.enqueued_at_ms < before_ms {
                if let Some(bridge) = key.get(..16).and_then(|id| Uuid::from_slice(id).ok()) {
                    dropped(bridge, &queued.body);
                }
                batch.remove(key);
                trimmed += 1;
            }
        }
        self.queue.apply_batch(batch)?;
        Ok(trimmed)
    }

    /// Stores the latest `bridge_status` a bridge reported, unless the bridge is gone.
    pub fn set_bridge_status(&self, bridge: Uuid, status: &[u8]) -> Result<(), StoreError> {
        let _guard = self.write_lock();
        if self.bridgeid_bridge.contains_key(bridge.as_bytes())? {
            self.bridgeid_status.insert(bridge.as_bytes(), status)?;
        }
        Ok(())
    }

    /// The latest `bridge_status` a bridge reported.
    pub fn bridge_status(&self, bridge: Uuid) -> Result<Option<IVec>, StoreError> {
        Ok(self.bridgeid_status.get(bridge.as_bytes())?)
    }
}

fn queued_bridges(queue: &sled::Tree) -> Result<Vec<Uuid>, StoreError> {
    let mut out = Vec::new();
    let mut next = queue.first()?;
    while let Some((key, _)) = next {
        let id = key
            .get(..16)
            .and_then(|id| Uuid::from_slice(id).ok())
            .ok_or_else(corrupt_queue)?;
        out.push(id);
        next = queue.get_gt(queue_key(id, u64::MAX))?;
    }
    Ok(out)
}

fn entry(key: IVec, value: IVec) -> Result<QueuedEntry, StoreError> {
    if key.len() != 24 || value.len() < 8 {
        return Err(corrupt_queue());
    }
    let enqueued_at_ms = u64::from_be_bytes(value[..8].try_into().map_err(|_| corrupt_queue())?);
    Ok(QueuedEntry {
        key,
        enqueued_at_ms,
        body: value.subslice(8, value.len() - 8),
    })
}

pub(super) fn corrupt_queue() -> StoreError {
    StoreError::Corrupt {
        tree: "queue",
        source: postcard::Error::DeserializeBadEncoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TransactionCommit, TxnRecord};

    #[test]
    fn queues_are_fifo_per_bridge_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let store = Store::open(tmp.path()).unwrap();
            for i in 0..5 {
                store
                    .commit_transaction(&TransactionCommit {
                        txn_id: &i.to_string(),
                        record: Some(TxnRecord {
                            at_ms: i,
                            event_ids: vec![format!("$e{i}")],
                        }),
                        memberships: vec![crate::store::Membership {
                            room_id: "!r".into(),
                            bridge: a,
                            user_id: "@_alice_wa_bot:hs".into(),
                            member: true,
                        }],
                        entries: vec![
                            (a, format!("a{i}").into_bytes()),
                            (b, format!("b{i}").into_bytes()),
                        ],
                    })
                    .unwrap();
            }
        }
        let store = Store::open_when_free(tmp.path(), std::time::Duration::from_secs(5)).unwrap();
        let batch = store.queue_batch(a, 3, None).unwrap();
        assert_eq!(
            store
                .queue_batch(a, 10, Some(batch[1].sequence()))
                .unwrap()
                .len(),
            2
        );
        let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_ref()).collect();
        assert_eq!(bodies, [b"a0".as_slice(), b"a1", b"a2"]);
        assert!(batch.windows(2).all(|w| w[0].sequence() < w[1].sequence()));
        store.remove_queued(&batch).unwrap();
        assert_eq!(store.queue_stats(a).unwrap().0, 2);
        assert_eq!(store.queue_stats(b).unwrap().0, 5);
        let mut queued = store.queued_bridges().unwrap();
        queued.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(queued, expected);
        assert_eq!(store.room("!r").unwrap().unwrap().owners, vec![a]);
        assert_eq!(
            store.processed_transaction("3").unwrap().unwrap().event_ids,
            vec!["$e3"]
        );

        let mut cleared = Vec::new();
        assert_eq!(
            store
                .clear_queue(b, |body| cleared.push(body.to_vec()))
                .unwrap(),
            5
        );
        assert_eq!(cleared[0], b"b0");
        assert_eq!(store.queued_bridges().unwrap(), vec![a]);
        let mut trimmed = Vec::new();
        let count = store
            .trim_queues(u64::MAX, |bridge, body| {
                trimmed.push((bridge, body.to_vec()))
            })
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(trimmed, [(a, b"a3".to_vec()), (a, b"a4".to_vec())]);
        assert!(store.queued_bridges().unwrap().is_empty());
    }

    #[test]
    fn sequences_continue_above_what_is_queued() {
        // A restored database holds entries with high sequence numbers, while sled's own
        // id generator starts again at zero: new entries must still go behind them.
        let tmp = tempfile::tempdir().unwrap();
        let bridge = Uuid::new_v4();
        {
            let db = sled::open(tmp.path()).unwrap();
            let queue = db.open_tree("queue").unwrap();
            let value = [0u64.to_be_bytes().as_slice(), b"restored"].concat();
            queue.insert(queue_key(bridge, 1000), value).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open_when_free(tmp.path(), std::time::Duration::from_secs(2)).unwrap();
        let commit = TransactionCommit {
            txn_id: "1",
            entries: vec![(bridge, b"new".to_vec())],
            ..Default::default()
        };
        store.commit_transaction(&commit).unwrap();
        let batch = store.queue_batch(bridge, 10, None).unwrap();
        let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_ref()).collect();
        assert_eq!(bodies, [b"restored".as_slice(), b"new"]);
        assert_eq!(batch[1].sequence(), 1001);
    }

    #[test]
    fn sequences_continue_above_deliveries_in_flight() {
        // Every entry was delivered, but the record of the last delivery names sequence
        // 41: a new entry must not fall under it.
        let tmp = tempfile::tempdir().unwrap();
        let bridge = Uuid::new_v4();
        {
            let store = Store::open(tmp.path()).unwrap();
            let in_flight = InFlight {
                txn_id: "old.1".into(),
                last_sequence: 41,
            };
            store.set_in_flight(bridge, &in_flight).unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open_when_free(tmp.path(), std::time::Duration::from_secs(5)).unwrap();
        let commit = TransactionCommit {
            txn_id: "1",
            entries: vec![(bridge, b"new".to_vec())],
            ..Default::default()
        };
        store.commit_transaction(&commit).unwrap();
        assert!(store.queue_batch(bridge, 10, Some(41)).unwrap().is_empty());
        assert_eq!(
            store.queue_batch(bridge, 10, None).unwrap()[0].sequence(),
            42
        );
    }

    #[test]
    fn the_delivery_in_flight_is_kept_until_the_queue_is_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bridge = Uuid::new_v4();
        assert_eq!(store.in_flight(bridge).unwrap(), None);
        let in_flight = InFlight {
            txn_id: "abc.1".into(),
            last_sequence: 7,
        };
        store.set_in_flight(bridge, &in_flight).unwrap();
        assert_eq!(store.in_flight(bridge).unwrap(), Some(in_flight));
        store.clear_queue(bridge, |_| {}).unwrap();
        assert_eq!(store.in_flight(bridge).unwrap(), None);
    }
}
