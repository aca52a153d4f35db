//! The data directory on a small ext4 filesystem (a 48 MiB image, loop-mounted inside a
//! private mount namespace of the asmux process): filled up by another writer, asmux
//! refuses new transactions with 500s, delivers what it acknowledged, recovers by itself
//! when space is freed, and starts again after a SIGKILL on a disk that is still full.
//! Also a read-only data directory and one deleted under the running server, and
//! compactions refused on a mount point and on a disk without room for the copy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const RESERVE_MIB: u64 = 8;
const ROOM: &str = "!disk-room";

/// A filesystem image and the config of an asmux whose data directory is on it.
struct Disk {
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
}

impl Disk {
    fn new(homeserver: &str) -> Disk {
        Disk::with_reserve(homeserver, RESERVE_MIB)
    }

    /// With `reserve_mib` of reserve (0: none, so nothing stops sled from meeting ENOSPC).
    fn with_reserve(homeserver: &str, reserve_mib: u64) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(48 << 20)
            .unwrap();
        // -m 0: no blocks kept for root, so the test (run as root) fills it as asmux's
        // own user would.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .output()
            .expect("mkfs.ext4 runs");
        assert!(mkfs.status.success(), "{mkfs:?}");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let extra = format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"");
        let config = config_text_with(homeserver, port, &extra).replace(
            "disk_reserve_mib = 1",
            &format!("disk_reserve_mib = {reserve_mib}"),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Disk {
            dir,
            port,
            metrics_port,
        }
    }

    /// `asmux serve` in a new mount namespace where the image is mounted on `data`.
    fn spawn(&self, mount_options: &str, stderr: Stdio) -> std::process::Child {
        let d = self.dir.path().display();
        let script = format!(
            "mount -o loop,{mount_options} {d}/image {d}/data && exec {} -c {d}/config.toml serve",
            binary().display()
        );
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("unshare runs")
    }

    async fn start(&self) -> Process {
        self.start_with_stderr(Stdio::inherit()).await
    }

    async fn start_with_stderr(&self, stderr: Stdio) -> Process {
        Process::listening(self.spawn("rw", stderr), self.port).await
    }

    /// The data directory as the asmux process sees it.
    fn data(&self, process: &Process) -> PathBuf {
        let inside = self.dir.path().join("data");
        Path::new(&format!("/proc/{}/root", process.0.id())).join(inside.strip_prefix("/").unwrap())
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn transaction(&self, txn_id: &str, events: Vec<Value>) -> Reply {
        let url = format!("{}/_matrix/app/v1/transactions/{txn_id}", self.base());
        let body = json!({"events": events}).to_string();
        send("PUT", &url, Some(HS_TOKEN), Some(&body)).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let text = send("GET", &url, None, None).await.text;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    /// Waits (bounded) until the reserve is in place on the disk.
    async fn wait_for_reserve(&self, process: &Process) {
        let reserve = self.data(process).join("reserve");
        for _ in 0..250 {
            if std::fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_MIB << 20) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the reserve was not written");
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self, process: &Process) {
        let mut file = std::fs::File::create(self.data(process).join("filler")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        loop {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(28), "{e}");
                break;
            }
        }
        // The last partial blocks too.
        while file.write_all(&chunk[..4096]).is_ok() {}
    }

    /// `script` run by `sh` in a new mount namespace where the image is mounted on
    /// `data`, in the test's directory, with `$ASMUX` naming the binary.
    fn in_namespace(&self, script: &str) -> std::process::Output {
        let d = self.dir.path().display();
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("cd {d} && mount -o loop image data && {script}"))
            .env("ASMUX", binary())
            .output()
            .expect("unshare runs")
    }

    fn asmux_status(&self, process: &Process) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(process.0.id().to_string())
            .arg("-m")
            .arg(binary())
            .arg("-c")
            .arg(self.dir.path().join("config.toml"))
            .arg("status")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

fn message(id: &str) -> Value {
    json!({"type": "m.room.message", "room_id": ROOM, "sender": "@bob:example.test",
           "event_id": id, "content": {"body": id}})
}

