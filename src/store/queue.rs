//! Per-bridge delivery queues and the record of processed homeserver transactions.
//!
//! Trees:
//! - `queue`: bridge UUID (16) ++ sequence (u64 BE) -> enqueued-at unix ms (u64 BE) ++
//!   the bridge transaction as JSON bytes
//! - `txnid_record`: homeserver txn ID -> [`TxnRecord`]
//! - `txnage_txnid`: processed-at unix ms (u64 BE) ++ txn ID -> empty (oldest first)
//! - `bridgeid_status`: bridge UUID -> the bridge's last `bridge_status` (JSON)
//! - `bridgeid_inflight`: bridge UUID -> [`InFlight`], the delivery being attempted
//! - `txnid_unfinished`: homeserver txn ID -> the commit being written (see
//!   [`Store::commit_transaction`])
//!
//! Sequence numbers come from [`Store`]'s own counter, which starts above the highest
//! queued sequence at every open: sled's `generate_id` restarts at zero in a restored
//! database, which would put new entries in front of (or over) restored ones.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::IVec;
use uuid::Uuid;

use super::{decode, encode, Store, StoreError};

/// What asmux remembers of a processed homeserver transaction, to recognise a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub at_ms: u64,
    /// The PDU event IDs it contained.
    pub event_ids: Vec<String>,
}

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

/// A commit being written: the queue keys it adds and its record's time, so that it can
/// be undone.
#[derive(Debug, Serialize, Deserialize)]
struct Unfinished {
    keys: Vec<[u8; 24]>,
    record_at_ms: Option<u64>,
}

/// Everything one homeserver transaction changes, written atomically.
#[derive(Debug, Default)]
pub struct TransactionCommit<'a> {
    pub txn_id: &'a str,
    pub record: Option<TxnRecord>,
    /// Memberships of bridges' users, in event order: they make and end room owners.
    pub memberships: Vec<super::Membership>,
    /// Bridge and the JSON of its sub-transaction.
    pub entries: Vec<(Uuid, Vec<u8>)>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn age_key(at_ms: u64, txn_id: &str) -> Vec<u8> {
    [at_ms.to_be_bytes().as_slice(), txn_id.as_bytes()].concat()
}

