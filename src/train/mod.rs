//! LoRA training with ms-swift / transformers `Trainer` semantics.
//!
//! - [`trainer::train`]: the loop (grad accumulation, global-norm clipping, AdamW,
//!   warmup + cosine/linear/constant schedule, eval every N steps, checkpoints, resume).
//! - [`classifier`]: the traits the loop needs from a model ([`Classifier`], [`PeftState`])
//!   and a split ([`SampleSet`]).
//! - [`optimizer`]: torch-exact AdamW and `clip_grad_norm_`; [`schedule`]: lr schedules.
//! - [`replicas`]: data parallel (ms-swift's `NPROC_PER_NODE`): model copies per device,
//!   shards of each micro-batch ([`shards`]), gradients summed in one fixed order;
//!   [`spread`]: evaluation and scoring batches over the copies.
//! - [`checkpoint`] (PEFT adapter format via `crate::adapter`, shared with export),
//!   [`metrics_log`] (`logging.jsonl`), [`outputs`] (final artifacts and curves).

pub mod checkpoint;
pub mod classifier;
pub mod console;
pub mod data_order;
pub mod evaluate;
pub mod hf_state;
pub mod log_step;
pub mod loss;
pub mod metrics_log;
pub mod optimizer;
pub mod outputs;
pub mod params;
pub mod replicas;
pub mod schedule;
pub mod seq_cls;
pub mod shards;
pub mod spread;
pub mod tensorboard;
pub mod trainer;
pub mod trainer_state;

pub use classifier::{Classifier, InMemorySet, PeftState, SampleSet};
pub use trainer::{RunOptions, TrainOutcome, TrainSpec, train, train_replicated};

/// Failures of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("loading samples: {0}")]
    Data(anyhow::Error),
    #[error("model: {0}")]
    Model(anyhow::Error),
    #[error("the training loss is not finite at step {step} (try a lower learning_rate)")]
    NonFinite { step: usize },
    /// Raised by the `stop_after_steps` test hook after that optimizer step.
    #[error("training interrupted after step {0} (test hook)")]
    Interrupted(usize),
    #[error("plot: {0}")]
    Plot(#[from] crate::report::plot::PlotError),
}
