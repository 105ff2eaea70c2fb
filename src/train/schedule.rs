//! Learning-rate schedules with linear warmup, as transformers builds them
//! (`transformers/optimization.py`: `_get_{cosine,linear,constant}_schedule_with_warmup_lr_lambda`,
//! `TrainingArguments.get_warmup_steps`).
//!
//! `lr(s)` is the rate used by optimizer step `s` (0-based): torch's `LambdaLR` applies
//! `lambda(0)` to the first step, so with warmup the first update has lr 0 — exactly as in
//! transformers.

use serde::{Deserialize, Serialize};

/// Shape of the decay after warmup (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Half a cosine period from the peak to 0 (`num_cycles` 0.5).
    Cosine,
    /// Straight line from the peak to 0 at `max_steps`.
    Linear,
    /// Stays at the peak.
    Constant,
}

impl ScheduleKind {
    /// Valid `lr_scheduler_type` values.
    pub const CHOICES: &'static [&'static str] = &["cosine", "linear", "constant"];

    /// Parse an `lr_scheduler_type` value; `constant_with_warmup` is accepted as transformers
    /// spells the same thing.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "cosine" => Some(Self::Cosine),
            "linear" => Some(Self::Linear),
            "constant" | "constant_with_warmup" => Some(Self::Constant),
            _ => None,
        }
    }
}

/// A warmup + decay schedule over `max_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Peak learning rate (`learning_rate`).
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
}

/// `warmup_steps` if > 0, else `ceil(warmup_ratio · max_steps)` (transformers' rule).
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, max_steps: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (max_steps as f64 * warmup_ratio).ceil() as usize
    }
}

impl LrSchedule {
    /// Multiplier of `base_lr` at optimizer step `step` (0-based), in f64 like Python.
    pub fn factor(&self, step: usize) -> f64 {
        let (s, w, n) = (step as f64, self.warmup_steps as f64, self.max_steps as f64);
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        let after = (n - w).max(1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((n - s) / after).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / after;
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: usize, max: usize) -> LrSchedule {
        LrSchedule {
            kind,
            base_lr: 1e-4,
            warmup_steps: warmup,
            max_steps: max,
        }
    }

    // Expected values computed by hand from the transformers lambdas
    // (e.g. cosine, W=2, N=10, s=6: progress 4/8 → 0.5·(1+cos(π/2)) = 0.5).
    #[test]
    fn cosine_matches_transformers() {
        let s = sched(ScheduleKind::Cosine, 2, 10);
        let want = [
            0.0,
            0.5,
            1.0,
            0.5 * (1.0 + (std::f64::consts::PI / 8.0).cos()),
            0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()),
            0.5 * (1.0 + (3.0 * std::f64::consts::PI / 8.0).cos()),
            0.5,
            0.5 * (1.0 + (5.0 * std::f64::consts::PI / 8.0).cos()),
            0.5 * (1.0 + (3.0 * std::f64::consts::PI / 4.0).cos()),
            0.5 * (1.0 + (7.0 * std::f64::consts::PI / 8.0).cos()),
            0.0,
        ];
        for (step, w) in want.iter().enumerate() {
            assert!((s.factor(step) - w).abs() < 1e-15, "step {step}");
        }
        assert!((s.lr(3) - 1e-4 * 0.9619397662556434).abs() < 1e-18);
    }

    #[test]
    fn linear_and_constant_match_transformers() {
        let l = sched(ScheduleKind::Linear, 3, 8);
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0];
        for (step, w) in want.iter().enumerate() {
            assert!((l.factor(step) - w).abs() < 1e-15, "step {step}");
        }
        let c = sched(ScheduleKind::Constant, 4, 8);
        let want = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0];
        for (step, w) in want.iter().enumerate() {
            assert_eq!(c.factor(step), *w, "step {step}");
        }
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = sched(ScheduleKind::Cosine, 0, 4);
        assert_eq!(s.factor(0), 1.0);
        assert!((s.factor(2) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn warmup_from_ratio_rounds_up() {
        // transformers: math.ceil(num_training_steps * warmup_ratio)
        assert_eq!(warmup_steps(0, 0.05, 41), 3);
        assert_eq!(warmup_steps(0, 0.05, 40), 2);
        assert_eq!(warmup_steps(0, 0.0, 40), 0);
        assert_eq!(warmup_steps(7, 0.5, 40), 7);
    }
}
