//! The only module that knows sled. One database in `mux.data_dir`, one tree per mapping,
//! records encoded with postcard, moka read-through caches in front of the hot lookups.
//!
//! Trees and their key layouts:
//! - `meta`: `b"schema_version"` -> u32 big-endian
//! - `userid_user`: user localpart -> [`User`]
//! - `apitoken_userid`: SHA-256(api_token) -> user localpart
//! - `bridgeid_bridge`: bridge UUID (16 bytes) -> [`Bridge`]
//! - `ownerprefix_bridgeid`: `"{owner}/{prefix}"` -> bridge UUID
//! - `roomid_room`: room ID -> [`Room`] (owning bridges, deleted flag)
//! - `meta` also holds the sweep of deleted bridges' rooms: see [`sweep`]
//! - `roomid_members`: room ID ++ 0xFF ++ bridge UUID ++ user ID -> empty (the bridge's
//!   users joined there, through whom it owns the room)
//! - queues, deliveries in flight and bridge states: see [`queue`]
//! - processed transactions and the commit of one: see [`commit`]

pub mod backup;
pub(crate) mod bridges;
mod cache;
pub mod commit;
pub mod queue;
pub mod replace;
pub mod reserve;
mod rooms;
pub mod sweep;
mod users;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

pub use crate::clock::now_ms;
pub use bridges::{Bridge, ConfigPassword, PushKey};
pub use commit::{TransactionCommit, TxnRecord};
pub use queue::{InFlight, QueuedEntry};
pub use rooms::{Membership, Room};
pub use users::User;

use cache::ReadThrough;
use reserve::DiskReserve;

/// How the database is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Serving: asmux flushes itself before acknowledging anything, so sled's own flusher
    /// thread stays off (it would also keep the directory locked after the store is
    /// dropped).
    Serving,
    /// Filled all at once (restore, compaction) into a directory nobody else uses: sled's
    /// flusher thread is also its only segment cleaner, and cleaning while filling lets
    /// sled reuse the segments that superseded pages leave behind.
    Filling,
}

fn open_sled(dir: &Path, usage: Use) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(SLED_CACHE_BYTES)
        .flush_every_ms((usage == Use::Filling).then_some(FILLING_FLUSH_MS))
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked(dir.to_owned())
            }
            other => StoreError::Sled(other),
        })
}

/// The schema this build reads and writes. Bump it with a migration in [`Store::migrate`]
/// whenever a record's encoding changes: postcard is not self-describing.
pub const SCHEMA_VERSION: u32 = 3;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// sled's page cache: the data of a homelab install fits many times over.
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// How often sled's flusher runs, and cleans segments, while a database is filled.
const FILLING_FLUSH_MS: u64 = 20;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another process (is asmux running?)")]
    Locked(PathBuf),
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: postcard::Error,
    },
    #[error(
        "the data directory was written by a newer asmux (schema {found}, this build reads {SCHEMA_VERSION})"
    )]
    NewerSchema { found: u32 },
    #[error("cannot prepare the data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} is not empty (use --force to replace it)")]
    NotEmpty(PathBuf),
    #[error("{0} holds no asmux database")]
    NoDatabase(PathBuf),
    #[error(
        "{0} is a mount point: the new database is built beside it and cannot be renamed into \
         its place (make mux.data_dir a directory inside the mounted filesystem)"
    )]
    MountPoint(PathBuf),
    #[error("compacting needs room for a copy: {needed} bytes, and the disk has {available} free")]
    NoRoomToCompact { needed: u64, available: u64 },
    #[error("the data directory takes no new data: its disk is nearly full, or it is gone")]
    DiskFull,
}

