//! Publishing an export to a user-named `output_dir` without ever clobbering files that
//! are not ours.
//!
//! A directory we wrote carries a marker file. `output_dir` may be absent, an empty
//! directory, or a directory holding our marker (then it is replaced as a whole);
//! anything else is an error. The copy is staged in a sibling directory and renamed into
//! place, so a crash leaves either the old export or the new one.

use std::path::{Path, PathBuf};

use super::ExportError;

/// Marker file naming the export that owns the directory.
pub const MARKER: &str = ".pipeline-export";

/// Whether `dir` is safe to (re)write: absent, empty, or marked as ours.
pub fn check_writable(dir: &Path) -> Result<(), ExportError> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(ExportError::NotOurs {
            path: dir.to_path_buf(),
            why: "it is a file, not a directory".into(),
        });
    }
    if dir.join(MARKER).is_file() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if entries.next().is_none() {
        return Ok(());
    }
    Err(ExportError::NotOurs {
        path: dir.to_path_buf(),
        why: format!("it is not empty and has no {MARKER} marker, so pipeline did not write it"),
    })
}

/// Replace `dest` by a copy of `src` (a finished export directory) plus the marker, whose
/// content is `marker_text` (e.g. the stage's name and key).
pub fn publish_copy(src: &Path, dest: &Path, marker_text: &str) -> Result<(), ExportError> {
    check_writable(dest)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let staging = parent.join(format!(".{name}.pipeline-staging-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    copy_tree(src, &staging)?;
    std::fs::write(staging.join(MARKER), marker_text).map_err(io(&staging.join(MARKER)))?;
    if dest.exists() {
        // Ours (checked above): move it aside, swap in the new copy, then delete it.
        let old: PathBuf = parent.join(format!(".{name}.pipeline-old-{}", std::process::id()));
        std::fs::rename(dest, &old).map_err(io(dest))?;
        std::fs::rename(&staging, dest).map_err(io(dest))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&staging, dest).map_err(io(dest))?;
    }
    Ok(())
}

/// Recursive copy of regular files and directories (links are followed).
fn copy_tree(src: &Path, dest: &Path) -> Result<(), ExportError> {
    std::fs::create_dir_all(dest).map_err(|source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let entries = std::fs::read_dir(src).map_err(|source| ExportError::Io {
        path: src.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ExportError::Io {
            path: src.to_path_buf(),
            source,
        })?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|source| ExportError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_dir(root: &Path) -> PathBuf {
        let src = root.join("src");
        std::fs::create_dir_all(src.join("peft")).unwrap();
        std::fs::write(src.join("peft/adapter_config.json"), "{}").unwrap();
        std::fs::write(src.join("README.md"), "x").unwrap();
        src
    }

    #[test]
    fn writes_new_then_replaces_our_own() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("out/final");
        publish_copy(&src, &dest, "export abc").unwrap();
        assert!(dest.join("peft/adapter_config.json").is_file());
        assert_eq!(
            std::fs::read_to_string(dest.join(MARKER)).unwrap(),
            "export abc"
        );
        // A stale file from the previous export disappears on re-export.
        std::fs::write(dest.join("stale.txt"), "old").unwrap();
        publish_copy(&src, &dest, "export def").unwrap();
        assert!(!dest.join("stale.txt").exists());
        assert_eq!(
            std::fs::read_to_string(dest.join(MARKER)).unwrap(),
            "export def"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no staging or old directories left behind"
        );
    }

    #[test]
    fn refuses_a_user_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("mine");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("thesis.tex"), "precious").unwrap();
        let e = publish_copy(&src, &dest, "m").unwrap_err().to_string();
        assert!(e.contains("mine") && e.contains(MARKER), "{e}");
        assert_eq!(
            std::fs::read_to_string(dest.join("thesis.tex")).unwrap(),
            "precious"
        );

        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_writable(&file).is_err());
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        publish_copy(&src, &empty, "m").unwrap();
        assert!(empty.join("README.md").is_file());
    }
}
