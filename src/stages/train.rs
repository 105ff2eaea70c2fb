//! `kind = "train"`: LoRA fine-tuning of the seq_cls model on the dataset stage's records
//! (`swift sft --task_type seq_cls --tuner_type lora`). Thin glue: validate the params,
//! pick the device, load the model and splits, run `train::trainer::train`, write the
//! final artifacts (`train::outputs`).
//!
//! Outputs: `logging.jsonl`, `checkpoint-N/`, `adapter/`, `best`, `metrics.json`,
//! `train_curves.png`. Resumable: a rerun with the same key continues from the newest
//! complete checkpoint in its output directory.

use super::device::{CpuDtype, OnBackend, check_replica_pool, model_dtype_of, run_on_device};
use super::fit;
use super::model_spec::model_weight_files;
use crate::adapter::targets::{TargetModules, target_regex};
use crate::adapter::{AdapterConfig, read_peft_adapter};
use crate::backend::DeviceKind;
use crate::data::record::load_split;
use crate::experiment::schema::{Common, TargetModules as RawTargets, TrainParams};
use crate::graph::{Stage, StageContext, StageError};
use crate::model::lora::{LoraSpec, TargetSelector, select_targets};
use crate::model::weights::checkpoint_score_rows;
use crate::model::{SeqClassifier, WeightsSource, load_classifier_from};
use crate::task::ProblemType;
use crate::train::checkpoint::BestMetric;
use crate::train::optimizer::AdamWConfig;
use crate::train::params::count_params;
use crate::train::schedule::ScheduleKind;
use crate::train::seq_cls::{PIXEL_CACHE_BYTES, RecordSet, pixel_bytes, target_of};
use crate::train::shards::{aligned, shard_len};
use crate::train::spread::Spread;
use crate::train::{PeftState, RunOptions, TrainError, TrainSpec, outputs, train_replicated};
use burn::backend::Autodiff;
use burn::tensor::DType;
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::path::{Path, PathBuf};

/// Bump when the artifacts change.
const VERSION: u32 = 1;
/// ms-swift's `attn_impl` choices: flash_attn / sdpa pick the memory-efficient attention,
/// eager the plain one (our kernels compute the same attention either way).
pub const ATTN_IMPLS: &[&str] = &["flash_attn", "sdpa", "eager"];
/// Test hook: make the loop stop with an error after this optimizer step (resume tests).
pub const INTERRUPT_ENV: &str = "PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS";

#[derive(Debug)]
pub struct TrainStage {
    params: TrainParams,
    common: Common,
    spec: TrainSpec,
    lora: LoraSpec,
}

fn input(msg: impl Into<String>) -> StageError {
    StageError::Input(msg.into())
}

