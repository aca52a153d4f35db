//! Homeserver transactions (spec 3, 3.1, 3.2, 4.1): routing driven by real Synapse
//! fixtures, idempotence, durable queues, HTTP push and websocket delivery.

use crate::common::*;
use serde_json::{json, Value};

const WA_ROOM: &str = "!o-Qzij4pVy-fGxdFgb8LDLJ5y9ykdPENMse-TF2O8zQ";
const TG_ROOM: &str = "!zn98toRQRNV2CQAcuHQJcek36ezo1QRppc8imcR0-YI";
const GHOST: &str = "@_alice_whatsapp_491701234567:example.test";

fn event(room: &str, sender: &str, id: &str, ts: u64) -> Value {
    json!({"type": "m.room.message", "room_id": room, "sender": sender, "event_id": id,
           "origin_server_ts": ts, "content": {"msgtype": "m.text", "body": id}})
}

fn member(room: &str, user: &str, id: &str) -> Value {
    json!({"type": "m.room.member", "room_id": room, "sender": "@alice:example.test", "state_key": user,
           "event_id": id, "origin_server_ts": 1, "content": {"membership": "join"}})
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Two websocket bridges, alice/whatsapp and alice/telegram, owning the fixtures' rooms.
struct Two {
    _hs: Stub,
    server: TestServer,
    wa: Value,
    tg: Value,
}

async fn two_bridges(extra: &str) -> Two {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(&hs, extra).await;
    let wa = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let tg = provision(&server, "alice", "telegram", json!({"push": false})).await;
    let setup = json!({"events": [
        member(WA_ROOM, "@_alice_whatsapp_bot:example.test", "$setup-wa"),
        member(TG_ROOM, "@_alice_telegram_bot:example.test", "$setup-tg"),
    ]});
    let reply = hs_transaction(&server, "setup", &setup).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    Two {
        _hs: hs,
        server,
        wa,
        tg,
    }
}

impl Two {
    async fn connect(&self) -> (WsBridge, WsBridge) {
        let mut wa =
            WsBridge::connect(&self.server, self.wa["as_token"].as_str().unwrap(), 3).await;
        let mut tg =
            WsBridge::connect(&self.server, self.tg["as_token"].as_str().unwrap(), 3).await;
        assert_eq!(event_ids(&wa.receive_events(1).await), ["$setup-wa"]);
        assert_eq!(event_ids(&tg.receive_events(1).await), ["$setup-tg"]);
        (wa, tg)
    }
}

/// The next transaction frame, acknowledged.
async fn next_txn(ws: &mut WsBridge) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(frame["command"], "transaction", "{frame}");
    ws.ack(&frame).await;
    frame
}

/// Asserts the bridge `alice/{prefix}` got nothing more: a marker (its bot joining a new
/// room) sent now is the very next thing it receives. Deliveries keep their order, so
/// anything queued for it before the marker would come first (or in the same frame).
async fn nothing_more(server: &TestServer, ws: &mut WsBridge, prefix: &str) {
    let marker = format!("$marker-{}", uuid::Uuid::new_v4());
    let room = format!("!{}", &marker[1..]);
    let bot = format!("@_alice_{prefix}_bot:example.test");
    let txn = json!({"events": [member(&room, &bot, &marker)]});
    assert_eq!(hs_transaction(server, &marker, &txn).await.status, 200);
    let frame = next_txn(ws).await;
    assert_eq!(
        event_ids(frame["events"].as_array().unwrap()),
        [marker],
        "nothing else was sent to alice/{prefix}"
    );
}

