//! Homeserver transactions as the store keeps them: the all-or-nothing commit of one
//! transaction (room memberships, queue entries, processed record) and the record of
//! processed transactions that recognises a retry.
//!
//! Trees:
//! - `txnid_record`: homeserver txn ID -> [`TxnRecord`]
//! - `txnage_txnid`: processed-at unix ms (u64 BE) ++ txn ID -> empty (oldest first)
//! - `txnid_unfinished`: homeserver txn ID -> the commit being written (see
//!   [`Store::commit_transaction`])

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::IVec;
use uuid::Uuid;

use super::queue::{corrupt_queue, queue_key};
use super::{decode, encode, now_ms, Store, StoreError};

/// What asmux remembers of a processed homeserver transaction, to recognise a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub at_ms: u64,
    /// The PDU event IDs it contained.
    pub event_ids: Vec<String>,
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

fn age_key(at_ms: u64, txn_id: &str) -> Vec<u8> {
    [at_ms.to_be_bytes().as_slice(), txn_id.as_bytes()].concat()
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
