//! `logging.jsonl` lines in ms-swift 3.x's format (`swift/trainers/callback.py`
//! `add_train_message`, `swift/trainers/mixin.py` `_maybe_log_save_evaluate`).
//!
//! Train line keys, in order: `loss`, `grad_norm`, `learning_rate`, `acc`, `epoch`,
//! `global_step/max_steps`, `percentage`, `elapsed_time`, `remaining_time`,
//! `train_speed(s/it)`. Eval lines: `eval_loss`, `eval_runtime`, `eval_samples_per_second`,
//! `eval_steps_per_second`, `eval_acc`, then the same progress keys. Floats are rounded to 8
//! decimals as ms-swift does. The time keys ([`TIME_KEYS`]) are the only nondeterministic
//! values. ms-swift's `memory(GiB)` is omitted (ms-swift also omits it on CPU).

use super::log_step::STEP_KEY;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Keys whose values depend on wall-clock time.
pub const TIME_KEYS: &[&str] = &[
    "elapsed_time",
    "remaining_time",
    "train_speed(s/it)",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
];

/// Python's `round(x, digits)` (correctly rounded decimal), as a float.
pub fn round_to(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// ms-swift `format_time`: `1d 2h 3m 4s`, leading zero units dropped. The total is rounded
/// (half to even, as Python's `round`) before it is split, so 119.6 s is `2m 0s`, never
/// `1m 60s`.
pub fn format_time(seconds: f64) -> String {
    let total = seconds.max(0.0).round_ties_even() as u64;
    let days = total / 86400;
    let hours = total % 86400 / 3600;
    let minutes = total % 3600 / 60;
    let secs = total % 60;
    if days > 0 {
        format!("{days}d {hours}h {minutes}m {secs}s")
    } else if hours > 0 {
        format!("{hours}h {minutes}m {secs}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// JSON number from an f64 (non-finite values become null, as JSON has no NaN).
pub fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Appends lines to `logging.jsonl`, keeping every line (the log history) in memory, and
/// their scalars to a TensorBoard event file in `runs/` beside it.
pub struct MetricsLog {
    path: PathBuf,
    events: super::tensorboard::EventWriter,
    pub history: Vec<Map<String, Value>>,
}

impl MetricsLog {
    /// Start `path` afresh with `history` (empty for a new run; a checkpoint's history on
    /// resume, which drops lines written after that checkpoint).
    pub fn create(path: &Path, history: Vec<Map<String, Value>>) -> std::io::Result<Self> {
        let mut text = String::new();
        for line in &history {
            text.push_str(&Value::Object(line.clone()).to_string());
            text.push('\n');
        }
        std::fs::write(path, text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let events = super::tensorboard::EventWriter::create(dir, &history)?;
        Ok(Self {
            path: path.to_path_buf(),
            events,
            history,
        })
    }

    /// Append one line (also to the history).
    pub fn append(&mut self, line: Map<String, Value>) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        writeln!(f, "{}", Value::Object(line.clone()))?;
        self.events.append(&line)?;
        self.history.push(line);
        Ok(())
    }
}

/// Samples behind `train_samples_per_second`, as transformers counts them: with `max_steps`
/// set, `max_steps × global batch × accumulation` (the global batch counts every replica);
/// else `epochs × dataset size`.
pub fn train_samples(spec: &crate::train::TrainSpec, max_steps: usize, n_train: usize) -> f64 {
    if spec.max_steps > 0 {
        (max_steps * spec.global_batch_size() * spec.grad_accum) as f64
    } else {
        spec.num_train_epochs * n_train as f64
    }
}

/// Progress fields shared by every line (`add_train_message`).
pub struct Progress {
    pub global_step: usize,
    pub max_steps: usize,
    /// Steps done by this process (resumed runs start counting at the resume point).
    pub steps_this_run: usize,
    pub elapsed_s: f64,
}

/// Add `epoch` and the ms-swift progress keys, then round floats to 8 decimals.
pub fn finish_line(mut line: Map<String, Value>, epoch: f64, p: &Progress) -> Map<String, Value> {
    line.insert("epoch".into(), num(epoch));
    line.insert(
        STEP_KEY.into(),
        Value::String(format!("{}/{}", p.global_step, p.max_steps)),
    );
    let frac = if p.max_steps > 0 {
        p.global_step as f64 / p.max_steps as f64
    } else {
        0.0
    };
    line.insert(
        "percentage".into(),
        Value::String(format!("{:.2}%", frac * 100.0)),
    );
    line.insert(
        "elapsed_time".into(),
        Value::String(format_time(p.elapsed_s)),
    );
    let speed = if p.steps_this_run > 0 {
        p.elapsed_s / p.steps_this_run as f64
    } else {
        0.0
    };
    if frac != 0.0 {
        let left = (p.max_steps - p.global_step) as f64 * speed;
        line.insert("remaining_time".into(), Value::String(format_time(left)));
    }
    for v in line.values_mut() {
        if let Some(x) = v.as_f64()
            && v.is_f64()
        {
            *v = num(round_to(x, 8));
        }
    }
    line.insert("train_speed(s/it)".into(), num(round_to(speed, 6)));
    line
}

/// A copy of `line` without the time keys (for comparing runs).
pub fn without_time(line: &Map<String, Value>) -> Map<String, Value> {
    line.iter()
        .filter(|(k, _)| !TIME_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_time_like_ms_swift() {
        assert_eq!(format_time(3.4), "3s");
        assert_eq!(format_time(2.5), "2s"); // Python's round() is half-to-even
        assert_eq!(format_time(125.0), "2m 5s");
        assert_eq!(format_time(3600.0 * 9.0 + 30.0 * 60.0 + 16.0), "9h 30m 16s");
        assert_eq!(format_time(86400.0 + 61.0), "1d 0h 1m 1s");
        // A rounded-up second carries into the minute (and on).
        assert_eq!(format_time(119.6), "2m 0s");
        assert_eq!(format_time(59.6), "1m 0s");
        assert_eq!(format_time(3599.5), "1h 0m 0s");
        assert_eq!(format_time(86399.7), "1d 0h 0m 0s");
    }

    #[test]
    fn rounding_like_python() {
        // round(0.123456785, 8) == 0.12345678 (the double is just below the tie)
        assert_eq!(round_to(0.123456785, 8), 0.12345678);
        assert_eq!(round_to(1.0 / 3.0, 8), 0.33333333);
        assert_eq!(round_to(2e-3, 8), 0.002);
    }

    #[test]
    fn progress_keys_in_order() {
        let mut line = Map::new();
        line.insert("loss".into(), num(1.0 / 3.0));
        let p = Progress {
            global_step: 3,
            max_steps: 40,
            steps_this_run: 3,
            elapsed_s: 6.0,
        };
        let line = finish_line(line, 0.075, &p);
        let keys: Vec<&str> = line.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "loss",
                "epoch",
                "global_step/max_steps",
                "percentage",
                "elapsed_time",
                "remaining_time",
                "train_speed(s/it)"
            ]
        );
        assert_eq!(line["loss"], num(0.33333333));
        assert_eq!(line["global_step/max_steps"], "3/40");
        assert_eq!(line["percentage"], "7.50%");
        assert_eq!(line["remaining_time"], "1m 14s");
        assert_eq!(line["train_speed(s/it)"], num(2.0));
        let t = without_time(&line);
        assert!(!t.contains_key("elapsed_time") && t.contains_key("percentage"));
    }
}