fn queue_key(bridge: Uuid, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(bridge.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// The record of transaction `txn_id`, if it was processed.
    pub fn processed_transaction(&self, txn_id: &str) -> Result<Option<TxnRecord>, StoreError> {
        self.txnid_record
            .get(txn_id)?
            .map(|v| decode("txnid_record", &v))
            .transpose()
    }

    /// Registers room owners, appends the sub-transactions to their queues and records the
    /// transaction as processed, all or nothing. Not yet durable: call [`Store::flush`]
    /// before acknowledging.
    ///
    /// Without a sled transaction, which makes sled write and sync its log twice on the
    /// spot, inside the intake's ordering: a marker naming the entries is written first and
    /// removed last. sled recovers a prefix of its log, so a marker found after a crash
    /// belongs to a commit that was never flushed, hence never acknowledged;
    /// [`Store::open`] undoes it and the homeserver's retry queues it again. Room owners
    /// stay: the retry adds the same ones.
    pub fn commit_transaction(&self, commit: &TransactionCommit<'_>) -> Result<(), StoreError> {
        self.ensure_space()?;
        let result = self.commit_locked(commit);
        self.note_write_failure(&result);
        result
    }

    fn commit_locked(&self, commit: &TransactionCommit<'_>) -> Result<(), StoreError> {
        let _guard = self.write_lock();
        // Left by an attempt of the same transaction that failed half-way.
        self.undo_commit(commit.txn_id)?;
        let unfinished = Unfinished {
            keys: (commit.entries.iter())
                .map(|(bridge, _)| {
                    queue_key(*bridge, self.next_sequence.fetch_add(1, Ordering::SeqCst))
                })
                .collect(),
            record_at_ms: commit.record.as_ref().map(|r| r.at_ms),
        };
        self.txnid_unfinished
            .insert(commit.txn_id, encode(&unfinished))?;
        let written = self.write_commit(commit, &unfinished.keys);
        for membership in &commit.memberships {
            self.rooms.invalidate(&membership.room_id);
        }
        if written.is_err() {
            // Best effort: if this fails too, the marker stays for the retry or the next
            // start to undo.
            let _ = self.undo_commit(commit.txn_id);
        }
        written
    }

    fn write_commit(
        &self,
        commit: &TransactionCommit<'_>,
        keys: &[[u8; 24]],
    ) -> Result<(), StoreError> {
        for membership in &commit.memberships {
            self.apply_membership_locked(membership)?;
        }
        let now = now_ms().to_be_bytes();
        for (key, (_, body)) in keys.iter().zip(&commit.entries) {
            self.queue.insert(key, [now.as_slice(), body].concat())?;
        }
        if let Some(record) = &commit.record {
            if let Some(old) = self.processed_transaction(commit.txn_id)? {
                self.txnage_txnid
                    .remove(age_key(old.at_ms, commit.txn_id))?;
            }
            self.txnid_record.insert(commit.txn_id, encode(record))?;
            self.txnage_txnid
                .insert(age_key(record.at_ms, commit.txn_id), &[])?;
        }
        self.txnid_unfinished.remove(commit.txn_id)?;
        Ok(())
    }

    /// Removes what an unfinished commit of `txn_id` wrote, if one is marked.
    fn undo_commit(&self, txn_id: &str) -> Result<(), StoreError> {
        let Some(marker) = self.txnid_unfinished.get(txn_id)? else {
            return Ok(());
        };
        let unfinished: Unfinished = decode("txnid_unfinished", &marker)?;
        for key in &unfinished.keys {
            self.queue.remove(key)?;
        }
        let record = self.processed_transaction(txn_id)?;
        if let (Some(at_ms), Some(record)) = (unfinished.record_at_ms, record) {
            if record.at_ms == at_ms {
                self.txnid_record.remove(txn_id)?;
                self.txnage_txnid.remove(age_key(at_ms, txn_id))?;
            }
        }
        self.txnid_unfinished.remove(txn_id)?;
        Ok(())
    }

    /// Undoes every commit a crash interrupted (see [`Store::commit_transaction`]);
    /// returns how many.
    pub(super) fn undo_unfinished_commits(&self) -> Result<usize, StoreError> {
        let _guard = self.write_lock();
        let txn_ids: Vec<IVec> = self
            .txnid_unfinished
            .iter()
            .keys()
            .collect::<Result<_, _>>()?;
        for txn_id in &txn_ids {
            self.undo_commit(&String::from_utf8_lossy(txn_id))?;
        }
        Ok(txn_ids.len())
    }

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

    /// Forgets processed transactions older than `before_ms`, but always keeps the newest
    /// `keep`. Returns how many were forgotten.
    pub fn trim_processed_transactions(
        &self,
        before_ms: u64,
        keep: usize,
    ) -> Result<usize, StoreError> {
        let _guard = self.write_lock();
        let excess = self.txnage_txnid.len().saturating_sub(keep);
        let mut batch_ages = sled::Batch::default();
        let mut batch_records = sled::Batch::default();
        let mut trimmed = 0;
        for key in self.txnage_txnid.iter().keys().take(excess) {
            let key = key?;
            let at = u64::from_be_bytes(key[..8].try_into().map_err(|_| corrupt_queue())?);
            if at >= before_ms {
                break;
            }
            batch_records.remove(&key[8..]);
            batch_ages.remove(key);
            trimmed += 1;
        }
        self.txnid_record.apply_batch(batch_records)?;
        self.txnage_txnid.apply_batch(batch_ages)?;
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

fn corrupt_queue() -> StoreError {
    StoreError::Corrupt {
        tree: "queue",
        source: postcard::Error::DeserializeBadEncoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit<'a>(txn_id: &'a str, at_ms: u64, bridge: Uuid, body: &str) -> TransactionCommit<'a> {
        TransactionCommit {
            txn_id,
            record: Some(TxnRecord {
                at_ms,
                event_ids: vec![format!("${body}")],
            }),
            memberships: vec![],
            entries: vec![(bridge, body.as_bytes().to_vec())],
        }
    }

    /// What a crash in the middle of a commit leaves: its marker and part of its writes.
    fn write_half(store: &Store, commit: &TransactionCommit<'_>) {
        let key = queue_key(commit.entries[0].0, 1000);
        let unfinished = Unfinished {
            keys: vec![key],
            record_at_ms: commit.record.as_ref().map(|r| r.at_ms),
        };
        store
            .txnid_unfinished
            .insert(commit.txn_id, encode(&unfinished))
            .unwrap();
        let value = [0u64.to_be_bytes().as_slice(), &commit.entries[0].1].concat();
        store.queue.insert(key, value).unwrap();
        let record = commit.record.as_ref().unwrap();
        store
            .txnid_record
            .insert(commit.txn_id, encode(record))
            .unwrap();
    }

    fn bodies(store: &Store, bridge: Uuid) -> Vec<String> {
        (store.queue_batch(bridge, 100, None).unwrap().iter())
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect()
    }

    #[test]
    fn a_commit_a_crash_interrupted_is_undone_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let bridge = Uuid::new_v4();
        {
            let store = Store::open(tmp.path()).unwrap();
            store
                .commit_transaction(&commit("done", 1, bridge, "kept"))
                .unwrap();
            write_half(&store, &commit("cut", 2, bridge, "half"));
            assert_eq!(bodies(&store, bridge), ["kept", "half"]);
            store.db.flush().unwrap();
        }
        let store = Store::open_when_free(tmp.path(), std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(bodies(&store, bridge), ["kept"]);
        assert!(store.processed_transaction("cut").unwrap().is_none());
        assert!(store.processed_transaction("done").unwrap().is_some());
        assert_eq!(store.txnid_unfinished.len(), 0);
        // The homeserver's retry is queued as new, once.
        store
            .commit_transaction(&commit("cut", 3, bridge, "retried"))
            .unwrap();
        assert_eq!(bodies(&store, bridge), ["kept", "retried"]);
    }

    #[test]
    fn a_retry_undoes_the_attempt_that_failed_half_way() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bridge = Uuid::new_v4();
        write_half(&store, &commit("t", 1, bridge, "half"));
        store
            .commit_transaction(&commit("t", 2, bridge, "whole"))
            .unwrap();
        assert_eq!(bodies(&store, bridge), ["whole"]);
        assert_eq!(store.processed_transaction("t").unwrap().unwrap().at_ms, 2);
        assert_eq!(store.txnid_unfinished.len(), 0);
        assert_eq!(store.txnage_txnid.len(), 1);
    }

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

    #[test]
    fn processed_transactions_are_trimmed_by_age_beyond_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for i in 0..10u64 {
            let commit = TransactionCommit {
                txn_id: &i.to_string(),
                record: Some(TxnRecord {
                    at_ms: i * 100,
                    event_ids: vec![],
                }),
                ..Default::default()
            };
            store.commit_transaction(&commit).unwrap();
        }
        // Replacing a record moves it to the new age.
        let again = TransactionCommit {
            txn_id: "0",
            record: Some(TxnRecord {
                at_ms: 5000,
                event_ids: vec![],
            }),
            ..Default::default()
        };
        store.commit_transaction(&again).unwrap();
        // Keep at least 4; of the rest, only those older than 450 ms go: 1, 2, 3, 4.
        assert_eq!(store.trim_processed_transactions(450, 4).unwrap(), 4);
        assert!(store.processed_transaction("1").unwrap().is_none());
        assert!(store.processed_transaction("0").unwrap().is_some());
        assert!(store.processed_transaction("5").unwrap().is_some());
        assert_eq!(store.trim_processed_transactions(u64::MAX, 4).unwrap(), 2);
    }
}
