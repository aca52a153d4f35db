//! The systemd unit is valid: `systemd-analyze verify` accepts it (with the binary path
//! pointing at the binary under test, since the package installs it to /usr/bin).

use std::process::Command;

#[test]
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
}
