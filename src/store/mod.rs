//! The `runs/` directory: content-addressed cache entries, locks, atomic publish,
//! manifests, the stat cache, `runs/<name>/…` pointers and gc (the sweep summaries
//! written there are `report::sweep_summary`: they read the experiment).
//!
//! Layout (docs/ARCHITECTURE.md "Cache, keys and locks"):
//!
//! ```text
//! runs/cache/<kind>-<key16>/           complete entries (manifest.json written last,
//!                                      listing every file with its size and blake3)
//! runs/cache/.partial/<kind>-<key16>/  a stage's working dir until it succeeds
//! runs/cache/.locks/<kind>-<key16>.lock  per-key advisory locks
//! runs/cache/.trash/                   entries being replaced (deleted right after)
//! runs/cache/.statcache.json           path+size+mtime → blake3 of input files
//! runs/<name>/<stage>                  link to the latest entry of that stage
//! runs/<name>/<variant>/<stage>        … of one sweep variant
//! runs/<name>/sweep.{csv,md}           sweep summary
//! ```

pub mod entry;
pub mod gc;
pub mod lock;
pub mod manifest;
pub mod pointers;
pub mod statcache;
pub mod verify;

use std::path::{Path, PathBuf};

pub use entry::Lookup;
pub use lock::KeyLock;
pub use manifest::Manifest;
pub use statcache::StatCache;

/// Errors of the `runs/` layer: always about one path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a link made by pipeline; move it away", path.display())]
    NotAPointer { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<crate::checksums::SealError> for StoreError {
    fn from(e: crate::checksums::SealError) -> Self {
        StoreError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// Attach a path and an action to an I/O error.
pub(crate) fn io<T>(r: std::io::Result<T>, action: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// Length of the key prefix used in directory names (the manifest keeps the full key).
pub const KEY_PREFIX: usize = 16;

/// A `runs/` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `root` need not exist yet; it is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `<kind>-<key16>`: the directory name of an entry.
    pub fn entry_name(kind: &str, key: &str) -> String {
        format!("{kind}-{}", &key[..KEY_PREFIX.min(key.len())])
    }

    pub fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.cache_dir().join(Self::entry_name(kind, key))
    }

    pub fn partial_root(&self) -> PathBuf {
        self.cache_dir().join(".partial")
    }

    pub fn partial_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.partial_root().join(Self::entry_name(kind, key))
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.cache_dir().join(".locks")
    }

    pub fn lock_path(&self, kind: &str, key: &str) -> PathBuf {
        self.locks_dir()
            .join(format!("{}.lock", Self::entry_name(kind, key)))
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.cache_dir().join(".trash")
    }

    pub fn statcache_path(&self) -> PathBuf {
        self.cache_dir().join(".statcache.json")
    }

    /// `runs/<experiment>/`.
    pub fn experiment_dir(&self, experiment: &str) -> PathBuf {
        self.root.join(experiment)
    }

    /// `runs/<experiment>/[<variant>/]<stage>`.
    pub fn pointer_path(&self, experiment: &str, variant: Option<&str>, stage: &str) -> PathBuf {
        let mut p = self.experiment_dir(experiment);
        if let Some(v) = variant {
            p.push(v);
        }
        p.join(stage)
    }
}
