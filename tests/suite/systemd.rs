//! The systemd unit is valid: `systemd-analyze verify` accepts it (with the binary path
//! pointing at the binary under test, since the package installs it to /usr/bin), and the
//! binary speaks the notify protocol.

use std::process::Command;

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd)"]
fn unit_file_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/asmux.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("ExecStart=/usr/bin/asmux serve -c /etc/asmux/config.toml"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("asmux.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/asmux", env!("CARGO_BIN_EXE_asmux")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by scripts/test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The sandbox keeps systemd's exposure score in its best band ("OK", at most 2.0;
    // the threshold is in tenths).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze security:\n{report}");
    assert!(
        report.contains("Overall exposure level for asmux.service: 1."),
        "{report}"
    );
}

/// The notify protocol as systemd sees it: READY=1 once listening, WATCHDOG=1 at half
/// the interval systemd asked for, STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    let hs = crate::common::Stub::homeserver().await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, crate::common::config_text(&hs.url(), port)).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // systemd names the service's PID in WATCHDOG_PID; exec keeps the shell's.
    let mut child = crate::common::Process(
        Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" -c \"$1\" serve")
            .arg(env!("CARGO_BIN_EXE_asmux"))
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "400000")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    // READY comes after the listener is bound.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when READY");
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1\n");
    }
    // Three pings at half of 400 ms take about 400 ms; a far longer gap would trip systemd.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let stopped = std::thread::spawn(move || child.terminate());
    let mut seen = next();
    while seen == "WATCHDOG=1\n" {
        seen = next();
    }
    assert_eq!(seen, "STOPPING=1\n");
    assert!(stopped.join().unwrap().success());
}
