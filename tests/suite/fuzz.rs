//! Property tests over every parser of outside data: homeserver transactions (parsed and
//! routed), config files, backup files, and a bridge's websocket frames (through the
//! real server). Inputs are real ones (Synapse's transactions,
//! the example config, a backup of a populated store) mutated byte by byte, and arbitrary
//! bytes. The property: no panic, and a refused backup writes nothing. `PROPTEST_CASES`
//! sets the cases per property (256 here; `scripts/fuzz MINUTES` runs far more).

use std::path::Path;
use std::sync::OnceLock;

use asmux::config::Config;
use asmux::matrix::HomeserverTransaction;
use asmux::service::routing::Router;
use asmux::store::{backup, Store};
use proptest::prelude::*;

/// A mutation of `seed`: bytes overwritten, inserted, removed, or the end cut off.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    proptest::collection::vec((0..4u8, 0..len, any::<u8>()), 1..8).prop_map(move |edits| {
        let mut bytes = seed.clone();
        for (kind, at, byte) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        bytes
    })
}

fn fixture_bodies() -> &'static Vec<Vec<u8>> {
    static BODIES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BODIES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synapse-1.163");
        let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
            .map(|fixture| fixture["body"].to_string().into_bytes())
            .collect();
        bodies.sort();
        bodies
    })
}

fn example_config() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example"))
        .unwrap()
}

struct Routing {
    _dir: tempfile::TempDir,
    store: Store,
    router: Router,
}

/// A store where alice's whatsapp bridge owns a room, and a router as the server has.
fn routing() -> &'static Routing {
    static ROUTING: OnceLock<Routing> = OnceLock::new();
    ROUTING.get_or_init(|| {
        let config = Config::parse(&example_config(), Path::new("/etc/asmux/config.toml"))
            .expect("the example config parses");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let router = Router {
            namespace: config.namespace(),
            filter: config.mux.event_filter,
        };
        Routing {
            _dir: dir,
            store,
            router,
        }
    })
}

fn parse_and_route(body: &[u8]) {
    if let Ok(txn) = HomeserverTransaction::parse(body) {
        let routing = routing();
        let _ = routing.router.route("fuzz", &txn, &routing.store);
    }
}

/// A backup of a store with users, bridges, rooms and queued transactions.
fn backup_bytes() -> &'static Vec<u8> {
    static BACKUP: OnceLock<Vec<u8>> = OnceLock::new();
    BACKUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.bin");
        let config = dir.path().join("config.toml");
        let text = crate::common::config_text("http://127.0.0.1:9", crate::common::free_port());
        std::fs::write(&config, text).unwrap();
        for prefix in ["whatsapp", "signal"] {
            crate::common::cli_create_websocket_bridge(&config, "alice", prefix);
        }
        crate::common::cli_ok(&config, &["backup", "create", "-o", file.to_str().unwrap()]);
        std::fs::read(file).unwrap()
    })
}

proptest! {
    #[test]
    fn transactions_never_panic(
        body in prop::sample::select(fixture_bodies().clone()).prop_flat_map(mutated)
    ) {
        parse_and_route(&body);
    }

    #[test]
    fn arbitrary_bytes_as_transactions_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_and_route(&body);
    }

    #[test]
    fn configs_never_panic(text in mutated(example_config().into_bytes())) {
        let text = String::from_utf8_lossy(&text);
        let _ = Config::parse(&text, Path::new("/etc/asmux/config.toml"));
    }

    #[test]
    fn corrupt_backups_never_panic_nor_write(bytes in mutated(backup_bytes().clone())) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.bin");
        std::fs::write(&file, &bytes).unwrap();
        let verified = backup::verify(&file);
        let target = dir.path().join("restored");
        let restored = backup::restore(&file, &target, false);
        prop_assert_eq!(verified.is_ok(), restored.is_ok());
        if restored.is_err() {
            prop_assert!(!target.exists(), "a refused backup left {}", target.display());
        }
    }
}

/// Frames a bridge could send, from well-formed commands to garbage.
fn bridge_frame() -> impl Strategy<Value = String> {
    let command = prop::sample::select(vec![
        "response",
        "error",
        "ping",
        "transaction",
        "http_proxy",
        "",
        "connect",
    ]);
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    prop_oneof![
        (command, value.clone(), value).prop_map(|(command, id, data)| {
            serde_json::json!({"command": command, "id": id, "data": data}).to_string()
        }),
        ".{0,64}",
        "\\{\"command\":\"response\",\"id\":[0-9e.-]{0,30},\"data\":.{0,10}",
    ]
}

/// A websocket bridge sends 300 arbitrary frames, then still gets its transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bridge_frames_leave_the_session_working() {
    use proptest::strategy::ValueTree;
    let hs = crate::common::Stub::homeserver().await;
    let server = crate::common::TestServer::start(&hs).await;
    let reg = crate::common::provision(
        &server,
        "alice",
        "whatsapp",
        serde_json::json!({"push": false}),
    )
    .await;
    let token = reg["as_token"].as_str().unwrap();
    let mut ws = crate::common::WsBridge::connect(&server, token, 3).await;
    let mut runner = proptest::test_runner::TestRunner::default();
    for _ in 0..300 {
        let frame = bridge_frame().new_tree(&mut runner).unwrap().current();
        ws.send_raw(tokio_tungstenite::tungstenite::Message::text(frame))
            .await;
    }
    let invite = serde_json::json!({"events": [{"type": "m.room.member", "room_id": "!fuzz",
        "sender": "@alice:example.test", "state_key": "@_alice_whatsapp_bot:example.test",
        "event_id": "$after-fuzz", "content": {"membership": "join"}}]});
    assert_eq!(
        crate::common::hs_transaction(&server, "after", &invite)
            .await
            .status,
        200
    );
    // Answers to the frames (pongs, errors for unknown commands) may come first.
    let transaction = loop {
        let frame = ws.next_json().await;
        if frame["command"] == "transaction" {
            break frame;
        }
        assert!(
            frame["command"] == "error" || frame["command"] == "response",
            "{frame}"
        );
    };
    assert_eq!(transaction["events"][0]["event_id"], "$after-fuzz");
}
