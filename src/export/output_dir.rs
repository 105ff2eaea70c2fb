//! Publishing an export to a user-named `output_dir` without ever clobbering files that
//! are not ours.
//!
//! A directory we wrote carries a marker file listing the files we put there, with their
//! blake3 digests. `output_dir` may be absent, an empty directory, or a directory holding
//! our marker; anything else is refused. When it has our marker, only the files the marker
//! lists are replaced: files the user added survive (carried into the new copy), and a
//! file we wrote but the user changed since — or a user file where the new export writes
//! one — makes the export refuse, naming them (exit 2).
//!
//! The new copy is staged in a sibling directory (unique per process and call) and swapped
//! in with two renames, so a crash leaves the old export or the new one; if it struck
//! between the renames, the next publish puts the old directory back first. User files
//! are hard-linked (or copied) into the staged copy, so their originals stay in the old
//! directory until the new one is in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::ExportError;

/// Marker file naming the export that owns the directory.
pub const MARKER: &str = ".pipeline-export";

/// One publish at a time per process: two exports swapping the same directory would race.
static PUBLISHING: Mutex<()> = Mutex::new(());

/// What the marker records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The export that wrote the directory (`pipeline export stage `export``).
    pub origin: String,
    /// Its cache key.
    pub key: String,
    /// Files we wrote (relative, `/`-separated) → blake3.
    pub files: BTreeMap<String, String>,
}

impl Marker {
    /// The marker of `dir`: `Ok(None)` without one. A marker from before file lists were
    /// recorded reads as one listing no files.
    pub fn read(dir: &Path) -> Result<Option<Marker>, ExportError> {
        let path = dir.join(MARKER);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some(serde_json::from_str(&text).unwrap_or_else(|_| {
            Marker {
                origin: text.trim().to_string(),
                ..Marker::default()
            }
        })))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `dir` may be (re)written: absent, empty, or marked as ours with none of our
/// files changed since. (Files in the way of a new export are only known when publishing.)
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
    match Marker::read(dir)? {
        Some(marker) => {
            let changed = changed_files(dir, &marker)?;
            refuse_if_any(dir, &changed, &[])
        }
        None => {
            let mut entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
            if entries.next().is_none() {
                return Ok(());
            }
            Err(ExportError::NotOurs {
                path: dir.to_path_buf(),
                why: format!(
                    "it is not empty and has no {MARKER} marker, so pipeline did not write it"
                ),
            })
        }
    }
}

/// Files the marker lists whose content differs from what we wrote.
fn changed_files(dir: &Path, marker: &Marker) -> Result<Vec<String>, ExportError> {
    let mut out = Vec::new();
    for (rel, digest) in &marker.files {
        let path = dir.join(rel);
        if path.is_file() && &hash(&path)? != digest {
            out.push(rel.clone());
        }
    }
    Ok(out)
}

fn refuse_if_any(dir: &Path, changed: &[String], foreign: &[String]) -> Result<(), ExportError> {
    if changed.is_empty() && foreign.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !changed.is_empty() {
        parts.push(format!(
            "changed since pipeline wrote them: {}",
            changed.join(", ")
        ));
    }
    if !foreign.is_empty() {
        parts.push(format!(
            "not written by pipeline but in the way of the new export: {}",
            foreign.join(", ")
        ));
    }
    Err(ExportError::NotOurs {
        path: dir.to_path_buf(),
        why: format!("replacing it would lose files {}", parts.join("; ")),
    })
}

/// Replace our files in `dest` by a copy of `src` (a finished export directory, without
/// its top-level `skip` names), keeping every file the user added, and record `origin` and
/// `key` in the marker.
pub fn publish_copy(
    src: &Path,
    dest: &Path,
    origin: &str,
    key: &str,
    skip: &[&str],
) -> Result<(), ExportError> {
    let _one = PUBLISHING.lock().unwrap_or_else(|e| e.into_inner());
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    restore_interrupted_swap(parent, &name, dest)?;
    check_writable(dest)?;

    let mut new_files = Vec::new();
    list_files(src, "", skip, &mut new_files)?;
    let marker = Marker::read(dest)?;
    let mut keep = Vec::new();
    let mut foreign = Vec::new();
    if dest.is_dir() {
        let mut present = Vec::new();
        list_files(dest, "", &[MARKER], &mut present)?;
        for rel in present {
            let listed = marker.as_ref().is_some_and(|m| m.files.contains_key(&rel));
            // A legacy marker lists nothing: the files the export writes count as ours.
            let legacy = marker.as_ref().is_some_and(|m| m.files.is_empty());
            if listed || (legacy && new_files.contains(&rel)) {
                continue;
            }
            if new_files.contains(&rel) {
                foreign.push(rel);
            } else {
                keep.push(rel);
            }
        }
    }
    refuse_if_any(dest, &[], &foreign)?;

    let n = unique();
    let staging = parent.join(format!(".{name}.pipeline-staging-{n}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let mut files = BTreeMap::new();
    for rel in &new_files {
        let (from, to) = (src.join(rel), staging.join(rel));
        create_parent(&to)?;
        std::fs::copy(&from, &to).map_err(io_err(&from))?;
        files.insert(rel.clone(), hash(&to)?);
    }
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    for rel in &keep {
        let (from, to) = (dest.join(rel), staging.join(rel));
        create_parent(&to)?;
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io_err(&from))?;
        }
    }
    let marker = Marker {
        origin: origin.to_string(),
        key: key.to_string(),
        files,
    };
    let marker_path = staging.join(MARKER);
    let text = serde_json::to_string_pretty(&marker).expect("marker serializes") + "\n";
    std::fs::write(&marker_path, text).map_err(io_err(&marker_path))?;
    if dest.exists() {
        let old = parent.join(format!(".{name}.pipeline-old-{n}"));
        std::fs::rename(dest, &old).map_err(io_err(dest))?;
        std::fs::rename(&staging, dest).map_err(io_err(dest))?;
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        std::fs::rename(&staging, dest).map_err(io_err(dest))?;
    }
    Ok(())
}

