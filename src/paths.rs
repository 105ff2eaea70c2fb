//! Lexical path helpers shared by the experiment loader and the store (neither depends
//! on the other).

use std::path::{Component, Path, PathBuf};

/// Lexically normalize an absolute path (drop `.`, fold `..`) without touching the disk.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/./../c/d.json")),
            PathBuf::from("/a/c/d.json")
        );
    }
}
