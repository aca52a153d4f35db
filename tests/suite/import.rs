//! `asmux import-original` against a real PostgreSQL holding the original's schema: the
//! imported bridges work unchanged, and every refusal leaves nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::postgres::Postgres;
use crate::common::*;
use data_encoding::BASE64;
use serde_json::{json, Value};
use tempfile::TempDir;

const WA: &str = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";
const SIGNAL: &str = "0b7c9e52-11aa-4c3d-9e8f-5a6b7c8d9e0f";
const TELEGRAM: &str = "d3e4f5a6-b7c8-4d9e-8f0a-1b2c3d4e5f60";
const IMESSAGE: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const SMS: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";

/// Tokens of the three generations the original made: urlsafe base64 (since 2021-03),
/// alphanumeric before, and the hex default of migration 3.
const ALICE_API: &str = "rV9-kq2M_xT4pLw8ZbN3cYd6Hf1Js0Ua7Ge5Ri-Ko2Wm8Qt4Xy6Vn3Bz9Pc1Dh5F";
const ALICE_LOGIN: &str = "Lq3_wE8rT1yU6iO-pA4sD9fG2hJ7kZ5xC0vB3nM8qW1eR6tY4uI9oP2aS7dF5gH";
const BOB_API: &str = "5e0d1a7c9b3f2e8d4c6a0b1f7e3d9c2a8b4f6e0d1c7a3b9f5e2d8c4a6b0f1e7d";
const BOB_LOGIN: &str = "q8W2e5R7t1Y4u6I9o3P0a2S5d7F1g4H8j6K9l3Z0x2C5v7B1n4M8q6W9e3R0t2Y5";
/// The secret part of the websocket bridge's token, with a `-` inside.
const WA_AS: &str = "Xy-7dK2mQ9vL_4pR8tW1zA3cE6g";
const WA_HS: &str = "hS0-wa9Kd3mP7qT2vX6zB1nR5yF8jL4cG0eW3iO7uA2sD6fH9kM1pQ5tV8xZ3bN7";
const SIGNAL_AS: &str = "sG4kL8pQ2tW6yB0dF3hJ7mN1rV5";
const SIGNAL_HS: &str = "sH7-kP2mQ9tW4yB8dF1hJ6nR3vX0zC5gL7eA2iO4uS9wD1fG6jK3lM8pT0yV5bN2";
/// 32 bytes 0..31 in base32, the form the original handed out, and their SHA-256.
const WA_CONFIG_PASSWORD: &str = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQ";
const WA_CONFIG_HASH: &str = "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd";

fn schema() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mautrix-asmux-v11.sql");
    std::fs::read_to_string(path).unwrap()
}

/// Rows as the original leaves them, with the edge cases of the fact sheet: NULL push,
/// an expiry without a hash, an empty push address, a bot with `_`, a hand-made owner
/// name, a user without bridges, a deleted room, extra keys in the JSON columns.
fn rows(signal_address: &str) -> String {
    format!(
        r#"
INSERT INTO "user" (id, login_token, api_token, proxy_config) VALUES
  ('alice', '{ALICE_LOGIN}', '{ALICE_API}',
   '{{"ssh": {{"host": "proxy.example.test", "port": 22, "username": "nova", "hostKeySha256": "abc",
     "forwardPort": 1080, "forwardHost": "localhost", "comment": "extra",
     "publicKey": "ssh-ed25519 AAAAC3Nza alice", "privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
     "passphrase": "hunter2"}},
     "socks": {{"username": "nova-alice-proxy", "password": "socks-pass"}}}}'),
  ('bob', '{BOB_LOGIN}', '{BOB_API}', NULL),
  ('carol', 'carol-login-token-0123456789', 'carol-api-token-0123456789', NULL),
  ('Dave.X', 'dave-login-token-0123456789', 'dave-api-token-0123456789', NULL);