/// Provisions a websocket bridge that owns ROOM and queues `n` acknowledged events for it.
async fn bridge_with_queue(disk: &Disk, n: usize) -> String {
    let url = format!("{}/_matrix/asmux/appservice/alice/whatsapp", disk.base());
    let reg = send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#)).await;
    let token = reg.body["as_token"].as_str().unwrap().to_owned();
    let invite = json!({"type": "m.room.member", "room_id": ROOM, "sender": "@alice:example.test",
        "state_key": "@_alice_whatsapp_bot:example.test", "event_id": "$invite",
        "content": {"membership": "join"}});
    assert_eq!(disk.transaction("setup", vec![invite]).await.status, 200);
    for i in 0..n {
        let events = vec![message(&format!("$q{i}"))];
        assert_eq!(disk.transaction(&format!("q{i}"), events).await.status, 200);
    }
    token
}

/// Connects the bridge and reads events (acknowledging them) until `until` arrived.
async fn receive_until(disk: &Disk, token: &str, until: &str) -> Vec<String> {
    let addr = format!("127.0.0.1:{}", disk.port).parse().unwrap();
    let mut ws = ws_connect_to(addr, token, 3).await.unwrap();
    let mut ids = Vec::new();
    while !ids.iter().any(|id| id == until) {
        match ws.next_event(Duration::from_secs(10)).await {
            WsEvent::Json(frame) if frame["command"] == "transaction" => {
                ids.extend(event_ids(frame["events"].as_array().unwrap()));
                ws.ack(&frame).await;
            }
            WsEvent::Json(_) => {}
            other => panic!("the bridge got {other:?} before {until}; it had {ids:?}"),
        }
    }
    ws.close().await;
    ids
}

