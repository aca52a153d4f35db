//! A real PostgreSQL for the importer's tests: Debian's server binaries, a cluster in a
//! temporary directory, listening on 127.0.0.1 only, run as an unprivileged user (the
//! `postgres` account when the tests run as root), stopped and removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The superuser the cluster is created with; every connection is trusted.
pub const PG_USER: &str = "asmux_test";

pub struct Postgres {
    pub port: u16,
    dir: TempDir,
    server: Child,
}

/// The newest installed server's binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (Debian package postgresql); scripts/test installs it")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
    });
    versions.pop().expect("no PostgreSQL server binaries")
}

/// Uid and gid to run the server as: PostgreSQL refuses to run as root.
fn unprivileged() -> Option<(u32, u32)> {
    let id = |args: &[&str]| {
        let out = Command::new("id").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("running as root needs the postgres account of the Debian package")
    };
    if id(&["-u"]) != 0 {
        return None;
    }
    Some((id(&["-u", "postgres"]), id(&["-g", "postgres"])))
}

fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

impl Postgres {
    /// A new cluster; `tls` turns on TLS with a fresh self-signed certificate and refuses
    /// unencrypted TCP connections.
    pub fn start(tls: bool) -> Postgres {
        let bin = bin_dir();
        let user = unprivileged();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let status = as_server_user(&mut Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        if tls {
            let status = as_server_user(&mut Command::new("openssl"), user)
                .current_dir(&data)
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout", "server.key", "-out"])
                .arg("server.crt")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "openssl could not make a certificate");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        let port = super::free_port();
        let mut command = Command::new(bin.join("postgres"));
        as_server_user(&mut command, user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=20"])
            .args(["-c", &format!("ssl={}", if tls { "on" } else { "off" })])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = command.spawn().unwrap();
        let pg = Postgres { port, dir, server };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    /// The URL of database `db` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The libpq key=value form of database `db` over the Unix socket.
    pub fn socket_dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user={PG_USER} dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Runs `sql` (any number of statements) in database `db`, over the Unix socket.
    pub async fn execute(&self, db: &str, sql: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.socket_dsn(db), tokio_postgres::NoTls)
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        connection.await.unwrap().unwrap();
    }

    /// Creates database `db`.
    pub async fn create_database(&self, db: &str) {
        self.execute("postgres", &format!("CREATE DATABASE \"{db}\""))
            .await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
