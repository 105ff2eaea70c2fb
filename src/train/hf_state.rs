//! `trainer_state.json` in the Hugging Face Trainer's schema (`transformers.TrainerState`,
//! which `TrainerState.load_from_json` builds with `cls(**json)`, so only its own keys may
//! appear): `global_step`, `max_steps`, `epoch`, `log_history` (numbers only, each entry
//! with its `step`), `best_metric`, `best_global_step`, `best_model_checkpoint`, ...
//!
//! What resuming needs beyond that (data position, loss accumulators, config digest) rides
//! in `stateful_callbacks`, the dict the Trainer keeps for callback states; a callback name
//! it does not know is skipped when transformers restores them.

use serde_json::{Map, Value, json};

use super::trainer_state::{TrainerState, dir_name};

/// The `stateful_callbacks` entry holding our resume state.
pub const RESUME_CALLBACK: &str = "PipelineResume";

/// The file's JSON for `state`; `run_dir` names the best checkpoint as transformers does
/// (`<output_dir>/checkpoint-N`).
pub fn to_hf_json(state: &TrainerState, run_dir: &std::path::Path) -> Value {
    let log_history: Vec<Value> = state
        .log_history
        .iter()
        .filter_map(|line| {
            // transformers' log_history: the numbers of each log call plus its step.
            let step = super::log_step::step_of(line)?;
            let mut e: Map<String, Value> = line
                .iter()
                .filter(|(k, v)| {
                    v.is_number() && !super::tensorboard::LOGGING_ONLY_KEYS.contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            e.insert("step".into(), json!(step));
            Some(Value::Object(e))
        })
        .collect();
    let best_ckpt = state
        .best_step
        .map(|s| run_dir.join(dir_name(s)).display().to_string());
    json!({
        "best_global_step": state.best_step,
        "best_metric": state.best_metric,
        "best_model_checkpoint": best_ckpt,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "is_hyper_param_search": false,
        "is_local_process_zero": true,
        "is_world_process_zero": true,
        "log_history": log_history,
        "max_steps": state.max_steps,
        "num_input_tokens_seen": 0,
        "stateful_callbacks": {
            RESUME_CALLBACK: {"args": {}, "attributes": state},
        },
        "total_flos": 0.0,
        "trial_name": null,
        "trial_params": null,
    })
}

/// Our resume state back from the file (the HF layout, or the flat one older
/// checkpoints of this tool wrote).
pub fn from_hf_json(v: &Value) -> Result<TrainerState, serde_json::Error> {
    match v.pointer(&format!("/stateful_callbacks/{RESUME_CALLBACK}/attributes")) {
        Some(inner) => serde_json::from_value(inner.clone()),
        None => serde_json::from_value(v.clone()),
    }
}