impl TrainStage {
    /// Validate `params` (everything that can be checked without the model or data).
    pub fn new(params: TrainParams, common: &Common) -> Result<Self, StageError> {
        let p = &params;
        if p.tuner_type != "lora" {
            return Err(input(format!(
                "tuner_type {:?} is not supported (valid: lora)",
                p.tuner_type
            )));
        }
        if let Some(dir) = &p.output_dir {
            crate::export::output_dir::check_writable(Path::new(dir))
                .map_err(|e| input(format!("output_dir: {e}")))?;
        }
        if let Some(a) = &p.attn_impl
            && !ATTN_IMPLS.contains(&a.as_str())
        {
            return Err(input(format!(
                "attn_impl {a:?} is not supported (valid: {})",
                ATTN_IMPLS.join(", ")
            )));
        }
        // The value ranges: the experiment file's own rules (one copy, for params built
        // in code as well).
        if let Some((_, msg)) = crate::experiment::train_value_problem(p) {
            return Err(input(msg));
        }
        let schedule = ScheduleKind::parse(&p.lr_scheduler_type).ok_or_else(|| {
            input(format!(
                "lr_scheduler_type {:?} is not supported (valid: {})",
                p.lr_scheduler_type,
                ScheduleKind::CHOICES.join(", ")
            ))
        })?;
        let best_metric = BestMetric::parse(&p.metric_for_best_model).ok_or_else(|| {
            input(format!(
                "metric_for_best_model {:?} is not supported (valid: {})",
                p.metric_for_best_model,
                BestMetric::CHOICES.join(", ")
            ))
        })?;
        let problem =
            ProblemType::resolve(common.task.problem_type.as_deref(), common.task.num_labels)
                .map_err(|e| input(format!("[task] {e}")))?;
        if problem == ProblemType::Regression && best_metric == BestMetric::Acc {
            return Err(input(
                "metric_for_best_model = \"acc\" needs a classification task (regression has no accuracy)",
            ));
        }
        if common.task.num_labels == 0 {
            return Err(input("[task] num_labels must be at least 1"));
        }
        model_dtype_of(common)?;
        let targets = match &p.target_modules {
            RawTargets::One(s) if s == "all-linear" => TargetSelector::AllLinear {
                vit: !p.freeze_vit,
                aligner: !p.freeze_aligner,
                llm: !p.freeze_llm,
            },
            RawTargets::One(re) => TargetSelector::Regex(re.clone()),
            RawTargets::List(names) => TargetSelector::Names(names.clone()),
        };
        let spec = TrainSpec {
            problem,
            num_labels: common.task.num_labels,
            train_batch_size: p.per_device_train_batch_size,
            eval_batch_size: p.per_device_eval_batch_size,
            grad_accum: p.gradient_accumulation_steps,
            num_train_epochs: p.num_train_epochs,
            max_steps: p.max_steps,
            schedule,
            learning_rate: p.learning_rate,
            warmup_steps: p.warmup_steps,
            warmup_ratio: p.warmup_ratio,
            adamw: AdamWConfig {
                beta1: p.adam_beta1,
                beta2: p.adam_beta2,
                eps: p.adam_epsilon,
                weight_decay: p.weight_decay,
            },
            max_grad_norm: p.max_grad_norm,
            // ms-swift: eval_strategy "steps" with no eval_steps evaluates every save_steps.
            eval_steps: p.eval_steps.or(Some(p.save_steps)),
            save_steps: p.save_steps,
            save_total_limit: p.save_total_limit,
            logging_steps: p.logging_steps,
            best_metric,
            data_seed: p.data_seed,
            shuffle: crate::train::data_order::Shuffle::from_flags(
                p.dataset_shuffle,
                p.train_dataloader_shuffle,
            ),
            seed: common.seed,
            shards: CPU_SHARDS,
            replicas: p.nproc_per_node.max(1),
            gradient_checkpointing: p.gradient_checkpointing,
        };
        let lora = LoraSpec {
            r: p.lora_rank,
            alpha: p.lora_alpha,
            dropout: p.lora_dropout,
            use_rslora: p.use_rslora,
            targets,
        };
        Ok(Self {
            params,
            common: common.clone(),
            spec,
            lora,
        })
    }

    fn model_dir(&self) -> Option<PathBuf> {
        self.common.model.path.as_ref().map(PathBuf::from)
    }

    fn source(&self) -> Result<WeightsSource<'_>, StageError> {
        match (&self.common.model.path, &self.common.model.preset) {
            (Some(p), _) => Ok(WeightsSource::Dir(Path::new(p))),
            (None, Some(name)) => Ok(WeightsSource::Preset(name)),
            (None, None) => Err(input("[model] needs `preset` or `path`")),
        }
    }
}

