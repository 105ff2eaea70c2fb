//! The experiment file as written by users (docs/EXPERIMENT.md lists every key).
//!
//! Keys use ms-swift's flag names and defaults (`reference.rs` maps each to its flag).
//! Every table rejects unknown keys. These structs are the *raw* form: paths are not yet
//! resolved and cross-field rules are not yet checked (see `validate`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Top level of an experiment file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    /// Names `runs/<name>/`; defaults to the file stem.
    pub name: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub model: ModelSpec,
    pub task: TaskSpec,
    /// Stage name → stage table (its `kind` picks the params type).
    pub stages: BTreeMap<String, toml::Value>,
    /// Optional grid/random search over dotted parameter paths.
    pub sweep: Option<toml::Table>,
    /// Devices the scheduler may pin training stages to (e.g. `["cuda:0", "cuda:1"]`).
    pub devices: Option<Vec<String>>,
    /// What each Slurm array task asks for (`pipeline sweep --emit slurm`).
    pub slurm: Option<super::cluster::SlurmSpec>,
}

pub fn default_seed() -> u64 {
    42
}

/// `[model]`: which weights, which dtype, which device.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Built-in model: `tiny`, `qwen2.5-vl-3b`, `qwen2.5-vl-7b` (random weights).
    pub preset: Option<String>,
    /// Hugging Face layout directory (config.json, *.safetensors, tokenizer.json, ...).
    pub path: Option<String>,
    /// A hub id (`Qwen/Qwen2.5-VL-7B-Instruct`, ms-swift's `--model`), resolved to the copy
    /// in the Hugging Face or ModelScope cache (never downloaded); validation sets `path`.
    pub model: Option<String>,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    #[serde(default = "default_device")]
    pub device: String,
}

impl ModelSpec {
    /// The built-in `preset`, or with `path` a model directory, in float32 on the CPU.
    pub fn cpu_f32(preset: Option<&str>, path: Option<&std::path::Path>) -> ModelSpec {
        ModelSpec {
            preset: preset.map(str::to_string),
            path: path.map(|p| p.display().to_string()),
            model: None,
            torch_dtype: "float32".into(),
            device: "cpu".into(),
        }
    }
}

fn default_dtype() -> String {
    "bfloat16".into()
}
fn default_device() -> String {
    "auto".into()
}

/// `[task]`: what the classifier predicts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default = "default_task_type")]
    pub task_type: String,
    pub num_labels: usize,
    /// `single_label_classification` | `multi_label_classification` | `regression`;
    /// default as ms-swift: regression when num_labels == 1, else single-label.
    pub problem_type: Option<String>,
    /// Optional class names, index order (written to id2label on export).
    pub labels: Option<Vec<String>>,
}

fn default_task_type() -> String {
    "seq_cls".into()
}

/// `kind = "dataset"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    #[serde(default)]
    pub needs: Vec<String>,
    pub dataset: Option<String>,
    pub val_dataset: Option<String>,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_min_pixels")]
    pub min_pixels: u64,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// `delete` (default, as ms-swift 4: drop them, report the count) | `raise` (list the
    /// offending rows; also spelled `error`) | `left` / `right` (cut tokens other than the
    /// image pads from that end, as ms-swift).
    #[serde(default = "default_truncation")]
    pub truncation_strategy: String,
    /// System prompt of the chat template.
    #[serde(default = "default_system")]
    pub system: String,
}

pub fn default_max_pixels() -> u64 {
    1_003_520
}
pub fn default_min_pixels() -> u64 {
    3136
}
fn default_max_length() -> usize {
    2048
}
fn default_truncation() -> String {
    "delete".into()
}
pub fn default_system() -> String {
    "You are a helpful assistant.".into()
}

