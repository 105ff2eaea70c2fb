//! Cache entries: lookup (an entry without a valid manifest, or whose files do not have
//! the sizes it records, is a miss, never a crash), the stable partial dir a stage works
//! in, and the atomic publish (files fsynced and recorded, manifest last, one rename).

use std::path::{Path, PathBuf};

use super::manifest::{Manifest, is_manifest_file};
use super::{Result, Store, io};
use crate::checksums::{check_sizes, seal};

/// Suffix of the marker beside a resumable stage's partial dir.
pub const RESUMABLE_SUFFIX: &str = ".resumable";

/// What the cache holds for a key.
#[derive(Debug)]
pub enum Lookup {
    /// A complete entry.
    Hit(Box<Manifest>),
    /// Nothing there.
    Miss,
    /// A directory without a usable manifest (e.g. a crash mid-publish), or with a file
    /// missing or of the wrong size: a miss; the reason (naming the file) is worth a warning.
    Invalid(String),
}

impl Store {
    /// Look up the entry of (`kind`, full `key`).
    pub fn lookup(&self, kind: &str, key: &str) -> Lookup {
        let dir = self.entry_dir(kind, key);
        if !dir.exists() {
            return Lookup::Miss;
        }
        match Manifest::read(&dir) {
            Ok(m) if m.key == key && m.kind == kind => match check_sizes(&dir, &m.artifacts) {
                Ok(()) => Lookup::Hit(Box::new(m)),
                Err(why) => Lookup::Invalid(why),
            },
            Ok(m) if m.kind != kind => Lookup::Invalid(format!("manifest names kind `{}`", m.kind)),
            Ok(m) => Lookup::Invalid(format!("manifest holds another key ({})", m.key)),
            Err(why) => Lookup::Invalid(why),
        }
    }

    /// The stage's working dir: stable per key so a resumable stage finds what a crashed
    /// run left; emptied first otherwise. A resumable one is marked (`<dir>.resumable`
    /// beside it) so `gc` keeps what it holds.
    pub fn prepare_partial(&self, kind: &str, key: &str, resumable: bool) -> Result<PathBuf> {
        let dir = self.partial_dir(kind, key);
        let marker = self.resumable_marker(kind, key);
        if !resumable && dir.exists() {
            io(std::fs::remove_dir_all(&dir), "empty", &dir)?;
        }
        io(std::fs::create_dir_all(&dir), "create", &dir)?;
        if resumable {
            io(std::fs::write(&marker, ""), "write", &marker)?;
        } else if marker.exists() {
            io(std::fs::remove_file(&marker), "remove", &marker)?;
        }
        Ok(dir)
    }

    /// `runs/cache/.partial/<kind>-<key16>.resumable`.
    pub fn resumable_marker(&self, kind: &str, key: &str) -> PathBuf {
        self.partial_root().join(format!(
            "{}{RESUMABLE_SUFFIX}",
            Store::entry_name(kind, key)
        ))
    }

    /// Finish an entry: record and fsync every file of `partial` into the manifest, write
    /// the manifest last, then rename `partial` into place (replacing an older entry of
    /// the same key, e.g. under `--force` or a broken one). The caller holds the key's lock.
    pub fn publish(&self, partial: &Path, manifest: &Manifest) -> Result<PathBuf> {
        let target = self.entry_dir(&manifest.kind, &manifest.key);
        let manifest = Manifest {
            artifacts: seal(partial, &is_manifest_file)?,
            ..manifest.clone()
        };
        manifest.write(partial)?;
        if target.exists() {
            let trash = self.trash_dir();
            io(std::fs::create_dir_all(&trash), "create", &trash)?;
            let old = trash.join(format!(
                "{}.{}.{}",
                Store::entry_name(&manifest.kind, &manifest.key),
                std::process::id(),
                unique()
            ));
            io(std::fs::rename(&target, &old), "move aside", &target)?;
            io(std::fs::rename(partial, &target), "publish", partial)?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            io(std::fs::rename(partial, &target), "publish", partial)?;
        }
        // Make the rename durable before anything points at it.
        if let Ok(d) = std::fs::File::open(self.cache_dir()) {
            let _ = d.sync_all();
        }
        let _ = std::fs::remove_file(self.resumable_marker(&manifest.kind, &manifest.key));
        Ok(target)
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
