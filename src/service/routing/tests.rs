//! Routing of real and made-up transactions against rooms and bridges held in memory.

use super::*;
use crate::store::bridges::test_bridge;

/// Rooms and bridges in memory.
#[derive(Default)]
struct FakeView {
    rooms: HashMap<String, Arc<Room>>,
    members: HashMap<(String, Uuid), Vec<String>>,
    bridges: Vec<Arc<Bridge>>,
}

impl FakeView {
    fn with_bridge(mut self, bridge: Bridge) -> Self {
        self.bridges.push(Arc::new(bridge));
        self
    }

    fn with_room(mut self, room_id: &str, owners: &[Uuid], deleted: bool) -> Self {
        let room = Room {
            owners: owners.to_vec(),
            deleted,
        };
        self.rooms.insert(room_id.into(), Arc::new(room));
        self
    }

    fn with_members(mut self, room_id: &str, bridge: Uuid, users: &[&str]) -> Self {
        let users = users.iter().map(|u| u.to_string()).collect();
        self.members.insert((room_id.into(), bridge), users);
        self
    }

    fn id(&self, prefix: &str) -> Uuid {
        self.bridges.iter().find(|b| b.prefix == prefix).unwrap().id
    }
}

impl RoutingView for FakeView {
    fn room(&self, room_id: &str) -> Result<Option<Arc<Room>>, StoreError> {
        Ok(self.rooms.get(room_id).cloned())
    }
    fn room_members(&self, room_id: &str, bridge: Uuid) -> Result<Vec<String>, StoreError> {
        let key = (room_id.to_owned(), bridge);
        Ok(self.members.get(&key).cloned().unwrap_or_default())
    }
    fn bridge(&self, id: Uuid) -> Result<Option<Arc<Bridge>>, StoreError> {
        Ok(self.bridges.iter().find(|b| b.id == id).cloned())
    }
    fn bridge_by_name(&self, owner: &str, prefix: &str) -> Result<Option<Arc<Bridge>>, StoreError> {
        let found = self
            .bridges
            .iter()
            .find(|b| b.owner == owner && b.prefix == prefix);
        Ok(found.cloned())
    }
    fn bridges(&self) -> Result<Vec<Arc<Bridge>>, StoreError> {
        Ok(self.bridges.clone())
    }
}

fn router() -> Router {
    Router {
        namespace: Namespace::new("_", "example.test"),
        filter: EventFilter::All,
    }
}

fn route(view: &FakeView, txn: serde_json::Value) -> Routed {
    let txn = HomeserverTransaction::parse(txn.to_string().as_bytes()).unwrap();
    router().route("1", &txn, view).unwrap()
}

fn ids(events: &[Raw]) -> Vec<String> {
    events
        .iter()
        .map(|e| EventMeta::parse(e).unwrap().event_id.unwrap().to_string())
        .collect()
}

#[test]
fn a_bridge_users_membership_makes_its_bridge_an_owner() {
    let view = FakeView::default().with_bridge(test_bridge("alice", "whatsapp"));
    let wa = view.id("whatsapp");
    let routed = route(
        &view,
        serde_json::json!({"events": [
            {"type": "m.room.message", "room_id": "!new", "event_id": "$before", "content": {"body": "x"}},
            {"type": "m.room.member", "room_id": "!new", "event_id": "$join",
             "state_key": "@_alice_whatsapp_bot:example.test", "content": {"membership": "join"}},
            {"type": "m.room.message", "room_id": "!new", "event_id": "$after", "content": {"body": "y"}},
        ]}),
    );
    assert_eq!(
        routed.memberships,
        [Membership {
            room_id: "!new".into(),
            bridge: wa,
            user_id: "@_alice_whatsapp_bot:example.test".into(),
            member: true
        }]
    );
    assert_eq!(ids(&routed.transactions[&wa].events), ["$join", "$after"]);
    assert_eq!(
        routed.dropped,
        [("m.room.message".into(), DropReason::UnownedRoom)]
    );
    assert_eq!(routed.event_ids, ["$before", "$join", "$after"]);
}

fn member(room: &str, id: &str, user: &str, membership: &str) -> serde_json::Value {
    serde_json::json!({"type": "m.room.member", "room_id": room, "event_id": id,
        "state_key": user, "content": {"membership": membership}})
}

fn message(room: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"type": "m.room.message", "room_id": room, "event_id": id,
        "content": {"body": "x"}})
}