/// `kind = "train"`: `swift sft --task_type seq_cls --tuner_type lora` flags.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    #[serde(default)]
    pub needs: Vec<String>,
    /// ms-swift 4's name; `train_type` (ms-swift 3) is read as the same key.
    #[serde(default = "default_train_type", alias = "train_type")]
    pub tuner_type: String,
    /// Start from an existing PEFT adapter directory instead of a fresh LoRA init.
    pub adapter: Option<String>,
    #[serde(default = "default_lora_rank")]
    pub lora_rank: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    /// `all-linear`, a list of module names, or a regex (string that is not `all-linear`).
    #[serde(default = "default_target_modules")]
    pub target_modules: TargetModules,
    #[serde(default = "default_true")]
    pub freeze_vit: bool,
    #[serde(default = "default_true")]
    pub freeze_aligner: bool,
    #[serde(default)]
    pub freeze_llm: bool,
    #[serde(default = "default_epochs")]
    pub num_train_epochs: f64,
    /// Overrides epochs when > 0 (transformers' max_steps).
    #[serde(default = "default_max_steps")]
    pub max_steps: i64,
    #[serde(default = "default_one")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "default_one")]
    pub per_device_eval_batch_size: usize,
    #[serde(default = "default_one")]
    pub gradient_accumulation_steps: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// `cosine` | `linear` | `constant` (each with linear warmup).
    #[serde(default = "default_scheduler")]
    pub lr_scheduler_type: String,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Evaluate every N optimizer steps (and always at the end); None = only at the end.
    pub eval_steps: Option<usize>,
    #[serde(default = "default_save_steps")]
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    #[serde(default = "default_logging_steps")]
    pub logging_steps: usize,
    /// `loss` (eval_loss, lower is better) | `acc` (higher is better).
    #[serde(default = "default_metric")]
    pub metric_for_best_model: String,
    /// Seed for the per-epoch shuffle (ms-swift's data_seed: 42 whatever `seed` is, as
    /// ms-swift 4's `DataArguments.data_seed`).
    #[serde(default = "default_seed")]
    pub data_seed: u64,
    /// ms-swift's shuffle flags (both default true): `train_dataloader_shuffle` reshuffles
    /// every epoch; without it `dataset_shuffle` gives one fixed shuffled order; neither:
    /// file order.
    #[serde(default = "default_true")]
    pub dataset_shuffle: bool,
    #[serde(default = "default_true")]
    pub train_dataloader_shuffle: bool,
    /// `flash_attn` | `sdpa` | `eager` (ms-swift's `attn_impl`); recorded in args.json.
    pub attn_impl: Option<String>,
    /// Threads that load and prefetch batches (ms-swift's `dataloader_num_workers`).
    pub dataloader_num_workers: Option<usize>,
    /// Recorded in args.json and the export's README (ms-swift's self-cognition names).
    pub model_author: Option<NameList>,
    pub model_name: Option<NameList>,
    /// Also copy the stage's artifacts here when it finishes (never over files that are
    /// not ours), as `swift sft --output_dir` keeps them.
    pub output_dir: Option<String>,
    /// Data-parallel replicas, one per device of the pool (ms-swift's `NPROC_PER_NODE`):
    /// each takes `per_device_train_batch_size` samples of every micro-batch.
    #[serde(default = "default_one")]
    pub nproc_per_node: usize,
    /// ms-swift's flag: keep only each ViT block's and decoder layer's input in the forward
    /// and recompute the layer in backward (less memory, about one more forward of time).
    /// The gradients are the same either way.
    #[serde(default = "default_true")]
    pub gradient_checkpointing: bool,
}

/// A flag that takes one or more strings (`--model_name a b`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum NameList {
    One(String),
    List(Vec<String>),
}

impl NameList {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::List(v) => v.clone(),
        }
    }
}

/// `target_modules`: the string `all-linear`, a regex string, or a list of module names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    One(String),
    List(Vec<String>),
}

fn default_train_type() -> String {
    "lora".into()
}
fn default_lora_rank() -> usize {
    8
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_lora_dropout() -> f64 {
    0.05
}
fn default_target_modules() -> TargetModules {
    TargetModules::One("all-linear".into())
}
fn default_true() -> bool {
    true
}
fn default_epochs() -> f64 {
    3.0
}
fn default_max_steps() -> i64 {
    -1
}
fn default_one() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_scheduler() -> String {
    "cosine".into()
}
fn default_save_steps() -> usize {
    500
}
fn default_logging_steps() -> usize {
    5
}
fn default_metric() -> String {
    "loss".into()
}

/// `kind = "export"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default)]
    pub needs: Vec<String>,
    /// Which checkpoint of the train stage: `last` (default) | `best`.
    #[serde(default = "default_checkpoint")]
    pub checkpoint: String,
    /// Write `peft/` (adapter) — default true.
    #[serde(default = "default_true")]
    pub peft: bool,
    /// Write `merged/` (LoRA folded into the base weights) — default true.
    #[serde(default = "default_true")]
    pub merged: bool,
    /// Also copy the result to this directory (never overwrites files that are not ours).
    pub output_dir: Option<String>,
}

fn default_checkpoint() -> String {
    "last".into()
}

/// `kind = "score"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    #[serde(default)]
    pub needs: Vec<String>,
    /// `val` (default) | `train`; ignored when `dataset` is given.
    #[serde(default = "default_split")]
    pub split: String,
    /// Score this dataset file instead of a split of the dataset stage (labels optional).
    pub dataset: Option<String>,
    /// `last` (default) | `best` checkpoint of the train stage.
    #[serde(default = "default_checkpoint")]
    pub checkpoint: String,
    /// Score with an existing PEFT adapter directory (e.g. an ms-swift checkpoint).
    pub adapter: Option<String>,
    #[serde(default = "default_score_batch")]
    pub batch_size: usize,
    /// Replicas the batches are spread over, one per device of the pool (`NPROC_PER_NODE`
    /// of `swift infer`); the scores do not depend on it.
    #[serde(default = "default_one")]
    pub nproc_per_node: usize,
}

fn default_split() -> String {
    "val".into()
}
fn default_score_batch() -> usize {
    8
}

/// What every stage sees of the experiment besides its own table. Paths are absolute
/// (resolved against the experiment file's folder) by the time a stage gets this.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Common {
    pub model: ModelSpec,
    pub task: TaskSpec,
    pub seed: u64,
}

impl Common {
    /// A `seq_cls` task of `num_labels` (problem type as ms-swift infers it) on `model`,
    /// seed 42: what tools and tests that run a stage without an experiment file start from.
    pub fn for_model(model: ModelSpec, num_labels: usize) -> Common {
        Common {
            model,
            task: TaskSpec {
                task_type: default_task_type(),
                num_labels,
                problem_type: None,
                labels: None,
            },
            seed: 42,
        }
    }
}
