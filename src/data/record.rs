//! The dataset stage's output records: what training and scoring consume.
//!
//! Layout of a dataset cache entry:
//! `train.jsonl`, `val.jsonl` (one `Record` per line, dataset order), `images/` (resized
//! RGB PNGs referenced by `RecordImage::file`), `stats.json`.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// A sample's target, in ms-swift's forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Single-label classification: a class index.
    Class(usize),
    /// Multi-label classification: the set of positive classes (may be empty).
    Classes(Vec<usize>),
    /// Regression: one float per label (num_labels of them).
    Values(Vec<f32>),
}

/// One image of a sample, already resized by smart_resize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordImage {
    /// Resized RGB PNG, relative to the dataset entry's directory.
    pub file: String,
    /// The path as written in the dataset row.
    pub source: String,
    /// Original (height, width).
    pub orig_hw: [u32; 2],
    /// (t, h, w) in 14-px patches: [1, h̄/14, w̄/14].
    pub grid_thw: [usize; 3],
}

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Row index in the source dataset file (0-based, before any row was deleted).
    pub index: usize,
    /// Token ids of the templated prompt, image pads expanded.
    pub input_ids: Vec<u32>,
    /// Target, if the row had one (scoring files may not).
    pub label: Option<Label>,
    pub images: Vec<RecordImage>,
    /// (role, content) of the row's messages as written, for the score stage's output
    /// (ms-swift echoes them in its infer results).
    #[serde(default)]
    pub messages: Vec<(String, String)>,
}

/// Read `<dir>/<split>.jsonl`; `split` is `train` or `val`. Missing file ⇒ None.
pub fn load_split(dir: &Path, split: &str) -> anyhow::Result<Option<Vec<Record>>> {
    let path = dir.join(format!("{split}.jsonl"));
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(Some(out))
}
