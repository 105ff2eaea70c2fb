//! `checkpoint-N/` directories: everything needed to continue a run bit-for-bit.
//!
//! ```text
//! checkpoint-N/
//!   adapter_config.json, adapter_model.safetensors   PEFT adapter (crate::adapter)
//!   train_state.safetensors   trainable params (`param.<path>`) and AdamW moments
//!                             (`<path>.exp_avg`, `<path>.exp_avg_sq`), f32, by Burn path
//!   trainer_state.json        transformers' TrainerState schema (`hf_state`); the data
//!                             position, accumulators and digest ride in its
//!                             `stateful_callbacks`
//!   checkpoint.json           size and blake3 of each file above (written last)
//! ```
//! A checkpoint is written into `checkpoint-N.tmp/`, fsynced and renamed, so a directory
//! named `checkpoint-N` was complete when written; loading checks it against
//! `checkpoint.json` too (a disk can still lose or damage it later), and a damaged newest
//! checkpoint gives way to the previous good one ([`newest_good`]). The RNG "state" is the run seed: the loop reseeds the
//! backend before every micro-batch from (seed, step, micro-batch), so dropout masks depend
//! only on the position in training.

use crate::adapter::{AdapterConfig, write_peft_state};
use crate::safetensors_io::{read_tensors, write_tensors};
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const TRAIN_STATE: &str = "train_state.safetensors";
/// Sizes and digests of a checkpoint's files.
pub const CHECKSUMS: &str = "checkpoint.json";
const PARAM_PREFIX: &str = "param.";

/// Which eval metric picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// `eval_loss`, lower is better (ms-swift's default).
    Loss,
    /// `eval_acc`, higher is better.
    Acc,
}

impl BestMetric {
    pub const CHOICES: &'static [&'static str] = &["loss", "acc"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "loss" | "eval_loss" => Some(Self::Loss),
            "acc" | "eval_acc" => Some(Self::Acc),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Loss => "eval_loss",
            Self::Acc => "eval_acc",
        }
    }

    /// Whether `a` beats `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Self::Loss => a < b,
            Self::Acc => a > b,
        }
    }
}

pub use super::trainer_state::{TrainerState, dir_name};

