//! Filling a data directory all at once (restoring a backup, importing the original's
//! database): the new database is built beside the target and takes its place only once
//! complete and flushed, so a failure at any point leaves the target as it was.

use std::path::Path;

use super::{Store, StoreError};

/// Builds a new database with `fill` and swaps it in for `dir`. A non-empty `dir` is
/// refused unless `force`, and refused even then while a server holds it.
pub fn replace_data_dir<T, E: From<StoreError> + From<std::io::Error>>(
    dir: &Path,
    force: bool,
    fill: impl FnOnce(&Store) -> Result<T, E>,
) -> Result<T, E> {
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
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(".{name}.filling"));
    let _ = std::fs::remove_dir_all(&staging);
    let filled: Result<T, E> = (|| {
        let store = Store::open(&staging)?;
        let value = fill(&store)?;
        store.db.flush().map_err(StoreError::from)?;
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

/// Whether `dir` exists and has an entry.
pub fn holds_anything(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}
