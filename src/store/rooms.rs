//! Rooms: which bridges own a room, through which of their users, and whether it was
//! deleted.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode, encode, Store, StoreError};

/// What asmux knows of a room. Room IDs are opaque and never parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// The bridges events of this room are routed to.
    pub owners: Vec<Uuid>,
    /// Deleted rooms drop their events.
    pub deleted: bool,
}

/// A membership event of one of a bridge's users, as routing saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub room_id: String,
    pub bridge: Uuid,
    pub user_id: String,
    /// Joined; anything else (invite, leave, ban, knock) is not a member.
    pub member: bool,
}

/// The prefix of the member rows of `bridge` in `room_id`. 0xFF never occurs in UTF-8,
/// so no room ID is a prefix of another's rows.
fn room_bridge_prefix(room_id: &str, bridge: Uuid) -> Vec<u8> {
    [room_id.as_bytes(), &[0xFF], bridge.as_bytes().as_slice()].concat()
}

impl Store {
    /// The room `room_id`, if any bridge ever owned it or it was deleted.
    pub fn room(&self, room_id: &str) -> Result<Option<Arc<Room>>, StoreError> {
        self.rooms.get(&room_id.to_owned(), &self.lock, || {
            self.roomid_room
                .get(room_id)?
                .map(|v| decode("roomid_room", &v))
                .transpose()
        })
    }

