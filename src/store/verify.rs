//! `pipeline verify`: read every byte of every cache entry and compare it with the sizes
//! and blake3 digests its manifest recorded. Cache hits already check sizes; this catches
//! what a size check cannot (a flipped bit, an in-place edit). A broken entry is evicted
//! (under its lock, after a second look) so the next run recomputes it; `--dry-run` only
//! reports.

use std::path::PathBuf;

use super::lock::KeyLock;
use super::manifest::Manifest;
use super::{Result, Store, io};
use crate::checksums::check_digests;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Entries whose every file matched.
    pub ok: usize,
    /// Bytes read and matched.
    pub bytes: u64,
    /// (entry, why) of each broken or incomplete entry.
    pub broken: Vec<(PathBuf, String)>,
    /// Broken entries removed from the cache.
    pub evicted: Vec<PathBuf>,
    /// Broken entries left in place because a running process holds their lock.
    pub busy: Vec<PathBuf>,
}

fn check(dir: &std::path::Path, name: &str) -> std::result::Result<u64, String> {
    let m = Manifest::read(dir)?;
    if Store::entry_name(&m.kind, &m.key) != name {
        return Err(format!(
            "its manifest describes {}",
            Store::entry_name(&m.kind, &m.key)
        ));
    }
    check_digests(dir, &m.artifacts)
}

/// Verify every entry of `store`'s cache; evict broken ones unless `dry_run`.
pub fn verify(store: &Store, dry_run: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let cache = store.cache_dir();
    if !cache.is_dir() {
        return Ok(report);
    }
    let mut names: Vec<String> = io(std::fs::read_dir(&cache), "list", &cache)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let dir = cache.join(&name);
        let why = match check(&dir, &name) {
            Ok(bytes) => {
                report.ok += 1;
                report.bytes += bytes;
                continue;
            }
            Err(why) => why,
        };
        report.broken.push((dir.clone(), why));
        if dry_run {
            continue;
        }
        let lock = store.locks_dir().join(format!("{name}.lock"));
        let Some(_held) = KeyLock::try_exclusive(&lock)? else {
            report.busy.push(dir);
            continue;
        };
        // A run may have replaced the entry while we read it: look again under the lock.
        if check(&dir, &name).is_ok() {
            report.broken.pop();
            report.ok += 1;
            continue;
        }
        let trash = store.trash_dir();
        io(std::fs::create_dir_all(&trash), "create", &trash)?;
        let aside = trash.join(format!("{name}.verify.{}", std::process::id()));
        io(std::fs::rename(&dir, &aside), "move aside", &dir)?;
        io(std::fs::remove_dir_all(&aside), "remove", &aside)?;
        report.evicted.push(dir);
    }
    Ok(report)
}
