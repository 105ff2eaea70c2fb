//! The one trait through which the executor knows stages. Adding a stage kind means
//! implementing `Stage` in `src/stages/`; the executor does not change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Artifacts of a finished upstream stage, as handed to a downstream stage.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Stage kind (`dataset`, `train`, ...).
    pub kind: String,
    /// Content key of the cache entry.
    pub key: String,
    /// Directory holding its artifacts (a complete cache entry).
    pub dir: PathBuf,
}

/// Everything a running stage may use besides its own params.
pub struct StageContext<'a> {
    /// Stage name for messages: `train`, or `r8-lr1e-4/train` in one sweep variant.
    pub name: &'a str,
    /// This stage's content key.
    pub key: &'a str,
    /// Where to write artifacts. Stable per key (not random) so a resumable stage finds its
    /// checkpoints after a crash; renamed into the cache when `run` returns Ok.
    pub out_dir: &'a Path,
    /// Upstream artifacts by upstream stage name.
    pub inputs: &'a BTreeMap<String, Upstream>,
    /// Device chosen by the scheduler for this stage (`cpu`, `cuda:0`), if it pins one:
    /// the first of `devices`.
    pub device: Option<&'a str>,
    /// Every device slot the scheduler handed this stage (`Stage::device_slots` of them,
    /// in pool order; empty when it pins none).
    pub devices: &'a [String],
    /// Shared progress area (add bars to it; never print directly while bars are live).
    pub progress: &'a indicatif::MultiProgress,
}

impl StageContext<'_> {
    /// Print a message line: above the bars on a terminal, else straight to stderr (a
    /// hidden `MultiProgress` drops `println`, and slurm logs should keep these lines).
    pub fn say(&self, msg: impl AsRef<str>) {
        super::progress::print_above(self.progress, msg.as_ref());
    }

    /// A bar for the stage's own progress, added to the run's bars: `{prefix} [===>  ]
    /// {pos}/{len} ` then `tail` (more of an indicatif template, e.g.
    /// `images ({per_sec}, eta {eta})`). Hidden, like the rest, without a terminal.
    pub fn bar(&self, len: u64, prefix: String, tail: &str) -> indicatif::ProgressBar {
        let bar = self.progress.add(indicatif::ProgressBar::new(len));
        let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {tail}");
        let style = indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(prefix);
        bar
    }

    /// The single upstream of `kind`, if any (e.g. the dataset a train stage needs).
    pub fn upstream_of_kind(&self, kind: &str) -> Option<&Upstream> {
        self.inputs.values().find(|u| u.kind == kind)
    }
}

/// A stage served from the cache (see `Stage::on_cache_hit`).
pub struct CacheHit<'a> {
    /// Stage name for messages (as `StageContext::name`).
    pub name: &'a str,
    pub key: &'a str,
    /// The complete cache entry.
    pub entry: &'a Path,
    pub progress: &'a indicatif::MultiProgress,
}

impl CacheHit<'_> {
    /// Print a message line, as [`StageContext::say`].
    pub fn say(&self, msg: impl AsRef<str>) {
        super::progress::print_above(self.progress, msg.as_ref());
    }
}

/// Failure of a stage: bad user input (exit 2) or a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The input is wrong (a missing file, a malformed row, a bad label): one line, exit 2.
    #[error("{0}")]
    Input(String),
    /// A parameter is wrong, found at plan time: `key` is its dotted path in the experiment
    /// file (`stages.train.lora_rank`), so the binary can point at `file:line:column`.
    #[error("{key}: {message}")]
    Param { key: String, message: String },
    /// Anything else.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A stage kind implementation: its params, how its key is formed, and `run`.
pub trait Stage: Send + Sync {
    /// Kind name as in the experiment file.
    fn kind(&self) -> &'static str;
    /// Bump when the implementation changes its artifacts; part of the content key.
    fn version(&self) -> u32;
    /// Resolved parameters in canonical JSON form (sorted keys); part of the key and the
    /// manifest. Must not contain anything that does not change the output.
    fn params(&self) -> serde_json::Value;
    /// Files whose bytes the output depends on (datasets, images, weights).
    fn input_files(&self) -> Result<Vec<PathBuf>, StageError>;
    /// Stage kinds this stage requires among its `needs` (validated before anything runs).
    fn required_inputs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the stage computes on an accelerator: the scheduler then pins it to one of
    /// the experiment's `devices` (one such stage per device at a time) and passes that
    /// device in `StageContext::device`. Each stage kind declares it; none by default.
    fn uses_device(&self) -> bool {
        false
    }
    /// How many device slots a device-bound stage holds while it runs (several for work
    /// spread over devices); they all come in `StageContext::devices`.
    fn device_slots(&self) -> usize {
        1
    }
    /// Whether the stage can run on `pool`, the device slots of this run. Asked of every
    /// device-bound stage before anything runs; an `Input` error names the setting at fault.
    fn check_pool(&self, pool: &[String]) -> Result<(), StageError> {
        let _ = pool;
        Ok(())
    }
    /// Whether a crashed run may continue from what it left in `out_dir` (checkpoints).
    /// Otherwise the executor empties `out_dir` before `run`.
    fn resumable(&self) -> bool {
        false
    }
    /// Whether the experiment's seed can change the output (random init, dropout,
    /// shuffling). Only then is it part of the key.
    fn seeded(&self) -> bool {
        true
    }
    /// What of the device kind the plan puts a device-bound stage on (`cpu` or `cuda`)
    /// changes its output, e.g. the dtype it computes in there; part of the key, so results
    /// computed on the CPU and on a GPU never stand in for each other.
    fn device_key(&self, device_kind: &str) -> serde_json::Value {
        serde_json::json!({ "device": device_kind })
    }
    /// Plan-time checks of a device-bound stage against what it will run: its model and
    /// the device kind the plan puts it on (`cpu`, `cuda`), e.g. that its memory fits.
    /// `name` is its table in the experiment file (`stages.<name>`), for errors that
    /// point at a key.
    fn check_fits(&self, _name: &str, _device_kind: &str) -> Result<(), StageError> {
        Ok(())
    }
    /// Called when the stage is served from the cache instead of run: refresh what it
    /// publishes outside the cache (e.g. a copy in a user-named directory) from `entry`.
    fn on_cache_hit(&self, _ctx: &CacheHit) -> Result<(), StageError> {
        Ok(())
    }
    /// Compute the artifacts into `ctx.out_dir` (`manifest.json` there is reserved for
    /// the cache).
    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;
}