#[tokio::test]
async fn auth_and_malformed_transactions() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start_with(&hs, "max_body_bytes = 4096").await;
    let url = |p: &str| server.url(p);
    let body = Some(r#"{"events": []}"#);
    let ok = send(
        "PUT",
        &url("/_matrix/app/v1/transactions/1"),
        Some(HS_TOKEN),
        body,
    )
    .await;
    assert_eq!(
        ok.body,
        json!({"com.beeper.asmux.sent_to": {}, "com.beeper.asmux.synchronous": true})
    );
    let legacy = send(
        "PUT",
        &url(&format!("/transactions/2?access_token={HS_TOKEN}")),
        None,
        body,
    )
    .await;
    assert_eq!(legacy.status, 200, "legacy path with query token");
    let wrong = send(
        "PUT",
        &url("/_matrix/app/v1/transactions/3"),
        Some("wrong"),
        body,
    )
    .await;
    wrong.assert_error(401, "M_UNKNOWN_TOKEN");
    assert_eq!(wrong.body["error"], "Invalid auth token");
    send(
        "PUT",
        &url("/_matrix/app/v1/transactions/3"),
        Some(HS_TOKEN),
        Some("{nope"),
    )
    .await
    .assert_error(400, "M_NOT_JSON");
    send(
        "PUT",
        &url("/_matrix/app/v1/transactions/3"),
        Some(HS_TOKEN),
        Some("{}"),
    )
    .await
    .assert_error(400, "M_BAD_JSON");
    send(
        "PUT",
        &url("/_matrix/app/v1/transactions/3"),
        Some(HS_TOKEN),
        Some(r#"{"events": 5}"#),
    )
    .await
    .assert_error(400, "M_BAD_JSON");
    let big = json!({"events": [], "padding": "x".repeat(5000)}).to_string();
    send(
        "PUT",
        &url("/_matrix/app/v1/transactions/3"),
        Some(HS_TOKEN),
        Some(&big),
    )
    .await
    .assert_error(413, "M_TOO_LARGE");
}

#[tokio::test]
async fn fixtures_route_to_the_right_bridges() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    let (mut wa, mut tg) = two.connect().await;
    let (wa_id, tg_id) = (
        two.wa["id"].as_str().unwrap(),
        two.tg["id"].as_str().unwrap(),
    );

    // A message in the WhatsApp room goes to WhatsApp only.
    let reply = hs_transaction(&two.server, "b1", &fixture("b1-text-message.json")).await;
    assert_eq!(
        reply.body["com.beeper.asmux.sent_to"],
        json!({ wa_id: "ok" })
    );
    let frame = next_txn(&mut wa).await;
    assert_eq!(frame["events"], fixture("b1-text-message.json")["events"]);
    nothing_more(&two.server, &mut tg, "telegram").await;

    // Typing arrives under both ephemeral keys; it is delivered once.
    hs_transaction(&two.server, "d1", &fixture("d1-typing.json")).await;
    let frame = next_txn(&mut wa).await;
    assert_eq!(frame["ephemeral"], fixture("d1-typing.json")["ephemeral"]);
    assert!(frame.get("de.sorunome.msc2409.ephemeral").is_none());

    // Presence has no room: dropped.
    let reply = hs_transaction(&two.server, "d4", &fixture("d4-presence.json")).await;
    assert_eq!(reply.body["com.beeper.asmux.sent_to"], json!({}));

    // To-device by recipient, OTK counts and fallback key types by user.
    hs_transaction(&two.server, "e1", &fixture("e1-to-device.json")).await;
    let frame = next_txn(&mut wa).await;
    let e1 = fixture("e1-to-device.json");
    assert_eq!(frame["to_device"], e1["de.sorunome.msc2409.to_device"]);
    assert_eq!(
        frame["device_one_time_keys_count"],
        e1["org.matrix.msc3202.device_one_time_keys_count"]
    );
    assert_eq!(
        frame["device_unused_fallback_key_types"],
        e1["org.matrix.msc3202.device_unused_fallback_key_types"]
    );
    assert_eq!(frame["events"], json!([]));

    // A batch for both rooms: each bridge gets its own events, in order.
    let h = fixture("h-batch-several-pdus.json");
    let reply = hs_transaction(&two.server, "h", &h).await;
    assert_eq!(
        reply.body["com.beeper.asmux.sent_to"],
        json!({ wa_id: "ok", tg_id: "ok" })
    );
    let wa_frame = next_txn(&mut wa).await;
    let tg_frame = next_txn(&mut tg).await;
    let pdus = h["events"].as_array().unwrap();
    assert_eq!(wa_frame["events"], json!([pdus[0], pdus[1], pdus[3]]));
    assert_eq!(tg_frame["events"], json!([pdus[2]]));
    assert_eq!(tg_frame["ephemeral"], h["ephemeral"]);
    assert!(wa_frame.get("ephemeral").is_none());

    // Device lists go to every bridge that can receive anything: websocket bridges,
    // connected or not, and push bridges (mautrix-python reads them from pushes).
    let push = Stub::bridge().await;
    let signal = provision(
        &two.server,
        "alice",
        "signal",
        json!({"address": push.url()}),
    )
    .await;
    let offline = provision(&two.server, "alice", "slack", json!({"push": false})).await;
    let no_address = provision(&two.server, "alice", "sms", json!({})).await;
    let reply = hs_transaction(
        &two.server,
        "g1",
        &fixture("g1-device-list-changed-real-user.json"),
    )
    .await;
    let sent_to = &reply.body["com.beeper.asmux.sent_to"];
    for reg in [&signal, &offline] {
        assert_eq!(sent_to[reg["id"].as_str().unwrap()], "ok", "{sent_to}");
    }
    assert_eq!(
        sent_to.get(no_address["id"].as_str().unwrap()),
        None,
        "{sent_to}"
    );
    let lists =
        fixture("g1-device-list-changed-real-user.json")["org.matrix.msc3202.device_lists"].clone();
    assert_eq!(next_txn(&mut wa).await["device_lists"], lists);
    assert_eq!(next_txn(&mut tg).await["device_lists"], lists);
    assert_eq!(
        push.wait_for_transactions(1).await[0].body["device_lists"],
        lists
    );
    let mut slack = WsBridge::connect(&two.server, offline["as_token"].as_str().unwrap(), 3).await;
    assert_eq!(next_txn(&mut slack).await["device_lists"], lists);

    // The ghost joining the encrypted room registers it for WhatsApp (state_key).
    hs_transaction(
        &two.server,
        "f1",
        &fixture("f1-otk-counts-on-ghost-join.json"),
    )
    .await;
    let frame = next_txn(&mut wa).await;
    assert_eq!(frame["events"][0]["state_key"], GHOST);
    assert_eq!(
        frame["device_one_time_keys_count"][GHOST]["MNPTKOCBTF"]["signed_curve25519"],
        3
    );
    nothing_more(&two.server, &mut tg, "telegram").await;
}

