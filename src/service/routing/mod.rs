//! Splitting a homeserver transaction into per-bridge sub-transactions (spec 3.1). Pure:
//! reads rooms and bridges through [`RoutingView`], returns what to write.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::config::EventFilter;
use crate::matrix::{BridgeTransaction, EventMeta, HomeserverTransaction, Namespace, Raw};
use crate::store::{Bridge, Membership, Room, Store, StoreError};

/// The lookups routing needs.
pub trait RoutingView {
    fn room(&self, room_id: &str) -> Result<Option<Arc<Room>>, StoreError>;
    /// The users of `bridge` joined to `room_id`, as far as asmux saw.
    fn room_members(&self, room_id: &str, bridge: Uuid) -> Result<Vec<String>, StoreError>;
    fn bridge(&self, id: Uuid) -> Result<Option<Arc<Bridge>>, StoreError>;
    fn bridge_by_name(&self, owner: &str, prefix: &str) -> Result<Option<Arc<Bridge>>, StoreError>;
    /// Every bridge.
    fn bridges(&self) -> Result<Vec<Arc<Bridge>>, StoreError>;
}

impl RoutingView for Store {
    fn room(&self, room_id: &str) -> Result<Option<Arc<Room>>, StoreError> {
        Store::room(self, room_id)
    }
    fn room_members(&self, room_id: &str, bridge: Uuid) -> Result<Vec<String>, StoreError> {
        Store::room_members(self, room_id, bridge)
    }
    fn bridge(&self, id: Uuid) -> Result<Option<Arc<Bridge>>, StoreError> {
        Store::bridge(self, id)
    }
    fn bridge_by_name(&self, owner: &str, prefix: &str) -> Result<Option<Arc<Bridge>>, StoreError> {
        Store::bridge_by_name(self, owner, prefix)
    }
    fn bridges(&self) -> Result<Vec<Arc<Bridge>>, StoreError> {
        Store::bridges(self, None)
    }
}

/// Why an event went to no bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    Malformed,
    NoRoom,
    UnownedRoom,
    DeletedRoom,
    Redacted,
    Filtered,
    UnknownUser,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRoom => "no_room",
            DropReason::UnownedRoom => "unowned_room",
            DropReason::DeletedRoom => "deleted_room",
            DropReason::Redacted => "redacted",
            DropReason::Filtered => "filtered",
            DropReason::UnknownUser => "unknown_user",
        }
    }
}

/// The outcome of routing one transaction.
#[derive(Debug, Default)]
pub struct Routed {
    /// The sub-transaction of every bridge that gets something.
    pub transactions: BTreeMap<Uuid, BridgeTransaction>,
    /// Every bridge named in `transactions`.
    pub bridges: HashMap<Uuid, Arc<Bridge>>,
    /// Memberships of bridges' users, in event order: they make and end room owners.
    pub memberships: Vec<Membership>,
    /// Event type and reason of every dropped event.
    pub dropped: Vec<(String, DropReason)>,
    /// The event ID of every readable PDU, in order.
    pub event_ids: Vec<String>,
    /// The type of every event received ("" when unreadable).
    pub received: Vec<String>,
    /// Bridge and event type of every event queued for a bridge.
    pub accepted: Vec<(Uuid, String)>,
}

/// Routing settings from the config.
pub struct Router {
    pub namespace: Namespace,
    pub filter: EventFilter,
}

struct RoomState {
    owners: Vec<Uuid>,
    deleted: bool,
    /// The members of bridges whose users' memberships this transaction changes, read
    /// from the store on first use.
    members: HashMap<Uuid, BTreeSet<String>>,
}

