//! The real binary: CLI commands offline and through a running server, signals, crashes.

use std::path::PathBuf;

use crate::common::*;
use serde_json::Value;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    hs: Stub,
}

async fn setup() -> Setup {
    let hs = Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(&hs.url(), port)).unwrap();
    Setup {
        dir,
        config,
        port,
        hs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_commands_agree_offline_and_online() {
    let s = setup().await;
    let c = &s.config;
    let created = cli_create_websocket_bridge(c, "alice", "whatsapp");
    assert_eq!(created["sender_localpart"], "_alice_whatsapp_bot");
    assert_eq!(created["url"], "");
    // The offline path registers the bot on the homeserver too.
    assert_eq!(s.hs.requests_to("/_matrix/client/v3/register").len(), 1);

    let queries: [&[&str]; 5] = [
        &["bridge", "list"],
        &["bridge", "show", "alice", "whatsapp"],
        &["bridge", "show", "alice/whatsapp"],
        &["bridge", "export-registration", "alice", "whatsapp"],
        &[
            "bridge",
            "export-registration",
            "alice",
            "whatsapp",
            "--format",
            "json",
        ],
    ];
    let offline: Vec<String> = queries.iter().map(|q| cli_ok(c, q)).collect();
    let exported: Value = serde_json::from_str(&offline[4]).unwrap();
    assert_eq!(
        exported, created,
        "export is the registration create printed"
    );
    let yaml: Value = serde_yaml_ng::from_str(&offline[3]).unwrap();
    assert_eq!(yaml, created, "YAML and JSON carry the same registration");
    assert!(
        offline[0].contains("alice/whatsapp") && offline[0].contains("websocket"),
        "{}",
        offline[0]
    );

    let mut server = Process::serve(c, s.port).await;
    let online: Vec<String> = queries.iter().map(|q| cli_ok(c, q)).collect();
    assert_eq!(
        online, offline,
        "the running server answers the CLI identically"
    );

    // Through the server: create, show by UUID, delete.
    let signal: Value = serde_json::from_str(&cli_ok(
        c,
        &[
            "bridge",
            "create",
            "alice",
            "signal",
            "--address",
            "http://127.0.0.1:9",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(signal["url"], "http://127.0.0.1:9");
    let id = signal["id"].as_str().unwrap();
    assert!(cli_ok(c, &["bridge", "show", id]).contains("push to http://127.0.0.1:9"));
    let api = send(
        "GET",
        &format!("http://127.0.0.1:{}/_matrix/asmux/appservice/{id}", s.port),
        Some(SHARED_SECRET),
        None,
    )
    .await;
    assert_eq!(api.body, signal, "the CLI prints what the API returns");
    cli_ok(c, &["bridge", "delete", "alice", "whatsapp"]);

    let missing = cli(c, &["bridge", "show", "alice", "whatsapp"]);
    assert!(!missing.status.success());
    let online_error = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert!(
        online_error.contains("M_NOT_FOUND: Application service not found."),
        "{online_error}"
    );

    assert!(server.terminate().success(), "SIGTERM exits 0");
    let list = cli_ok(c, &["bridge", "list"]);
    assert!(
        list.contains("alice/signal") && !list.contains("alice/whatsapp"),
        "{list}"
    );
    let offline_error =
        String::from_utf8_lossy(&cli(c, &["bridge", "show", "alice", "whatsapp"]).stderr)
            .into_owned();
    assert_eq!(
        offline_error, online_error,
        "errors read the same both ways"
    );

    // Export to a private file.
    let out = s.dir.path().join("signal.yaml");
    cli_ok(
        c,
        &[
            "bridge",
            "export-registration",
            "alice",
            "signal",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let from_file: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(from_file, signal);

    let bad = cli(c, &["bridge", "create", "Alice", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("owner must match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_201_loses_nothing() {
    let s = setup().await;
    let mut server = Process::serve(&s.config, s.port).await;
    let mut created = Vec::new();
    for prefix in ["whatsapp", "signal", "telegram", "discord", "slack"] {
        let url = format!(
            "http://127.0.0.1:{}/_matrix/asmux/appservice/alice/{prefix}",
            s.port
        );
        let reply = send("PUT", &url, Some(SHARED_SECRET), Some(r#"{"push": false}"#)).await;
        assert_eq!(reply.status, 201);
        created.push(reply.body);
    }
    server.kill9();

    let store = open_store(&s.dir.path().join("data"));
    for registration in &created {
        let token = registration["as_token"].as_str().unwrap();
        let bridge = store
            .bridge_by_token(token)
            .unwrap()
            .expect("bridge survived SIGKILL");
        assert_eq!(
            bridge.hs_token.expose(),
            registration["hs_token"].as_str().unwrap()
        );
    }
    let alice = store
        .user("alice")
        .unwrap()
        .expect("owner survived SIGKILL");
    assert_eq!(
        alice.login_token.expose(),
        created[0]["login_shared_secret"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_generate_registration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, asmux::config::EXAMPLE).unwrap();
    let check = cli(&config, &["check-config"]);
    assert!(!check.status.success());
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("generate-registration") && text.contains("example.com"),
        "{text}"
    );

    // serve refuses the placeholders and says why.
    let serve = cli(&config, &["serve"]);
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("generate-registration"));

    let reg = dir.path().join("registration.yaml");
    let generated = cli(
        &config,
        &["generate-registration", "-r", reg.to_str().unwrap()],
    );
    assert!(generated.status.success());
    let yaml: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&reg).unwrap()).unwrap();
    let loaded = asmux::config::Config::load(&config).unwrap();
    assert_eq!(yaml["as_token"], loaded.appservice.as_token.expose());
    assert_eq!(yaml["hs_token"], loaded.appservice.hs_token.expose());
    assert_eq!(
        yaml["namespaces"]["users"][0]["regex"],
        r"@_.+:example\.com"
    );

    std::fs::write(
        &config,
        "[homeserver]\naddress = \"http://x\"\ndomain = \"d.test\"\nbogus = 1\n",
    )
    .unwrap();
    let unknown = cli(&config, &["check-config"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("config.toml") && err.contains("line 4") && err.contains("bogus"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_bridge_config_offline_and_online() {
    let s = setup().await;
    let c = &s.config;
    let ws = cli_create_websocket_bridge(c, "alice", "whatsapp");
    cli_ok(
        c,
        &[
            "bridge",
            "create",
            "alice",
            "telegram",
            "--address",
            "http://127.0.0.1:29317",
        ],
    );

    let offline = cli_ok(c, &["status"]);
    assert!(offline.starts_with("asmux is not running"), "{offline}");
    let offline_json: Value = serde_json::from_str(&cli_ok(c, &["status", "--json"])).unwrap();
    assert_eq!(offline_json["running"], false);
    assert!(
        offline.lines().nth(1).unwrap().starts_with("disk: "),
        "{offline}"
    );
    assert!(offline_json["disk"]["available_bytes"].as_u64().unwrap() > 0);
    assert_eq!(offline_json["disk"]["short"], false);
    assert_eq!(offline_json["bridges"].as_array().unwrap().len(), 2);

    let go_args = [
        "bridge",
        "config",
        "alice",
        "whatsapp",
        "--flavor",
        "mautrix-go",
    ];
    let go_text = cli_ok(c, &go_args);
    let go: Value = serde_yaml_ng::from_str(&go_text).unwrap();
    assert_eq!(go["homeserver"]["websocket"], true);
    assert_eq!(go["homeserver"]["domain"], DOMAIN);
    assert_eq!(go["appservice"]["as_token"], ws["as_token"]);
    assert_eq!(go["appservice"]["hs_token"], ws["hs_token"]);
    assert_eq!(go["appservice"]["bot"]["username"], ws["sender_localpart"]);
    assert_eq!(
        go["appservice"]["username_template"],
        "_alice_whatsapp_{{.}}"
    );
    let refused = cli(
        c,
        &[
            "bridge",
            "config",
            "alice",
            "whatsapp",
            "--flavor",
            "mautrix-python",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("websocket bridge"));
    let py = cli_ok(
        c,
        &[
            "bridge",
            "config",
            "alice",
            "telegram",
            "--flavor",
            "mautrix-python",
        ],
    );
    let py: Value = serde_yaml_ng::from_str(&py).unwrap();
    assert_eq!(py["appservice"]["port"], 29317);
    assert_eq!(
        py["bridge"]["username_template"],
        "_alice_telegram_{userid}"
    );

    let mut server = Process::serve(c, s.port).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.port));
    let _bridge = ws_connect_to(addr, ws["as_token"].as_str().unwrap(), 3)
        .await
        .unwrap();
    // The connection registers just after the upgrade; poll the status until it shows.
    let mut online = String::new();
    for _ in 0..100 {
        online = cli_ok(c, &["status"]);
        if online.contains("1 connected") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(online.starts_with("asmux is running"), "{online}");
    assert!(online.contains("2 bridges, 1 connected"), "{online}");
    let line = online
        .lines()
        .find(|l| l.starts_with("alice/whatsapp"))
        .unwrap();
    assert!(
        line.contains("websocket") && line.contains("yes, v3"),
        "{line}"
    );
    let line = online
        .lines()
        .find(|l| l.starts_with("alice/telegram"))
        .unwrap();
    assert!(line.contains("push"), "{line}");
    assert_eq!(cli_ok(c, &go_args), go_text, "the same through the server");

    // The push bridge's address answers nothing: it shows as unreachable, and its queue
    // can be dropped on purpose, through the server and offline alike.
    let invite = serde_json::json!({"events": [{"type": "m.room.member", "room_id": "!tg",
        "sender": "@alice:example.test", "event_id": "$tg", "state_key": "@_alice_telegram_bot:example.test",
        "content": {"membership": "join"}}]});
    let url = format!("http://127.0.0.1:{}/_matrix/app/v1/transactions/1", s.port);
    let sent = send("PUT", &url, Some(HS_TOKEN), Some(&invite.to_string())).await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    for _ in 0..100 {
        online = cli_ok(c, &["status"]);
        if online.contains("unreachable for") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = online
        .lines()
        .find(|l| l.starts_with("alice/telegram"))
        .unwrap();
    assert!(line.contains("unreachable for"), "{line}");
    assert_eq!(
        cli_ok(c, &["bridge", "clear-queue", "alice", "telegram"]),
        "Dropped 1 queued transactions of alice/telegram\n"
    );
    assert!(server.terminate().success());
    assert_eq!(
        cli_ok(c, &["bridge", "clear-queue", "alice/telegram"]),
        "Dropped 0 queued transactions of alice/telegram\n"
    );
}

#[test]
fn init_config_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/config.toml");
    let init = cli(
        &config,
        &[
            "init-config",
            "--domain",
            "home.test",
            "--data-dir",
            "/var/lib/asmux",
        ],
    );
    assert!(init.status.success(), "{init:?}");
    let loaded = asmux::config::Config::load(&config).unwrap();
    assert_eq!(loaded.homeserver.domain, "home.test");
    assert_eq!(loaded.data_dir(), std::path::Path::new("/var/lib/asmux"));
    assert!(!loaded.shared_secret_pending(), "secrets are generated now");
    assert!(dir.path().join("etc/registration.yaml").exists());

    let before = std::fs::read(&config).unwrap();
    let again = cli(&config, &["init-config", "--domain", "other.test"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&config).unwrap(), before, "never replaced");

    let bash = cli_ok(&config, &["completions", "bash"]);
    for word in ["asmux", "bridge", "backup", "status", "export-registration"] {
        assert!(bash.contains(word), "{word} missing from completions");
    }
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&bash)
        .output()
        .unwrap();
    assert!(out.status.success(), "bash completion parses: {out:?}");
}

/// `asmux import-config` on the original's example config, and on a filled-in one with
/// keys asmux does not know: the tokens and secrets carry over unchanged, the result is a
/// config asmux accepts, and every key left out is named.
#[test]
fn import_config_translates_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mautrix-asmux-config.yaml");
    let config = dir.path().join("config.toml");
    let run = |old: &std::path::Path, out: &std::path::Path| {
        std::process::Command::new(binary())
            .arg("import-config")
            .arg(old)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };

    let out = run(&example, &config);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    for expected in [
        "mux.database: move the data with `asmux import-original",
        "mux.redis: asmux needs no Redis",
        "metrics.listen is 0.0.0.0:8000",
    ] {
        assert!(notes.contains(expected), "{expected} in {notes}");
    }
    assert!(!notes.contains("no equivalent"), "{notes}");
    // The example still has the placeholders: asmux refuses to run on it, as the
    // original did, and says why.
    let check = cli(&config, &["check-config"]);
    let problems = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(problems.contains("example.com"), "{problems}");
    // Never replaces a file.
    let again = run(&example, &config);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let filled = std::fs::read_to_string(&example)
        .unwrap()
        .replace("domain: example.com", "domain: home.example.org")
        .replace(
            "as_token: \"This value is generated when generating the registration\"",
            &format!("as_token: {}", "a".repeat(64)),
        )
        .replace(
            "hs_token: \"This value is generated when generating the registration\"",
            &format!("hs_token: {}", "h".repeat(64)),
        )
        .replace(
            "shared_secret: generate",
            &format!("shared_secret: {}", "s".repeat(64)),
        )
        .replace("    port: 29326\n", "    port: 29326\n    workers: 4\n")
        + "experimental:\n    turbo: true\n";
    let old = dir.path().join("filled.yaml");
    std::fs::write(&old, filled).unwrap();
    let config = dir.path().join("filled.toml");
    let out = run(&old, &config);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    assert!(
        notes.contains("mux.workers: no equivalent in asmux"),
        "{notes}"
    );
    assert!(
        notes.contains("experimental.turbo: no equivalent in asmux"),
        "{notes}"
    );
    cli_ok(&config, &["check-config"]);
    let text = std::fs::read_to_string(&config).unwrap();
    let new: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        new["homeserver"]["domain"].as_str(),
        Some("home.example.org")
    );
    assert_eq!(
        new["appservice"]["as_token"].as_str(),
        Some("a".repeat(64).as_str())
    );
    assert_eq!(
        new["appservice"]["hs_token"].as_str(),
        Some("h".repeat(64).as_str())
    );
    assert_eq!(
        new["mux"]["shared_secret"].as_str(),
        Some("s".repeat(64).as_str())
    );
    assert_eq!(new["mux"]["hostname"].as_str(), Some("0.0.0.0"));
    assert_eq!(new["logging"]["level"].as_str(), Some("debug"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds secrets");
}

/// The doctor's checks that need no homeserver, on the real binary: a config that does
/// not load, a listener another program holds, a registration file that does not match
/// the config, an unreachable homeserver; the exit status says so. (Multi-threaded: the
/// stub answers while the test waits for the binary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_reports_config_listener_and_registration_file_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[mux\nport = ").unwrap();
    let out = cli(&config, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL] config:"), "{text}");
    assert!(
        text.contains("fix: fix the config (`asmux check-config`"),
        "{text}"
    );

    // Another program on asmux's port (a stub that answers anything), a homeserver
    // address where nothing listens, a registration with another URL.
    let other = Stub::homeserver().await;
    let port: u16 = other.url().rsplit(':').next().unwrap().parse().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&config, config_text(&nowhere, port)).unwrap();
    std::fs::write(
        dir.path().join("registration.yaml"),
        format!(
            "id: asmux\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\nurl: http://elsewhere:1\n\
             namespaces: {{users: [{{regex: '@_.*', exclusive: true}}]}}\n"
        ),
    )
    .unwrap();
    let out = cli(&config, &["doctor", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
    };
    assert_eq!(check("config")["outcome"], "ok");
    let listener = check("listener");
    assert_eq!(listener["outcome"], "fail", "{listener}");
    assert!(listener["detail"]
        .as_str()
        .unwrap()
        .contains("held by another program"));
    let file = check("registration file");
    assert_eq!(file["outcome"], "fail", "{file}");
    assert!(file["detail"]
        .as_str()
        .unwrap()
        .contains("its url is http://elsewhere:1"));
    let homeserver = check("homeserver");
    assert_eq!(homeserver["outcome"], "fail", "{homeserver}");
    assert!(homeserver["fix"]
        .as_str()
        .unwrap()
        .contains("start the homeserver"));
    assert_eq!(check("homeserver registration")["outcome"], "skip");
}
