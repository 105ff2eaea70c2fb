//! The progress key of `logging.jsonl` lines and the global step it carries: written by
//! `metrics_log`, read by the trainer state, the curves plot and the TensorBoard events.

use serde_json::{Map, Value};

/// The key of a line's `"step/max"` progress (absent from the closing summary line).
pub const STEP_KEY: &str = "global_step/max_steps";

/// The global step a logged line was written at; None for lines without [`STEP_KEY`].
pub fn step_of(line: &Map<String, Value>) -> Option<usize> {
    line.get(STEP_KEY)?
        .as_str()?
        .split('/')
        .next()?
        .parse()
        .ok()
}