fn queued_ids(n: usize) -> Vec<String> {
    std::iter::once("$invite".to_owned())
        .chain((0..n).map(|i| format!("$q{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn a_full_disk_refuses_transactions_drains_queues_and_recovers_when_freed() {
    let hs = Stub::homeserver().await;
    let disk = Disk::new(&hs.url());
    let process = disk.start().await;
    let token = bridge_with_queue(&disk, 20).await;
    disk.wait_for_reserve(&process).await;
    assert!(disk
        .asmux_status(&process)
        .contains("8.0 MiB reserve in place"));

    disk.fill(&process);
    let refused = disk.transaction("full", vec![message("$full")]).await;
    refused.assert_error(500, "M_UNKNOWN");
    assert_eq!(disk.metric("asmux_disk_short").await, 1.0);
    assert!(
        !disk.data(&process).join("reserve").exists(),
        "the reserve was released"
    );
    let status = disk.asmux_status(&process);
    assert!(status.contains("disk: NEARLY FULL"), "{status}");
    let url = format!("{}/_matrix/asmux/appservice/alice/signal", disk.base());
    send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#))
        .await
        .assert_error(507, "M_UNKNOWN");

    // Everything acknowledged before is still delivered, from the full disk.
    let received = receive_until(&disk, &token, "$q19").await;
    assert_eq!(received, queued_ids(20));

    // Space comes back: the homeserver's retry goes through without any restart.
    std::fs::remove_file(disk.data(&process).join("filler")).unwrap();
    let mut reply = disk.transaction("full", vec![message("$full")]).await;
    for _ in 0..250 {
        if reply.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = disk.transaction("full", vec![message("$full")]).await;
    }
    assert_eq!(reply.status, 200, "{}", reply.text);
    // At least once: the last event before may come again if its ack was cut short.
    let after = receive_until(&disk, &token, "$full").await;
    assert_eq!(after.last().map(String::as_str), Some("$full"));
    assert!(
        after[..after.len() - 1]
            .iter()
            .all(|id| received.contains(id)),
        "{after:?}"
    );
    disk.wait_for_reserve(&process).await;
    assert_eq!(disk.metric("asmux_disk_short").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn after_a_sigkill_on_a_full_disk_asmux_starts_and_delivers() {
    let hs = Stub::homeserver().await;
    let disk = Disk::new(&hs.url());
    let mut process = disk.start().await;
    let token = bridge_with_queue(&disk, 20).await;
    disk.wait_for_reserve(&process).await;
    disk.fill(&process);
    process.kill9();

    // The disk is still full: the reserve is what lets the database open.
    let process = disk.start().await;
    assert!(!disk.data(&process).join("reserve").exists());
    let received = receive_until(&disk, &token, "$q19").await;
    assert_eq!(received, queued_ids(20));
    disk.transaction("after", vec![message("$after")])
        .await
        .assert_error(500, "M_UNKNOWN");
}

/// Without a reserve sled itself meets ENOSPC, and after that it refuses every write until
/// reopened: the server stops with status 1 so that systemd restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn a_database_that_cannot_write_any_more_stops_the_server_with_status_1() {
    let hs = Stub::homeserver().await;
    let disk = Disk::with_reserve(&hs.url(), 0);
    let mut process = disk.start_with_stderr(Stdio::piped()).await;
    bridge_with_queue(&disk, 1).await;
    disk.fill(&process);
    let big = |i: usize| {
        json!({"type": "m.room.message", "room_id": ROOM, "sender": "@bob:example.test",
               "event_id": format!("$big{i}"), "content": {"body": "x".repeat(256 << 10)}})
    };
    let mut refused = None;
    for i in 0..200 {
        match try_send(
            "PUT",
            &format!("{}/_matrix/app/v1/transactions/big{i}", disk.base()),
            Some(HS_TOKEN),
            Some(&json!({"events": [big(i)]}).to_string()),
        )
        .await
        {
            Some(reply) if reply.status == 200 => {}
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refused a transaction");
    if let Some(reply) = &refused {
        reply.assert_error(500, "M_UNKNOWN");
    }
    let mut exited = None;
    for _ in 0..400 {
        exited = process.0.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stderr = String::new();
    if exited.is_none() {
        process.kill9();
        std::io::Read::read_to_string(&mut process.0.stderr.take().unwrap(), &mut stderr).unwrap();
        panic!("the server did not stop by itself; refused: {refused:?}\n{stderr}");
    }
    let status = exited.unwrap();
    std::io::Read::read_to_string(&mut process.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write any more"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn a_read_only_data_directory_is_a_clear_error() {
    let disk = Disk::new("http://127.0.0.1:9");
    let out = disk.spawn("ro", Stdio::piped()).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn a_data_directory_deleted_under_the_server_stops_new_writes() {
    let hs = Stub::homeserver().await;
    let Served {
        dir,
        port,
        mut process,
        ..
    } = Served::start(&hs.url()).await;
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/_matrix/asmux/appservice/alice/whatsapp");
    assert_eq!(
        send("PUT", &url, Some(SHARED_SECRET), Some("{}"))
            .await
            .status,
        201
    );
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();

    let txn = format!("{base}/_matrix/app/v1/transactions/gone");
    let body = json!({"events": [message("$gone")]}).to_string();
    send("PUT", &txn, Some(HS_TOKEN), Some(&body))
        .await
        .assert_error(500, "M_UNKNOWN");
    // Reads are still served from the open database.
    assert_eq!(
        send("GET", &url, Some(SHARED_SECRET), None).await.status,
        200
    );
    let status = process.terminate();
    assert!(status.success(), "{status}");
}

/// The copy is built beside the data directory; a mount point cannot be replaced by it.
#[tokio::test]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn compacting_a_mount_point_is_refused_before_anything_is_copied() {
    let disk = Disk::new("http://127.0.0.1:9");
    let out = disk.in_namespace(
        "$ASMUX -c config.toml bridge create alice whatsapp --websocket >/dev/null \
         && $ASMUX -c config.toml compact; echo \"exit=$?\"; ls -a",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}{stderr}");
    assert!(stderr.contains("is a mount point"), "{stderr}");
    assert!(!stdout.contains(".data.filling"), "{stdout}");
}

/// A disk that cannot hold the copy is refused up front, the database untouched.
#[tokio::test]
#[ignore = "needs root: mounts an ext4 image on a loop device"]
async fn compacting_without_room_for_a_copy_is_refused() {
    let disk = Disk::new("http://127.0.0.1:9");
    let config = std::fs::read_to_string(disk.dir.path().join("config.toml")).unwrap();
    std::fs::write(
        disk.dir.path().join("inner.toml"),
        config.replace("data_dir = \"data\"", "data_dir = \"data/db\""),
    )
    .unwrap();
    let out = disk.in_namespace(
        "$ASMUX -c inner.toml bridge create alice whatsapp --websocket >/dev/null \
         && { dd if=/dev/zero of=data/filler bs=1M 2>/dev/null; \
              $ASMUX -c inner.toml compact; echo \"exit=$?\"; ls -a data; \
              rm data/filler; $ASMUX -c inner.toml bridge list; }",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}{stderr}");
    assert!(
        stderr.contains("compacting needs room for a copy"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(".db.filling"), "{stdout}");
    assert!(stdout.contains("alice/whatsapp"), "{stdout}{stderr}");
}
