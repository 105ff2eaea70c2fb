//! `pipeline gc`: delete cache entries no `runs/<name>/…` pointer references, and
//! partial dirs no live process holds a lock on — but not the partial dir of a resumable
//! stage (an interrupted training's checkpoints), unless asked (`--partials`): rerunning
//! continues from there. Lock files stay: deleting one while a process has it open would
//! let a second process lock a fresh file (two holders).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::entry::RESUMABLE_SUFFIX;
use super::lock::{KeyLock, lease_path};
use super::pointers::resolve_link;
use super::{Result, Store, io};

/// What gc removed (or would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// (path, bytes) of each removed entry or partial dir.
    pub removed: Vec<(PathBuf, u64)>,
    /// Entries kept because a pointer names them.
    pub kept: usize,
    /// Unreferenced entries skipped because a running process holds their lock.
    pub busy: Vec<PathBuf>,
    /// Partial dirs of resumable stages kept (work a rerun continues from).
    pub resumable: Vec<PathBuf>,
}

/// What `gc` may delete besides unreferenced entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// Only report.
    pub dry_run: bool,
    /// Also delete the partial dirs of resumable stages (their checkpoints).
    pub partials: bool,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|(_, b)| b).sum()
    }
}

/// Collect garbage in `store`.
pub fn gc(store: &Store, opts: GcOptions) -> Result<GcReport> {
    let dry_run = opts.dry_run;
    let mut report = GcReport::default();
    let cache = store.cache_dir();
    if !cache.is_dir() {
        return Ok(report);
    }
    let live = live_entries(store)?;
    for e in io(std::fs::read_dir(&cache), "list", &cache)? {
        let e = io(e, "list", &cache)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        if live.contains(&name) {
            report.kept += 1;
            continue;
        }
        let lock_path = store.locks_dir().join(format!("{name}.lock"));
        // Re-read the links under the lock: a run may have linked it since.
        let dead = || {
            live_entries(store)
                .map(|l| !l.contains(&name))
                .unwrap_or(false)
        };
        remove_unless_locked(&e.path(), &lock_path, dry_run, dead, &mut report)?;
    }
    for dir in [store.partial_root(), store.trash_dir()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(RESUMABLE_SUFFIX) {
                continue; // markers go with their dirs
            }
            // Trash names are `<entry>.<pid>.<nanos>`; the lock is the entry's.
            let entry = name.split('.').next().unwrap_or(&name).to_string();
            let marker = dir.join(format!("{name}{RESUMABLE_SUFFIX}"));
            if dir == store.partial_root() && marker.exists() && !opts.partials {
                report.resumable.push(e.path());
                continue;
            }
            let lock_path = store.locks_dir().join(format!("{entry}.lock"));
            let before = report.removed.len();
            remove_unless_locked(&e.path(), &lock_path, dry_run, || true, &mut report)?;
            if !dry_run && report.removed.len() > before && marker.exists() {
                io(std::fs::remove_file(&marker), "remove", &marker)?;
            }
        }
    }
    Ok(report)
}

fn remove_unless_locked(
    path: &Path,
    lock_path: &Path,
    dry_run: bool,
    still_dead: impl Fn() -> bool,
    report: &mut GcReport,
) -> Result<()> {
    // Held while we delete, so no run computes into it or links to it meanwhile (a dry
    // run only peeks, and creates no lock files).
    let free = if dry_run && !lock_path.exists() && !lease_path(lock_path).exists() {
        true
    } else {
        let guard = KeyLock::try_exclusive(lock_path)?;
        let free = guard.is_some();
        if !dry_run && free {
            if !still_dead() {
                report.kept += 1;
                return Ok(());
            }
            let bytes = size_of(path);
            io(std::fs::remove_dir_all(path), "remove", path)?;
            report.removed.push((path.to_path_buf(), bytes));
            return Ok(());
        }
        free
    };
    if !free {
        report.busy.push(path.to_path_buf());
        return Ok(());
    }
    report.removed.push((path.to_path_buf(), size_of(path)));
    Ok(())
}

/// Entry names referenced by any link under `runs/` (outside `runs/cache`).
fn live_entries(store: &Store) -> Result<BTreeSet<String>> {
    let mut live = BTreeSet::new();
    let cache = store.cache_dir();
    let Ok(rd) = std::fs::read_dir(store.root()) else {
        return Ok(live);
    };
    for e in rd.flatten() {
        if e.path() != cache {
            walk(&e.path(), &cache, 0, &mut live);
        }
    }
    Ok(live)
}

fn walk(path: &Path, cache: &Path, depth: usize, live: &mut BTreeSet<String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        if let Some(target) = resolve_link(path)
            && target.parent() == Some(cache)
            && let Some(n) = target.file_name()
        {
            live.insert(n.to_string_lossy().into_owned());
        }
    } else if meta.is_dir() && depth < 3 {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            walk(&e.path(), cache, depth + 1, live);
        }
    }
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| size_of(&e.path()))
            .sum()
    } else {
        meta.len()
    }
}

/// `12.3 MB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(store: &Store, kind: &str, key: &str, bytes: usize) {
        let d = store.entry_dir(kind, key);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("blob"), vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn dry_run_reports_and_real_run_removes_only_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("runs"));
        let (live, dead, sweep_live) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        entry(&store, "train", &live, 10);
        entry(&store, "train", &dead, 1000);
        entry(&store, "dataset", &sweep_live, 5);
        store
            .set_pointer("exp", None, "train", "train", &live)
            .unwrap();
        store
            .set_pointer("exp", Some("r8-lr1e-4"), "data", "dataset", &sweep_live)
            .unwrap();
        // A stale partial (no live lock) and one whose lock is held.
        let stale = store.partial_dir("train", &"4".repeat(64));
        std::fs::create_dir_all(&stale).unwrap();
        let busy = store.partial_dir("train", &"5".repeat(64));
        std::fs::create_dir_all(&busy).unwrap();
        let _held = KeyLock::exclusive(&store.lock_path("train", &"5".repeat(64))).unwrap();

        let r = gc(
            &store,
            GcOptions {
                dry_run: true,
                partials: false,
            },
        )
        .unwrap();
        let removed: Vec<&PathBuf> = r.removed.iter().map(|(p, _)| p).collect();
        assert_eq!(removed, [&store.entry_dir("train", &dead), &stale]);
        assert_eq!(r.bytes(), 1000);
        assert_eq!((r.kept, r.busy.len()), (2, 1));
        assert!(
            store.entry_dir("train", &dead).exists(),
            "dry run deletes nothing"
        );

        let r = gc(&store, GcOptions::default()).unwrap();
        assert_eq!(r.removed.len(), 2);
        assert!(!store.entry_dir("train", &dead).exists());
        assert!(!stale.exists());
        assert!(busy.exists());
        assert!(store.entry_dir("train", &live).exists());
        assert!(store.entry_dir("dataset", &sweep_live).exists());
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
    }
}
