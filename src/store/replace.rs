//! Filling a data directory all at once (restoring a backup, importing the original's
//! database, compacting): the new database is built beside the target and takes its place
//! only once complete and flushed, so a failure at any point leaves the target as it was.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Store, StoreError};

/// Builds a new database with `fill` and swaps it in for `dir`. A non-empty `dir` is
/// refused unless `force`, and refused even then while a server holds it.
pub fn replace_data_dir<T, E: From<StoreError> + From<std::io::Error>>(
    dir: &Path,
    force: bool,
    fill: impl FnOnce(&Store) -> Result<T, E>,
) -> Result<T, E> {
    let dir = &real_path(dir);
    let non_empty = holds_anything(dir);
    if non_empty && !force {
        return Err(StoreError::NotEmpty(dir.to_owned()).into());
    }
    if non_empty {
        if let Err(StoreError::Locked(p)) =
            Store::open_when_free(dir, std::time::Duration::from_secs(2))
        {
            return Err(StoreError::Locked(p).into());
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = parent_of(dir);
    if is_mount_point(dir, parent) {
        return Err(StoreError::MountPoint(dir.to_owned()).into());
    }
    // A directory replaced by root (restoring, compacting with sudo) stays the service
    // user's.
    let owner = std::fs::metadata(dir).ok().map(|m| (m.uid(), m.gid()));
    let staging = parent.join(format!(".{name}.filling"));
    let _ = std::fs::remove_dir_all(&staging);
    let filled: Result<T, E> = (|| {
        let store = Store::open_to_fill(&staging)?;
        let value = fill(&store)?;
        store.db.flush().map_err(StoreError::from)?;
        drop(store);
        // sled writes its snapshot of the page table when it opens a database; until
        // then every open reads the whole log (200 ms instead of 45 for a million rooms).
        drop(Store::open_when_free(
            &staging,
            std::time::Duration::from_secs(2),
        )?);
        if let Some((uid, gid)) = owner {
            give_to(&staging, uid, gid)?;
        }
        Ok(value)
    })();
    let value = match filled {
        Ok(value) => value,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dir.exists() {
        let old = parent.join(format!(".{name}.replaced"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old)?;
        std::fs::rename(&staging, dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&staging, dir)?;
    }
    // The renames are durable only once the directory holding them is synced.
    std::fs::File::open(parent)?.sync_all()?;
    Ok(value)
}

/// `dir` with symbolic links resolved when it exists: a linked data directory is
/// replaced where it lives, and the link stays.
fn real_path(dir: &Path) -> std::path::PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

fn parent_of(dir: &Path) -> &Path {
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `dir` is on another filesystem than `parent`: the new database, built beside
/// it, could not be renamed into its place.
fn is_mount_point(dir: &Path, parent: &Path) -> bool {
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(dir), Ok(parent)) => dir.dev() != parent.dev(),
        _ => false,
    }
}

/// Makes `uid:gid` the owner of `path` and everything under it.
fn give_to(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// What a compaction did, in allocated bytes of the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub records: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Free space a compaction wants beyond the size of the database it copies.
const COMPACTION_MARGIN: u64 = 16 << 20;

/// Rewrites the database in `dir` into a new one, every tree in key order, and swaps it
/// in. sled 0.34 never shrinks its file and stores rooms registered one at a time at about
/// 6x their size; the copy takes about 3.5x. The server must be stopped; the disk needs
/// room for a second copy while this runs.
pub fn compact(dir: &Path) -> Result<Compaction, StoreError> {
    if !dir.join("conf").exists() {
        return Err(StoreError::NoDatabase(dir.to_owned()));
    }
    let bytes_before = allocated_bytes(dir)?;
    // The copy, built beside `dir`, is rarely larger than the original. Running out of
    // disk half-way leaves the original as it was, but sled 0.34 can hang closing a
    // database whose write failed, so a disk that cannot hold the copy is refused up
    // front, with a margin for sled's open segments and for blocks the filesystem counts
    // as free but keeps for itself (ext4 refused writes with 1 MiB shown free).
    let needed = bytes_before + COMPACTION_MARGIN;
    let available = super::reserve::available_bytes(parent_of(&real_path(dir)))?;
    if available < needed {
        return Err(StoreError::NoRoomToCompact { needed, available });
    }
    let records = replace_data_dir(dir, true, |new| -> Result<u64, StoreError> {
        // The lock check above has just let go of the directory.
        let old = Store::open_when_free(dir, std::time::Duration::from_secs(2))?;
        let mut loader = BulkLoader::new(new);
        for name in old.db.tree_names() {
            for item in old.db.open_tree(&name)?.iter() {
                let (key, value) = item?;
                loader.insert(&name, &key, &value)?;
            }
        }
        loader.finish()
    })?;
    Ok(Compaction {
        records,
        bytes_before,
        bytes_after: allocated_bytes(dir)?,
    })
}

/// Writes records into a database being filled, in batches of [`BulkLoader::BATCH`].
/// 1,000,000 rooms of 10,000 bridges (74 MiB of records) copied in key order with segment
/// cleaning on (see [`Store::open_to_fill`]) took 5.3x their size written one at a time;
/// in batches of 200, 4.3x; 2,000, 3.8x; 5,000, 3.5-3.6x; 10,000, 3.6x; 20,000, 4.1x;
/// 200,000, 5.9x.
pub(super) struct BulkLoader<'a> {
    store: &'a Store,
    tree: Option<(sled::IVec, sled::Tree)>,
    batch: sled::Batch,
    pending: usize,
    records: u64,
}

impl<'a> BulkLoader<'a> {
    const BATCH: usize = 5_000;

    pub(super) fn new(store: &'a Store) -> Self {
        BulkLoader {
            store,
            tree: None,
            batch: sled::Batch::default(),
            pending: 0,
            records: 0,
        }
    }

    pub(super) fn insert(
        &mut self,
        tree: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        if self.tree.as_ref().is_none_or(|(name, _)| name != tree) {
            self.apply()?;
            self.tree = Some((tree.into(), self.store.db.open_tree(tree)?));
        }
        self.batch.insert(key, value);
        self.pending += 1;
        self.records += 1;
        if self.pending == Self::BATCH {
            self.apply()?;
        }
        Ok(())
    }

    /// Writes what is pending; returns how many records were written in all.
    pub(super) fn finish(mut self) -> Result<u64, StoreError> {
        self.apply()?;
        Ok(self.records)
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        if let Some((_, tree)) = &self.tree {
            tree.apply_batch(std::mem::take(&mut self.batch))?;
        }
        self.pending = 0;
        Ok(())
    }
}

/// The disk space the files under `dir` take, as `du` counts it.
pub fn allocated_bytes(dir: &Path) -> Result<u64, std::io::Error> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            allocated_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Whether `dir` exists and has an entry.
pub fn holds_anything(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Contents = std::collections::BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

    fn contents(store: &Store) -> Contents {
        store
            .db
            .tree_names()
            .into_iter()
            .map(|name| {
                let records = store
                    .db
                    .open_tree(&name)
                    .unwrap()
                    .iter()
                    .map(|item| {
                        let (key, value) = item.unwrap();
                        (key.to_vec(), value.to_vec())
                    })
                    .collect();
                (name.to_vec(), records)
            })
            .collect()
    }

    #[test]
    fn compaction_keeps_every_record_and_shrinks_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let before = {
            let store = Store::open(&dir).unwrap();
            let rooms = store.db.open_tree("rooms").unwrap();
            // Small records one at a time in scattered key order, then half removed: the
            // pattern sled stores worst.
            for i in 0u64..40_000 {
                let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
                rooms
                    .insert(key, format!("!room{i}:example.test").as_bytes())
                    .unwrap();
            }
            for i in (0u64..40_000).step_by(2) {
                rooms
                    .remove(i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes())
                    .unwrap();
            }
            store.db.flush().unwrap();
            contents(&store)
        };
        let done = compact(&dir).unwrap();
        let after =
            contents(&Store::open_when_free(&dir, std::time::Duration::from_secs(2)).unwrap());
        assert!(after == before, "every tree, record for record");
        assert_eq!(
            done.records,
            before.values().map(|r| r.len() as u64).sum::<u64>()
        );
        assert!(
            done.bytes_after * 4 < done.bytes_before * 3,
            "{} -> {} bytes",
            done.bytes_before,
            done.bytes_after
        );
        assert!(!tmp.path().join(".data.filling").exists());
        assert!(!tmp.path().join(".data.replaced").exists());
    }

    /// The suite runs as root (it installs packages); the service user is `nobody` here.
    #[test]
    #[ignore = "needs root: gives a directory to another user"]
    fn a_directory_replaced_by_root_keeps_its_owner() {
        const NOBODY: u32 = 65534;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        drop(Store::open(&dir).unwrap());
        give_to(&dir, NOBODY, NOBODY).expect("the test suite runs as root");
        compact(&dir).unwrap();
        let mut owners = Vec::new();
        let mut walk = vec![dir.clone()];
        while let Some(path) = walk.pop() {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            owners.push((meta.uid(), meta.gid()));
            if meta.is_dir() {
                walk.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        assert!(owners.len() > 2, "the directory and sled's files");
        assert!(owners.iter().all(|&o| o == (NOBODY, NOBODY)), "{owners:?}");
    }

    /// A data directory reached through a symbolic link: the directory it names is
    /// replaced, the link stays, and nothing of the old database is left behind.
    #[test]
    fn a_linked_data_directory_is_replaced_where_it_lives() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("volume").join("data");
        let link = tmp.path().join("data");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let store = Store::open(&link).unwrap();
        store.create_user("alice").unwrap();
        store.db.flush().unwrap();
        drop(store);
        compact(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let store = Store::open_when_free(&real, std::time::Duration::from_secs(2)).unwrap();
        assert!(store.user("alice").unwrap().is_some());
        let mut left: Vec<_> = std::fs::read_dir(tmp.path().join("volume"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.extend(
            std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name()),
        );
        left.sort();
        assert_eq!(left, ["data", "data", "volume"]);
    }

    #[test]
    fn compaction_refuses_a_held_or_missing_database() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(compact(&empty), Err(StoreError::NoDatabase(_))));
        assert!(matches!(
            compact(&tmp.path().join("missing")),
            Err(StoreError::NoDatabase(_))
        ));

        let dir = tmp.path().join("data");
        let held = Store::open(&dir).unwrap();
        assert!(matches!(compact(&dir), Err(StoreError::Locked(_))));
        assert!(held.is_readable());
    }
}