#[test]
fn a_bridge_owns_a_room_while_one_of_its_users_is_joined() {
    let view = FakeView::default()
        .with_bridge(test_bridge("alice", "whatsapp"))
        .with_bridge(test_bridge("bob", "signal"));
    let (wa, sig) = (view.id("whatsapp"), view.id("signal"));
    let (ghost, bot) = (
        "@_alice_whatsapp_1:example.test",
        "@_alice_whatsapp_bot:example.test",
    );
    let view = view
        .with_room("!r", &[wa, sig], false)
        .with_members("!r", wa, &[ghost, bot])
        .with_members("!r", sig, &["@_bob_signal_bot:example.test"]);
    let routed = route(
        &view,
        serde_json::json!({"events": [
            member("!r", "$ghost-leaves", ghost, "leave"),
            message("!r", "$1"),
            member("!r", "$bot-banned", bot, "ban"),
            message("!r", "$2"),
            member("!r", "$bot-knocks", bot, "knock"),
            message("!r", "$3"),
            member("!r", "$ghost-invited", ghost, "invite"),
            message("!r", "$4"),
            member("!r", "$ghost-joins", ghost, "join"),
            message("!r", "$5"),
        ]}),
    );
    assert_eq!(
        ids(&routed.transactions[&wa].events),
        [
            "$ghost-leaves",
            "$1",
            "$bot-banned",
            "$bot-knocks",
            "$ghost-invited",
            "$ghost-joins",
            "$5"
        ]
    );
    assert_eq!(routed.transactions[&sig].events.len(), 10);
    let members: Vec<bool> = routed.memberships.iter().map(|m| m.member).collect();
    assert_eq!(members, [false, false, false, false, true]);
}

#[test]
fn an_invite_or_knock_gives_no_room_and_owners_from_before_memberships_keep_theirs() {
    let view = FakeView::default().with_bridge(test_bridge("alice", "whatsapp"));
    let wa = view.id("whatsapp");
    let view = view.with_room("!imported", &[wa], false);
    let ghost = "@_alice_whatsapp_1:example.test";
    let routed = route(
        &view,
        serde_json::json!({"events": [
            member("!new", "$knock", ghost, "knock"),
            member("!new", "$invite", ghost, "invite"),
            message("!new", "$1"),
            message("!imported", "$2"),
            member("!imported", "$leave", ghost, "leave"),
            message("!imported", "$3"),
        ]}),
    );
    assert_eq!(
        ids(&routed.transactions[&wa].events),
        ["$knock", "$invite", "$2", "$leave"]
    );
    let reasons: Vec<DropReason> = routed.dropped.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, [DropReason::UnownedRoom, DropReason::UnownedRoom]);
}

#[test]
fn deleted_rooms_and_redacted_messages_are_dropped() {
    let view = FakeView::default().with_bridge(test_bridge("alice", "whatsapp"));
    let wa = view.id("whatsapp");
    let view = view
        .with_room("!gone", &[wa], true)
        .with_room("!live", &[wa], false);
    let routed = route(
        &view,
        serde_json::json!({"events": [
            {"type": "m.room.message", "room_id": "!gone", "event_id": "$1", "content": {"body": "x"}},
            {"type": "m.room.message", "room_id": "!live", "event_id": "$2", "content": {}},
            {"type": "m.room.topic", "room_id": "!live", "event_id": "$3", "state_key": "", "content": {}},
        ]}),
    );
    let reasons: Vec<DropReason> = routed.dropped.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, [DropReason::DeletedRoom, DropReason::Redacted]);
    assert_eq!(ids(&routed.transactions[&wa].events), ["$3"]);
}

#[test]
fn device_lists_reach_every_bridge_that_can_receive() {
    let mut push = test_bridge("alice", "signal");
    push.push = true;
    push.address = "http://127.0.0.1:1".into();
    let mut unaddressed = test_bridge("alice", "sms");
    unaddressed.push = true;
    let view = FakeView::default()
        .with_bridge(test_bridge("alice", "whatsapp"))
        .with_bridge(push)
        .with_bridge(unaddressed);
    let routed = route(
        &view,
        serde_json::json!({"events": [], "device_lists": {"changed": ["@bob:example.test"]}}),
    );
    let mut got: Vec<Uuid> = routed.transactions.keys().copied().collect();
    let mut expected = vec![view.id("whatsapp"), view.id("signal")];
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    for txn in routed.transactions.values() {
        assert_eq!(txn.device_lists.changed, ["@bob:example.test"]);
    }
}

#[test]
fn to_device_events_and_key_counts_follow_the_user_namespace() {
    let view = FakeView::default()
        .with_bridge(test_bridge("alice", "whatsapp"))
        .with_bridge(test_bridge("alice", "telegram"));
    let routed = route(
        &view,
        serde_json::json!({"events": [],
            "to_device": [
                {"type": "m.x", "sender": "@a:example.test", "to_user_id": "@_alice_telegram_1:example.test", "content": {}},
                {"type": "m.x", "sender": "@a:example.test", "to_user_id": "@nobody:example.test", "content": {}}],
            "device_one_time_keys_count": {"@_alice_whatsapp_2:example.test": {"D": {"signed_curve25519": 3}}}}),
    );
    assert_eq!(routed.transactions[&view.id("telegram")].to_device.len(), 1);
    let wa = &routed.transactions[&view.id("whatsapp")];
    assert!(wa
        .device_one_time_keys_count
        .contains_key("@_alice_whatsapp_2:example.test"));
    assert_eq!(routed.dropped, [("m.x".into(), DropReason::UnknownUser)]);
}