/// Write a checkpoint atomically into `out_dir/checkpoint-N`.
pub fn write(
    out_dir: &Path,
    state: &TrainerState,
    adapter: (&AdapterConfig, &[(String, TensorData)]),
    params: &[(String, TensorData)],
    optimizer: &[(String, TensorData)],
) -> std::io::Result<PathBuf> {
    let final_dir = out_dir.join(dir_name(state.global_step));
    let tmp = out_dir.join(format!("{}.tmp", dir_name(state.global_step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write_peft_state(&tmp, adapter.0, adapter.1).map_err(std::io::Error::other)?;
    let mut tensors: Vec<(String, TensorData)> = params
        .iter()
        .map(|(p, d)| (format!("{PARAM_PREFIX}{p}"), d.clone()))
        .collect();
    tensors.extend(optimizer.iter().cloned());
    write_tensors(&tmp.join(TRAIN_STATE), &tensors).map_err(std::io::Error::other)?;
    let json = serde_json::to_string_pretty(&super::hf_state::to_hf_json(state, out_dir))
        .map_err(std::io::Error::other)?;
    std::fs::write(tmp.join(TRAINER_STATE), json)?;
    let sums = crate::checksums::seal(&tmp, &|_| false).map_err(std::io::Error::other)?;
    let sums = serde_json::to_string_pretty(&sums).map_err(std::io::Error::other)?;
    std::fs::write(tmp.join(CHECKSUMS), sums)?;
    std::fs::File::open(tmp.join(CHECKSUMS))?.sync_all()?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)?;
    Ok(final_dir)
}

/// A checkpoint read back for resuming.
pub struct Loaded {
    pub state: TrainerState,
    /// Trainable params by path.
    pub params: BTreeMap<String, TensorData>,
    /// Optimizer moments by `<path>.exp_avg[_sq]`.
    pub optimizer: BTreeMap<String, TensorData>,
}

/// Read a checkpoint, checking its files against `checkpoint.json` when it has one.
pub fn read(dir: &Path) -> Result<Loaded, String> {
    let sums = dir.join(CHECKSUMS);
    if sums.is_file() {
        let text =
            std::fs::read_to_string(&sums).map_err(|e| format!("{}: {e}", sums.display()))?;
        let sums: Vec<crate::checksums::FileSum> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", sums.display()))?;
        crate::checksums::check_digests(dir, &sums)?;
    }
    let text = std::fs::read_to_string(dir.join(TRAINER_STATE))
        .map_err(|e| format!("{}: {e}", dir.join(TRAINER_STATE).display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .and_then(|v: serde_json::Value| super::hf_state::from_hf_json(&v))
        .map_err(|e| format!("{}: {e}", dir.join(TRAINER_STATE).display()))?;
    let tensors = read_tensors(&dir.join(TRAIN_STATE)).map_err(|e| e.to_string())?;
    let mut params = BTreeMap::new();
    let mut optimizer = BTreeMap::new();
    for (k, v) in tensors {
        match k.strip_prefix(PARAM_PREFIX) {
            Some(p) => params.insert(p.to_string(), v),
            None => optimizer.insert(k, v),
        };
    }
    Ok(Loaded {
        state,
        params,
        optimizer,
    })
}

/// A checkpoint that loaded: its step, its directory and what it holds.
pub type Good = (usize, PathBuf, Loaded);

/// The newest checkpoint in `out_dir` that loads and passes its checks, and the newer ones
/// that did not — each `(dir, why)`, newest first — which are removed, so the run
/// continues from the good one and writes them again.
pub fn newest_good(out_dir: &Path) -> (Option<Good>, Vec<(PathBuf, String)>) {
    let mut skipped = Vec::new();
    for (step, dir) in list(out_dir).into_iter().rev() {
        match read(&dir) {
            Ok(loaded) => return (Some((step, dir, loaded)), skipped),
            Err(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                skipped.push((dir, why));
            }
        }
    }
    (None, skipped)
}

/// Complete checkpoints in `out_dir`, ascending by step.
pub fn list(out_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
            && e.path().join(TRAINER_STATE).is_file()
        {
            out.push((step, e.path()));
        }
    }
    out.sort();
    out
}

/// Remove half-written `checkpoint-N.tmp` directories left by a crash.
pub fn remove_partial(out_dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") && name.ends_with(".tmp") {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Steps to delete under `save_total_limit` (transformers `_rotate_checkpoints` and
/// `_sorted_checkpoints`): sort by step, move the best to the next-to-last place, keep the
/// last `limit` (2 when limit is 1 and the best is not the newest).
pub fn to_rotate(steps: &[usize], best: Option<usize>, limit: Option<usize>) -> Vec<usize> {
    let Some(mut limit) = limit.filter(|&l| l > 0) else {
        return Vec::new();
    };
    let mut sorted = steps.to_vec();
    sorted.sort();
    if let Some(i) = best.and_then(|b| sorted.iter().position(|&s| s == b))
        && i + 2 < sorted.len()
    {
        let b = sorted.remove(i);
        sorted.insert(sorted.len() - 1, b);
    }
    if limit == 1 && best.is_some() && sorted.last() != best.as_ref() {
        limit = 2;
    }
    let n_delete = sorted.len().saturating_sub(limit);
    sorted[..n_delete].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_best_and_newest() {
        assert_eq!(
            to_rotate(&[10, 20, 30, 40], Some(20), Some(2)),
            vec![10, 30]
        );
        assert_eq!(
            to_rotate(&[10, 20, 30, 40], Some(40), Some(2)),
            vec![10, 20]
        );
        assert_eq!(to_rotate(&[10, 20, 30], Some(10), Some(1)), vec![20]);
        assert_eq!(to_rotate(&[10, 20, 30], None, Some(1)), vec![10, 20]);
        assert!(to_rotate(&[10, 20, 30], Some(10), None).is_empty());
    }

    #[test]
    fn best_metric_direction() {
        assert!(BestMetric::Loss.better(0.1, 0.2));
        assert!(BestMetric::Acc.better(0.9, 0.8));
        assert_eq!(BestMetric::parse("eval_acc"), Some(BestMetric::Acc));
        assert_eq!(BestMetric::parse("f1"), None);
    }
}