INSERT INTO appservice (id, owner, prefix, bot, address, hs_token, as_token, push,
                        config_password_hash, config_password_expiry, push_key) VALUES
  ('{WA}', 'alice', 'whatsapp', 'bot', '', '{WA_HS}', '{WA_AS}', NULL,
   '\x{WA_CONFIG_HASH}', NULL,
   '{{"url": "https://push.example.test/_matrix/push/v1/notify", "app_id": "com.example.app",
      "pushkey": "pk1", "pushkey_ts": 1690000000000, "data": {{"format": "x"}}, "extra": true}}'),
  ('{SIGNAL}', 'alice', 'signal', 'bot', '{signal_address}', '{SIGNAL_HS}', '{SIGNAL_AS}', true,
   NULL, NULL, NULL),
  ('{TELEGRAM}', 'alice', 'telegram', 'tg_bot', '', 'tg-hs-token-0123456789', 'tg-as-token', false,
   NULL, 1700000000, NULL),
  ('{IMESSAGE}', 'bob', 'imessage', 'bot', '', 'im-hs-token-0123456789', 'im-as-token', true,
   NULL, NULL, NULL),
  ('{SMS}', 'Dave.X', 'sms', 'bot', '', 'sms-hs-token-0123456789', 'sms-as-token', false,
   NULL, NULL, NULL);

INSERT INTO room (id, owner, deleted) VALUES
  ('!wa-room:example.test', '{WA}', false),
  ('!signal-live:example.test', '{SIGNAL}', false),
  ('!signal-gone:example.test', '{SIGNAL}', true),
  ('!tg-room:example.test', '{TELEGRAM}', false);
"#
    )
}