#[tokio::test]
async fn retried_and_reused_transaction_ids() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    let (mut wa, _tg) = two.connect().await;

    // First attempt of 11 is processed; Synapse's retry (now redacted) is a duplicate.
    assert_eq!(
        hs_transaction(
            &two.server,
            "11",
            &fixture("c2-redacted-event-first-attempt-500.json")
        )
        .await
        .status,
        200
    );
    let frame = next_txn(&mut wa).await;
    assert!(frame["events"][0]["content"]["body"].is_string());
    let retry = hs_transaction(
        &two.server,
        "11",
        &fixture("c3-redacted-event-retry-same-txn-id.json"),
    )
    .await;
    assert_eq!((retry.status, retry.body.clone()), (200, json!({})));
    nothing_more(&two.server, &mut wa, "whatsapp").await;

    // A to-device transaction, and its emptied retry.
    assert_eq!(
        hs_transaction(
            &two.server,
            "2",
            &fixture("e3-to-device-first-attempt-500.json")
        )
        .await
        .status,
        200
    );
    let frame = next_txn(&mut wa).await;
    assert_eq!(frame["to_device"].as_array().unwrap().len(), 1);
    let retry = hs_transaction(
        &two.server,
        "2",
        &fixture("e4-to-device-retry-emptied.json"),
    )
    .await;
    assert_eq!(retry.body, json!({}));
    nothing_more(&two.server, &mut wa, "whatsapp").await;

    // A to-device event under a known id is never a duplicate.
    let again = hs_transaction(
        &two.server,
        "2",
        &fixture("e3-to-device-first-attempt-500.json"),
    )
    .await;
    assert!(again.body.get("com.beeper.asmux.sent_to").is_some());
    next_txn(&mut wa).await;

    // Synapse restarted and counts from 1 again: new events under an old id are delivered.
    assert_eq!(
        hs_transaction(
            &two.server,
            "1",
            &json!({"events": [event(WA_ROOM, "@alice:example.test", "$one", 1)]})
        )
        .await
        .status,
        200
    );
    next_txn(&mut wa).await;
    wait_queue_empty(&two.server, "alice/whatsapp").await;
    let server = two.server.restart().await;
    let mut wa = WsBridge::connect(&server, two.wa["as_token"].as_str().unwrap(), 3).await;
    let l = fixture("l-after-restart-no-legacy-auth.json");
    let reply = hs_transaction(&server, "1", &l).await;
    assert!(
        reply.body.get("com.beeper.asmux.sent_to").is_some(),
        "{}",
        reply.text
    );
    assert_eq!(next_txn(&mut wa).await["events"], l["events"]);
    // While the same events again under the same id, even after the restart, are not.
    assert_eq!(hs_transaction(&server, "1", &l).await.body, json!({}));
    nothing_more(&server, &mut wa, "whatsapp").await;
}