/// The embedded database.
pub struct Store {
    db: sled::Db,
    userid_user: sled::Tree,
    apitoken_userid: sled::Tree,
    bridgeid_bridge: sled::Tree,
    ownerprefix_bridgeid: sled::Tree,
    roomid_room: sled::Tree,
    roomid_members: sled::Tree,
    queue: sled::Tree,
    txnid_record: sled::Tree,
    txnage_txnid: sled::Tree,
    bridgeid_status: sled::Tree,
    bridgeid_inflight: sled::Tree,
    txnid_unfinished: sled::Tree,
    /// The sequence number of the next queue entry (see [`queue`]).
    next_sequence: AtomicU64,
    /// Held by every write and every cache fill, so a fill can never put a value into a
    /// cache after a newer write invalidated it. Both are rare next to cache hits.
    lock: Mutex<()>,
    /// Group commit: callers of [`Store::flush`] take a ticket; one flush covers every
    /// ticket taken before it started.
    flush_tickets: AtomicU64,
    flushed_through: AtomicU64,
    flush_turn: tokio::sync::Mutex<()>,
    /// Turns true when sled fails to write: it then refuses every write until reopened.
    write_failed: tokio::sync::watch::Sender<bool>,
    /// Woken by a bridge's deletion: its rooms are to be swept (see [`sweep`]).
    sweep_signal: tokio::sync::Notify,
    users: ReadThrough<String, User>,
    bridges: ReadThrough<Uuid, Bridge>,
    rooms: ReadThrough<String, Room>,
    reserve: DiskReserve,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`: directory 0700, files 0600.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_reserve(dir, 0)
    }

    /// [`Store::open`], keeping a disk reserve of `reserve_bytes` in `dir` (see
    /// [`reserve`]): on a disk that is already short it is released before the database
    /// opens, so a server stopped by a full disk starts again and drains its queues.
    pub fn open_with_reserve(dir: &Path, reserve_bytes: u64) -> Result<Store, StoreError> {
        Store::open_for(dir, reserve_bytes, Use::Serving)
    }

    /// Opens a new database that is filled all at once (see [`replace`]).
    fn open_to_fill(dir: &Path) -> Result<Store, StoreError> {
        Store::open_for(dir, 0, Use::Filling)
    }

    fn open_for(dir: &Path, reserve_bytes: u64, usage: Use) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let reserve = DiskReserve::new(dir, reserve_bytes);
        reserve.admits_growth();
        let db = match open_sled(dir, usage) {
            Err(StoreError::Sled(sled::Error::Io(e)))
                if reserve::is_disk_full(&e) && reserve.release()? =>
            {
                tracing::error!("the disk is full: released the disk reserve to open the database");
                open_sled(dir, usage)?
            }
            result => result?,
        };
        restrict_files(dir)?;
        let mut store = Store {
            next_sequence: AtomicU64::new(0),
            userid_user: db.open_tree("userid_user")?,
            apitoken_userid: db.open_tree("apitoken_userid")?,
            bridgeid_bridge: db.open_tree("bridgeid_bridge")?,
            ownerprefix_bridgeid: db.open_tree("ownerprefix_bridgeid")?,
            roomid_room: db.open_tree("roomid_room")?,
            roomid_members: db.open_tree("roomid_members")?,
            queue: db.open_tree("queue")?,
            txnid_record: db.open_tree("txnid_record")?,
            txnage_txnid: db.open_tree("txnage_txnid")?,
            bridgeid_status: db.open_tree("bridgeid_status")?,
            bridgeid_inflight: db.open_tree("bridgeid_inflight")?,
            txnid_unfinished: db.open_tree("txnid_unfinished")?,
            db,
            lock: Mutex::new(()),
            flush_tickets: AtomicU64::new(0),
            flushed_through: AtomicU64::new(0),
            flush_turn: tokio::sync::Mutex::new(()),
            write_failed: tokio::sync::watch::channel(false).0,
            sweep_signal: tokio::sync::Notify::new(),
            users: ReadThrough::new(100_000),
            bridges: ReadThrough::new(100_000),
            rooms: ReadThrough::new(1_000_000),
            reserve,
        };
        store.migrate()?;
        let undone = store.undo_unfinished_commits()?;
        if undone > 0 {
            tracing::warn!(
                undone,
                "undid homeserver transactions a crash interrupted before they were acknowledged"
            );
        }
        store.next_sequence = AtomicU64::new(Store::first_free_sequence(
            &store.queue,
            &store.bridgeid_inflight,
        )?);
        Ok(store)
    }

    /// Refuses, when the disk is short, a write that would only grow the database.
    pub fn ensure_space(&self) -> Result<(), StoreError> {
        if self.reserve.admits_growth() {
            Ok(())
        } else {
            Err(StoreError::DiskFull)
        }
    }

    /// The disk reserve of this store.
    pub fn reserve(&self) -> &DiskReserve {
        &self.reserve
    }

    /// [`Store::open`], waiting up to `wait` while another holder is letting go of the
    /// directory (a process exiting, or this process's previous store whose background
    /// work is finishing).
    pub fn open_when_free(dir: &Path, wait: std::time::Duration) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Store::open(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    /// Brings an older schema up to [`SCHEMA_VERSION`]; refuses a newer one.
    fn migrate(&self) -> Result<(), StoreError> {
        let found = match self.db.get(SCHEMA_KEY)? {
            Some(v) => {
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "meta",
                    source: postcard::Error::DeserializeUnexpectedEnd,
                })?)
            }
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found });
        }
        // Version 0 is an empty, new database: nothing to convert. Version 3 added
        // `roomid_members`, empty in older databases: their owners are kept until a
        // membership event says otherwise (see [`Store::room_members`]); and dropped the
        // rooms' index by bridge (see [`sweep`]).
        if found == 1 {
            self.migrate_users_to_v2()?;
        }
        if (1..3).contains(&found) {
            self.db.drop_tree("bridgeid_roomid")?;
        }
        if found < SCHEMA_VERSION {
            self.db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Schema 2 gave users their proxy settings (none for every existing user).
    fn migrate_users_to_v2(&self) -> Result<(), StoreError> {
        #[derive(serde::Deserialize)]
        struct UserV1 {
            id: String,
            api_token: crate::secret::Secret,
            login_token: crate::secret::Secret,
        }
        let mut batch = sled::Batch::default();
        for item in self.userid_user.iter() {
            let (key, value) = item?;
            let old: UserV1 = decode("userid_user", &value)?;
            let user = User {
                id: old.id,
                api_token: old.api_token,
                login_token: old.login_token,
                proxy_config: None,
            };
            batch.insert(key, encode(&user));
        }
        self.userid_user.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every write made before the call durable. Concurrent callers share fsyncs:
    /// whoever waits while a flush runs is covered by the next one, not one each.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.flush_tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.flush_turn.lock().await;
        if self.flushed_through.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.flush_tickets.load(Ordering::SeqCst);
        let flushed = self.db.flush_async().await.map_err(StoreError::from);
        self.note_write_failure(&flushed);
        flushed?;
        self.flushed_through.store(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Remembers an I/O error from sled. sled 0.34 keeps one as a global state: every
    /// later write fails until the database is reopened, while a flush with nothing new
    /// to write still succeeds, so the first failure is what counts.
    fn note_write_failure<T>(&self, result: &Result<T, StoreError>) {
        if let Err(StoreError::Sled(sled::Error::Io(_))) = result {
            self.write_failed.send_replace(true);
        }
    }

    /// Completes once sled failed to write (now or earlier): see [`Store::has_write_failed`].
    pub async fn write_failure(&self) {
        let _ = self
            .write_failed
            .subscribe()
            .wait_for(|failed| *failed)
            .await;
    }

    /// Whether sled failed to write: transactions and flushes then fail until the database
    /// is reopened.
    pub fn has_write_failed(&self) -> bool {
        *self.write_failed.borrow()
    }

    /// The bytes of every key and value in every tree: what the data directory holds
    /// before sled's own overhead (for measuring its space amplification).
    pub fn logical_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for name in self.db.tree_names() {
            for item in self.db.open_tree(name)?.iter() {
                let (key, value) = item?;
                total += (key.len() + value.len()) as u64;
            }
        }
        Ok(total)
    }

    /// Whether a read of the database succeeds (the watchdog's health probe).
    pub fn is_readable(&self) -> bool {
        self.db.get(SCHEMA_KEY).is_ok()
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        // Sled writes are atomic: a panic under the lock leaves no half-written record.
        crate::sync::lock(&self.lock)
    }
}

/// Restricts the files sled created to their owner; the 0700 directory already keeps
/// others out of files created later.
fn restrict_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() {
            restrict_files(&entry.path())?;
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs to a Vec cannot fail; an empty record would be caught by
    // decode's error path on the next read.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

/// Turns a sled transaction result into the store's error, keeping aborts of type `E`.
fn tx_result<T, E: From<StoreError>>(
    result: sled::transaction::TransactionResult<T, E>,
) -> Result<T, E> {
    result.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = Store::open(&dir).unwrap();
        store.create_user("alice").unwrap();
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn second_open_reports_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Store::open(tmp.path()).unwrap();
        match Store::open(tmp.path()) {
            Err(StoreError::Locked(p)) => assert_eq!(p, tmp.path()),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a second store opened the same directory"),
        }
    }

    #[test]
    fn schema_1_users_gain_empty_proxy_settings() {
        #[derive(Serialize)]
        struct UserV1<'a> {
            id: &'a str,
            api_token: &'a str,
            login_token: &'a str,
        }
        let tmp = tempfile::tempdir().unwrap();
        {
            let db = sled::open(tmp.path()).unwrap();
            db.insert(SCHEMA_KEY, &1u32.to_be_bytes()).unwrap();
            let old = UserV1 {
                id: "alice",
                api_token: "api",
                login_token: "login",
            };
            db.open_tree("userid_user")
                .unwrap()
                .insert("alice", encode(&old))
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open_when_free(tmp.path(), std::time::Duration::from_secs(2)).unwrap();
        let alice = store.user("alice").unwrap().unwrap();
        assert_eq!(alice.login_token.expose(), "login");
        assert_eq!(alice.api_token.expose(), "api");
        assert_eq!(alice.proxy_config, None);
        drop(store);
        let reopened =
            Store::open_when_free(tmp.path(), std::time::Duration::from_secs(2)).unwrap();
        assert_eq!(*reopened.user("alice").unwrap().unwrap(), *alice);
    }

    #[test]
    fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let db = sled::open(tmp.path()).unwrap();
            db.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            Store::open_when_free(tmp.path(), std::time::Duration::from_secs(2)),
            Err(StoreError::NewerSchema { found }) if found == SCHEMA_VERSION + 1
        ));
    }
}
