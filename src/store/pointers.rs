//! `runs/<name>/[<variant>/]<stage>`: relative symlinks to the latest cache entry of a
//! stage, replaced atomically (create a temp link, rename it over the old one).

use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::{Result, Store, StoreError, io};

impl Store {
    /// Point `runs/<experiment>/[<variant>/]<stage>` at the entry (`kind`, `key`).
    pub fn set_pointer(
        &self,
        experiment: &str,
        variant: Option<&str>,
        stage: &str,
        kind: &str,
        key: &str,
    ) -> Result<()> {
        let link = self.pointer_path(experiment, variant, stage);
        let parent = link.parent().expect("pointer has a parent");
        io(std::fs::create_dir_all(parent), "create", parent)?;
        if let Ok(meta) = std::fs::symlink_metadata(&link)
            && !meta.file_type().is_symlink()
        {
            return Err(StoreError::NotAPointer { path: link });
        }
        let depth = if variant.is_some() { 2 } else { 1 };
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("cache");
        target.push(Store::entry_name(kind, key));
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            return Ok(());
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!(".{stage}.{}.{n}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        io(symlink(&target, &tmp), "create link", &tmp)?;
        io(std::fs::rename(&tmp, &link), "update link", &link)
    }

    /// The entry directory a pointer names, if the link exists.
    pub fn read_pointer(
        &self,
        experiment: &str,
        variant: Option<&str>,
        stage: &str,
    ) -> Option<PathBuf> {
        let link = self.pointer_path(experiment, variant, stage);
        resolve_link(&link)
    }

    /// The manifest of the entry a pointer names (the previous run of that stage).
    pub fn pointer_manifest(
        &self,
        experiment: &str,
        variant: Option<&str>,
        stage: &str,
    ) -> Option<Manifest> {
        self.read_pointer(experiment, variant, stage)
            .and_then(|d| Manifest::read(&d).ok())
    }
}

/// Absolute target of a symlink (relative targets resolve against the link's folder).
pub(crate) fn resolve_link(link: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(link).ok()?;
    let abs = if target.is_absolute() {
        target
    } else {
        link.parent()?.join(target)
    };
    Some(crate::paths::normalize(&abs))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_relative_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("runs"));
        let k1 = "a".repeat(64);
        let k2 = "b".repeat(64);
        std::fs::create_dir_all(store.entry_dir("train", &k1)).unwrap();
        std::fs::create_dir_all(store.entry_dir("train", &k2)).unwrap();
        store
            .set_pointer("exp", Some("r8"), "train", "train", &k1)
            .unwrap();
        let link = store.pointer_path("exp", Some("r8"), "train");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../cache/train-aaaaaaaaaaaaaaaa")
        );
        assert!(link.join(".").is_dir(), "link resolves");
        store
            .set_pointer("exp", Some("r8"), "train", "train", &k2)
            .unwrap();
        assert_eq!(
            store.read_pointer("exp", Some("r8"), "train").unwrap(),
            store.entry_dir("train", &k2)
        );
        store
            .set_pointer("exp", None, "train", "train", &k2)
            .unwrap();
        assert_eq!(
            std::fs::read_link(store.pointer_path("exp", None, "train")).unwrap(),
            PathBuf::from("../cache/train-bbbbbbbbbbbbbbbb")
        );
        // A real directory in the way is not clobbered.
        std::fs::create_dir_all(store.pointer_path("exp", None, "mine")).unwrap();
        let err = store
            .set_pointer("exp", None, "mine", "train", &k2)
            .unwrap_err();
        assert!(
            err.to_string().contains("not a link made by pipeline"),
            "{err}"
        );
    }
}
