//! Digests of input files with a stat cache: a file whose path, size, mtime, ctime and
//! inode are unchanged keeps its recorded blake3, so 15 GB of weights are hashed once
//! (DVC's state db and git's index do the same). ctime matters: an in-place edit of the
//! same size whose mtime was put back (`touch -r`, some editors, rsync -t) still moves the
//! ctime, which no user call can set. Directories digest their sorted file list.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::{Result, io};

/// Files modified less than this long ago are hashed every time.
const RACY_NS: u128 = 2_000_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: u128,
    /// Entries from before ctime was recorded have 0 here: they never match, so the file
    /// is hashed once more.
    #[serde(default)]
    ctime_ns: u128,
    inode: u64,
    blake3: String,
}

/// The stat cache, loaded from and saved to `runs/cache/.statcache.json`.
#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, Stat>,
    dirty: bool,
    /// Files actually read and hashed since load (for tests and progress).
    pub hashed: usize,
}

impl StatCache {
    /// Load `path`; a missing or corrupt file gives an empty cache (it is only a cache).
    pub fn load(path: &Path) -> StatCache {
        let entries = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        StatCache {
            path: Some(path.to_path_buf()),
            entries,
            dirty: false,
            hashed: 0,
        }
    }

    /// An in-memory cache (never saved).
    pub fn in_memory() -> StatCache {
        StatCache::default()
    }

    /// blake3 hex of a file, or of a directory's (relative path, file digest) list.
    pub fn digest(&mut self, path: &Path) -> Result<String> {
        let meta = io(std::fs::metadata(path), "read", path)?;
        if meta.is_dir() {
            return self.digest_dir(path);
        }
        let stat_key = path.to_string_lossy().into_owned();
        let (size, mtime_ns, ctime_ns, inode) = stat_of(&meta);
        if let Some(s) = self.entries.get(&stat_key)
            && (s.size, s.mtime_ns, s.ctime_ns, s.inode) == (size, mtime_ns, ctime_ns, inode)
        {
            return Ok(s.blake3.clone());
        }
        let blake3 = hash_file(path)?;
        self.hashed += 1;
        // A file modified within the clock's granularity of now could change again
        // without its mtime moving ("racy git"); only trust stats that have settled.
        let now_ns = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        if now_ns.saturating_sub(mtime_ns) > RACY_NS {
            self.entries.insert(
                stat_key,
                Stat {
                    size,
                    mtime_ns,
                    ctime_ns,
                    inode,
                    blake3: blake3.clone(),
                },
            );
            self.dirty = true;
        }
        Ok(blake3)
    }

    fn digest_dir(&mut self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        list_files(dir, dir, &mut files)?;
        files.sort();
        let mut h = blake3::Hasher::new();
        for rel in files {
            let d = self.digest(&dir.join(&rel))?;
            h.update(rel.to_string_lossy().as_bytes());
            h.update(b"\0");
            h.update(d.as_bytes());
            h.update(b"\n");
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Write back if anything changed (temp file + rename; last writer wins, which is
    /// fine for a cache).
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            io(std::fs::create_dir_all(dir), "create", dir)?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::to_string(&self.entries).expect("stat cache serializes");
        io(std::fs::write(&tmp, text), "write", &tmp)?;
        io(std::fs::rename(&tmp, path), "rename", &tmp)?;
        self.dirty = false;
        Ok(())
    }
}

/// (size, mtime ns, ctime ns, inode).
fn stat_of(meta: &Metadata) -> (u64, u128, u128, u64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let (ctime, inode) = {
        use std::os::unix::fs::MetadataExt;
        let ctime = u128::try_from(meta.ctime()).unwrap_or(0) * 1_000_000_000
            + u128::try_from(meta.ctime_nsec()).unwrap_or(0);
        (ctime, meta.ino())
    };
    #[cfg(not(unix))]
    let (ctime, inode) = (0, 0);
    (meta.len(), mtime, ctime, inode)
}

fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = io(std::fs::File::open(path), "open", path)?;
    io(std::io::copy(&mut f, &mut h), "read", path)?;
    Ok(h.finalize().to_hex().to_string())
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in io(std::fs::read_dir(dir), "list", dir)? {
        let e = io(e, "list", dir)?;
        let p = e.path();
        if io(std::fs::metadata(&p), "read", &p)?.is_dir() {
            list_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.bin");
        std::fs::write(&f, b"weights").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let cache_path = dir.path().join("c/.statcache.json");
        let mut c = StatCache::load(&cache_path);
        let d1 = c.digest(&f).unwrap();
        assert_eq!(d1, blake3::hash(b"weights").to_hex().to_string());
        c.save().unwrap();
        let mut c = StatCache::load(&cache_path);
        assert_eq!(c.digest(&f).unwrap(), d1);
        assert_eq!(c.hashed, 0, "served from the stat cache");
        std::fs::write(&f, b"weightz").unwrap(); // same size, new mtime
        assert_ne!(c.digest(&f).unwrap(), d1);
        assert_eq!(c.hashed, 1);
        // Just modified: not trusted yet, so hashed again.
        c.digest(&f).unwrap();
        assert_eq!(c.hashed, 2);
    }

    #[test]
    fn a_same_size_edit_with_its_mtime_put_back_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data.jsonl");
        std::fs::write(&f, b"row 1").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let set_past = || {
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(past)
                .unwrap()
        };
        set_past();
        let mut c = StatCache::in_memory();
        let d1 = c.digest(&f).unwrap();
        assert_eq!(c.digest(&f).unwrap(), d1);
        assert_eq!(c.hashed, 1);
        // ctime ticks coarsely (a few ms): make sure the edit lands in a later tick.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&f, b"row 2").unwrap();
        set_past();
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.modified().unwrap(), past, "mtime restored");
        assert_eq!(
            c.digest(&f).unwrap(),
            blake3::hash(b"row 2").to_hex().to_string()
        );
        assert_eq!(c.hashed, 2);
    }

    #[test]
    fn directories_digest_their_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m/sub")).unwrap();
        std::fs::write(dir.path().join("m/a"), b"1").unwrap();
        std::fs::write(dir.path().join("m/sub/b"), b"2").unwrap();
        let mut c = StatCache::in_memory();
        let d1 = c.digest(&dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/sub/b"), b"33").unwrap();
        let d2 = c.digest(&dir.path().join("m")).unwrap();
        assert_ne!(d1, d2);
    }
}