impl Stage for TrainStage {
    fn kind(&self) -> &'static str {
        "train"
    }

    fn version(&self) -> u32 {
        VERSION
    }

    /// Every train param except `needs` (the upstream keys already cover it), plus what of
    /// `[model]`/`[task]` changes the weights. `device` is left out: it changes speed, not
    /// the algorithm. So is the replica count: the key holds the global batch
    /// (`per_device_train_batch_size × nproc_per_node`, as one device would take it), which
    /// fixes the result; so a training stopped on 2 devices continues on 1 from its
    /// checkpoints, and a finished one is reused. So is `gradient_checkpointing`: it changes
    /// memory and time, not the gradients (`model::train_pass`).
    fn params(&self) -> serde_json::Value {
        let mut train = serde_json::to_value(&self.params).unwrap_or_default();
        if let Some(o) = train.as_object_mut() {
            o.remove("needs");
            o.remove("gradient_checkpointing");
            o.remove("nproc_per_node");
            o.insert(
                "per_device_train_batch_size".into(),
                self.spec.global_batch_size().into(),
            );
        }
        let m = &self.common.model;
        serde_json::json!({
            "train": train,
            "model": { "preset": m.preset, "path": m.path, "torch_dtype": m.torch_dtype },
            "task": self.common.task,
            "seed": self.common.seed,
        })
    }

    fn input_files(&self) -> Result<Vec<PathBuf>, StageError> {
        let mut files = Vec::new();
        if let Some(dir) = self.model_dir() {
            files.extend(model_weight_files(&dir).map_err(input)?);
        }
        if let Some(a) = &self.params.adapter {
            let a = PathBuf::from(a);
            files.push(a.join(crate::adapter::peft::CONFIG_FILE));
            files.push(a.join(crate::adapter::peft::WEIGHTS_FILE));
        }
        Ok(files)
    }

    fn required_inputs(&self) -> &'static [&'static str] {
        &["dataset"]
    }
    /// Trains the model on the device the scheduler pins.
    fn uses_device(&self) -> bool {
        true
    }

    fn device_key(&self, device_kind: &str) -> serde_json::Value {
        super::device::device_key(&self.common, device_kind, CpuDtype::F32For("training"))
    }

    /// Targets that exist, a rank they can take, a checkpoint head of `num_labels` rows,
    /// and a memory floor the device holds (see `stages::fit`).
    fn check_fits(&self, name: &str, device_kind: &str) -> Result<(), StageError> {
        let (cfg, weights) = fit::model_weights(&self.common.model, device_kind, true)?;
        let table = format!("stages.{name}");
        let lora = match &self.params.adapter {
            // The adapter's own targets and rank apply; its loader checks them. Its file
            // is checked here already, so a damaged one fails before the dataset stage.
            Some(dir) => {
                fit::check_adapter_file(dir)?;
                0
            }
            None => {
                let picked = fit::check_lora(&cfg, &self.lora.targets, self.lora.r, &table)?;
                fit::lora_params(&picked, self.lora.r)
            }
        };
        let num_labels = self.spec.num_labels;
        if let Some(dir) = self.model_dir()
            && let Some(rows) = checkpoint_score_rows(&dir).map_err(|e| input(e.to_string()))?
            && rows != num_labels
        {
            return Err(StageError::Param {
                key: "task.num_labels".into(),
                message: format!(
                    "{} has a score.weight of {rows} labels but num_labels = {num_labels}",
                    dir.display()
                ),
            });
        }
        let head = (num_labels * cfg.text.hidden_size) as u64;
        let needs = [
            weights,
            fit::trainable_need(
                lora,
                format!("{table}.lora_rank"),
                "LoRA A/B (×4: value, gradient, AdamW moments)",
            ),
            fit::trainable_need(head, "task.num_labels".into(), "score head (×4)"),
        ];
        fit::check_memory(name, device_kind, &needs)
    }

    fn resumable(&self) -> bool {
        true
    }

    fn device_slots(&self) -> usize {
        self.spec.replicas
    }

    fn check_pool(&self, pool: &[String]) -> Result<(), StageError> {
        check_replica_pool("nproc_per_node", self.spec.replicas, pool)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        run_on_device(self, ctx, &self.common, CpuDtype::F32For("training"))
    }
}

impl OnBackend for TrainStage {
    fn run_on_all<B: Backend>(
        &self,
        ctx: &StageContext,
        (kind, devices): (DeviceKind, Vec<B::Device>),
        dtype: DType,
    ) -> Result<(), StageError> {
        let n = self.spec.replicas;
        // Unpinned (no scheduler): every replica on the one configured device.
        let devices = match devices.len() {
            1 if n > 1 => vec![devices[0].clone(); n],
            k if k == n => devices,
            k => {
                return Err(input(format!(
                    "nproc_per_node = {n} but the stage was given {k} devices"
                )));
            }
        };
        let placement = Placement {
            shards: shards_for(kind),
            spread: spread_for(kind),
        };
        self.train_on::<Autodiff<B>>(ctx, &devices, dtype, placement)
    }
}

/// How a training is laid out on its backend.
struct Placement {
    /// `TrainSpec::shards`.
    shards: usize,
    spread: Spread,
}

/// The dataset stage's params, from its cache manifest (for args.json).
fn dataset_params(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest.get("params").cloned()
}

/// Shards of a global micro-batch on the CPU (`TrainSpec::shards`), run side by side: a
/// fixed number, so a run's numbers do not depend on the core count. Two cores run two
/// shards at a time; four balance shards of unequal sequence length and keep four cores
/// busy. They line up with the replicas (the result does not depend on `nproc_per_node`)
/// when `ceil(global batch / 4)` divides the per-device batch, e.g. 1×8, 2×4, 4×2.
const CPU_SHARDS: usize = 4;

/// Shards of a global micro-batch on GPUs, run one after another on each replica's device:
/// eight, so the shards of `ceil(global batch / 8)` samples line up with 1, 2, 4 or 8
/// replicas whenever 8 divides the global batch (each replica's samples are whole shards),
/// and each shard draws its own dropout masks: the result does not depend on
/// `nproc_per_node`. A replica's activations are those of one shard at a time.
const CUDA_SHARDS: usize = 8;