#[tokio::test]
async fn multi_owner_deleted_rooms_and_redactions() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    let (mut wa, mut tg) = two.connect().await;
    // The Telegram bot joins the WhatsApp room too: the room now has two owners.
    hs_transaction(
        &two.server,
        "j",
        &json!({"events": [member(WA_ROOM, "@_alice_telegram_bot:example.test", "$tg-join")]}),
    )
    .await;
    assert_eq!(event_ids(&wa.receive_events(1).await), ["$tg-join"]);
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$tg-join"]);
    hs_transaction(
        &two.server,
        "m",
        &json!({"events": [event(WA_ROOM, "@bob:example.test", "$both", 1)]}),
    )
    .await;
    assert_eq!(event_ids(&wa.receive_events(1).await), ["$both"]);
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$both"]);

    // Redacted messages (empty content) are dropped; other events in the batch are not.
    let redacted = json!({"type": "m.room.message", "room_id": WA_ROOM, "sender": "@bob:example.test", "event_id": "$red", "content": {}});
    hs_transaction(
        &two.server,
        "r",
        &json!({"events": [redacted, event(TG_ROOM, "@bob:example.test", "$tg-only", 1)]}),
    )
    .await;
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$tg-only"]);
    nothing_more(&two.server, &mut wa, "whatsapp").await;

    // A deleted room drops everything.
    let del = send(
        "DELETE",
        &two.server.url(&format!("/_matrix/asmux/room/{}", WA_ROOM)),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(del.status, 204);
    let reply = hs_transaction(&two.server, "gone", &json!({"events": [event(WA_ROOM, "@bob:example.test", "$gone", 1), member(WA_ROOM, "@_alice_whatsapp_x:example.test", "$gone2")]})).await;
    assert_eq!(reply.body["com.beeper.asmux.sent_to"], json!({}));
    nothing_more(&two.server, &mut wa, "whatsapp").await;
    nothing_more(&two.server, &mut tg, "telegram").await;

    // Events of rooms nobody owns are dropped.
    let reply = hs_transaction(
        &two.server,
        "u",
        &json!({"events": [event("!unknown", "@bob:example.test", "$u", 1)]}),
    )
    .await;
    assert_eq!(reply.body["com.beeper.asmux.sent_to"], json!({}));
}

