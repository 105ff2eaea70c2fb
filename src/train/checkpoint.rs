//! `checkpoint-N/` directories: everything needed to continue a run bit-for-bit.
//!
//! ```text
//! checkpoint-N/
//!   adapter_config.json, adapter_model.safetensors   PEFT adapter (train::adapter_io)
//!   train_state.safetensors   trainable params (`param.<path>`) and AdamW moments
//!                             (`<path>.exp_avg`, `<path>.exp_avg_sq`), f32, by Burn path
//!   trainer_state.json        TrainerState: step, data position, accumulators, log history
//! ```
//! A checkpoint is written into `checkpoint-N.tmp/` and renamed, so a directory named
//! `checkpoint-N` is always complete. The RNG "state" is the run seed: the loop reseeds the
//! backend before every micro-batch from (seed, step, micro-batch), so dropout masks depend
//! only on the position in training.

use crate::train::adapter_io::{self, AdapterConfig};
use crate::train::safetensors_io;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const TRAIN_STATE: &str = "train_state.safetensors";
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

/// Loop state saved with every checkpoint (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub global_step: usize,
    pub max_steps: usize,
    /// transformers' fractional `state.epoch`.
    pub epoch: f64,
    /// Next data position: epoch index and accumulation-group index within it.
    pub data_epoch: usize,
    pub data_group: usize,
    /// Sum of per-step losses since the last train log line (transformers' `tr_loss`).
    pub tr_loss: f64,
    /// Correct / seen training samples since the last train log line.
    pub acc_correct: u64,
    pub acc_seen: u64,
    /// Sum of all per-step losses (for `train_loss`).
    pub total_loss: f64,
    pub last_logged_step: usize,
    /// Seconds of training before this process (for `train_runtime` across resumes).
    pub runtime_before_s: f64,
    /// Best eval metric among saved checkpoints and its checkpoint step.
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    /// Eval metric of each saved checkpoint (step → metric), for rotation.
    pub checkpoint_metrics: BTreeMap<usize, f64>,
    /// The seed the backend RNG is derived from.
    pub seed: u64,
    /// Hash of the hyperparameters; a checkpoint from other settings is not resumed.
    pub config_digest: String,
    /// Every `logging.jsonl` line written so far, time fields included.
    pub log_history: Vec<Map<String, Value>>,
}

/// Name of the checkpoint directory of `step`.
pub fn dir_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

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
    adapter_io::write_adapter(&tmp, adapter.0, adapter.1)?;
    let mut tensors: Vec<(String, TensorData)> = params
        .iter()
        .map(|(p, d)| (format!("{PARAM_PREFIX}{p}"), d.clone()))
        .collect();
    tensors.extend(optimizer.iter().cloned());
    safetensors_io::write(&tmp.join(TRAIN_STATE), &tensors, None)?;
    let json = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(tmp.join(TRAINER_STATE), json)?;
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

pub fn read(dir: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(dir.join(TRAINER_STATE))
        .map_err(|e| format!("{}: {e}", dir.join(TRAINER_STATE).display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| format!("{}: {e}", dir.join(TRAINER_STATE).display()))?;
    let tensors = safetensors_io::read(&dir.join(TRAIN_STATE)).map_err(|e| e.to_string())?;
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