    /// The users of `bridge` that asmux saw join `room_id` and not leave since. Empty also for a room the bridge owns since before asmux followed
    /// memberships (imported from the original, or created as the owner): such a room is
    /// owned until a membership event of the bridge's users says otherwise.
    pub fn room_members(&self, room_id: &str, bridge: Uuid) -> Result<Vec<String>, StoreError> {
        let prefix = room_bridge_prefix(room_id, bridge);
        self.roomid_members
            .scan_prefix(&prefix)
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Adds `bridge` to the owners of `room_id`, with `member` as one of its users there.
    /// Returns false when it already was an owner.
    pub fn add_room_owner(
        &self,
        room_id: &str,
        bridge: Uuid,
        member: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_lock();
        let added = self.add_owner_locked(room_id, bridge).and_then(|added| {
            if let Some(user_id) = member {
                let row = [room_bridge_prefix(room_id, bridge), user_id.into()].concat();
                self.roomid_members.insert(row, &[])?;
            }
            Ok(added)
        });
        self.rooms.invalidate(&room_id.to_owned());
        added
    }

    /// Records a membership for a caller holding the write lock: a member makes its bridge
    /// an owner; the last of a bridge's users to leave ends its ownership. Each step is a
    /// plain write in an order a crash can cut anywhere: the homeserver retries the
    /// unacknowledged transaction, and routing it again from what was written ends in the
    /// same state.
    pub(super) fn apply_membership_locked(&self, m: &Membership) -> Result<(), StoreError> {
        let prefix = room_bridge_prefix(&m.room_id, m.bridge);
        let row = [prefix.as_slice(), m.user_id.as_bytes()].concat();
        if m.member {
            self.add_owner_locked(&m.room_id, m.bridge)?;
            self.roomid_members.insert(row, &[])?;
        } else {
            self.roomid_members.remove(row)?;
            if self.roomid_members.scan_prefix(&prefix).next().is_none() {
                self.remove_owner_locked(&m.room_id, m.bridge)?;
            }
        }
        Ok(())
    }

    /// Removes `bridge` from the owners of `room_id`.
    fn remove_owner_locked(&self, room_id: &str, bridge: Uuid) -> Result<(), StoreError> {
        if let Some(v) = self.roomid_room.get(room_id)? {
            let mut room: Room = decode("roomid_room", &v)?;
            if room.owners.contains(&bridge) {
                room.owners.retain(|owner| *owner != bridge);
                self.roomid_room.insert(room_id.as_bytes(), encode(&room))?;
            }
        }
        Ok(())
    }

    /// [`Store::add_room_owner`] for a caller holding the write lock: one plain write, not a
    /// sled transaction (each makes sled write and sync its log twice on the spot).
    pub(super) fn add_owner_locked(&self, room_id: &str, bridge: Uuid) -> Result<bool, StoreError> {
        let mut room: Room = match self.roomid_room.get(room_id)? {
            Some(v) => decode("roomid_room", &v)?,
            None => Room::default(),
        };
        if room.owners.contains(&bridge) {
            return Ok(false);
        }
        room.owners.push(bridge);
        self.roomid_room.insert(room_id.as_bytes(), encode(&room))?;
        Ok(true)
    }

    /// Marks `room_id` deleted (remembering it even if no bridge owned it), so that its
    /// events are dropped from now on.
    pub fn mark_room_deleted(&self, room_id: &str) -> Result<(), StoreError> {
        let _guard = self.write_lock();
        let mut room: Room = match self.roomid_room.get(room_id)? {
            Some(v) => decode("roomid_room", &v)?,
            None => Room::default(),
        };
        room.deleted = true;
        self.roomid_room.insert(room_id, encode(&room))?;
        self.rooms.invalidate(&room_id.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bridges::test_bridge as bridge;

    #[test]
    fn rooms_have_several_owners_and_lose_deleted_bridges() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (wa, _) = store.insert_bridge(bridge("alice", "whatsapp")).unwrap();
        let (tg, _) = store.insert_bridge(bridge("alice", "telegram")).unwrap();
        let room = "!o-Qzij4pVy-fGxdFgb8LDLJ5y9ykdPENMse-TF2O8zQ";
        assert!(store.room(room).unwrap().is_none());
        assert!(store.add_room_owner(room, wa.id, None).unwrap());
        assert!(!store.add_room_owner(room, wa.id, None).unwrap());
        assert!(store.add_room_owner(room, tg.id, None).unwrap());
        assert_eq!(
            store.room(room).unwrap().unwrap().owners,
            vec![wa.id, tg.id]
        );

        assert!(store.delete_bridge(wa.id).unwrap());
        assert!(!store.delete_bridge(wa.id).unwrap());
        let mut cursor = Some(crate::store::sweep::SweepCursor::default());
        while let Some(at) = cursor {
            cursor = store.sweep(at, 100).unwrap();
        }
        assert_eq!(store.room(room).unwrap().unwrap().owners, vec![tg.id]);
        assert!(store.bridge_by_name("alice", "whatsapp").unwrap().is_none());
        assert!(store.bridge(wa.id).unwrap().is_none());

        store.mark_room_deleted(room).unwrap();
        let r = store.room(room).unwrap().unwrap();
        assert!(r.deleted);
        assert_eq!(r.owners, vec![tg.id]);
    }

    #[test]
    fn bridge_names_are_unique_and_tokens_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let first = bridge("alice", "whatsapp");
        let (stored, created) = store.insert_bridge(first.clone()).unwrap();
        assert!(created);
        let (again, created) = store.insert_bridge(bridge("alice", "whatsapp")).unwrap();
        assert!(!created);
        assert_eq!(again.id, stored.id);
        assert_eq!(store.bridges(Some("alice")).unwrap().len(), 1);
        assert_eq!(store.bridges(Some("alic")).unwrap().len(), 0);

        let token = first.real_as_token();
        assert_eq!(store.bridge_by_token(&token).unwrap().unwrap().id, first.id);
        assert!(store
            .bridge_by_token(&format!("{token}x"))
            .unwrap()
            .is_none());
        assert!(store.bridge_by_token(&token[..37]).unwrap().is_none());
        assert!(store.bridge_by_token("short").unwrap().is_none());
        assert!(store
            .bridge_by_token(&format!("{}-{}", Uuid::new_v4(), first.as_token.expose()))
            .unwrap()
            .is_none());
    }
}
