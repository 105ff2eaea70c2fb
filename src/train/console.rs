//! What a training shows while it runs. On a terminal: its progress bar (message: loss,
//! acc, lr) with eval and notice lines printed above it. Without one (a Slurm log, nohup,
//! a pipe) the bars are hidden and would show nothing until the stage ends, so every log
//! step and every eval becomes one plain line on stderr instead.

use indicatif::ProgressBar;

use crate::train::metrics_log::format_time;

/// A line above the bar, or on stderr when the bar is hidden (`ProgressBar::println`
/// drops it then).
pub fn say(pb: &ProgressBar, msg: &str) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

/// `[train] ` from the bar's prefix (the stage name), or nothing.
pub fn tag(pb: &ProgressBar) -> String {
    let p = pb.prefix();
    if p.is_empty() {
        String::new()
    } else {
        format!("[{p}] ")
    }
}

/// One logged optimizer step.
pub struct StepReport {
    pub step: usize,
    pub max_steps: usize,
    pub loss: f64,
    pub acc: Option<f64>,
    pub lr: f64,
    /// Steps and seconds of this process (a resumed run counts from its resume point).
    pub steps_this_run: usize,
    pub elapsed_s: f64,
    /// Samples per optimizer step (batch × accumulation).
    pub samples_per_step: usize,
}

impl StepReport {
    /// `step 10/100 (10.0%)  loss 0.6931  acc 0.500  lr 2.00e-3  1.52 steps/s, 12.2 samples/s  ETA 59s`.
    pub fn plain(&self) -> String {
        let pct = 100.0 * self.step as f64 / self.max_steps.max(1) as f64;
        let mut s = format!(
            "step {}/{} ({pct:.1}%)  loss {:.4}",
            self.step, self.max_steps, self.loss
        );
        if let Some(a) = self.acc {
            s.push_str(&format!("  acc {a:.3}"));
        }
        s.push_str(&format!("  lr {:.2e}", self.lr));
        if self.steps_this_run > 0 && self.elapsed_s > 0.0 {
            let rate = self.steps_this_run as f64 / self.elapsed_s;
            let eta = (self.max_steps - self.step.min(self.max_steps)) as f64 / rate;
            s.push_str(&format!(
                "  {rate:.2} steps/s, {:.1} samples/s  ETA {}",
                rate * self.samples_per_step as f64,
                format_time(eta)
            ));
        }
        s
    }

    /// The bar's message on a terminal (`loss 0.6931  acc 0.500  lr 2.00e-3`).
    fn message(&self) -> String {
        format!(
            "loss {:.4}  acc {}  lr {:.2e}",
            self.loss,
            self.acc.map_or("-".into(), |a| format!("{a:.3}")),
            self.lr
        )
    }
}

/// Show a logged step: the bar's message, or a plain line without a terminal.
pub fn log_step(pb: &ProgressBar, r: &StepReport) {
    if pb.is_hidden() {
        eprintln!("{}{}", tag(pb), r.plain());
    } else {
        pb.set_message(r.message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_carry_progress_speed_and_eta() {
        let r = StepReport {
            step: 10,
            max_steps: 100,
            loss: std::f64::consts::LN_2,
            acc: Some(0.5),
            lr: 2e-3,
            steps_this_run: 10,
            elapsed_s: 5.0,
            samples_per_step: 8,
        };
        assert_eq!(
            r.plain(),
            "step 10/100 (10.0%)  loss 0.6931  acc 0.500  lr 2.00e-3  2.00 steps/s, 16.0 samples/s  ETA 45s"
        );
        let first = StepReport {
            steps_this_run: 0,
            acc: None,
            ..r
        };
        assert_eq!(
            first.plain(),
            "step 10/100 (10.0%)  loss 0.6931  lr 2.00e-3"
        );
        let pb = ProgressBar::hidden();
        pb.set_prefix("r8/train");
        assert_eq!(tag(&pb), "[r8/train] ");
    }
}
