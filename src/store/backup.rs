//! The single-file backup: every tree of the database, streamed.
//!
//! Layout (all integers big-endian):
//! - `ASMUXBAK` magic, format version (u16);
//! - a length-prefixed (u32) postcard [`Header`];
//! - records, each a length-prefixed (u32) postcard [`Record`]: tree name, key, value as
//!   stored (so a restore is byte-exact);
//! - a zero length marking the end, then the SHA-256 of every byte before it.
//!
//! Memory stays constant in both directions. A restore reads the file twice: once to
//! verify it whole, once to write, into a new directory that replaces the target only when
//! complete.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, SCHEMA_VERSION};

const MAGIC: &[u8; 8] = b"ASMUXBAK";
/// The backup format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Largest record accepted when reading: far above any real record, small enough that
/// a corrupted length cannot make a reader allocate gigabytes.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// Who wrote the backup, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub asmux_version: String,
    pub schema_version: u32,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    tree: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub header: Header,
    /// Tree name and its record count, in file order.
    pub trees: Vec<(String, u64)>,
}

/// Why a backup could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not an asmux backup (wrong magic bytes)")]
    Foreign,
    #[error("backup format {0} is newer than this asmux reads ({FORMAT_VERSION}); upgrade asmux")]
    NewerFormat(u16),
    #[error("the backup is truncated")]
    Truncated,
    #[error("the backup is corrupted: {0}")]
    Corrupt(&'static str),
    #[error("the backup's checksum does not match: the file was altered or damaged")]
    Checksum,
    #[error("the backup holds database schema {0}, newer than this asmux reads; upgrade asmux")]
    NewerSchema(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<sled::Error> for BackupError {
    fn from(e: sled::Error) -> Self {
        BackupError::Store(StoreError::Sled(e))
    }
}

/// A writer that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through and tells truncation apart.
struct Verifying<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Verifying<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::Truncated,
            _ => BackupError::Io(e),
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn frame(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_RECORD {
            return Err(BackupError::Corrupt("record length out of range"));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        Ok(Some(buf))
    }
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

impl Store {
    /// Writes a backup of every tree to `out`, flushing it at the end.
    pub fn write_backup(&self, out: impl Write, created_at: u64) -> Result<Summary, BackupError> {
        let mut out = Hashing {
            inner: BufWriter::new(out),
            hash: Sha256::new(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        let header = Header {
            asmux_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: SCHEMA_VERSION,
            created_at,
        };
        write_frame(&mut out, &super::encode(&header))?;
        let mut trees = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let mut count = 0;
            for item in tree.iter() {
                let (key, value) = item?;
                let record = Record {
                    tree: name.to_vec(),
                    key: key.to_vec(),
                    value: value.to_vec(),
                };
                write_frame(&mut out, &super::encode(&record))?;
                count += 1;
            }
            if count > 0 {
                trees.push((String::from_utf8_lossy(&name).into_owned(), count));
            }
        }
        out.write_all(&0u32.to_be_bytes())?;
        let digest = out.hash.finalize_reset();
        out.inner.write_all(&digest)?;
        out.inner.flush()?;
        Ok(Summary { header, trees })
    }
}

/// Reads a whole backup, checking everything, and calls `each` for every record.
fn read(
    input: impl Read,
    mut each: impl FnMut(&[u8], &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<Summary, BackupError> {
    let mut input = Verifying {
        inner: BufReader::new(input),
        hash: Sha256::new(),
    };
    let mut magic = [0u8; 8];
    input.exact(&mut magic).map_err(|e| match e {
        BackupError::Truncated => BackupError::Foreign,
        e => e,
    })?;
    if &magic != MAGIC {
        return Err(BackupError::Foreign);
    }
    let mut version = [0u8; 2];
    input.exact(&mut version)?;
    let version = u16::from_be_bytes(version);
    if version > FORMAT_VERSION {
        return Err(BackupError::NewerFormat(version));
    }
    let header_bytes = input
        .frame()?
        .ok_or(BackupError::Corrupt("missing header"))?;
    let header: Header = postcard::from_bytes(&header_bytes)
        .map_err(|_| BackupError::Corrupt("unreadable header"))?;
    if header.schema_version > SCHEMA_VERSION {
        return Err(BackupError::NewerSchema(header.schema_version));
    }
    let mut trees: Vec<(String, u64)> = Vec::new();
    while let Some(frame) = input.frame()? {
        let record: Record =
            postcard::from_bytes(&frame).map_err(|_| BackupError::Corrupt("unreadable record"))?;
        let name = String::from_utf8_lossy(&record.tree).into_owned();
        match trees.last_mut() {
            Some((last, count)) if *last == name => *count += 1,
            _ => trees.push((name, 1)),
        }
        each(&record.tree, &record.key, &record.value)?;
    }
    let computed = input.hash.finalize();
    let mut stored = [0u8; 32];
    input
        .inner
        .read_exact(&mut stored)
        .map_err(|_| BackupError::Truncated)?;
    if stored.as_slice() != computed.as_slice() {
        return Err(BackupError::Checksum);
    }
    let mut trailing = [0u8; 1];
    if input.inner.read(&mut trailing)? != 0 {
        return Err(BackupError::Corrupt("data after the checksum"));
    }
    Ok(Summary { header, trees })
}

/// Checks a backup file end to end without writing anything.
pub fn verify(path: &Path) -> Result<Summary, BackupError> {
    read(std::fs::File::open(path)?, |_, _, _| Ok(()))
}

/// Restores the backup at `path` into `dir`. The file is verified whole first; the data
/// is written into a new directory beside `dir`, which takes `dir`'s place only once
/// complete and flushed.
pub fn restore(path: &Path, dir: &Path, force: bool) -> Result<Summary, BackupError> {
    verify(path)?;
    super::replace::replace_data_dir(dir, force, |store| {
        let mut loader = super::replace::BulkLoader::new(store);
        let summary = read(std::fs::File::open(path)?, |tree, key, value| {
            Ok(loader.insert(tree, key, value)?)
        })?;
        loader.finish()?;
        Ok(summary)
    })
}

/// Hands written bytes to an async reader, blocking while it falls behind: a backup
/// written on a blocking thread streams to an HTTP answer in constant memory.
pub struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl ChannelWriter {
    pub fn new(sender: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>) -> Self {
        ChannelWriter(sender)
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "backup reader went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn backup_of_a_populated_store() -> (tempfile::TempDir, PathBuf, Summary) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("data")).unwrap();
        store.create_user("alice").unwrap();
        let (bridge, _) = store
            .insert_bridge(super::super::bridges::test_bridge("alice", "whatsapp"))
            .unwrap();
        store.add_room_owner("!r", bridge.id, None).unwrap();
        let file = tmp.path().join("backup.bin");
        let summary = store
            .write_backup(std::fs::File::create(&file).unwrap(), 42)
            .unwrap();
        (tmp, file, summary)
    }

    #[test]
    fn round_trip_is_exact() {
        let (tmp, file, written) = backup_of_a_populated_store();
        assert_eq!(verify(&file).unwrap(), written);
        let target = tmp.path().join("restored");
        let restored = restore(&file, &target, false).unwrap();
        assert_eq!(restored, written);
        let store = Store::open_when_free(&target, std::time::Duration::from_secs(5)).unwrap();
        assert!(store.user("alice").unwrap().is_some());
        assert_eq!(store.bridges(None).unwrap().len(), 1);
        assert_eq!(store.room("!r").unwrap().unwrap().owners.len(), 1);
    }

    #[test]
    fn damaged_files_are_refused_and_nothing_is_written() {
        let (tmp, file, _) = backup_of_a_populated_store();
        let good = std::fs::read(&file).unwrap();
        let check = |bytes: &[u8]| {
            let path = tmp.path().join("damaged.bin");
            std::fs::write(&path, bytes).unwrap();
            let target = tmp.path().join("never");
            let err = restore(&path, &target, false).unwrap_err();
            assert!(!target.exists(), "nothing written for {err}");
            err
        };
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(matches!(
            check(&flipped),
            BackupError::Checksum | BackupError::Corrupt(_)
        ));
        for cut in [0, 5, 12, good.len() / 2, good.len() - 33, good.len() - 1] {
            let err = check(&good[..cut]);
            assert!(
                matches!(err, BackupError::Truncated | BackupError::Foreign),
                "cut at {cut}: {err}"
            );
        }
        assert!(matches!(
            check(b"PK\x03\x04 a zip file"),
            BackupError::Foreign
        ));
        let mut newer = good.clone();
        newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
        assert!(matches!(check(&newer), BackupError::NewerFormat(_)));
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(check(&extra), BackupError::Corrupt(_)));
    }

    #[test]
    fn a_non_empty_target_needs_force() {
        let (tmp, file, _) = backup_of_a_populated_store();
        let target = tmp.path().join("data");
        assert!(matches!(
            restore(&file, &target, false),
            Err(BackupError::Store(StoreError::NotEmpty(_)))
        ));
        restore(&file, &target, true).unwrap();
        assert!(
            Store::open_when_free(&target, std::time::Duration::from_secs(5))
                .unwrap()
                .user("alice")
                .unwrap()
                .is_some()
        );
    }
}