impl Router {
    /// Routes `txn`.
    pub fn route(
        &self,
        txn_id: &str,
        txn: &HomeserverTransaction,
        view: &dyn RoutingView,
    ) -> Result<Routed, StoreError> {
        let mut ctx = Context {
            router: self,
            view,
            txn_id,
            rooms: HashMap::new(),
            routed: Routed::default(),
        };
        for raw in &txn.events {
            ctx.route_pdu(raw)?;
        }
        for raw in &txn.ephemeral {
            ctx.route_ephemeral(raw)?;
        }
        for raw in &txn.to_device {
            ctx.route_to_device(raw)?;
        }
        for (user_id, counts) in &txn.one_time_keys_count {
            if let Some(t) = ctx.for_user(user_id)? {
                t.device_one_time_keys_count
                    .insert(user_id.clone(), counts.clone());
            }
        }
        for (user_id, types) in &txn.fallback_key_types {
            if let Some(t) = ctx.for_user(user_id)? {
                t.device_unused_fallback_key_types
                    .insert(user_id.clone(), types.clone());
            }
        }
        // Device lists go to every bridge that can receive anything, push and websocket
        // alike (mautrix-python bridges with appservice encryption read them from pushes),
        // in the sub-transaction it gets anyway or in one of their own.
        if !txn.device_lists.is_empty() {
            for bridge in view.bridges()? {
                if !bridge.push || !bridge.address.is_empty() {
                    ctx.transaction(&bridge);
                }
            }
            for t in ctx.routed.transactions.values_mut() {
                t.device_lists = txn.device_lists.clone();
            }
        }
        Ok(ctx.routed)
    }
}

struct Context<'a> {
    router: &'a Router,
    view: &'a dyn RoutingView,
    txn_id: &'a str,
    /// Rooms seen in this transaction, with owners registered so far.
    rooms: HashMap<String, RoomState>,
    routed: Routed,
}

