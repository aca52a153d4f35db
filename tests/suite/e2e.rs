//! End to end with a real Synapse (PyPI `matrix-synapse`, SQLite, loopback), the real
//! asmux binary and a websocket bridge client speaking protocol 3: a real user and a
//! bridge talk to each other through asmux.
//!
//! `scripts/test` installs Synapse into `target/e2e-venv` first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const REGISTRATION_SECRET: &str = "e2e-registration-secret";

fn venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-venv");
    assert!(
        venv.join("bin/python").exists(),
        "Synapse is not installed in {}: run scripts/test, which installs it",
        venv.display()
    );
    venv
}

/// Synapse, killed (and its log printed on failure) when dropped.
struct Synapse {
    child: Child,
    log: PathBuf,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- synapse log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Synapse loading asmux's registration and the double-puppet one beside it.
fn start_synapse(dir: &Path, port: u16, registration: &Path) -> Synapse {
    let double_puppet = registration.with_file_name("doublepuppet.yaml");
    start_synapse_with(dir, port, &[registration, &double_puppet])
}

fn start_synapse_with(dir: &Path, port: u16, registrations: &[&Path]) -> Synapse {
    let d = dir.display();
    let config = format!(
        r#"server_name: example.test
pid_file: {d}/hs.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {d}/hs.db
media_store_path: {d}/media
registration_shared_secret: "{REGISTRATION_SECRET}"
report_stats: false
signing_key_path: {d}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
app_service_config_files: {registrations:?}
experimental_features:
  msc2409_to_device_messages_enabled: true
  msc3202_transaction_extensions: true
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_joins:
  local: {{per_second: 1000, burst_count: 1000}}
rc_invites:
  per_room: {{per_second: 1000, burst_count: 1000}}
  per_user: {{per_second: 1000, burst_count: 1000}}
  per_issuer: {{per_second: 1000, burst_count: 1000}}
"#,
        registrations = registrations
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    let path = dir.join("homeserver.yaml");
    std::fs::write(&path, config).unwrap();
    let python = venv().join("bin/python");
    let keys = Command::new(&python)
        .args([
            "-m",
            "synapse.app.homeserver",
            "-c",
            path.to_str().unwrap(),
            "--generate-keys",
        ])
        .output()
        .unwrap();
    assert!(
        keys.status.success(),
        "{}",
        String::from_utf8_lossy(&keys.stderr)
    );
    let log = dir.join("synapse.log");
    let child = Command::new(&python)
        .args(["-m", "synapse.app.homeserver", "-c", path.to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    Synapse { child, log }
}

async fn wait_http(url: &str) {
    for _ in 0..600 {
        if try_send("GET", url, None, None)
            .await
            .is_some_and(|r| r.status == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

/// Creates a real user with Synapse's own tool and logs in; returns the access token.
async fn real_user(hs: &str, name: &str) -> String {
    let tool = venv().join("bin/register_new_matrix_user");
    let made = Command::new(tool)
        .args([
            "-u",
            name,
            "-p",
            "correct horse",
            "--no-admin",
            "-k",
            REGISTRATION_SECRET,
            hs,
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "correct horse"});
    let reply = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/login"),
        None,
        Some(&login.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["access_token"].as_str().unwrap().to_owned()
}

/// Syncs as a real user (incrementally, so each answer is fresh) until an event of
/// `room_id` matches; returns whether one did within 20 s.
async fn user_sees(hs: &str, token: &str, room_id: &str, matches: impl Fn(&Value) -> bool) -> bool {
    let mut since = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let url = if since.is_empty() {
            format!("{hs}/_matrix/client/v3/sync")
        } else {
            format!("{hs}/_matrix/client/v3/sync?timeout=1000&since={since}")
        };
        let sync = send("GET", &url, Some(token), None).await;
        let timeline = &sync.body["rooms"]["join"][room_id]["timeline"]["events"];
        if timeline
            .as_array()
            .is_some_and(|events| events.iter().any(&matches))
        {
            return true;
        }
        since = sync.body["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    false
}

/// Reads transaction frames until an event matches, acknowledging everything.
async fn wait_for_event(ws: &mut WsBridge, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match ws.next_event(Duration::from_secs(30)).await {
            WsEvent::Json(frame) if frame["command"] == "transaction" => {
                ws.ack(&frame).await;
                if let Some(event) = frame["events"]
                    .as_array()
                    .and_then(|e| e.iter().find(|e| matches(e)))
                {
                    return event.clone();
                }
            }
            WsEvent::Json(_) => {}
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
    panic!("the bridge never received {what}");
}

/// A running Synapse whose appservice registration asmux generated with its own CLI, and
/// asmux's config (asmux itself is started by each test, which may restart it).
struct Stack {
    dir: tempfile::TempDir,
    hs: String,
    asmux: String,
    asmux_port: u16,
    /// asmux's Prometheus endpoint.
    metrics: String,
    config: PathBuf,
    synapse: Option<Synapse>,
}

impl Stack {
    fn stop_synapse(&mut self) {
        self.synapse = None;
    }

    /// Stops Synapse and starts it again on the same port and database, loading
    /// `registrations`.
    async fn restart_synapse(&mut self, registrations: &[&Path]) {
        let port: u16 = self.hs.rsplit(':').next().unwrap().parse().unwrap();
        self.stop_synapse();
        self.synapse = Some(start_synapse_with(self.dir.path(), port, registrations));
        wait_http(&format!("{}/_matrix/client/versions", self.hs)).await;
    }

    /// The value of the sample `series` (name and labels) on asmux's metrics, 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = send("GET", &self.metrics, None, None).await.text;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until `series` reaches `at_least`.
    async fn wait_metric(&self, series: &str, at_least: f64) {
        for _ in 0..300 {
            if self.metric(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{series} never reached {at_least}");
    }

    async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let (hs_port, asmux_port, metrics_port) = (free_port(), free_port(), free_port());
        let hs = format!("http://127.0.0.1:{hs_port}");
        let asmux = format!("http://127.0.0.1:{asmux_port}");
        let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        let config = dir.path().join("config.toml");
        // Push retries every 0.1 to 0.3 s: the ten attempts after which the original
        // gave up take under 3 s.
        let text = config_text(&hs, asmux_port)
            .replace(
                "push_retry_delay_seconds = 0.02\npush_retry_max_delay_seconds = 0.1",
                "push_retry_delay_seconds = 0.1\npush_retry_max_delay_seconds = 0.3",
            )
            .replace(
                "[appservice]\n",
                &format!("[appservice]\naddress = \"{asmux}\"\n"),
            )
            .replace(&format!("as_token = \"{AS_TOKEN}\"\n"), "")
            .replace(&format!("hs_token = \"{HS_TOKEN}\"\n"), "")
            + &format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n");
        std::fs::write(&config, text).unwrap();
        let registration = dir.path().join("registration.yaml");
        cli_ok(
            &config,
            &[
                "generate-registration",
                "-r",
                registration.to_str().unwrap(),
            ],
        );
        let synapse = start_synapse(dir.path(), hs_port, &registration);
        wait_http(&format!("{hs}/_matrix/client/versions")).await;
        Stack {
            dir,
            hs,
            asmux,
            asmux_port,
            metrics,
            config,
            synapse: Some(synapse),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn a_real_user_and_a_websocket_bridge_talk_through_asmux() {
    let stack = Stack::start().await;
    let (hs, asmux, config, asmux_port) = (
        stack.hs.clone(),
        stack.asmux.clone(),
        stack.config.clone(),
        stack.asmux_port,
    );
    let as_token = asmux::config::Config::load(&config)
        .unwrap()
        .appservice
        .as_token
        .expose()
        .to_owned();
    let mut asmux_process = Process::serve(&config, asmux_port).await;

    // The owner is a real Synapse user; root provisions her websocket bridge.
    let alice = real_user(&hs, "alice").await;
    let reg = send(
        "PUT",
        &format!("{asmux}/_matrix/asmux/appservice/alice/whatsapp"),
        Some(SHARED_SECRET),
        Some(r#"{"push": false}"#),
    )
    .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let token = reg.body["as_token"].as_str().unwrap().to_owned();
    let id = reg.body["id"].as_str().unwrap().to_owned();
    let bot = "@_alice_whatsapp_bot:example.test";
    let ghost = "@_alice_whatsapp_491701234567:example.test";
    let addr: std::net::SocketAddr = format!("127.0.0.1:{asmux_port}").parse().unwrap();
    let mut ws = ws_connect_to(addr, &token, 3).await.unwrap();
    assert_eq!(ws.next_json().await["command"], "connect");

    // A second websocket bridge, provisioned with the CLI through the running server.
    let telegram = cli_create_websocket_bridge(&config, "alice", "telegram");
    let mut telegram_ws = ws_connect_to(addr, telegram["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    assert_eq!(telegram_ws.next_json().await["command"], "connect");
    telegram_ws.close().await;

    // Alice invites the bridge bot (registered on Synapse at provisioning).
    let room = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        Some(&alice),
        Some(&json!({"invite": [bot], "preset": "private_chat"}).to_string()),
    )
    .await;
    assert_eq!(room.status, 200, "{}", room.text);
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let invite = wait_for_event(&mut ws, "the invite", |e| {
        e["type"] == "m.room.member" && e["state_key"] == bot
    })
    .await;
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["sender"], "@alice:example.test");

    // The bridge answers through asmux: the bot joins, a ghost is registered, invited,
    // joins and speaks.
    let through = |path: &str| format!("{asmux}/_matrix/client/v3{path}");
    let room_path = room_id.replace('!', "%21").replace(':', "%3A");
    let join = send(
        "POST",
        &through(&format!("/join/{room_path}")),
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(join.status, 200, "{}", join.text);
    let register =
        json!({"type": "m.login.application_service", "username": "_alice_whatsapp_491701234567"});
    let made = send(
        "POST",
        &through("/register"),
        Some(&token),
        Some(&register.to_string()),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text);
    let invited = send(
        "POST",
        &through(&format!("/rooms/{room_path}/invite")),
        Some(&token),
        Some(&json!({"user_id": ghost}).to_string()),
    )
    .await;
    assert_eq!(invited.status, 200, "{}", invited.text);
    let as_ghost = |path: String| {
        format!(
            "{path}?user_id={}",
            ghost.replace('@', "%40").replace(':', "%3A")
        )
    };
    let joined = send(
        "POST",
        &as_ghost(through(&format!("/join/{room_path}"))),
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    let message = json!({"msgtype": "m.text", "body": "hello from WhatsApp"});
    let sent = send(
        "PUT",
        &as_ghost(through(&format!(
            "/rooms/{room_path}/send/m.room.message/e2e1"
        ))),
        Some(&token),
        Some(&message.to_string()),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let ghost_event = sent.body["event_id"].as_str().unwrap().to_owned();

    // Alice sees the ghost's message.
    let seen = user_sees(&hs, &alice, &room_id, |e| {
        e["event_id"] == ghost_event.as_str()
            && e["sender"] == ghost
            && e["content"]["body"] == "hello from WhatsApp"
    })
    .await;
    assert!(seen, "alice never saw the ghost's message");

    // Alice answers; the bridge gets it over the websocket.
    let reply = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/a1"),
        Some(&alice),
        Some(&json!({"msgtype": "m.text", "body": "hi ghost"}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let got = wait_for_event(&mut ws, "alice's message", |e| {
        e["content"]["body"] == "hi ghost"
    })
    .await;
    assert_eq!(got["sender"], "@alice:example.test");

    // Another bridge's ghost: Synapse would let asmux's token do it, asmux refuses.
    let foreign = json!({"type": "m.login.application_service", "username": "_alice_signal_1"});
    let refused = send(
        "POST",
        &through("/register"),
        Some(&token),
        Some(&foreign.to_string()),
    )
    .await;
    refused.assert_error(403, "M_EXCLUSIVE");
    let direct = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/register"),
        Some(&as_token),
        Some(&foreign.to_string()),
    )
    .await;
    assert_eq!(
        direct.status, 200,
        "Synapse itself allows it: {}",
        direct.text
    );
    let masquerade = send(
        "GET",
        &format!(
            "{asmux}/_matrix/client/v3/joined_rooms?user_id=%40_alice_signal_1%3Aexample.test"
        ),
        Some(&token),
        None,
    )
    .await;
    masquerade.assert_error(403, "M_FORBIDDEN");

    // The bridge's MSC2659 ping reaches its appservice router over its own socket.
    let ping_url = format!("{asmux}/_matrix/client/v1/appservice/{id}/ping");
    let pinging = tokio::spawn({
        let token = token.clone();
        async move {
            send(
                "POST",
                &ping_url,
                Some(&token),
                Some(r#"{"transaction_id": "e2e"}"#),
            )
            .await
        }
    });
    loop {
        let frame = ws.next_json().await;
        if frame["command"] == "http_proxy" {
            assert_eq!(frame["data"]["path"], "/_matrix/app/v1/ping");
            assert_eq!(frame["data"]["body"]["transaction_id"], "e2e");
            let answer = json!({"status": 200, "headers": {}, "body": {}});
            ws.send_json(&json!({"command": "response", "id": frame["id"], "data": answer}))
                .await;
            break;
        }
        if frame["command"] == "transaction" {
            ws.ack(&frame).await;
        }
    }
    let ping = pinging.await.unwrap();
    assert_eq!(ping.status, 200, "{}", ping.text);
    assert!(ping.body["duration_ms"].is_u64());

    // Restart asmux while the bridge is away: Alice's next message waits in the queue.
    ws.close().await;
    assert!(asmux_process.terminate().success());
    let offline = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/a2"),
        Some(&alice),
        Some(&json!({"msgtype": "m.text", "body": "while you were away"}).to_string()),
    )
    .await;
    assert_eq!(offline.status, 200);
    let _asmux_again = Process::serve(&config, asmux_port).await;
    let mut ws = ws_connect_to(addr, &token, 3).await.unwrap();
    let queued = wait_for_event(&mut ws, "the message sent while asmux was down", |e| {
        e["content"]["body"] == "while you were away"
    })
    .await;
    assert_eq!(queued["sender"], "@alice:example.test");

    // The bridge creates a room itself and invites Alice; her reply reaches the bridge.
    let create = json!({"invite": ["@alice:example.test"], "preset": "private_chat", "name": "from the bridge"});
    let created = send(
        "POST",
        &through("/createRoom"),
        Some(&token),
        Some(&create.to_string()),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let bridge_room = created.body["room_id"].as_str().unwrap().to_owned();
    let bridge_room_path = bridge_room.replace('!', "%21").replace(':', "%3A");
    let accepted = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/join/{bridge_room_path}"),
        Some(&alice),
        Some("{}"),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let answer = json!({"msgtype": "m.text", "body": "answer in the bridge's room"});
    let answered = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{bridge_room_path}/send/m.room.message/a3"),
        Some(&alice),
        Some(&answer.to_string()),
    )
    .await;
    assert_eq!(answered.status, 200);
    let got = wait_for_event(&mut ws, "the reply in the bridge's room", |e| {
        e["content"]["body"] == "answer in the bridge's room"
    })
    .await;
    assert_eq!(got["room_id"], bridge_room.as_str());

    // A to-device message from Alice to the ghost's device reaches this bridge.
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": ghost}});
    let device = send(
        "POST",
        &through("/login"),
        Some(&token),
        Some(&login.to_string()),
    )
    .await;
    assert_eq!(device.status, 200, "{}", device.text);
    let device_id = device.body["device_id"].as_str().unwrap().to_owned();
    let to_device = json!({"messages": {ghost: {&device_id: {"hello": "ghost device"}}}});
    let sent = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/sendToDevice/com.example.e2e/td1"),
        Some(&alice),
        Some(&to_device.to_string()),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut delivered = false;
    while !delivered && tokio::time::Instant::now() < deadline {
        if let WsEvent::Json(frame) = ws.next_event(Duration::from_secs(30)).await {
            if frame["command"] == "transaction" {
                ws.ack(&frame).await;
                delivered = frame["to_device"].as_array().is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "com.example.e2e"
                            && e["to_device_id"] == device_id.as_str()
                            && e["content"]["hello"] == "ghost device"
                    })
                });
            }
        }
    }
    assert!(delivered, "the to-device message never reached the bridge");

    // Deleting the bridge closes its socket and stops delivery.
    cli_ok(&config, &["bridge", "delete", "alice", "whatsapp"]);
    loop {
        match ws.next_event(Duration::from_secs(10)).await {
            WsEvent::Json(frame) if frame["command"] == "transaction" => ws.ack(&frame).await,
            WsEvent::Json(_) => {}
            WsEvent::Closed(..) => break,
            WsEvent::Timeout => panic!("the deleted bridge's socket stayed open"),
        }
    }
    assert!(
        ws_connect_to(addr, &token, 3).await.is_err(),
        "the deleted bridge's token no longer connects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn a_mautrix_python_push_bridge_works_unchanged() {
    let stack = Stack::start().await;
    let bridge_port = free_port();
    let (hs, asmux, config, asmux_port) = (
        stack.hs.clone(),
        stack.asmux.clone(),
        stack.config.clone(),
        stack.asmux_port,
    );
    let dir = &stack.dir;
    let mut asmux_process = Process::serve(&config, asmux_port).await;
    let alice = real_user(&hs, "alice").await;

    // Provisioned with the CLI, through the running server; the bridge gets the
    // registration the CLI exports.
    cli_ok(
        &config,
        &[
            "bridge",
            "create",
            "alice",
            "signal",
            "--address",
            &format!("http://127.0.0.1:{bridge_port}"),
        ],
    );
    let reg_file = dir.path().join("signal.json");
    cli_ok(
        &config,
        &[
            "bridge",
            "export-registration",
            "alice",
            "signal",
            "--format",
            "json",
            "-o",
            reg_file.to_str().unwrap(),
        ],
    );

    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let bridge = PythonBridge::start(&reg_file, bridge_port, &asmux, &events).await;
    assert!(
        bridge.ping.starts_with("PING OK"),
        "the bridge's MSC2659 ping through asmux: {}",
        bridge.ping
    );

    // Alice invites the bot; the bridge receives the invite by push, joins and greets.
    let bot = "@_alice_signal_bot:example.test";
    let room = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        Some(&alice),
        Some(&json!({"invite": [bot]}).to_string()),
    )
    .await;
    assert_eq!(room.status, 200, "{}", room.text);
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let greeted = user_sees(&hs, &alice, &room_id, |e| {
        e["sender"] == bot && e["content"]["body"] == "hello from the python bridge"
    })
    .await;
    let seen = std::fs::read_to_string(&events).unwrap();
    assert!(
        seen.lines()
            .any(|l| l.contains("\"membership\": \"invite\"") && l.contains(bot)),
        "the bridge got: {seen}"
    );
    assert!(greeted, "alice never saw the bridge bot's greeting");

    // Alice asks for a ghost: the bridge registers one, invites it, and it speaks; the
    // same for another bridge's ghost is refused.
    let ghost_request = json!({"msgtype": "m.text", "body": "!ghost"});
    let room_path = room_id.replace('!', "%21").replace(':', "%3A");
    let asked = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/g1"),
        Some(&alice),
        Some(&ghost_request.to_string()),
    )
    .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let ghost = "@_alice_signal_4915:example.test";
    let spoke = user_sees(&hs, &alice, &room_id, |e| {
        e["sender"] == ghost && e["content"]["body"] == "a ghost speaks"
    })
    .await;
    assert!(spoke, "alice never saw the push bridge's ghost");
    let foreign = bridge.next_line();
    // mautrix masquerades as the user it registers, so the user_id guard answers first.
    assert_eq!(
        foreign, "FOREIGN REFUSED M_FORBIDDEN",
        "another bridge's ghost must be refused"
    );

    // The bridge creates a room for Alice; her reply there is pushed to it.
    let asked = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/r1"),
        Some(&alice),
        Some(&json!({"msgtype": "m.text", "body": "!room"}).to_string()),
    )
    .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let made = bridge.next_line();
    let bridge_room = made
        .strip_prefix("ROOM ")
        .unwrap_or_else(|| panic!("the bridge could not create a room: {made:?}"))
        .to_owned();
    let bridge_room_path = bridge_room.replace('!', "%21").replace(':', "%3A");
    let joined = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/rooms/{bridge_room_path}/join"),
        Some(&alice),
        Some("{}"),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    let replied = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{bridge_room_path}/send/m.room.message/r2"),
        Some(&alice),
        Some(&json!({"msgtype": "m.text", "body": "reply in the push bridge's room"}).to_string()),
    )
    .await;
    assert_eq!(replied.status, 200, "{}", replied.text);
    assert!(
        wait_in_file(&events, "reply in the push bridge's room").await,
        "the reply in the bridge's own room never reached it"
    );

    // A to-device message from Alice to a device of the bridge's ghost is pushed to it.
    let registration: Value = serde_json::from_slice(&std::fs::read(&reg_file).unwrap()).unwrap();
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": ghost}});
    let device = send(
        "POST",
        &format!("{asmux}/_matrix/client/v3/login"),
        registration["as_token"].as_str(),
        Some(&login.to_string()),
    )
    .await;
    assert_eq!(device.status, 200, "{}", device.text);
    let device_id = device.body["device_id"].as_str().unwrap().to_owned();
    let to_device =
        json!({"messages": {ghost: {&device_id: {"hello": "pushed to a ghost device"}}}});
    let sent = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/sendToDevice/com.example.e2e/ptd1"),
        Some(&alice),
        Some(&to_device.to_string()),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    assert!(
        wait_in_file(&events, "pushed to a ghost device").await,
        "the to-device message never reached the push bridge"
    );
    let line = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .find(|l| l.contains("pushed to a ghost device"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap();
    assert_eq!(
        line["to_device"]["to_device_id"],
        device_id.as_str(),
        "{line}"
    );
    assert_eq!(line["to_device"]["to_user_id"], ghost, "{line}");

    // The bridge goes down for longer than the ten attempts after which the original
    // gave up; asmux keeps retrying until it is back, and the bridge's own handlers get
    // every message, in order (its txn_id deduplication must not drop any).
    drop(bridge);
    let say = |body: &'static str, txn: &'static str| {
        let (hs, alice, room_path) = (hs.clone(), alice.clone(), room_path.clone());
        async move {
            let url = format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{txn}");
            let sent = send(
                "PUT",
                &url,
                Some(&alice),
                Some(&json!({"msgtype": "m.text", "body": body}).to_string()),
            )
            .await;
            assert_eq!(sent.status, 200, "{}", sent.text);
        }
    };
    let while_down = ["down 1", "down 2", "down 3"];
    for (i, body) in while_down.iter().enumerate() {
        say(body, ["p1", "p1b", "p1c"][i]).await;
    }
    // The outage itself: at least ten failed attempts at 0.1 to 0.3 s each.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bridge = PythonBridge::start(&reg_file, bridge_port, &asmux, &events).await;
    assert!(
        wait_in_file(&events, "down 3").await,
        "the retried pushes never arrived"
    );
    let handled = std::fs::read_to_string(&events).unwrap();
    let positions: Vec<usize> = while_down
        .iter()
        .map(|body| {
            handled
                .find(&format!("\"body\": \"{body}\""))
                .unwrap_or_else(|| panic!("{body} never reached the handler"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "handled out of order: {positions:?}"
    );

    // asmux restarts; what Synapse sends meanwhile is pushed once it is back.
    assert!(asmux_process.terminate().success());
    say("sent while asmux was down", "p4").await;
    let _asmux_again = Process::serve(&config, asmux_port).await;
    assert!(
        wait_in_file(&events, "sent while asmux was down").await,
        "the message sent while asmux was down never arrived"
    );

    // Once the bridge is deleted, nothing more is pushed to it.
    let deleted = send(
        "DELETE",
        &format!("{asmux}/_matrix/asmux/appservice/alice/signal"),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let dropped = r#"asmux_dropped_events_total{type="m.room.message",reason="unowned_room"}"#;
    let before = stack.metric(dropped).await;
    say("sent after the deletion", "p2").await;
    say("and another", "p3").await;
    // Both reached asmux (and went nowhere) before the bridge's file is read.
    stack.wait_metric(dropped, before + 2.0).await;
    let seen = std::fs::read_to_string(&events).unwrap();
    assert!(
        !seen.contains("sent after the deletion"),
        "a deleted bridge got events"
    );
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn a_mautrix_go_style_bridge_pings_and_reconnects_by_itself() {
    let stack = Stack::start().await;
    let (hs, config, asmux_port) = (stack.hs.clone(), stack.config.clone(), stack.asmux_port);
    let mut asmux_process = Process::serve(&config, asmux_port).await;
    let alice = real_user(&hs, "alice").await;
    let reg = cli_create_websocket_bridge(&config, "alice", "telegram");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{asmux_port}").parse().unwrap();
    let mut bridge = crate::common::mautrix_go::GoBridge::start(
        addr,
        reg["as_token"].as_str().unwrap(),
        reg["hs_token"].as_str().unwrap(),
        Duration::from_millis(300),
    );

    let bot = "@_alice_telegram_bot:example.test";
    let room = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        Some(&alice),
        Some(&json!({"invite": [bot]}).to_string()),
    )
    .await;
    assert_eq!(room.status, 200, "{}", room.text);
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    bridge
        .wait_for("the invite", |e| {
            e["state_key"] == bot && e["content"]["membership"] == "invite"
        })
        .await;
    // The bot joins through asmux, so that Synapse sends it the room's messages.
    let room_path = room_id.replace('!', "%21").replace(':', "%3A");
    let joined = send(
        "POST",
        &format!("{}/_matrix/client/v3/rooms/{room_path}/join", stack.asmux),
        reg["as_token"].as_str(),
        Some("{}"),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    bridge.connected(1).await;
    // Synapse asks asmux about an alias in the bridge's namespace; asmux asks the bridge's
    // router through http_proxy.
    let alias = "#_alice_telegram_chat/1:example.test";
    bridge.know(alias);
    let looked_up = send(
        "GET",
        &format!(
            "{hs}/_matrix/client/v3/directory/room/%23_alice_telegram_chat%2F1%3Aexample.test"
        ),
        Some(&alice),
        None,
    )
    .await;
    // The bridge said it exists but created nothing, so Synapse still has no such alias.
    assert_eq!(looked_up.status, 404, "{}", looked_up.text);
    assert!(
        bridge.state.proxied.lock().unwrap().contains(&(
            "GET".to_owned(),
            format!("/_matrix/app/v1/rooms/{alias}"),
            200
        )),
        "Synapse's alias query reached the bridge's router: {:?}",
        bridge.state.proxied.lock().unwrap()
    );
    // Double puppeting as bridgev2 does it (`as_token:<bridge token>` and `user_id`): the
    // bridge acts as its owner through asmux's double-puppet registration, and Alice sees
    // the message as her own. Nobody else can be named.
    let as_alice = |path: &str, user: &str| {
        format!(
            "{}/_matrix/client/v3/{path}?user_id={}",
            stack.asmux,
            user.replace('@', "%40").replace(':', "%3A")
        )
    };
    let token = reg["as_token"].as_str();
    let whoami = send(
        "GET",
        &as_alice("account/whoami", "@alice:example.test"),
        token,
        None,
    )
    .await;
    assert_eq!(
        whoami.body["user_id"], "@alice:example.test",
        "{}",
        whoami.text
    );
    let puppet_path = format!("rooms/{room_path}/send/m.room.message/dp1");
    let body = json!({"msgtype": "m.text", "body": "sent by the bridge as alice"}).to_string();
    let sent = send(
        "PUT",
        &as_alice(&puppet_path, "@alice:example.test"),
        token,
        Some(&body),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    assert!(
        user_sees(&hs, &alice, &room_id, |e| {
            e["sender"] == "@alice:example.test"
                && e["content"]["body"] == "sent by the bridge as alice"
        })
        .await,
        "Alice does not see the double-puppeted message as hers"
    );
    real_user(&hs, "bob").await;
    let refused = send(
        "PUT",
        &as_alice(&puppet_path, "@bob:example.test"),
        token,
        Some(&body),
    )
    .await;
    refused.assert_error(403, "M_FORBIDDEN");
    // The management ping (what `status` tools use) reaches it through http_proxy and
    // reports the state it sent last; a `ping` command would have crashed it.
    bridge.send_bridge_status(
        json!({"state_event": "CONNECTED", "source": "bridge", "ttl": 240, "remote_id": "tg1"}),
    );
    let mut state = Value::Null;
    for _ in 0..50 {
        state = send(
            "POST",
            &format!(
                "{}/_matrix/asmux/appservice/alice/telegram/ping",
                stack.asmux
            ),
            Some(SHARED_SECRET),
            None,
        )
        .await
        .body;
        if !state["remoteState"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state["bridgeState"]["state_event"], "RUNNING", "{state}");
    assert_eq!(
        state["remoteState"]["tg1"]["state_event"], "CONNECTED",
        "{state}"
    );
    bridge.assert_alive();
    let counters = bridge.state.clone();
    for _ in 0..100 {
        if counters.pongs.load(std::sync::atomic::Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counters.pongs.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "asmux answers the bridge's pings"
    );

    // asmux restarts; the client notices, reconnects on its own, and what Alice wrote
    // meanwhile arrives.
    assert!(asmux_process.terminate().success());
    let sent = send(
        "PUT",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/go1"),
        Some(&alice),
        Some(&json!({"msgtype": "m.text", "body": "written during the restart"}).to_string()),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let _asmux_again = Process::serve(&config, asmux_port).await;
    bridge
        .wait_for("the message written during the restart", |e| {
            e["content"]["body"] == "written during the restart"
        })
        .await;
    assert!(
        counters.connects.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the bridge reconnected by itself"
    );
}

/// The mautrix-python push bridge of `tests/e2e/push_bridge.py`, killed when dropped.
struct PythonBridge {
    child: Child,
    /// The first line it printed: the outcome of its MSC2659 ping.
    ping: String,
    /// Every later line it prints.
    lines: std::sync::mpsc::Receiver<String>,
}

impl PythonBridge {
    async fn start(registration: &Path, port: u16, asmux: &str, events: &Path) -> PythonBridge {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/push_bridge.py");
        let mut child = Command::new(venv().join("bin/python"))
            .args([
                script,
                registration.to_str().unwrap(),
                &port.to_string(),
                asmux,
                events.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ping = tokio::task::spawn_blocking({
            let first = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_default();
            move || first
        })
        .await
        .unwrap();
        PythonBridge { child, ping, lines }
    }

    /// The next line it prints (waiting at most 30 s).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default()
    }
}

impl Drop for PythonBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 30 s) until `needle` shows up in the file the Python bridge writes.
async fn wait_in_file(path: &Path, needle: &str) -> bool {
    for _ in 0..300 {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `asmux doctor --format json` with `config`: whether it exited 0, and each check by
/// name as `(outcome, detail and fix)`.
fn doctor(config: &Path) -> (bool, std::collections::HashMap<String, (String, String)>) {
    let out = cli(config, &["doctor", "--format", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = format!("{} | fix: {}", c["detail"], c["fix"]);
            (
                c["check"].as_str().unwrap().to_owned(),
                (c["outcome"].as_str().unwrap().to_owned(), text),
            )
        })
        .collect();
    (out.status.success(), checks)
}

fn assert_check(
    checks: &std::collections::HashMap<String, (String, String)>,
    name: &str,
    outcome: &str,
    says: &str,
) {
    let (got, text) = checks
        .get(name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"));
    assert_eq!(got, outcome, "{name}: {text}");
    assert!(text.contains(says), "{name}: {says:?} not in {text}");
}

/// The doctor against a real Synapse: everything passes when set up right (asmux
/// stopped, then running, with a websocket bridge and a mautrix-python push bridge), and
/// each mistake is found with its fix: bridges not running, a data directory others can
/// read, a registration URL that does not lead to asmux, a registration (asmux's, the
/// double-puppet one) the homeserver did not load, the homeserver down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn the_doctor_finds_each_setup_mistake() {
    let mut stack = Stack::start().await;
    let config = stack.config.clone();
    let registration = stack.dir.path().join("registration.yaml");
    let double_puppet = stack.dir.path().join("doublepuppet.yaml");

    let (passed, checks) = doctor(&config);
    assert!(passed, "{checks:#?}");
    assert_check(&checks, "config", "ok", "is valid");
    assert_check(&checks, "data directory", "warn", "does not exist yet");
    assert_check(&checks, "listener", "ok", "asmux is not running");
    assert_check(&checks, "homeserver", "ok", "answers");
    assert_check(
        &checks,
        "registration file",
        "ok",
        "asks for to-device events",
    );
    assert_check(
        &checks,
        "homeserver registration",
        "ok",
        "@asmuxbot:example.test",
    );
    assert_check(
        &checks,
        "homeserver -> asmux",
        "ok",
        "the homeserver reached asmux",
    );
    assert_check(&checks, "double puppeting", "ok", "knows the double-puppet");
    assert_check(&checks, "to-device and device lists", "skip", "msc3202");

    // Running, with a websocket bridge that never connected and a push bridge nobody
    // answers for.
    let mut asmux = Process::serve(&config, stack.asmux_port).await;
    let ws = cli_create_websocket_bridge(&config, "alice", "whatsapp");
    let bridge_port = free_port();
    let signal = format!("http://127.0.0.1:{bridge_port}");
    cli_ok(
        &config,
        &["bridge", "create", "alice", "signal", "--address", &signal],
    );
    let (passed, checks) = doctor(&config);
    assert!(!passed);
    assert_check(&checks, "listener", "ok", "held by asmux");
    assert_check(&checks, "data directory", "ok", "private to its owner");
    assert_check(&checks, "homeserver -> asmux", "ok", "reached asmux");
    assert_check(
        &checks,
        "bridge alice/whatsapp",
        "fail",
        "never reported a state",
    );
    assert_check(
        &checks,
        "bridge alice/whatsapp",
        "fail",
        "asmux bridge config alice/whatsapp",
    );
    assert_check(
        &checks,
        "bridge alice/signal",
        "fail",
        &format!("push to {signal} fails"),
    );
    let addr = format!("127.0.0.1:{}", stack.asmux_port).parse().unwrap();
    let mut socket = ws_connect_to(addr, ws["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    assert_eq!(socket.next_json().await["command"], "connect");
    // The push bridge started: mautrix-python's appservice answers its ping.
    let reg_file = stack.dir.path().join("signal.json");
    let export = [
        "bridge",
        "export-registration",
        "alice",
        "signal",
        "--format",
        "json",
        "-o",
        reg_file.to_str().unwrap(),
    ];
    cli_ok(&config, &export);
    let events = stack.dir.path().join("events");
    let python = PythonBridge::start(&reg_file, bridge_port, &stack.asmux, &events).await;
    let (passed, checks) = doctor(&config);
    assert!(passed, "{checks:#?}");
    assert_check(
        &checks,
        "bridge alice/whatsapp",
        "ok",
        "websocket connected (protocol 3",
    );
    assert_check(&checks, "bridge alice/signal", "ok", "answers its ping");
    drop(python);
    socket.close().await;
    asmux.terminate();

    // A data directory others can read.
    use std::os::unix::fs::PermissionsExt;
    let data = stack.dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (passed, checks) = doctor(&config);
    assert!(!passed);
    assert_check(&checks, "data directory", "fail", "chmod 700");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();

    // The homeserver loads a registration whose URL does not lead to asmux.
    let wrong = stack.dir.path().join("wrong-url.yaml");
    let text = std::fs::read_to_string(&registration).unwrap();
    let url = format!("http://127.0.0.1:{}", stack.asmux_port);
    assert!(text.contains(&url), "{text}");
    std::fs::write(
        &wrong,
        text.replace(&url, &format!("http://127.0.0.1:{}", free_port())),
    )
    .unwrap();
    stack.restart_synapse(&[&wrong]).await;
    let (passed, checks) = doctor(&config);
    assert!(!passed);
    assert_check(&checks, "double puppeting", "fail", "doublepuppet.yaml");
    assert_check(
        &checks,
        "homeserver registration",
        "ok",
        "knows asmux's registration",
    );
    assert_check(
        &checks,
        "homeserver -> asmux",
        "fail",
        "could not reach asmux",
    );
    assert_check(
        &checks,
        "homeserver -> asmux",
        "fail",
        "set url in the registration file",
    );

    // The homeserver does not load asmux's registration at all.
    stack.restart_synapse(&[&double_puppet]).await;
    let (passed, checks) = doctor(&config);
    assert!(!passed);
    assert_check(
        &checks,
        "homeserver registration",
        "fail",
        "M_UNKNOWN_TOKEN",
    );
    assert_check(
        &checks,
        "homeserver registration",
        "fail",
        "app_service_config_files",
    );

    assert_check(&checks, "double puppeting", "ok", "knows the double-puppet");

    // The homeserver is down.
    stack.stop_synapse();
    let (passed, checks) = doctor(&config);
    assert!(!passed);
    assert_check(&checks, "homeserver", "fail", "cannot reach");
    assert_check(&checks, "homeserver", "fail", "start the homeserver");
    assert_check(&checks, "homeserver registration", "skip", "not reachable");
}

/// The attack of an untrusted bridge on a real Synapse: an appservice login naming
/// another user in a body serde_json cannot read but Synapse can. Sent straight to
/// Synapse with the double-puppet token it mints that user's token (the attack is real);
/// through asmux it gets nothing, and neither do the same bodies on register and
/// createRoom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn a_bridge_gets_no_token_user_or_alias_outside_its_namespace() {
    let stack = Stack::start().await;
    let (hs, asmux) = (stack.hs.clone(), stack.asmux.clone());
    let config = asmux::config::Config::load(&stack.config).unwrap();
    let dp_token = config.double_puppet_token().unwrap().expose().to_owned();
    let _asmux = Process::serve(&stack.config, stack.asmux_port).await;
    let carol = real_user(&hs, "carol").await;
    real_user(&hs, "alice").await;
    let reg = cli_create_websocket_bridge(&stack.config, "alice", "whatsapp");
    let token = reg["as_token"].as_str().unwrap().to_owned();
    let owner_query = "?user_id=%40alice%3Aexample.test";
    let carol_login = r#""type":"m.login.application_service","identifier":{"type":"m.id.user","user":"@carol:example.test"}"#;

    let surrogate = format!(r#"{{{carol_login},"pad":"\ud800"}}"#);
    let direct = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/login{owner_query}"),
        Some(&dp_token),
        Some(&surrogate),
    )
    .await;
    assert_eq!(
        direct.status, 200,
        "the attack works on Synapse: {}",
        direct.text
    );
    assert!(direct.body["access_token"].is_string());

    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for pad in [r#""\ud800""#, "1e400", deep.as_str(), "0"] {
        for query in [owner_query, ""] {
            let login = send(
                "POST",
                &format!("{asmux}/_matrix/client/v3/login{query}"),
                Some(&token),
                Some(&format!(r#"{{{carol_login},"pad":{pad}}}"#)),
            )
            .await;
            assert!(
                matches!(login.status, 400 | 403) && login.body.get("access_token").is_none(),
                "{pad} {query}: {}",
                login.text
            );
            let register = send(
                "POST",
                &format!("{asmux}/_matrix/client/v3/register{query}"),
                Some(&token),
                Some(&format!(
                    r#"{{"type":"m.login.application_service","username":"intruder","pad":{pad}}}"#
                )),
            )
            .await;
            assert!(matches!(register.status, 400 | 403), "{}", register.text);
            let create = send(
                "POST",
                &format!("{asmux}/_matrix/client/v3/createRoom{query}"),
                Some(&token),
                Some(&format!(
                    r#"{{"room_alias_name":"_bob_whatsapp_main","pad":{pad}}}"#
                )),
            )
            .await;
            assert!(matches!(create.status, 400 | 403), "{}", create.text);
        }
    }
    // Synapse has no such user and no such alias.
    let profile = send(
        "GET",
        &format!("{hs}/_matrix/client/v3/profile/%40intruder%3Aexample.test"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(profile.status, 404, "{}", profile.text);
    let alias = send(
        "GET",
        &format!("{hs}/_matrix/client/v3/directory/room/%23_bob_whatsapp_main%3Aexample.test"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(alias.status, 404, "{}", alias.text);

    // What a bridge does is unchanged: its ghosts register and log in, it acts as its
    // owner (double puppeting), and creates rooms with aliases of its own.
    let ghost = json!({"type": "m.login.application_service", "username": "_alice_whatsapp_1"});
    let made = send(
        "POST",
        &format!("{asmux}/_matrix/client/v3/register"),
        Some(&token),
        Some(&ghost.to_string()),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text);
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "_alice_whatsapp_1"}});
    let logged_in = send(
        "POST",
        &format!("{asmux}/_matrix/client/v3/login"),
        Some(&token),
        Some(&login.to_string()),
    )
    .await;
    assert_eq!(logged_in.status, 200, "{}", logged_in.text);
    let whoami = send(
        "GET",
        &format!("{asmux}/_matrix/client/v3/account/whoami{owner_query}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        whoami.body["user_id"], "@alice:example.test",
        "{}",
        whoami.text
    );
    let created = send(
        "POST",
        &format!("{asmux}/_matrix/client/v3/createRoom"),
        Some(&token),
        Some(r#"{"room_alias_name":"_alice_whatsapp_main"}"#),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
}

/// A bridge gets a room's events while one of its users is in the room: once its ghost
/// is banned, the room's next message reaches the other bridge still in it, and not it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Synapse in target/e2e-venv (scripts/test installs it)"]
async fn a_banned_ghosts_bridge_stops_getting_the_rooms_events() {
    let stack = Stack::start().await;
    let (hs, asmux) = (stack.hs.clone(), stack.asmux.clone());
    let _asmux = Process::serve(&stack.config, stack.asmux_port).await;
    let carol = real_user(&hs, "carol").await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", stack.asmux_port).parse().unwrap();
    let mut bridges = Vec::new();
    for prefix in ["whatsapp", "signal"] {
        let reg = cli_create_websocket_bridge(&stack.config, "carol", prefix);
        let token = reg["as_token"].as_str().unwrap().to_owned();
        let mut ws = ws_connect_to(addr, &token, 3).await.unwrap();
        assert_eq!(ws.next_json().await["command"], "connect");
        bridges.push((token, format!("@_carol_{prefix}_1:example.test"), ws));
    }
    let ghosts: Vec<String> = bridges.iter().map(|b| b.1.clone()).collect();
    // The ghosts are registered through asmux, then join the public room as themselves.
    let room = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        Some(&carol),
        Some(r#"{"preset": "public_chat"}"#),
    )
    .await;
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let room_path = room_id.replace('!', "%21").replace(':', "%3A");
    for (token, ghost, ws) in &mut bridges {
        let localpart = ghost[1..].split(':').next().unwrap();
        let register = json!({"type": "m.login.application_service", "username": localpart});
        let made = send(
            "POST",
            &format!("{asmux}/_matrix/client/v3/register"),
            Some(token),
            Some(&register.to_string()),
        )
        .await;
        assert_eq!(made.status, 200, "{}", made.text);
        let join = format!(
            "{asmux}/_matrix/client/v3/join/{room_path}?user_id={}",
            ghost.replace('@', "%40").replace(':', "%3A")
        );
        assert_eq!(
            send("POST", &join, Some(token), Some("{}")).await.status,
            200
        );
        let g = ghost.clone();
        wait_for_event(ws, "its ghost's join", |e| e["state_key"] == g.as_str()).await;
    }
    let say = |body: &'static str| {
        let (hs, carol, room_path) = (hs.clone(), carol.clone(), room_path.clone());
        async move {
            let url =
                format!("{hs}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{body}");
            let sent = send(
                "PUT",
                &url,
                Some(&carol),
                Some(&json!({"msgtype": "m.text", "body": body}).to_string()),
            )
            .await;
            assert_eq!(sent.status, 200, "{}", sent.text);
        }
    };
    say("before").await;
    for (_, _, ws) in &mut bridges {
        wait_for_event(ws, "the first message", |e| {
            e["content"]["body"] == "before"
        })
        .await;
    }
    let ban = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/rooms/{room_path}/ban"),
        Some(&carol),
        Some(&json!({"user_id": ghosts[0]}).to_string()),
    )
    .await;
    assert_eq!(ban.status, 200, "{}", ban.text);
    let banned = ghosts[0].clone();
    wait_for_event(&mut bridges[0].2, "its ghost's ban", |e| {
        e["state_key"] == banned.as_str() && e["content"]["membership"] == "ban"
    })
    .await;
    say("after").await;
    wait_for_event(&mut bridges[1].2, "the message after the ban", |e| {
        e["content"]["body"] == "after"
    })
    .await;
    // A new room's invite to the banned ghost's bot is the next thing its bridge gets:
    // nothing of the old room came before it (deliveries keep their order).
    let marker = send(
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        Some(&carol),
        Some(&json!({"invite": ["@_carol_whatsapp_bot:example.test"]}).to_string()),
    )
    .await;
    assert_eq!(marker.status, 200, "{}", marker.text);
    let frame = loop {
        let frame = bridges[0].2.next_json().await;
        if frame["command"] == "transaction" {
            bridges[0].2.ack(&frame).await;
            break frame;
        }
    };
    let bodies: Vec<&Value> = frame["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["content"]["body"])
        .collect();
    assert!(!bodies.contains(&&json!("after")), "{frame}");
    assert_eq!(
        frame["events"][0]["room_id"], marker.body["room_id"],
        "{frame}"
    );
}
