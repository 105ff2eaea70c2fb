//! Sizes and blake3 digests of the files of a directory (a cache entry, a training
//! checkpoint), and the two checks against them: sizes (a `stat` per file, cheap: every
//! cache hit) and digests (reads every byte: `pipeline verify`, checkpoint loads). Sealing
//! a directory also fsyncs each file and directory, so a record written after it never
//! describes data still in flight.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An I/O failure while sealing: what was being done to which file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct SealError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

type Result<T> = std::result::Result<T, SealError>;

fn io<T>(r: std::io::Result<T>, action: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| SealError {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// One file of a sealed directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Relative to the directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// Record, and fsync, every file under `dir` (sorted by path) except the top-level names
/// `skip` accepts (the record's own file: a cache entry's manifest).
pub fn seal(dir: &Path, skip: &dyn Fn(&str) -> bool) -> Result<Vec<FileSum>> {
    let mut out = Vec::new();
    walk(dir, "", skip, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, rel: &str, skip: &dyn Fn(&str) -> bool, out: &mut Vec<FileSum>) -> Result<()> {
    for e in io(std::fs::read_dir(dir), "list", dir)? {
        let e = io(e, "list", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if rel.is_empty() && skip(&name) {
            continue;
        }
        if io(std::fs::metadata(&path), "read", &path)?.is_dir() {
            walk(&path, &rel_path, skip, out)?;
        } else {
            let (size, blake3) = hash_and_sync(&path)?;
            out.push(FileSum {
                path: rel_path,
                size,
                blake3,
            });
        }
    }
    // The directory's entries must be durable too, not only the files' bytes.
    io(
        std::fs::File::open(dir).and_then(|d| d.sync_all()),
        "sync",
        dir,
    )
}

fn hash_and_sync(path: &Path) -> Result<(u64, String)> {
    let mut f = io(std::fs::File::open(path), "open", path)?;
    let size = hash_reader(&mut f, path)?;
    io(f.sync_all(), "sync", path)?;
    Ok(size)
}

/// (bytes read, blake3 hex) of everything `r` yields.
fn hash_reader(r: &mut impl Read, path: &Path) -> Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = io(r.read(&mut buf), "read", path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Every recorded file exists with its recorded size. `Err`: one line naming the first
/// file that does not.
pub fn check_sizes(dir: &Path, artifacts: &[FileSum]) -> std::result::Result<(), String> {
    for a in artifacts {
        let path = dir.join(&a.path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == a.size => {}
            Ok(m) if m.is_file() => {
                return Err(format!(
                    "{} has {} bytes, {} were recorded",
                    path.display(),
                    m.len(),
                    a.size
                ));
            }
            Ok(_) => return Err(format!("{} is not a file", path.display())),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(())
}

/// Sizes and digests of every recorded file; `Ok` is the bytes read. `Err`: one line
/// naming the first file that differs.
pub fn check_digests(dir: &Path, artifacts: &[FileSum]) -> std::result::Result<u64, String> {
    check_sizes(dir, artifacts)?;
    let mut total = 0;
    for a in artifacts {
        let path = dir.join(&a.path);
        let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (n, digest) = hash_reader(&mut f, &path).map_err(|e| e.to_string())?;
        if n != a.size || digest != a.blake3 {
            return Err(format!(
                "{} does not match its recorded digest (its content changed)",
                path.display()
            ));
        }
        total += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_are_checked_by_size_then_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("adapter")).unwrap();
        std::fs::write(d.join("train.jsonl"), "row\nrow\n").unwrap();
        std::fs::write(d.join("adapter/w.bin"), [1u8, 2, 3]).unwrap();
        std::fs::write(d.join("manifest.json"), "{}").unwrap();
        let a = seal(d, &|name| name == "manifest.json").unwrap();
        let paths: Vec<&str> = a.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(
            paths,
            ["adapter/w.bin", "train.jsonl"],
            "the skipped name left out"
        );
        assert_eq!(a[0].size, 3);
        assert_eq!(a[0].blake3, blake3::hash(&[1, 2, 3]).to_hex().to_string());
        assert_eq!(check_digests(d, &a), Ok(11));

        // Same size, other bytes: only the digest check sees it.
        std::fs::write(d.join("adapter/w.bin"), [9u8, 2, 3]).unwrap();
        assert_eq!(check_sizes(d, &a), Ok(()));
        let e = check_digests(d, &a).unwrap_err();
        assert!(e.contains("adapter/w.bin") && e.contains("digest"), "{e}");

        std::fs::write(d.join("train.jsonl"), "row\n").unwrap();
        let e = check_sizes(d, &a).unwrap_err();
        assert!(
            e.contains("train.jsonl has 4 bytes, 8 were recorded"),
            "{e}"
        );
        std::fs::remove_file(d.join("train.jsonl")).unwrap();
        let e = check_sizes(d, &a).unwrap_err();
        assert!(e.contains("train.jsonl"), "{e}");
    }
}
