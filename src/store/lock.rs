//! Per-key advisory file locks (`fs4`, i.e. `flock` on Unix). The OS drops a lock when
//! its holder dies, so a crashed run never blocks the next one.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use super::{Result, io};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    /// Block until the exclusive lock at `path` is ours.
    pub fn exclusive(path: &Path) -> Result<KeyLock> {
        let file = open(path)?;
        io(FileExt::lock_exclusive(&file), "lock", path)?;
        Ok(KeyLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The exclusive lock if nobody holds the file, else `None`.
    pub fn try_exclusive(path: &Path) -> Result<Option<KeyLock>> {
        let file = open(path)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => Ok(Some(KeyLock {
                file,
                path: path.to_path_buf(),
            })),
            Ok(false) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => io(Err(e), "lock", path),
        }
    }

    /// A shared lock if no one holds it exclusively, else `None` (readers that only need
    /// the entry to stay put while they link to it).
    pub fn try_shared(path: &Path) -> Result<Option<KeyLock>> {
        let file = open(path)?;
        match FileExt::try_lock_shared(&file) {
            Ok(true) => Ok(Some(KeyLock {
                file,
                path: path.to_path_buf(),
            })),
            Ok(false) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => io(Err(e), "lock", path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        io(std::fs::create_dir_all(dir), "create", dir)?;
    }
    io(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        "open lock file",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/x.lock");
        let held = KeyLock::exclusive(&p).unwrap();
        assert!(KeyLock::try_exclusive(&p).unwrap().is_none());
        assert!(KeyLock::try_shared(&p).unwrap().is_none());
        drop(held);
        let shared = KeyLock::try_shared(&p).unwrap().unwrap();
        assert!(KeyLock::try_shared(&p).unwrap().is_some());
        assert!(KeyLock::try_exclusive(&p).unwrap().is_none());
        drop(shared);
        assert!(KeyLock::try_exclusive(&p).unwrap().is_some());
    }
}
