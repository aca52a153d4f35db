//! The static arm64 binary (built by scripts/package) on this machine under qemu's
//! user-mode emulation (Debian's qemu-user-static): it reports its version, checks a
//! config, serves the management API and delivers a transaction to a websocket bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::json;

fn arm64_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/aarch64-unknown-linux-musl/release/asmux");
    assert!(
        path.exists(),
        "{} missing: scripts/test builds it with scripts/package",
        path.display()
    );
    path
}

fn emulated() -> Command {
    let mut command = Command::new("qemu-aarch64-static");
    command.arg(arm64_binary());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the arm64 binary scripts/package builds, and qemu-user-static"]
async fn the_arm64_binary_serves_under_emulation() {
    let version = emulated()
        .arg("--version")
        .output()
        .expect("qemu-aarch64-static runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("asmux {}", env!("CARGO_PKG_VERSION"))
    );

    let hs = Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let port = free_port();
    std::fs::write(&config, config_text(&hs.url(), port)).unwrap();
    let check = emulated()
        .arg("-c")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).ends_with("OK\n"),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let child = emulated()
        .arg("-c")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Process::listening(child, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let reg = send(
        "PUT",
        &format!("{base}/_matrix/asmux/appservice/alice/whatsapp"),
        Some(SHARED_SECRET),
        Some(r#"{"push": false}"#),
    )
    .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let list = send(
        "GET",
        &format!("{base}/_matrix/asmux/appservices"),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(
        list.body["appservices"][0]["prefix"], "whatsapp",
        "{}",
        list.text
    );

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = ws_connect_to(addr, reg.body["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    assert_eq!(ws.next_json().await["command"], "connect");
    let member = json!({"type": "m.room.member", "room_id": "!pi:example.test", "event_id": "$join",
        "sender": "@_alice_whatsapp_bot:example.test", "state_key": "@_alice_whatsapp_bot:example.test",
        "origin_server_ts": 1, "content": {"membership": "join"}});
    let txn = send(
        "PUT",
        &format!("{base}/_matrix/app/v1/transactions/1"),
        Some(HS_TOKEN),
        Some(&json!({"events": [member]}).to_string()),
    )
    .await;
    assert_eq!(txn.status, 200, "{}", txn.text);
    assert_eq!(event_ids(&ws.receive_events(1).await), ["$join"]);
    ws.close().await;
    assert!(server.terminate().success());
}