impl Context<'_> {
    fn drop_event(&mut self, meta: Option<&EventMeta<'_>>, reason: DropReason) {
        let kind = meta.map(|m| m.kind().to_owned()).unwrap_or_default();
        self.routed.dropped.push((kind, reason));
    }

    fn room(&mut self, room_id: &str) -> Result<&mut RoomState, StoreError> {
        if !self.rooms.contains_key(room_id) {
            let state = match self.view.room(room_id)? {
                Some(room) => RoomState {
                    owners: room.owners.clone(),
                    deleted: room.deleted,
                    members: HashMap::new(),
                },
                None => RoomState {
                    owners: Vec::new(),
                    deleted: false,
                    members: HashMap::new(),
                },
            };
            self.rooms.insert(room_id.to_owned(), state);
        }
        Ok(self.rooms.get_mut(room_id).expect("inserted above"))
    }

    fn transaction(&mut self, bridge: &Arc<Bridge>) -> &mut BridgeTransaction {
        self.routed
            .bridges
            .entry(bridge.id)
            .or_insert_with(|| bridge.clone());
        self.routed
            .transactions
            .entry(bridge.id)
            .or_insert_with(|| BridgeTransaction {
                txn_id: self.txn_id.to_owned(),
                ..Default::default()
            })
    }

    /// The bridge whose namespace holds `user_id`.
    fn bridge_of(&self, user_id: &str) -> Result<Option<Arc<Bridge>>, StoreError> {
        match self.router.namespace.parse('@', user_id) {
            Some(user) => self.view.bridge_by_name(user.owner, user.prefix),
            None => Ok(None),
        }
    }

    fn for_user(&mut self, user_id: &str) -> Result<Option<&mut BridgeTransaction>, StoreError> {
        Ok(match self.bridge_of(user_id)? {
            Some(bridge) => Some(self.transaction(&bridge)),
            None => None,
        })
    }

    fn route_pdu(&mut self, raw: &Raw) -> Result<(), StoreError> {
        let Some(meta) = self.parse(raw) else {
            return Ok(());
        };
        if let Some(event_id) = &meta.event_id {
            self.routed.event_ids.push(event_id.to_string());
        }
        let Some(room_id) = meta.room_id.as_deref() else {
            self.drop_event(Some(&meta), DropReason::NoRoom);
            return Ok(());
        };
        // A bridge owns a room while one of its users is joined there: when Matrix sends
        // an appservice a room's events (Synapse: `_matches_user_in_member_list`).
        let member_bridge = match (meta.kind(), meta.state_key.as_deref()) {
            ("m.room.member", Some(state_key)) => self.bridge_of(state_key)?,
            _ => None,
        };
        let view = self.view;
        let room = self.room(room_id)?;
        if room.deleted {
            self.drop_event(Some(&meta), DropReason::DeletedRoom);
            return Ok(());
        }
        let mut owners = room.owners.clone();
        if let Some(bridge) = member_bridge {
            let user_id = meta.state_key.as_deref().unwrap_or_default().to_owned();
            let member = meta.is_join();
            let members = match room.members.entry(bridge.id) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unread) => {
                    unread.insert(view.room_members(room_id, bridge.id)?.into_iter().collect())
                }
            };
            // The bridge gets its own user's membership event in any case (Matrix sends
            // an appservice its users' memberships, invites included), then owns the room
            // while any of its users is joined.
            if !owners.contains(&bridge.id) {
                owners.push(bridge.id);
            }
            if member {
                members.insert(user_id.clone());
                if !room.owners.contains(&bridge.id) {
                    room.owners.push(bridge.id);
                }
            } else {
                members.remove(&user_id);
                if members.is_empty() {
                    room.owners.retain(|owner| *owner != bridge.id);
                }
            }
            self.routed.memberships.push(Membership {
                room_id: room_id.to_owned(),
                bridge: bridge.id,
                user_id,
                member,
            });
        }
        let owners = self.live(&owners)?;
        if owners.is_empty() {
            self.drop_event(Some(&meta), DropReason::UnownedRoom);
            return Ok(());
        }
        if meta.is_redacted_message() {
            self.drop_event(Some(&meta), DropReason::Redacted);
            return Ok(());
        }
        for bridge in owners {
            if self.router.filter == EventFilter::OwnerMessages
                && !self.is_owner_message(&meta, &bridge)
            {
                self.drop_event(Some(&meta), DropReason::Filtered);
                continue;
            }
            self.transaction(&bridge).events.push(raw.clone());
            self.routed
                .accepted
                .push((bridge.id, meta.kind().to_owned()));
        }
        Ok(())
    }

    fn is_owner_message(&self, meta: &EventMeta<'_>, bridge: &Bridge) -> bool {
        meta.is_message()
            && meta.sender.as_deref() == Some(self.router.namespace.user_id(&bridge.owner).as_str())
            && !meta.is_double_puppeted()
    }

    fn route_ephemeral(&mut self, raw: &Raw) -> Result<(), StoreError> {
        let Some(meta) = self.parse(raw) else {
            return Ok(());
        };
        if meta.room_id.is_none() && meta.to_user_id.is_some() {
            // Legacy to-device events arrived among the ephemeral ones.
            return self.deliver_to_device(raw, &meta);
        }
        let Some(room_id) = meta.room_id.as_deref() else {
            self.drop_event(Some(&meta), DropReason::NoRoom);
            return Ok(());
        };
        let room = self.room(room_id)?;
        if room.deleted {
            self.drop_event(Some(&meta), DropReason::DeletedRoom);
            return Ok(());
        }
        let owners = room.owners.clone();
        let owners = self.live(&owners)?;
        if owners.is_empty() {
            self.drop_event(Some(&meta), DropReason::UnownedRoom);
        }
        for bridge in owners {
            self.transaction(&bridge).ephemeral.push(raw.clone());
            self.routed
                .accepted
                .push((bridge.id, meta.kind().to_owned()));
        }
        Ok(())
    }

    /// The owners that are still bridges: a deleted bridge stays in its rooms' records
    /// until the sweep removes it.
    fn live(&self, owners: &[Uuid]) -> Result<Vec<Arc<Bridge>>, StoreError> {
        let mut live = Vec::with_capacity(owners.len());
        for owner in owners {
            live.extend(self.view.bridge(*owner)?);
        }
        Ok(live)
    }

    fn route_to_device(&mut self, raw: &Raw) -> Result<(), StoreError> {
        match self.parse(raw) {
            Some(meta) => self.deliver_to_device(raw, &meta),
            None => Ok(()),
        }
    }

    fn deliver_to_device(&mut self, raw: &Raw, meta: &EventMeta<'_>) -> Result<(), StoreError> {
        let bridge = match meta.to_user_id.as_deref() {
            Some(user_id) => self.bridge_of(user_id)?,
            None => None,
        };
        match bridge {
            Some(bridge) => {
                self.transaction(&bridge).to_device.push(raw.clone());
                self.routed
                    .accepted
                    .push((bridge.id, meta.kind().to_owned()));
            }
            None => self.drop_event(Some(meta), DropReason::UnknownUser),
        }
        Ok(())
    }

    /// Reads an event's routing fields and counts it as received; unreadable events are
    /// dropped here.
    fn parse<'r>(&mut self, raw: &'r Raw) -> Option<EventMeta<'r>> {
        let meta = EventMeta::parse(raw);
        self.routed.received.push(
            meta.as_ref()
                .map(|m| m.kind().to_owned())
                .unwrap_or_default(),
        );
        if meta.is_none() {
            self.drop_event(None, DropReason::Malformed);
        }
        meta
    }
}

#[cfg(test)]
mod tests;