/// A directory with a config for asmux pointed at `homeserver`, with a login shared
/// secret.
fn asmux_dir(homeserver: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = config_text(homeserver, 0).replace(
        "timeout_seconds = 5",
        "timeout_seconds = 5\nlogin_shared_secret = \"synapse-secret\"",
    );
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

fn import(config: &Path, database: &str, extra: &[&str]) -> Output {
    let mut args = vec!["import-original", "--database", database];
    args.extend(extra);
    cli(config, &args)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

async fn original_database(pg: &Postgres, db: &str, signal_address: &str) {
    pg.create_database(db).await;
    pg.execute(db, &schema()).await;
    pg.execute(db, &rows(signal_address)).await;
}

fn hmac(key: &str, user: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(user.as_bytes());
    data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
}

fn message(room: &str, id: &str) -> Value {
    json!({"type": "m.room.message", "room_id": room, "event_id": id,
           "sender": "@someone:example.test", "origin_server_ts": 1, "content": {"body": "hi"}})
}

#[tokio::test]
#[ignore = "needs root and PostgreSQL's server binaries (Debian's postgresql)"]
async fn an_imported_database_serves_every_bridge_unchanged() {
    let pg = Postgres::start(false);
    let hs = Stub::homeserver().await;
    let signal = Stub::bridge().await;
    original_database(&pg, "original", &signal.url()).await;
    let (dir, config) = asmux_dir(&hs.url());
    let data = dir.path().join("data");

    let dry = import(&config, &pg.url("original"), &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("Dry run"), "{}", text(&dry));
    assert!(!data.exists(), "a dry run wrote the data directory");

    let out = import(&config, &pg.url("original"), &[]);
    let summary = text(&out);
    assert!(out.status.success(), "{summary}");
    for expected in [
        "users:   4 (1 without bridges, 1 with proxy settings)",
        "bridges: 5 (2 HTTP push, 3 websocket; 1 with a config password, 1 with a push key)",
        "rooms:   4 (1 deleted",
        "bob/imessage (a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d) is an HTTP push bridge without an address",
        "owner \"Dave.X\" is outside [a-z0-9=.-]{1,32}",
        "not carried: transactions still queued in the original's Redis",
    ] {
        assert!(summary.contains(expected), "{expected:?} in\n{summary}");
    }
    assert!(
        !summary.contains(WA_AS) && !summary.contains(ALICE_API),
        "{summary}"
    );

    let server = TestServer::start_in(dir).await;

    // The websocket bridge connects with the token it always had and gets its room.
    let mut ws = WsBridge::connect(&server, &format!("{WA}-{WA_AS}"), 4).await;
    // The push bridge gets its live room; the deleted room stays deleted.
    let txn = json!({"events": [
        message("!wa-room:example.test", "$wa"),
        message("!signal-live:example.test", "$live"),
        message("!signal-gone:example.test", "$gone"),
    ]});
    assert_eq!(hs_transaction(&server, "t1", &txn).await.status, 200);
    assert_eq!(event_ids(&ws.receive_events(1).await), ["$wa"]);
    let pushed = signal.wait_for_transactions(1).await;
    assert_eq!(
        event_ids(pushed[0].body["events"].as_array().unwrap()),
        ["$live"]
    );
    assert!(
        pushed[0]
            .query
            .contains(&format!("access_token={SIGNAL_HS}")),
        "{}",
        pushed[0].query
    );

    // The owner's old token manages her bridges, and the registration is what the
    // original gave out.
    let wa_url = server.url("/_matrix/asmux/appservice/alice/whatsapp");
    let reg = send("GET", &wa_url, Some(ALICE_API), None).await;
    assert_eq!(reg.status, 200, "{}", reg.text);
    assert_eq!(reg.body["id"], WA);
    assert_eq!(reg.body["as_token"], format!("{WA}-{WA_AS}"));
    assert_eq!(reg.body["hs_token"], WA_HS);
    assert_eq!(reg.body["login_shared_secret"], ALICE_LOGIN);
    assert_eq!(reg.body["sender_localpart"], "_alice_whatsapp_bot");
    let tg = send(
        "GET",
        &server.url("/_matrix/asmux/appservice/alice/telegram"),
        Some(ALICE_API),
        None,
    )
    .await;
    assert_eq!(tg.body["sender_localpart"], "_alice_telegram_tg_bot");
    let mine = send(
        "GET",
        &server.url("/_matrix/asmux/appservices"),
        Some(ALICE_API),
        None,
    )
    .await;
    assert_eq!(
        mine.body["appservices"].as_array().map(Vec::len),
        Some(3),
        "{}",
        mine.text
    );
    // The legacy hex token of bob still works, for his bridges only.
    let bobs = send(
        "GET",
        &server.url("/_matrix/asmux/appservices"),
        Some(BOB_API),
        None,
    )
    .await;
    assert_eq!(
        bobs.body["appservices"].as_array().map(Vec::len),
        Some(1),
        "{}",
        bobs.text
    );
    send("GET", &wa_url, Some(BOB_API), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");

    // A bridge's login password made from the imported login token still converts.
    let user = "@_alice_whatsapp_4915550001:example.test";
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                       "password": hmac(ALICE_LOGIN, user)});
    let echo = send(
        "POST",
        &server.url("/_matrix/client/v3/login"),
        None,
        Some(&login.to_string()),
    )
    .await;
    assert_eq!(echo.body["body"]["password"], hmac("synapse-secret", user));

    // The config password the original handed out (it never expires) still downloads,
    // typed in any case.
    let basic = format!(
        "Basic {}",
        BASE64.encode(format!("alice:{}", WA_CONFIG_PASSWORD.to_lowercase()).as_bytes())
    );
    let download = send_raw(
        "GET",
        &server.url("/_matrix/asmux/public/config/whatsapp/download"),
        Some(&basic),
        None,
    )
    .await;
    assert_eq!(download.status, 200, "{}", download.text);
    assert!(
        download.text.contains(&format!("{WA}-{WA_AS}")),
        "{}",
        download.text
    );

    // The imported proxy settings, without the private key for a management token.
    let proxy = send(
        "GET",
        &server.url("/_matrix/asmux/user/alice/proxy"),
        Some(ALICE_API),
        None,
    )
    .await;
    assert_eq!(proxy.status, 200, "{}", proxy.text);
    assert_eq!(proxy.body["ssh"]["host"], "proxy.example.test");
    assert_eq!(proxy.body["ssh"]["comment"], "extra");
    assert_eq!(proxy.body["socks"]["username"], "nova-alice-proxy");
    assert!(
        proxy.body["ssh"].get("privateKey").is_none(),
        "{}",
        proxy.text
    );
    assert!(
        proxy.body["ssh"].get("passphrase").is_none(),
        "{}",
        proxy.text
    );

    ws.close().await;
    server.stop().await;
}

/// Every refusal says why and writes nothing: an unreachable database, another
/// migration version, a database that is not the original's, a non-empty data
/// directory, a row asmux cannot carry.
#[tokio::test]
#[ignore = "needs root and PostgreSQL's server binaries (Debian's postgresql)"]
async fn refusals_say_why_and_write_nothing() {
    let pg = Postgres::start(false);
    let (dir, config) = asmux_dir("http://127.0.0.1:9");
    let data = dir.path().join("data");
    let refused = |out: &Output, expected: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        assert!(
            text(out).contains(expected),
            "{expected:?} in\n{}",
            text(out)
        );
    };

    let nowhere = format!(
        "postgres://{}@127.0.0.1:{}/x",
        crate::common::postgres::PG_USER,
        free_port()
    );
    refused(
        &import(&config, &nowhere, &[]),
        "cannot connect to the original's database",
    );
    assert!(!data.exists());

    pg.create_database("empty").await;
    refused(
        &import(&config, &pg.url("empty"), &[]),
        "not a mautrix-asmux database",
    );

    original_database(&pg, "old", "").await;
    pg.execute("old", "UPDATE version SET version = 10").await;
    refused(
        &import(&config, &pg.url("old"), &[]),
        "the database is at migration version 10; asmux imports version 11",
    );
    assert!(!data.exists());

    original_database(&pg, "bad", "").await;
    pg.execute(
        "bad",
        r#"INSERT INTO "user" (id, login_token, api_token) VALUES ('eve/x', 'l', 'a');
           INSERT INTO appservice (id, owner, prefix, bot, address, hs_token, as_token)
             VALUES ('11111111-2222-4333-8444-555555555555', 'eve/x', 'sms', 'bot', '', 'h', 'a2');
           UPDATE appservice SET config_password_hash = '\x0102' WHERE prefix = 'whatsapp';"#,
    )
    .await;
    let out = import(&config, &pg.url("bad"), &["--dry-run"]);
    refused(&out, "3 row(s) cannot be imported; nothing was written");
    for expected in [
        r#"user "eve/x": its id contains "/""#,
        "bridge eve/x/sms (11111111-2222-4333-8444-555555555555): its owner contains \"/\"",
        "bridge alice/whatsapp (6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b): config_password_hash has 2 bytes",
    ] {
        assert!(text(&out).contains(expected), "{expected:?} in\n{}", text(&out));
    }
    refused(&import(&config, &pg.url("bad"), &[]), "cannot be imported");
    assert!(!data.exists());

    // A data directory in use is never replaced without --force, and a failed import
    // with --force leaves the one there intact.
    original_database(&pg, "good", "").await;
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("keep"), "x").unwrap();
    refused(
        &import(&config, &pg.url("good"), &[]),
        "is not empty (use --force to replace it)",
    );
    assert!(data.join("keep").exists());
    std::fs::remove_dir_all(&data).unwrap();
    let first = import(&config, &pg.url("good"), &[]);
    assert!(first.status.success(), "{}", text(&first));
    refused(
        &import(&config, &pg.url("bad"), &["--force"]),
        "cannot be imported",
    );
    let store = open_store(&data);
    assert_eq!(store.bridges(None).unwrap().len(), 5);
    assert!(store.user("eve/x").unwrap().is_none());
    drop(store);
    let again = import(&config, &pg.url("good"), &["--force"]);
    assert!(again.status.success(), "{}", text(&again));
    let parent: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        parent.iter().all(|n| !n.starts_with(".data.")),
        "staging left behind: {parent:?}"
    );
}

/// `sslmode=require` encrypts, as libpq does, against a server that takes nothing else.
#[tokio::test]
#[ignore = "needs root and PostgreSQL's server binaries (Debian's postgresql)"]
async fn tls_is_used_when_the_url_requires_it() {
    let pg = Postgres::start(true);
    original_database(&pg, "original", "").await;
    let (_dir, config) = asmux_dir("http://127.0.0.1:9");
    let plain = import(
        &config,
        &format!("{}?sslmode=disable", pg.url("original")),
        &["--dry-run"],
    );
    assert_eq!(plain.status.code(), Some(1));
    assert!(
        text(&plain).contains("no pg_hba.conf entry"),
        "{}",
        text(&plain)
    );
    let tls = import(
        &config,
        &format!("{}?sslmode=require", pg.url("original")),
        &["--dry-run"],
    );
    assert!(tls.status.success(), "{}", text(&tls));
    // The libpq key=value form over the Unix socket, which is never encrypted.
    let socket = import(&config, &pg.socket_dsn("original"), &["--dry-run"]);
    assert!(socket.status.success(), "{}", text(&socket));
}
