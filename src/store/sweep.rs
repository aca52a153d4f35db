//! The rooms of deleted bridges. Deleting a bridge takes it away at once (its record,
//! name, queue and state go in one step; routing skips owners that are no bridge any
//! more); its room ownerships and members are removed afterwards by a sweep over every
//! room, in small batches that hold the write lock briefly, so that deleting a bridge of
//! a million rooms never stalls the homeserver's transactions. Rooms are not indexed by
//! bridge: on disk, that index cost as much as the rooms themselves.
//!
//! Meta keys: `sweep_wanted` (u64 BE), bumped by every deletion; `sweep_done` (u64 BE),
//! the value of `sweep_wanted` when the last complete sweep started. A sweep cut by a
//! restart is started again.

use uuid::Uuid;

use super::{decode, encode, Room, Store, StoreError};

const WANTED: &[u8] = b"sweep_wanted";
const DONE: &[u8] = b"sweep_done";

/// Where a sweep is: the tree it reads and the last key it read there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepCursor {
    members: bool,
    after: Option<Vec<u8>>,
}

impl Store {
    /// The deletion count a sweep should start for, when rooms of deleted bridges may
    /// remain.
    pub fn sweep_wanted(&self) -> Result<Option<u64>, StoreError> {
        let wanted = self.meta_u64(WANTED)?;
        Ok((wanted > self.meta_u64(DONE)?).then_some(wanted))
    }

    /// Records that a sweep started at deletion count `wanted` went through every room.
    pub fn sweep_finished(&self, wanted: u64) -> Result<(), StoreError> {
        self.db.insert(DONE, &wanted.to_be_bytes())?;
        Ok(())
    }

    /// Wakes the sweeper (after a deletion).
    pub fn sweep_signal(&self) -> &tokio::sync::Notify {
        &self.sweep_signal
    }

    /// One batch of at most `batch` records from `cursor`: rooms lose owners that are no
    /// bridge any more, then member rows of such bridges go. Returns where the next batch
    /// starts, `None` once both trees were read.
    pub fn sweep(
        &self,
        cursor: SweepCursor,
        batch: usize,
    ) -> Result<Option<SweepCursor>, StoreError> {
        let _guard = self.write_lock();
        let tree = if cursor.members {
            &self.roomid_members
        } else {
            &self.roomid_room
        };
        let range = match &cursor.after {
            Some(after) => tree.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => tree.iter(),
        };
        let mut last = None;
        for item in range.take(batch) {
            let (key, value) = item?;
            if cursor.members {
                if member_bridge(&key).is_some_and(|b| !self.is_bridge(b).unwrap_or(true)) {
                    self.roomid_members.remove(&key)?;
                }
            } else {
                let mut room: Room = decode("roomid_room", &value)?;
                let before = room.owners.len();
                room.owners
                    .retain(|owner| self.is_bridge(*owner).unwrap_or(true));
                if room.owners.len() != before {
                    self.roomid_room.insert(&key, encode(&room))?;
                    self.rooms
                        .invalidate(&String::from_utf8_lossy(&key).into_owned());
                }
            }
            last = Some(key.to_vec());
        }
        Ok(match (last, cursor.members) {
            (Some(after), members) => Some(SweepCursor {
                members,
                after: Some(after),
            }),
            (None, false) => Some(SweepCursor {
                members: true,
                after: None,
            }),
            (None, true) => None,
        })
    }

    fn is_bridge(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.bridgeid_bridge.contains_key(id.as_bytes())?)
    }

    /// Bumps the deletion count: called in the same write as a bridge's deletion.
    pub(super) fn want_sweep(
        meta: &sled::transaction::TransactionalTree,
    ) -> sled::transaction::ConflictableTransactionResult<(), StoreError> {
        let count = meta
            .get(WANTED)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        meta.insert(WANTED, &(count + 1).to_be_bytes())?;
        Ok(())
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .db
            .get(key)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }
}

/// The bridge of a member row (room ID ++ 0xFF ++ bridge UUID ++ user ID).
fn member_bridge(key: &[u8]) -> Option<Uuid> {
    let at = key.iter().position(|b| *b == 0xFF)?;
    Uuid::from_slice(key.get(at + 1..at + 17)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bridges::test_bridge as bridge;
    use crate::store::Membership;

    #[test]
    fn a_deleted_bridge_is_gone_at_once_and_its_rooms_are_swept_in_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (wa, _) = store.insert_bridge(bridge("alice", "whatsapp")).unwrap();
        let (tg, _) = store.insert_bridge(bridge("alice", "telegram")).unwrap();
        for r in 0..25 {
            let room = format!("!r{r}");
            store
                .add_room_owner(&room, wa.id, Some("@_alice_whatsapp_bot:hs"))
                .unwrap();
            if r % 5 == 0 {
                store.add_room_owner(&room, tg.id, None).unwrap();
            }
        }
        assert_eq!(store.sweep_wanted().unwrap(), None);
        assert!(store.delete_bridge(wa.id).unwrap());
        assert!(store.bridge(wa.id).unwrap().is_none());
        let wanted = store.sweep_wanted().unwrap().expect("a sweep is wanted");

        let mut cursor = Some(SweepCursor::default());
        let mut batches = 0;
        while let Some(at) = cursor {
            cursor = store.sweep(at, 7).unwrap();
            batches += 1;
        }
        store.sweep_finished(wanted).unwrap();
        assert!(batches >= 25 / 7 + 25 / 7, "{batches}");
        assert_eq!(store.sweep_wanted().unwrap(), None);
        assert_eq!(store.room("!r0").unwrap().unwrap().owners, vec![tg.id]);
        assert!(store.room("!r1").unwrap().unwrap().owners.is_empty());
        assert!(store.room_members("!r1", wa.id).unwrap().is_empty());
        assert_eq!(store.roomid_members.len(), 0);
        // A membership of the other bridge is untouched.
        let m = Membership {
            room_id: "!r0".into(),
            bridge: tg.id,
            user_id: "@_alice_telegram_bot:hs".into(),
            member: true,
        };
        store.apply_membership_locked(&m).unwrap();
        let mut cursor = Some(SweepCursor::default());
        while let Some(at) = cursor {
            cursor = store.sweep(at, 100).unwrap();
        }
        assert_eq!(
            store.room_members("!r0", tg.id).unwrap(),
            ["@_alice_telegram_bot:hs"]
        );
    }
}
