//! Progress output: one `indicatif::MultiProgress` shared with the stages, plus status
//! lines (`✓ data cached`, `▶ train running`, `✓ train done in 3.2s`) on stderr. When
//! stderr is not a terminal the bars are hidden and lines go straight to stderr.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Status lines and per-stage spinners over a shared `MultiProgress`.
pub struct Progress<'a> {
    pub multi: &'a MultiProgress,
}

impl<'a> Progress<'a> {
    pub fn new(multi: &'a MultiProgress) -> Self {
        Progress { multi }
    }

    /// Print one line above the bars.
    pub fn line(&self, msg: &str) {
        print_above(self.multi, msg);
    }

    /// A spinner showing elapsed time while a stage runs (finish with `finish_and_clear`).
    pub fn spinner(&self, msg: String) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static template"),
        );
        bar.set_message(msg);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// Print `text` above the progress bars, or on stderr when the bars are hidden (stderr is
/// not a terminal: `MultiProgress::println` drops lines then, and logs should keep them).
pub fn print_above(multi: &MultiProgress, text: &str) {
    if multi.is_hidden() {
        eprintln!("{text}");
    } else {
        let _ = multi.println(text);
    }
}

/// `3.2s`, `2m05s`, `1h02m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    }
}
