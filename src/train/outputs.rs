//! Final artifacts of a train stage, next to `logging.jsonl` and the checkpoints:
//! `adapter/` (final PEFT adapter), `best` (a file naming the best checkpoint directory),
//! `metrics.json` (final eval metrics, no time fields), `train_curves.png`.

use crate::adapter::{AdapterConfig, write_peft_state};
use crate::report::plot::{Chart, Series, render_grid};
use crate::train::TrainError;
use crate::train::trainer::TrainOutcome;
use burn::tensor::TensorData;
use serde_json::{Map, Value, json};
use std::path::Path;

pub const ADAPTER_DIR: &str = "adapter";
pub const BEST_FILE: &str = "best";
pub const METRICS_FILE: &str = "metrics.json";
pub const CURVES_FILE: &str = "train_curves.png";

/// Write the final artifacts of `outcome` into `out_dir`.
pub fn finish(
    out_dir: &Path,
    outcome: &TrainOutcome,
    adapter_config: &AdapterConfig,
    adapter: &[(String, TensorData)],
) -> Result<(), TrainError> {
    let dir = out_dir.join(ADAPTER_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    write_peft_state(&dir, adapter_config, adapter).map_err(std::io::Error::other)?;
    // Without evaluations the last checkpoint stands in for the best one.
    let best = outcome
        .best_checkpoint
        .as_ref()
        .unwrap_or(&outcome.last_checkpoint);
    std::fs::write(out_dir.join(BEST_FILE), format!("{best}\n"))?;
    let metrics = json!({
        "global_step": outcome.global_step,
        "max_steps": outcome.max_steps,
        "eval_loss": outcome.final_eval.as_ref().map(|e| e.loss),
        "eval_acc": outcome.final_eval.as_ref().and_then(|e| e.acc),
        "eval_samples": outcome.final_eval.as_ref().map(|e| e.samples),
        "best_model_checkpoint": outcome.best_checkpoint,
        "best_metric": outcome.best_metric,
        "last_model_checkpoint": outcome.last_checkpoint,
    });
    std::fs::write(
        out_dir.join(METRICS_FILE),
        serde_json::to_string_pretty(&metrics).map_err(std::io::Error::other)?,
    )?;
    render_grid(
        &out_dir.join(CURVES_FILE),
        &curves(&outcome.log_history),
        2,
        (560, 360),
    )?;
    Ok(())
}

/// The four panels of `train_curves.png` from the log history.
pub fn curves(history: &[Map<String, Value>]) -> Vec<Chart> {
    let series = |key: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|l| {
                let step = super::log_step::step_of(l)? as f64;
                Some((step, l.get(key)?.as_f64()?))
            })
            .collect()
    };
    vec![
        Chart::new("loss", "step", "")
            .with(Series::new("train loss", series("loss")))
            .with(Series::new("eval_loss", series("eval_loss"))),
        Chart::new("accuracy", "step", "")
            .with(Series::new("train acc", series("acc")))
            .with(Series::new("eval_acc", series("eval_acc"))),
        Chart::new("learning rate", "step", "")
            .with(Series::new("learning_rate", series("learning_rate"))),
        Chart::new("gradient norm (before clipping)", "step", "")
            .with(Series::new("grad_norm", series("grad_norm"))),
    ]
}