/// A crash between the two renames of a swap leaves no `dest`, only `.<name>.pipeline-old-…`
/// (with the user's originals): move it back before anything else.
fn restore_interrupted_swap(parent: &Path, name: &str, dest: &Path) -> Result<(), ExportError> {
    if dest.exists() {
        return Ok(());
    }
    let prefix = format!(".{name}.pipeline-old-");
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let mut olds: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    olds.sort();
    if let Some(old) = olds.pop() {
        std::fs::rename(&old, dest).map_err(io_err(&old))?;
    }
    Ok(())
}

/// Regular files under `dir` (links followed), relative and `/`-separated, sorted; `skip`
/// names top-level entries to leave out.
fn list_files(
    dir: &Path,
    rel: &str,
    skip: &[&str],
    out: &mut Vec<String>,
) -> Result<(), ExportError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && skip.contains(&name.as_str()) {
            continue;
        }
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.path().is_dir() {
            list_files(&e.path(), &r, skip, out)?;
        } else {
            out.push(r);
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), ExportError> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p).map_err(io_err(p)),
        None => Ok(()),
    }
}

fn hash(path: &Path) -> Result<String, ExportError> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Unique within the machine: pid, a per-process counter and the time.
fn unique() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{n}-{t:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_dir(root: &Path) -> PathBuf {
        let src = root.join("src");
        std::fs::create_dir_all(src.join("peft")).unwrap();
        std::fs::write(src.join("peft/adapter_config.json"), "{}").unwrap();
        std::fs::write(src.join("README.md"), "x").unwrap();
        std::fs::write(src.join("manifest.json"), "cache only").unwrap();
        src
    }

    fn publish(src: &Path, dest: &Path, key: &str) -> Result<(), ExportError> {
        publish_copy(
            src,
            dest,
            "pipeline export stage `export`",
            key,
            &["manifest.json"],
        )
    }

    #[test]
    fn writes_new_then_replaces_our_own_and_keeps_the_users() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("out/final");
        publish(&src, &dest, "abc").unwrap();
        assert!(dest.join("peft/adapter_config.json").is_file());
        assert!(!dest.join("manifest.json").exists(), "skipped");
        let m = Marker::read(&dest).unwrap().unwrap();
        assert_eq!(m.key, "abc");
        assert_eq!(
            m.files.keys().collect::<Vec<_>>(),
            ["README.md", "peft/adapter_config.json"]
        );
        // The user's files survive a re-export; ours are replaced.
        std::fs::write(dest.join("my_notes.txt"), "mine").unwrap();
        std::fs::write(dest.join("peft/extra.txt"), "mine too").unwrap();
        std::fs::write(src.join("README.md"), "y").unwrap();
        publish(&src, &dest, "def").unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("my_notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("peft/extra.txt")).unwrap(),
            "mine too"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("README.md")).unwrap(),
            "y"
        );
        assert_eq!(Marker::read(&dest).unwrap().unwrap().key, "def");
        // A file we no longer write disappears; it was ours.
        std::fs::remove_file(src.join("README.md")).unwrap();
        publish(&src, &dest, "ghi").unwrap();
        assert!(!dest.join("README.md").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no staging or old directories left behind"
        );
    }

    #[test]
    fn changed_or_colliding_files_make_it_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("final");
        publish(&src, &dest, "abc").unwrap();
        std::fs::write(dest.join("README.md"), "edited by hand").unwrap();
        let e = publish(&src, &dest, "def").unwrap_err().to_string();
        assert!(
            e.contains("changed since pipeline wrote them: README.md"),
            "{e}"
        );
        assert!(check_writable(&dest).is_err());
        assert_eq!(
            std::fs::read_to_string(dest.join("README.md")).unwrap(),
            "edited by hand"
        );
        std::fs::write(dest.join("README.md"), "x").unwrap();
        std::fs::write(src.join("NEW.md"), "new").unwrap();
        std::fs::write(dest.join("NEW.md"), "the user's").unwrap();
        let e = publish(&src, &dest, "def").unwrap_err().to_string();
        assert!(e.contains("in the way of the new export: NEW.md"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dest.join("NEW.md")).unwrap(),
            "the user's"
        );
    }

    #[test]
    fn refuses_a_user_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("mine");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("thesis.tex"), "precious").unwrap();
        let e = publish(&src, &dest, "m").unwrap_err().to_string();
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
        publish(&src, &empty, "m").unwrap();
        assert!(empty.join("README.md").is_file());
    }

    #[test]
    fn an_interrupted_swap_is_undone_and_concurrent_publishes_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let src = export_dir(tmp.path());
        let dest = tmp.path().join("final");
        publish(&src, &dest, "abc").unwrap();
        std::fs::write(dest.join("notes.txt"), "mine").unwrap();
        // As if killed between the renames: only the old directory is left.
        std::fs::rename(&dest, tmp.path().join(".final.pipeline-old-1-0-0")).unwrap();
        publish(&src, &dest, "def").unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("notes.txt")).unwrap(),
            "mine"
        );
        std::thread::scope(|s| {
            for k in ["k1", "k2", "k3", "k4"] {
                let (src, dest) = (&src, &dest);
                s.spawn(move || publish(src, dest, k).unwrap());
            }
        });
        assert_eq!(
            std::fs::read_to_string(dest.join("notes.txt")).unwrap(),
            "mine"
        );
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("pipeline-")), "{names:?}");
    }
}
