//! No abort, no silent corruption, no lost user files — through the binary, in temp dirs:
//! bad files and sizes rejected with one line (`inputs`), a cache that verifies itself
//! (`cache`), resumes past a damaged checkpoint and progress lines without a terminal
//! (`resume`), user files in `output_dir` (`export`), locks between hosts (`locks`).

mod cache;
mod export;
mod inputs;
mod locks;
mod resume;

use std::path::{Path, PathBuf};

/// The tiny preset on a slice of shapes11: dataset + a 2-step training (eval and a
/// checkpoint after each step).
pub const BASE: &str = concat!(
    "name = \"rel\"\n",
    include_str!("../common/tiny_train.toml")
);

/// A temp project: `exp.toml` (`text`) and the first 8 train / 4 test rows of shapes11
/// with absolute image paths.
pub fn project(text: &str) -> tempfile::TempDir {
    crate::common::shapes11_project(text, 8, 4)
}

pub use crate::common::{Out, pipeline_out as pipeline};

/// The one complete cache entry of `kind`.
#[track_caller]
pub fn entry(dir: &Path, kind: &str) -> PathBuf {
    let mut found = crate::common::entries(&dir.join("runs"), kind);
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// The entry name (`dataset-0123456789abcdef`) `pipeline plan` lists for `stage`.
#[track_caller]
pub fn planned_entry(plan: &str, stage: &str) -> String {
    plan.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(stage)).then(|| w.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no `{stage}` in:\n{plan}"))
}

/// The partial dir of the train stage (an interrupted training's checkpoints).
#[track_caller]
pub fn train_partial(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("runs/cache/.partial"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| {
            d.is_dir()
                && d.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("train-")
        })
        .expect("a train partial")
}

/// Set `file`'s mtime.
pub fn set_mtime(file: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// 1-based line of the first line containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}