fn membership(room: &str, user: &str, id: &str, membership: &str) -> Value {
    json!({"type": "m.room.member", "room_id": room, "sender": user, "state_key": user,
           "event_id": id, "origin_server_ts": 1, "content": {"membership": membership}})
}

/// A bridge owns a room while one of its users is joined there: an invite or a knock
/// gives it nothing but that membership event, and once its last user has left or is
/// banned it gets none of the room's events, while another bridge still in the room keeps
/// getting them.
#[tokio::test]
async fn rooms_follow_the_memberships_of_their_bridges_users() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    let (mut wa, mut tg) = two.connect().await;
    let (wa_bot, tg_bot) = (
        "@_alice_whatsapp_bot:example.test",
        "@_alice_telegram_bot:example.test",
    );
    let bob = "@bob:example.test";
    let send = |id: &'static str, events: Vec<Value>| {
        let server = &two.server;
        async move {
            let reply = hs_transaction(server, id, &json!({ "events": events })).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    };
    send(
        "joins",
        vec![
            membership(WA_ROOM, tg_bot, "$tg-joins", "join"),
            membership(WA_ROOM, GHOST, "$ghost-joins", "join"),
        ],
    )
    .await;
    assert_eq!(
        event_ids(&wa.receive_events(2).await),
        ["$tg-joins", "$ghost-joins"]
    );
    assert_eq!(tg.receive_events(2).await.len(), 2);

    // The WhatsApp bot leaves; its ghost keeps the room for the bridge.
    send(
        "bot-leaves",
        vec![
            membership(WA_ROOM, wa_bot, "$bot-leaves", "leave"),
            event(WA_ROOM, bob, "$still", 1),
        ],
    )
    .await;
    assert_eq!(
        event_ids(&wa.receive_events(2).await),
        ["$bot-leaves", "$still"]
    );
    assert_eq!(tg.receive_events(2).await.len(), 2);

    // The ghost, its last user there, is banned: the ban is its last event of the room.
    send(
        "ban",
        vec![
            membership(WA_ROOM, GHOST, "$ghost-banned", "ban"),
            event(WA_ROOM, bob, "$after-ban", 1),
        ],
    )
    .await;
    assert_eq!(event_ids(&wa.receive_events(1).await), ["$ghost-banned"]);
    assert_eq!(
        event_ids(&tg.receive_events(2).await),
        ["$ghost-banned", "$after-ban"]
    );
    nothing_more(&two.server, &mut wa, "whatsapp").await;

    // A knock or an invite gives no room (the bridge gets its user's membership, as
    // from Matrix); a join gives it back.
    send(
        "knock",
        vec![
            membership("!knocked", GHOST, "$knock", "knock"),
            event("!knocked", bob, "$not-yours", 1),
            membership(WA_ROOM, GHOST, "$invited", "invite"),
            event(WA_ROOM, bob, "$not-yet", 1),
            membership(WA_ROOM, GHOST, "$joined-again", "join"),
            event(WA_ROOM, bob, "$yours-again", 1),
        ],
    )
    .await;
    assert_eq!(
        event_ids(&wa.receive_events(4).await),
        ["$knock", "$invited", "$joined-again", "$yours-again"]
    );
    nothing_more(&two.server, &mut wa, "whatsapp").await;

    // Memberships are kept across a restart.
    drop((wa, tg));
    let server = two.server.restart().await;
    let mut wa = WsBridge::connect(&server, two.wa["as_token"].as_str().unwrap(), 3).await;
    let reply = hs_transaction(
        &server,
        "after-restart",
        &json!({"events": [membership(WA_ROOM, GHOST, "$left", "leave"), event(WA_ROOM, bob, "$gone", 1)]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    // The last marker may come again first: its acknowledgement need not have been
    // written before the restart (a resend keeps its txn_id, which bridges drop).
    let mut received = event_ids(&wa.receive_events(1).await);
    if received[0].starts_with("$marker-") {
        received = event_ids(&wa.receive_events(1).await);
    }
    assert_eq!(received, ["$left"]);
    nothing_more(&server, &mut wa, "whatsapp").await;
}

/// A deleted bridge is gone at once, before its rooms are swept: its rooms' events go to
/// the other owners only, and a bridge provisioned again under its name starts without
/// them.
#[tokio::test]
async fn a_deleted_bridge_loses_its_rooms_at_once() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    let (_wa, mut tg) = two.connect().await;
    let tg_bot = "@_alice_telegram_bot:example.test";
    let joined = json!({"events": [membership(WA_ROOM, tg_bot, "$tg-joins", "join")]});
    assert_eq!(hs_transaction(&two.server, "j", &joined).await.status, 200);
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$tg-joins"]);

    let url = two.server.url("/_matrix/asmux/appservice/alice/whatsapp");
    assert_eq!(
        send("DELETE", &url, Some(SHARED_SECRET), None).await.status,
        204
    );
    let again = provision(&two.server, "alice", "whatsapp", json!({"push": false})).await;
    assert_ne!(again["id"], two.wa["id"]);
    let mut wa = WsBridge::connect(&two.server, again["as_token"].as_str().unwrap(), 3).await;
    let message = json!({"events": [event(WA_ROOM, "@bob:example.test", "$after-delete", 1)]});
    let reply = hs_transaction(&two.server, "m", &message).await;
    assert_eq!(
        reply.body["com.beeper.asmux.sent_to"],
        json!({ two.tg["id"].as_str().unwrap(): "ok" })
    );
    assert_eq!(event_ids(&tg.receive_events(1).await), ["$after-delete"]);
    nothing_more(&two.server, &mut wa, "whatsapp").await;
}

#[tokio::test]
async fn owner_messages_filter() {
    let two = two_bridges("max_pdu_age_seconds = 0\nevent_filter = \"owner_messages\"").await;
    let mut wa = WsBridge::connect(&two.server, two.wa["as_token"].as_str().unwrap(), 3).await;
    let mut puppeted = event(WA_ROOM, "@alice:example.test", "$puppet", 1);
    puppeted["content"]["fi.mau.double_puppet_source"] = json!("mautrix-whatsapp");
    let batch = json!({"events": [
        fixture("b1-text-message.json")["events"][0],
        fixture("b5-bridge-bot-message-echo.json")["events"][0],
        puppeted,
        member(WA_ROOM, "@_alice_whatsapp_y:example.test", "$member"),
        json!({"type": "m.reaction", "room_id": WA_ROOM, "sender": "@alice:example.test", "event_id": "$react", "content": {"m.relates_to": {"key": "x"}}}),
    ]});
    hs_transaction(&two.server, "f", &batch).await;
    let frame = next_txn(&mut wa).await;
    let b1_id = fixture("b1-text-message.json")["events"][0]["event_id"].clone();
    assert_eq!(
        event_ids(frame["events"].as_array().unwrap()),
        [b1_id.as_str().unwrap(), "$react"]
    );
}

#[tokio::test]
async fn expired_owner_messages_are_dropped_others_kept() {
    let two = two_bridges("max_pdu_age_seconds = 60").await;
    let old = now_ms() - 120_000;
    let mut puppeted = event(WA_ROOM, "@alice:example.test", "$old-puppet", old);
    puppeted["content"]["net.maunium.whatsapp.puppet"] = json!(true);
    let batch = json!({"events": [
        event(WA_ROOM, "@alice:example.test", "$old-owner", old),
        event(WA_ROOM, "@bob:example.test", "$old-other", old),
        puppeted,
        event(WA_ROOM, "@alice:example.test", "$fresh-owner", now_ms()),
        json!({"type": "m.room.message", "room_id": WA_ROOM, "sender": "@alice:example.test", "event_id": "$no-ts", "content": {"body": "x"}}),
    ]});
    hs_transaction(&two.server, "x", &batch).await;
    let mut wa = WsBridge::connect(&two.server, two.wa["as_token"].as_str().unwrap(), 3).await;
    let frame = next_txn(&mut wa).await;
    // The owner's own old invite from the setup expired too.
    assert_eq!(
        event_ids(frame["events"].as_array().unwrap()),
        ["$old-other", "$old-puppet", "$fresh-owner", "$no-ts"]
    );
}

#[tokio::test]
async fn offline_queue_survives_restart_and_arrives_merged_in_order() {
    let two = two_bridges("max_pdu_age_seconds = 0").await;
    for i in 0..25 {
        let reply = hs_transaction(
            &two.server,
            &format!("t{i}"),
            &json!({"events": [event(WA_ROOM, "@bob:example.test", &format!("$e{i}"), 1)]}),
        )
        .await;
        assert_eq!(
            reply.body["com.beeper.asmux.sent_to"][two.wa["id"].as_str().unwrap()],
            "ok"
        );
    }
    let server = two.server.restart().await;
    let mut wa = WsBridge::connect(&server, two.wa["as_token"].as_str().unwrap(), 3).await;
    let mut ids = Vec::new();
    let mut frames = 0;
    while ids.len() < 26 {
        let frame = next_txn(&mut wa).await;
        // One event per queued transaction here.
        let txns = frame["events"].as_array().unwrap().len();
        assert!(txns <= 10, "at most 10 queued transactions per delivery");
        ids.extend(event_ids(frame["events"].as_array().unwrap()));
        frames += 1;
    }
    let mut expected = vec!["$setup-wa".to_owned()];
    expected.extend((0..25).map(|i| format!("$e{i}")));
    assert_eq!(ids, expected);
    assert_eq!(frames, 3, "26 queued transactions go out as 10 + 10 + 6");
    nothing_more(&server, &mut wa, "whatsapp").await;
    wait_queue_empty(&server, "alice/whatsapp").await;
}

#[tokio::test]
async fn push_delivery_retries_in_order_until_the_bridge_answers() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let bridge = Stub::failing_bridge(3).await;
    let reg = provision(&server, "alice", "signal", json!({"address": bridge.url()})).await;
    let room_setup = json!({"events": [member(WA_ROOM, "@_alice_signal_bot:example.test", "$s0")]});
    let reply = hs_transaction(&server, "1", &room_setup).await;
    assert_eq!(
        reply.body["com.beeper.asmux.sent_to"][reg["id"].as_str().unwrap()],
        "ok"
    );
    // Three failures, then success: four attempts of the same transaction.
    let got = bridge.wait_for_transactions(4).await;
    assert!(got.iter().all(|p| p.txn_id() == got[0].txn_id()), "{got:?}");
    assert_ne!(got[0].txn_id().unwrap(), "1", "asmux's own delivery id");
    let hs_token = reg["hs_token"].as_str().unwrap();
    assert_eq!(
        got[0].authorization.as_deref(),
        Some(format!("Bearer {hs_token}").as_str())
    );
    assert!(got[0].query.contains(&format!("access_token={hs_token}")));
    assert_eq!(got[3].body["events"][0]["event_id"], "$s0");
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/signal/status")
        .await;
    assert_eq!(status.body["unreachable_since"], serde_json::Value::Null);

    // The bridge is down far longer than the ten attempts after which the original gave
    // up: nothing is dropped, to-device events (which it used to try twice) included.
    bridge
        .failures
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    hs_transaction(
        &server,
        "2",
        &json!({"events": [event(WA_ROOM, "@bob:example.test", "$o2", 1)]}),
    )
    .await;
    let to_device = json!({"events": [], "de.sorunome.msc2409.to_device": [
        {"type": "m.x", "sender": "@alice:example.test", "to_user_id": "@_alice_signal_g:example.test", "to_device_id": "D", "content": {}}]});
    hs_transaction(&server, "3", &to_device).await;
    let failing = bridge.wait_for_transactions(4 + 30).await;
    assert!(
        failing[4..]
            .iter()
            .all(|p| p.txn_id() == failing[4].txn_id()),
        "every retry is the same delivery"
    );
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/signal/status")
        .await;
    assert!(
        status.body["unreachable_since"].as_u64().is_some(),
        "{}",
        status.text
    );
    assert_eq!(status.body["queue_depth"], 2);
    for i in 4..8 {
        hs_transaction(
            &server,
            &i.to_string(),
            &json!({"events": [event(WA_ROOM, "@bob:example.test", &format!("$o{i}"), 1)]}),
        )
        .await;
    }

    // Back: everything arrives, in order, and the bridge is reachable again.
    bridge
        .failures
        .store(0, std::sync::atomic::Ordering::SeqCst);
    wait_queue_empty(&server, "alice/signal").await;
    // Each delivery once (its retries carry the same body).
    let mut seen = std::collections::HashSet::new();
    let received = bridge.transactions();
    let delivered = received[4..].iter().filter(|p| seen.insert(p.txn_id()));
    let mut events = Vec::new();
    let mut to_device_seen = false;
    for push in delivered {
        events.extend(event_ids(push.body["events"].as_array().unwrap()));
        to_device_seen |= push.body["to_device"].is_array();
    }
    assert_eq!(events, ["$o2", "$o4", "$o5", "$o6", "$o7"]);
    assert!(to_device_seen, "the to-device event was delivered too");
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/signal/status")
        .await;
    assert_eq!(status.body["unreachable_since"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_operator_can_drop_a_queue_on_purpose() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let bridge = Stub::failing_bridge(usize::MAX).await;
    provision(&server, "alice", "signal", json!({"address": bridge.url()})).await;
    let room_setup = json!({"events": [member(WA_ROOM, "@_alice_signal_bot:example.test", "$s0")]});
    hs_transaction(&server, "1", &room_setup).await;
    hs_transaction(
        &server,
        "2",
        &json!({"events": [event(WA_ROOM, "@bob:example.test", "$s1", 1)]}),
    )
    .await;
    bridge.wait_for_transactions(3).await;
    let url = server.url("/_matrix/asmux/appservice/alice/signal/queue");
    let cleared = send("DELETE", &url, Some(SHARED_SECRET), None).await;
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert_eq!(cleared.body, json!({"dropped": 2}));
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/signal/status")
        .await;
    assert_eq!(status.body["queue_depth"], 0);
    // The worker stopped pushing what was dropped. The next transaction is the first
    // thing the bridge gets after the clear, under a new id.
    let before = bridge.transactions().len();
    bridge
        .failures
        .store(0, std::sync::atomic::Ordering::SeqCst);
    hs_transaction(
        &server,
        "3",
        &json!({"events": [event(WA_ROOM, "@bob:example.test", "$s2", 1)]}),
    )
    .await;
    let got = bridge.wait_for_transactions(before + 1).await;
    let after: Vec<_> = got[before..]
        .iter()
        .flat_map(|p| event_ids(p.body["events"].as_array().unwrap()))
        .collect();
    assert_eq!(after, ["$s2"]);
    send("DELETE", &url, Some("wrong"), None)
        .await
        .assert_error(403, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn push_bridge_without_address_gets_nothing_queued() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let reg = provision(&server, "alice", "signal", json!({})).await;
    let reply = hs_transaction(
        &server,
        "1",
        &json!({"events": [member(WA_ROOM, "@_alice_signal_bot:example.test", "$x")]}),
    )
    .await;
    assert_eq!(
        reply.body["com.beeper.asmux.sent_to"],
        json!({ reg["id"].as_str().unwrap(): "no-address" })
    );
    let status = server
        .root_get("/_matrix/asmux/appservice/alice/signal/status")
        .await;
    assert_eq!(status.body["queue_depth"], 0);
}
