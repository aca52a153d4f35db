//! Single-file backups: online through the running server while transactions arrive,
//! offline on the data directory, verified and restored with the CLI; the restored server
//! has every record and delivers the queued transactions.

use crate::common::*;
use serde_json::json;

fn event(n: usize) -> serde_json::Value {
    json!({"type": "m.room.message", "room_id": "!room", "sender": "@bob:example.test",
           "event_id": format!("$e{n}"), "content": {"body": n}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_everything() {
    let hs = Stub::homeserver().await;
    let server = TestServer::start(&hs).await;
    let ws = provision(&server, "alice", "whatsapp", json!({"push": false})).await;
    let push = provision(
        &server,
        "bob",
        "signal",
        json!({"address": "http://127.0.0.1:9"}),
    )
    .await;
    let alice = server.root_get("/_matrix/asmux/user/alice").await.body;
    let setup = json!({"events": [{"type": "m.room.member", "room_id": "!room", "sender": "@alice:example.test",
        "state_key": "@_alice_whatsapp_bot:example.test", "event_id": "$setup", "content": {"membership": "join"}}]});
    hs_transaction(&server, "setup", &setup).await;
    for i in 0..20 {
        hs_transaction(&server, &format!("q{i}"), &json!({"events": [event(i)]})).await;
    }

    // Transactions keep arriving while the backup streams.
    let sending = tokio::spawn({
        let url = server.url("/_matrix/app/v1/transactions/");
        async move {
            for i in 20..60 {
                send(
                    "PUT",
                    &format!("{url}l{i}"),
                    Some(HS_TOKEN),
                    Some(&json!({"events": [event(i)]}).to_string()),
                )
                .await;
            }
        }
    });
    let url = server.url("/_matrix/asmux/admin/backup");
    let token = alice["api_token"].as_str().unwrap();
    send("GET", &url, Some(token), None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let request = http::Request::get(&url)
        .header("authorization", format!("Bearer {SHARED_SECRET}"))
        .body(asmux::http_client::full_body(""))
        .unwrap();
    let client = asmux::http_client::HttpClient::new().unwrap();
    let backup = client
        .send_buffered(request, std::time::Duration::from_secs(60))
        .await;
    // The buffered client caps bodies at 1 MiB; this backup is far smaller.
    let backup = backup.unwrap();
    assert_eq!(backup.status, 200);
    assert_eq!(backup.headers["content-type"], "application/octet-stream");
    sending.await.unwrap();
    let dir = server.stop().await;
    let file = dir.path().join("online.bak");
    std::fs::write(&file, &backup.body).unwrap();
    let config = dir.path().join("config.toml");
    let verified = cli(&config, &["backup", "verify", file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && out.contains("bridgeid_bridge: 2") && out.contains("queue:"),
        "{out}"
    );

    // The offline path (server stopped) writes a verified backup too.
    let offline_file = dir.path().join("offline.bak");
    let created = cli(
        &config,
        &["backup", "create", "-o", offline_file.to_str().unwrap()],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("userid_user: 2"));

    // Restore into a fresh directory and serve from it.
    let restored = tempfile::tempdir().unwrap();
    let restored_config = restored.path().join("config.toml");
    std::fs::copy(&config, &restored_config).unwrap();
    let data = restored.path().join("data");
    let restore = cli(
        &restored_config,
        &["backup", "restore", file.to_str().unwrap()],
    );
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let again = cli(
        &restored_config,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        !again.status.success(),
        "a non-empty directory needs --force"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let server = TestServer::start_in(restored).await;
    for (bridge, reg) in [("alice/whatsapp", &ws), ("bob/signal", &push)] {
        let got = server
            .root_get(&format!("/_matrix/asmux/appservice/{bridge}"))
            .await;
        assert_eq!(&got.body, reg, "{bridge}");
    }
    let user = send(
        "GET",
        &server.url("/_matrix/asmux/user/alice"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(user.body, alice, "tokens survive the restore");
    // Everything queued before the backup began arrives, in order; of the transactions
    // that arrived while it streamed, some may be in it too, still in order.
    let mut bridge = WsBridge::connect(&server, ws["as_token"].as_str().unwrap(), 3).await;
    let mut ids = event_ids(&bridge.receive_events(21).await);
    while let WsEvent::Json(frame) = bridge
        .next_event(std::time::Duration::from_millis(500))
        .await
    {
        bridge.ack(&frame).await;
        ids.extend(event_ids(frame["events"].as_array().unwrap()));
    }
    let mut expected = vec!["$setup".to_owned()];
    expected.extend((0..60).map(|i| format!("$e{i}")));
    assert_eq!(ids[..21], expected[..21]);
    let positions: Vec<usize> = ids
        .iter()
        .map(|id| expected.iter().position(|e| e == id).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_backup_goes_through_the_running_server() {
    let hs = Stub::homeserver().await;
    let Served {
        dir,
        config,
        port,
        mut process,
    } = Served::start(&hs.url()).await;
    let url = format!("http://127.0.0.1:{port}/_matrix/asmux/appservice/alice/whatsapp");
    let reg = send("PUT", &url, Some(SHARED_SECRET), Some("{}"))
        .await
        .body;
    let file = dir.path().join("online.bak");
    let created = cli(&config, &["backup", "create", "-o", file.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The running server holds the directory: restoring over it is refused.
    let refused = cli(
        &config,
        &["backup", "restore", file.to_str().unwrap(), "--force"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = cli(&config, &["compact"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(process.terminate().success());

    // Stopped, the server's directory is compacted in place and keeps every record.
    let compacted = cli(&config, &["compact"]);
    let out = String::from_utf8_lossy(&compacted.stdout);
    assert!(
        compacted.status.success() && out.starts_with("Compacted ") && out.contains(" MiB -> "),
        "{out}{}",
        String::from_utf8_lossy(&compacted.stderr)
    );
    let store = open_store(&dir.path().join("data"));
    let bridge = store
        .bridge_by_token(reg["as_token"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(bridge.hs_token.expose(), reg["hs_token"].as_str().unwrap());
    drop(store);

    let restored = dir.path().join("restored");
    let restore = cli(
        &config,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    );
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let store = open_store(&restored);
    let restored_bridge = store
        .bridge_by_token(reg["as_token"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(*restored_bridge, *bridge);

    let mut damaged = std::fs::read(&file).unwrap();
    let n = damaged.len();
    damaged.truncate(n - 10);
    std::fs::write(&file, &damaged).unwrap();
    let bad = cli(&config, &["backup", "verify", file.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