/// `TrainSpec::shards` of a training on `kind`.
pub fn shards_for(kind: DeviceKind) -> usize {
    match kind {
        DeviceKind::Cpu => CPU_SHARDS,
        DeviceKind::Cuda(_) => CUDA_SHARDS,
    }
}

/// How a training on `kind` spreads its replicas' work: the rayon pool on the CPU, a thread
/// per replica on GPUs.
pub fn spread_for(kind: DeviceKind) -> Spread {
    match kind {
        DeviceKind::Cpu => Spread::Pool,
        DeviceKind::Cuda(_) => Spread::Threads,
    }
}

impl TrainStage {
    fn train_on<B: AutodiffBackend>(
        &self,
        ctx: &StageContext,
        devices: &[B::Device],
        dtype: DType,
        placement: Placement,
    ) -> Result<(), StageError> {
        let num_labels = self.spec.num_labels;
        let device = devices[0].clone();
        let spec = TrainSpec {
            shards: placement.shards,
            ..self.spec.clone()
        };
        if let Some(note) = replica_note(&spec) {
            ctx.say(format!("[{}] {note}", ctx.name));
        }
        let data = ctx
            .upstream_of_kind("dataset")
            .ok_or_else(|| input(format!("stage {:?} needs a dataset stage", ctx.name)))?;
        let split = |name: &str| load_split(&data.dir, name).map_err(|e| input(e.to_string()));
        let train_recs = split("train")?.ok_or_else(|| {
            input(format!(
                "stage {:?}: the dataset stage has no train split (set `dataset`)",
                ctx.name
            ))
        })?;
        let val_recs = split("val")?;
        if self.params.eval_steps.is_some() && val_recs.is_none() {
            return Err(input(format!(
                "stage {:?}: eval_steps is set but the dataset stage has no val split (set `val_dataset` or drop eval_steps)",
                ctx.name
            )));
        }
        if train_recs.is_empty() {
            return Err(input("the train split is empty"));
        }

        // Model: backbone, then adapters (fresh or from `adapter`).
        if let Some(dir) = self.model_dir()
            && let Some(rows) = checkpoint_score_rows(&dir).map_err(|e| input(e.to_string()))?
            && rows != num_labels
        {
            return Err(input(format!(
                "{}: score.weight has {rows} labels but [task] num_labels = {num_labels}",
                dir.display()
            )));
        }
        let model: SeqClassifier<B> =
            load_classifier_from(self.source()?, num_labels, dtype, self.common.seed, &device)
                .map_err(|e| input(e.to_string()))?;
        let all_linear = model.linear_names();
        // The LoRA hyper-parameters saved with every checkpoint: the experiment's, or those
        // of the adapter training starts from.
        let (model, lora) = match &self.params.adapter {
            None => {
                // Check the selection first: a clear list of what exists beats a deep error.
                select_targets(&all_linear, &self.lora.targets)
                    .map_err(|e| input(e.to_string()))?;
                let model = model
                    .apply_lora(&self.lora, self.common.seed)
                    .map_err(|e| input(e.to_string()))?;
                (model, self.lora.clone())
            }
            Some(dir) => load_adapter(model, &self.lora, Path::new(dir))?,
        };
        let wrapped: Vec<String> = model
            .lora_weights()
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        let counts = count_params::<B, _>(&model);
        let info = format!("SeqClassifier: {}", counts.describe());
        ctx.say(format!("[{}] {info}", ctx.name));

        // Splits with targets; pixel rows cached once when they fit the budget.
        let cfg = model.config().clone();
        let to_set = |recs: Vec<_>, name: &str, cache: bool| -> Result<RecordSet, StageError> {
            let targets = recs
                .iter()
                .map(|r| target_of(r, name, self.spec.problem, num_labels))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| input(e.to_string()))?;
            RecordSet::new(recs, targets, &data.dir, &cfg, cache).map_err(|e| input(e.to_string()))
        };
        let val_bytes = val_recs.as_ref().map_or(0, |v| pixel_bytes(v, &cfg));
        let cache_val = val_bytes <= PIXEL_CACHE_BYTES;
        let cache_train = pixel_bytes(&train_recs, &cfg) + if cache_val { val_bytes } else { 0 }
            <= PIXEL_CACHE_BYTES;
        let train_set = to_set(train_recs, "train", cache_train)?;
        let val_set = val_recs.map(|v| to_set(v, "val", cache_val)).transpose()?;

