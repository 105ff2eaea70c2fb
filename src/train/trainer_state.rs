//! The loop's state as every checkpoint saves it (`trainer_state.json`, in the Hugging
//! Face Trainer's schema through `hf_state`), and checkpoint directory names. Its own module
//! so that `checkpoint` (which writes and reads it) and `hf_state` (its JSON form) both
//! build on it without importing each other.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
