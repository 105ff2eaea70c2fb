//! `stats.json` of a dataset entry and the short table the stage prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::record::{Label, Record};

/// Token-length summary; percentiles by the nearest-rank method (`sorted[⌈p·n⌉ - 1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min: usize,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub mean: f64,
}

impl LengthStats {
    /// None for an empty list.
    pub fn from_lengths(lengths: &[usize]) -> Option<Self> {
        if lengths.is_empty() {
            return None;
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let rank = |p: f64| sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Self {
            min: sorted[0],
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: sorted[n - 1],
            mean: sorted.iter().sum::<usize>() as f64 / n as f64,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Source dataset file (as given to the stage).
    pub file: String,
    /// Rows in the file.
    pub rows_in_file: usize,
    /// Rows kept (written to `<split>.jsonl`).
    pub rows: usize,
    /// Rows dropped by `truncation_strategy = "delete"`.
    pub rows_deleted: usize,
    /// Indices of the deleted rows.
    pub deleted_rows: Vec<usize>,
    /// Kept rows per class index (multi-label: rows where the class is positive).
    pub labels: BTreeMap<usize, usize>,
    /// Kept rows with a regression target.
    pub regression_rows: usize,
    /// Kept rows without a label.
    pub unlabeled_rows: usize,
    /// Images referenced by kept rows.
    pub images: usize,
    /// Token lengths of kept rows (after image expansion); None when no row is kept.
    pub token_length: Option<LengthStats>,
}

impl SplitStats {
    pub fn new(file: String, rows_in_file: usize, kept: &[Record], deleted: &[usize]) -> Self {
        let mut labels = BTreeMap::new();
        let (mut regression_rows, mut unlabeled_rows) = (0, 0);
        for r in kept {
            match &r.label {
                Some(Label::Class(c)) => *labels.entry(*c).or_insert(0) += 1,
                Some(Label::Classes(cs)) => {
                    cs.iter().for_each(|c| *labels.entry(*c).or_insert(0) += 1)
                }
                Some(Label::Values(_)) => regression_rows += 1,
                None => unlabeled_rows += 1,
            }
        }
        let lengths: Vec<usize> = kept.iter().map(|r| r.input_ids.len()).collect();
        Self {
            file,
            rows_in_file,
            rows: kept.len(),
            rows_deleted: deleted.len(),
            deleted_rows: deleted.to_vec(),
            labels,
            regression_rows,
            unlabeled_rows,
            images: kept.iter().map(|r| r.images.len()).sum(),
            token_length: LengthStats::from_lengths(&lengths),
        }
    }
}

/// What smart_resize did to the distinct images (by area: up = larger, down = smaller).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    pub distinct: usize,
    pub resized_up: usize,
    pub resized_down: usize,
    pub unchanged: usize,
}

impl ImageStats {
    pub fn count(&mut self, orig_hw: [u32; 2], new_hw: [u32; 2]) {
        self.distinct += 1;
        let area = |hw: [u32; 2]| hw[0] as u64 * hw[1] as u64;
        if orig_hw == new_hw {
            self.unchanged += 1;
        } else if area(new_hw) >= area(orig_hw) {
            self.resized_up += 1;
        } else {
            self.resized_down += 1;
        }
    }
}

/// Content of `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// `train` / `val` → its statistics.
    pub splits: BTreeMap<String, SplitStats>,
    pub images: ImageStats,
}

impl DatasetStats {
    /// A short human-readable summary (one line per split, one for images).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<6} {:>6} {:>8} {:>7}  {:>5} {:>5} {:>5} {:>5} {:>5}  labels",
            "split", "rows", "deleted", "images", "min", "p50", "p90", "p99", "max"
        );
        for (name, st) in &self.splits {
            let l = st.token_length.as_ref();
            let f = |g: fn(&LengthStats) -> usize| l.map_or("-".into(), |l| g(l).to_string());
            let labels = st
                .labels
                .iter()
                .map(|(c, n)| format!("{c}:{n}"))
                .collect::<Vec<_>>();
            let _ = writeln!(
                s,
                "{:<6} {:>6} {:>8} {:>7}  {:>5} {:>5} {:>5} {:>5} {:>5}  {}",
                name,
                st.rows,
                st.rows_deleted,
                st.images,
                f(|l| l.min),
                f(|l| l.p50),
                f(|l| l.p90),
                f(|l| l.p99),
                f(|l| l.max),
                labels.join(" ")
            );
        }
        let i = &self.images;
        let _ = write!(
            s,
            "images: {} distinct, {} resized down, {} resized up, {} unchanged",
            i.distinct, i.resized_down, i.resized_up, i.unchanged
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = LengthStats::from_lengths(&(1..=100).collect::<Vec<_>>()).unwrap();
        assert_eq!((l.min, l.p50, l.p90, l.p99, l.max), (1, 50, 90, 99, 100));
        let l = LengthStats::from_lengths(&[7]).unwrap();
        assert_eq!((l.min, l.p50, l.p99, l.max), (7, 7, 7, 7));
        assert!(LengthStats::from_lengths(&[]).is_none());
    }
}
