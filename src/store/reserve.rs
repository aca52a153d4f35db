//! A reserve of disk space in the data directory, for when the disk fills up.
//!
//! sled treats a failed write as fatal for the open database: after one `ENOSPC` every
//! later write fails until it is reopened, and opening needs some free space of its own.
//! So asmux keeps a file of `mux.disk_reserve_mib` MiB in the data directory (a ballast,
//! as CockroachDB keeps one). When the space left to unprivileged writers drops below that
//! size the disk is *short*: the file is deleted, which gives the database room to open
//! and to record deliveries (so queues drain), and writes that only grow the database
//! (new homeserver transactions, provisioning) are refused until there is twice the
//! reserve free again; then the file is written anew and the refusals stop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The reserve's file name inside the data directory.
pub const RESERVE_FILE: &str = "reserve";

pub struct DiskReserve {
    dir: PathBuf,
    file: PathBuf,
    bytes: u64,
    short: AtomicBool,
    /// The directory was found gone: the open database lives on in deleted files, so
    /// growth stays refused until a restart.
    lost: AtomicBool,
    available: AtomicU64,
}

/// What [`DiskReserve::maintain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes unprivileged writers may still use on the data directory's filesystem.
    pub available: u64,
    /// The reserve is released and growth is refused.
    pub short: bool,
}

impl DiskReserve {
    /// A reserve of `bytes` in `dir`; 0 keeps none (and never refuses anything).
    pub fn new(dir: &Path, bytes: u64) -> DiskReserve {
        DiskReserve {
            dir: dir.to_owned(),
            file: dir.join(RESERVE_FILE),
            bytes,
            short: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            available: AtomicU64::new(u64::MAX),
        }
    }

    /// The space left and whether the disk is short, as last seen.
    pub fn space(&self) -> DiskSpace {
        DiskSpace {
            available: self.available.load(Ordering::Relaxed),
            short: self.short.load(Ordering::Relaxed),
        }
    }

    /// Whether a write that grows the database may proceed. Cheap (one `statvfs`): it
    /// runs before every such write, so the reserve is released the moment the disk is
    /// short rather than at the next [`DiskReserve::maintain`].
    pub fn admits_growth(&self) -> bool {
        if self.bytes == 0 {
            return true;
        }
        if self.short.load(Ordering::Relaxed) {
            return false;
        }
        match available_bytes(&self.dir) {
            Ok(available) if available < self.bytes => {
                self.available.store(available, Ordering::Relaxed);
                self.become_short(available);
                false
            }
            Ok(available) => {
                self.available.store(available, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.lost_directory(&e);
                false
            }
        }
    }

    /// Releases the reserve when the disk is short, and writes it (again) when there is
    /// room for it and as much again. Blocking: it may write the whole reserve.
    pub fn maintain(&self) -> std::io::Result<DiskSpace> {
        let available = available_bytes(&self.dir).inspect_err(|e| self.lost_directory(e))?;
        self.available.store(available, Ordering::Relaxed);
        if self.bytes == 0 || self.lost.load(Ordering::Relaxed) {
            return Ok(self.space());
        }
        let short = self.short.load(Ordering::Relaxed);
        if available < self.bytes && !short {
            self.become_short(available);
        } else if available >= self.bytes.saturating_mul(2) {
            if !self.file.exists() {
                self.create()?;
                self.available
                    .store(available_bytes(&self.dir)?, Ordering::Relaxed);
            }
            if short {
                self.short.store(false, Ordering::Relaxed);
                tracing::info!(
                    available_mib = available / MIB,
                    "disk space is back: the reserve is in place again and transactions are accepted"
                );
            }
        }
        Ok(self.space())
    }

    /// Deletes the reserve if it is there; whether it was.
    pub fn release(&self) -> std::io::Result<bool> {
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The data directory cannot be examined (deleted under the running server, most
    /// likely): what is written now would be lost at the next start, so growth is refused.
    fn lost_directory(&self, error: &std::io::Error) {
        self.available.store(0, Ordering::Relaxed);
        self.lost.store(true, Ordering::Relaxed);
        if !self.short.swap(true, Ordering::Relaxed) {
            tracing::error!(
                data_dir = %self.dir.display(),
                error = %error,
                "the data directory cannot be read (was it deleted?): new homeserver \
                 transactions and provisioning are refused; restore it or restart asmux"
            );
        }
    }

    fn become_short(&self, available: u64) {
        if self.short.swap(true, Ordering::Relaxed) {
            return;
        }
        let released = match self.release() {
            Ok(released) => released,
            Err(e) => {
                tracing::error!(error = %e, "cannot delete the disk reserve");
                false
            }
        };
        tracing::error!(
            available_kib = available / 1024,
            released_reserve_mib = if released { self.bytes / MIB } else { 0 },
            data_dir = %self.dir.display(),
            "the disk is nearly full: new homeserver transactions and provisioning are refused \
             (the homeserver retries them) while queued events are still delivered; free some \
             space and asmux resumes by itself"
        );
    }

    /// Writes the reserve through a temporary file, so a crash never leaves a short one
    /// under the real name. Real blocks, not a sparse file: it must hold space.
    fn create(&self) -> std::io::Result<()> {
        let partial = self.dir.join(format!("{RESERVE_FILE}.partial"));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            let chunk = vec![0u8; MIB as usize];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(MIB);
                file.write_all(&chunk[..n as usize])?;
                left -= n;
            }
            file.sync_all()?;
            std::fs::rename(&partial, &self.file)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

const MIB: u64 = 1024 * 1024;

/// The disk as another process (`asmux status`) sees it, by the rules the server follows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskReport {
    pub available_bytes: u64,
    pub reserve_bytes: u64,
    pub reserve_in_place: bool,
    /// New transactions are refused (or will be within a second).
    pub short: bool,
}

pub fn inspect(dir: &Path, reserve_bytes: u64) -> std::io::Result<DiskReport> {
    let available = available_bytes(dir)?;
    let in_place = dir.join(RESERVE_FILE).exists();
    Ok(DiskReport {
        available_bytes: available,
        reserve_bytes,
        reserve_in_place: in_place,
        short: reserve_bytes > 0
            && (available < reserve_bytes
                || (!in_place && available < reserve_bytes.saturating_mul(2))),
    })
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir` (root
/// may also use the blocks ext4 keeps for it; asmux runs as its own user).
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Whether `error` is the filesystem being full.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_written_with_real_blocks_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::new(dir.path(), 2 * MIB);
        let space = reserve.maintain().unwrap();
        assert!(!space.short);
        let file = dir.path().join(RESERVE_FILE);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), 2 * MIB);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 2 * MIB, "the reserve is sparse");
        assert!(reserve.admits_growth());
        assert!(reserve.release().unwrap());
        assert!(!file.exists());
        assert!(!reserve.release().unwrap());
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_means_short() {
        let dir = tempfile::tempdir().unwrap();
        let huge = DiskReserve::new(dir.path(), u64::MAX / 4);
        assert!(!huge.admits_growth());
        assert!(huge.space().short);
        assert!(huge.maintain().unwrap().short);
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }

    #[test]
    fn no_reserve_admits_everything() {
        let dir = tempfile::tempdir().unwrap();
        let none = DiskReserve::new(dir.path(), 0);
        assert!(none.admits_growth());
        assert!(!none.maintain().unwrap().short);
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