        let adapter_config = AdapterConfig {
            r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            use_rslora: lora.use_rslora,
            target_modules: TargetModules::Regex(target_regex(&wrapped, &all_linear)),
            modules_to_save: vec!["score".into()],
            base_model_name_or_path: super::model_spec::base_model_name(&self.common.model),
            args_json: Some(super::swift_args::train_args(
                &self.common,
                &self.params,
                dataset_params(&data.dir).as_ref(),
            )),
        };
        let tail = "steps  {msg}  ({elapsed} < {eta})";
        let progress = ctx.bar(0, ctx.name.to_string(), tail);
        let stop_after_steps = std::env::var(INTERRUPT_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        let opts = RunOptions {
            out_dir: ctx.out_dir,
            adapter_config,
            progress,
            stop_after_steps,
            model_info: info,
            head_dtype: model_dtype_of(&self.common)?,
        };
        let val_ref = val_set
            .as_ref()
            .map(|v| v as &dyn crate::train::SampleSet<_>);
        let on = (devices, placement.spread);
        let (model, outcome) = train_replicated::<B, _, _>(
            model, &train_set, val_ref, &spec, &opts, on,
        )
        .map_err(|e| match e {
            TrainError::Checkpoint(m) => input(m),
            other => StageError::Failed(other.into()),
        })?;
        if let Some(from) = outcome.resumed_from {
            ctx.say(format!("[{}] resumed from checkpoint-{from}", ctx.name));
        }
        outputs::finish(
            ctx.out_dir,
            &outcome,
            &opts.adapter_config,
            &opts.stored(model.peft_tensors()),
        )
        .map_err(|e| StageError::Failed(e.into()))?;
        if let Some(e) = &outcome.final_eval {
            ctx.say(format!(
                "[{}] {} steps: eval_loss {:.4}{}",
                ctx.name,
                outcome.global_step,
                e.loss,
                e.acc
                    .map_or(String::new(), |a| format!("  eval_acc {a:.4}"))
            ));
        }
        if let Some(dest) = &self.params.output_dir {
            // ms-swift keeps a run's files in --output_dir; ours live in the cache and are
            // also copied there (a directory we wrote before, or a new/empty one).
            let origin = format!("pipeline train stage `{}`", ctx.name);
            crate::export::output_dir::publish_copy(
                ctx.out_dir,
                Path::new(dest),
                &origin,
                ctx.key,
                &[],
            )
            .map_err(|e| input(e.to_string()))?;
            ctx.say(format!("[{}] copied to {dest}", ctx.name));
        }
        Ok(())
    }
}

/// The data-parallel layout of a training with replicas, for the terminal; and a warning
/// when its shards do not line up with them (the result then differs from one device's).
fn replica_note(spec: &TrainSpec) -> Option<String> {
    let n = spec.replicas;
    if n <= 1 {
        return None;
    }
    let (global, b) = (spec.global_batch_size(), spec.train_batch_size);
    let len = shard_len(global, spec.shards);
    let mut note = format!(
        "{n} replicas × {b} samples: global batch {global} × {} accumulation steps, shards of {len}",
        spec.grad_accum
    );
    if !aligned(len, b) {
        note.push_str(&format!(
            "; {len} does not divide per_device_train_batch_size {b}, so the shards (and dropout draws) differ from nproc_per_node = 1 at this global batch"
        ));
    }
    Some(note)
}

/// Start from an existing PEFT adapter (either transformers key layout, e.g. an ms-swift
/// checkpoint): checked against the model (first mismatch named), then its A/B on the named
/// modules and its score head. Returns the model and the adapter's LoRA hyper-parameters.
fn load_adapter<B: AutodiffBackend>(
    model: SeqClassifier<B>,
    lora: &LoraSpec,
    dir: &Path,
) -> Result<(SeqClassifier<B>, LoraSpec), StageError> {
    let adapter = read_peft_adapter(dir).map_err(|e| input(e.to_string()))?;
    if adapter.config.r != lora.r {
        return Err(input(format!(
            "{}: the adapter has r = {} but lora_rank = {}",
            dir.display(),
            adapter.config.r,
            lora.r
        )));
    }
    let spec = crate::adapter::apply::lora_spec(&adapter);
    let model =
        crate::adapter::apply::apply_adapter(model, &adapter).map_err(|e| input(e.to_string()))?;
    Ok((model, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::schema::ModelSpec;

    /// The schema's AdamW defaults (what an experiment without them trains with) are the
    /// constant code outside the experiment files uses.
    #[test]
    fn default_adamw_is_swifts() {
        let p: TrainParams = toml::from_str("needs = [\"data\"]").unwrap();
        let common = Common::for_model(ModelSpec::cpu_f32(Some("tiny"), None), 3);
        let stage = TrainStage::new(p, &common).unwrap();
        assert_eq!(stage.spec.adamw, AdamWConfig::SWIFT);
    }
}
