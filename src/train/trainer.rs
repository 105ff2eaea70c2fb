//! The training loop (transformers `Trainer._inner_training_loop` + ms-swift logging):
//! per optimizer step, `accum` micro-batches each contributing `loss / n_in_group` to the
//! gradients, global-norm clipping, AdamW at the scheduled lr, then — in this order — a
//! log line (step 1 and every `logging_steps`), an evaluation (every `eval_steps` and at
//! the end), a checkpoint (every `save_steps` and at the end).
//!
//! Resuming: when `out_dir` holds complete checkpoints from an interrupted run of the same
//! configuration, the newest one is loaded (params, AdamW moments, data position, loss and
//! accuracy accumulators, log history) and training continues; the result is bit-for-bit
//! the uninterrupted one on a deterministic backend (time fields of the log aside).

use crate::adapter::AdapterConfig;
use crate::task::ProblemType;
use crate::train::TrainError;
use crate::train::checkpoint::{self, BestMetric, TrainerState};
use crate::train::classifier::{Classifier, PeftState, SampleSet};
use crate::train::console;
use crate::train::data_order::{self, EpochPlan};
use crate::train::evaluate::{EvalResult, evaluate_on};
use crate::train::metrics_log::{self, MetricsLog, Progress, finish_line, num};
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::params;
use crate::train::replicas::{Replicas, StepWork, optimizer_step};
use crate::train::schedule::{LrSchedule, ScheduleKind, warmup_steps};
use crate::train::shards::shard_len;
use crate::train::spread::Spread;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, TensorData};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// Resolved hyperparameters of a run (everything that changes the result).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSpec {
    pub problem: ProblemType,
    pub num_labels: usize,
    /// Samples per replica per micro-batch (`per_device_train_batch_size`).
    pub train_batch_size: usize,
    pub eval_batch_size: usize,
    pub grad_accum: usize,
    pub num_train_epochs: f64,
    /// transformers' `max_steps` (> 0 overrides epochs).
    pub max_steps: i64,
    pub schedule: ScheduleKind,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub adamw: AdamWConfig,
    /// Clip to this global norm when > 0.
    pub max_grad_norm: f64,
    pub eval_steps: Option<usize>,
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    pub logging_steps: usize,
    pub best_metric: BestMetric,
    pub data_seed: u64,
    /// Which sample order each epoch uses (ms-swift's shuffle flags).
    pub shuffle: data_order::Shuffle,
    /// Seed of the backend RNG (LoRA dropout masks).
    pub seed: u64,
    /// Shards per global micro-batch (`train_batch_size × replicas` samples): each is its own
    /// autodiff graph with its own dropout stream, and their gradients are summed in a
    /// fixed order (`train::replicas`): the result depends on this, never on the thread
    /// count, the timing or (when the shards line up) the replica count.
    pub shards: usize,
    /// Data-parallel replicas (ms-swift's `NPROC_PER_NODE`), each taking
    /// `train_batch_size` samples of every micro-batch.
    pub replicas: usize,
    /// ms-swift's `gradient_checkpointing`: keep only segment inputs in the forward and
    /// recompute each segment in backward (the model decides what a segment is). Changes
    /// memory and time, not the numbers, so it is not part of the resume digest.
    #[serde(skip)]
    pub gradient_checkpointing: bool,
}

impl TrainSpec {
    /// Samples per optimizer micro-batch over all replicas.
    pub fn global_batch_size(&self) -> usize {
        self.train_batch_size * self.replicas.max(1)
    }
}

/// Where and how a run reports.
pub struct RunOptions<'a> {
    pub out_dir: &'a Path,
    pub adapter_config: AdapterConfig,
    /// Progress bar (length set by the loop); `ProgressBar::hidden()` in tests.
    pub progress: indicatif::ProgressBar,
    /// Test hook: return `TrainError::Interrupted` right after this optimizer step.
    pub stop_after_steps: Option<usize>,
    /// `model_parameter_info` for the summary line.
    pub model_info: String,
    /// The dtype adapter files store `score.weight` in: the model's torch_dtype, as ms-swift
    /// saves its modules_to_save copy (bf16 under bfloat16); LoRA factors stay f32.
    pub head_dtype: DType,
}

impl RunOptions<'_> {
    /// `tensors` (a `PeftState`) as adapter files store them: the head in `head_dtype`.
    pub fn stored(&self, mut tensors: Vec<(String, TensorData)>) -> Vec<(String, TensorData)> {
        for (k, t) in &mut tensors {
            if *k == crate::adapter::keys::score_key() && t.dtype != self.head_dtype {
                *t = t.clone().convert_dtype(self.head_dtype);
            }
        }
        tensors
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub global_step: usize,
    pub max_steps: usize,
    /// Step of the checkpoint this run continued from.
    pub resumed_from: Option<usize>,
    /// Name of the best checkpoint directory (`checkpoint-N`), if any was evaluated.
    pub best_checkpoint: Option<String>,
    pub best_metric: Option<f64>,
    pub last_checkpoint: String,
    /// The final evaluation (None without a val split).
    pub final_eval: Option<EvalResult>,
    pub log_history: Vec<Map<String, Value>>,
}

/// Digest of what a checkpoint must agree on to be resumed.
fn spec_digest(
    spec: &TrainSpec,
    n_train: usize,
    n_val: usize,
    paths: &[(String, usize)],
) -> String {
    // The replica count is not part of it: at one global batch a checkpoint continues on
    // any number of devices.
    let one = TrainSpec {
        train_batch_size: spec.global_batch_size(),
        replicas: 1,
        ..spec.clone()
    };
    let v = serde_json::json!({ "spec": one, "n_train": n_train, "n_val": n_val, "params": paths });
    blake3::hash(v.to_string().as_bytes()).to_hex().to_string()
}

/// Train `model` on `train`, evaluating on `val`, writing logs and checkpoints to
/// `run.out_dir`. Returns the trained model and the outcome; final artifacts (`adapter/`,
/// `best`, `metrics.json`, plot) are written by `train::outputs::finish`.
///
/// All `spec.replicas` replicas on `device`; shards on the rayon pool when `spec.shards > 1`.
pub fn train<B, M, S>(
    model: M,
    train: &dyn SampleSet<S>,
    val: Option<&dyn SampleSet<S>>,
    spec: &TrainSpec,
    run: &RunOptions,
    device: &B::Device,
) -> Result<(M, TrainOutcome), TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S> + PeftState,
    M::InnerModule: Classifier<B::InnerBackend, S>,
    S: Sync,
{
    let spread = if spec.shards > 1 {
        Spread::Pool
    } else {
        Spread::Serial
    };
    let devices = vec![device.clone(); spec.replicas.max(1)];
    train_replicated(model, train, val, spec, run, (&devices, spread))
}

/// [`train`] with replica `r` on `devices[r]` (`model` is on `devices[0]`), the work spread
/// as `spread` says (the pool on the CPU, a thread per replica on GPUs).
pub fn train_replicated<B, M, S>(
    model: M,
    train: &dyn SampleSet<S>,
    val: Option<&dyn SampleSet<S>>,
    spec: &TrainSpec,
    run: &RunOptions,
    (devices, spread): (&[B::Device], Spread),
) -> Result<(M, TrainOutcome), TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S> + PeftState,
    M::InnerModule: Classifier<B::InnerBackend, S>,
    S: Sync,
{
    assert_eq!(
        devices.len(),
        spec.replicas.max(1),
        "one device per replica"
    );
    let device = &devices[0];
    let started = Instant::now();
    let global = spec.global_batch_size();
    let plan = EpochPlan::new(train.len(), global, spec.grad_accum);
    let max_steps = data_order::max_steps(spec.max_steps, spec.num_train_epochs, plan.steps());
    let schedule = LrSchedule {
        kind: spec.schedule,
        base_lr: spec.learning_rate,
        warmup_steps: warmup_steps(spec.warmup_steps, spec.warmup_ratio, max_steps),
        max_steps,
    };
    let paths = params::trainable_paths::<B, M>(&model);
    let digest = spec_digest(spec, train.len(), val.map_or(0, |v| v.len()), &paths);
    let out = run.out_dir;
    std::fs::create_dir_all(out)?;
    checkpoint::remove_partial(out)?;

    let mut model = model;
    let mut opt = AdamW::<B::InnerBackend>::new(spec.adamw);
    let mut resumed_from = None;
    let (newest, damaged) = checkpoint::newest_good(out);
    for (dir, why) in &damaged {
        let tag = console::tag(&run.progress);
        console::say(
            &run.progress,
            &format!("{tag}skipped damaged {}: {why}", dir.display()),
        );
    }
    let mut st = match newest {
        Some((step, dir, loaded)) => {
            if loaded.state.config_digest != digest {
                return Err(TrainError::Checkpoint(format!(
                    "{} was written with other settings or data; remove it to start over",
                    dir.display()
                )));
            }
            model = params::restore_trainable(model, &loaded.params)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
            opt.load_state(loaded.state.global_step as u64, &loaded.optimizer, device)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
            resumed_from = Some(step);
            loaded.state
        }
        None => TrainerState {
            global_step: 0,
            max_steps,
            epoch: 0.0,
            data_epoch: 0,
            data_group: 0,
            tr_loss: 0.0,
            acc_correct: 0,
            acc_seen: 0,
            total_loss: 0.0,
            last_logged_step: 0,
            runtime_before_s: 0.0,
            best_metric: None,
            best_step: None,
            checkpoint_metrics: Default::default(),
            seed: spec.seed,
            config_digest: digest,
            log_history: Vec::new(),
        },
    };
    let mut log = MetricsLog::create(
        &out.join("logging.jsonl"),
        std::mem::take(&mut st.log_history),
    )?;
    let pb = &run.progress;
    pb.set_length(max_steps as u64);
    pb.set_position(st.global_step as u64);
    let start_step = st.global_step;
    let progress = |st: &TrainerState| Progress {
        global_step: st.global_step,
        max_steps,
        steps_this_run: st.global_step - start_step,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let mut last_eval: Option<EvalResult> = None;
    let mut replicas = Replicas::<B, M>::new(&model, devices.to_vec(), spread);

    'training: while st.global_step < max_steps {
        let order = spec
            .shuffle
            .order(train.len(), spec.data_seed, st.data_epoch);
        for g in st.data_group..plan.groups.len() {
            let micro: Vec<Vec<usize>> = plan.groups[g]
                .clone()
                .map(|mb| order[plan.micro[mb].clone()].to_vec())
                .collect();
            let work = StepWork {
                set: train,
                micro: &micro,
                per_device: spec.train_batch_size,
                shard_len: shard_len(global, spec.shards),
                problem: spec.problem,
                seed: spec.seed,
                step: st.global_step,
                gradient_checkpointing: spec.gradient_checkpointing,
                after_segment: None,
            };
            let lr = schedule.lr(st.global_step);
            let (m, done) = optimizer_step(
                &mut replicas,
                model,
                &mut opt,
                &work,
                (spec.max_grad_norm, lr),
            )?;
            model = m;
            let (step_loss, grad_norm) = (done.loss, done.grad_norm);
            if let Some((correct, seen)) = done.correct {
                st.acc_correct += correct;
                st.acc_seen += seen;
            }
            st.global_step += 1;
            st.epoch = plan.epoch_after(st.data_epoch, g);
            st.data_group = g + 1;
            if st.data_group == plan.groups.len() {
                st.data_epoch += 1;
                st.data_group = 0;
            }
            st.tr_loss += step_loss;
            st.total_loss += step_loss;
            let last = st.global_step >= max_steps;

            if st.global_step == 1 || st.global_step % spec.logging_steps == 0 {
                let mut line = Map::new();
                let steps = (st.global_step - st.last_logged_step) as f64;
                line.insert("loss".into(), num(st.tr_loss / steps));
                if let Some(gn) = grad_norm {
                    line.insert("grad_norm".into(), num(gn));
                }
                // The rate after this step's scheduler update, as transformers logs it
                // (`_get_learning_rate()` runs after `lr_scheduler.step()`).
                line.insert("learning_rate".into(), num(schedule.lr(st.global_step)));
                if st.acc_seen > 0 {
                    line.insert(
                        "acc".into(),
                        num(st.acc_correct as f64 / st.acc_seen as f64),
                    );
                }
                let p = progress(&st);
                let line = finish_line(line, st.epoch, &p);
                console::log_step(
                    pb,
                    &console::StepReport {
                        step: st.global_step,
                        max_steps,
                        loss: st.tr_loss / steps,
                        acc: line.get("acc").and_then(Value::as_f64),
                        lr,
                        steps_this_run: p.steps_this_run,
                        elapsed_s: p.elapsed_s,
                        samples_per_step: spec.global_batch_size() * spec.grad_accum,
                    },
                );
                log.append(line)?;
                st.tr_loss = 0.0;
                st.acc_correct = 0;
                st.acc_seen = 0;
                st.last_logged_step = st.global_step;
            }
            pb.set_position(st.global_step as u64);

            let eval_now = last || spec.eval_steps.is_some_and(|e| st.global_step % e == 0);
            if let (true, Some(val)) = (eval_now, val) {
                let (copies, spread) = replicas.eval_copies(&model);
                let r = evaluate_on::<B::InnerBackend, _, S>(
                    &copies,
                    val,
                    spec.eval_batch_size,
                    spec.problem,
                    spread,
                )
                .map_err(TrainError::Data)?;
                log.append(eval_line(&r, st.epoch, &progress(&st)))?;
                console::say(
                    pb,
                    &format!(
                        "{}step {}/{}: eval_loss {:.4}{}",
                        console::tag(pb),
                        st.global_step,
                        max_steps,
                        r.loss,
                        r.acc
                            .map_or(String::new(), |a| format!("  eval_acc {a:.4}"))
                    ),
                );
                last_eval = Some(r);
            }

            if last || st.global_step % spec.save_steps.max(1) == 0 {
                let evaluated_now = last_eval.as_ref().filter(|_| eval_now && val.is_some());
                if let Some(r) = evaluated_now {
                    let m = match spec.best_metric {
                        BestMetric::Loss => r.loss,
                        BestMetric::Acc => r.acc.unwrap_or(f64::NAN),
                    };
                    st.checkpoint_metrics.insert(st.global_step, m);
                    if st.best_metric.is_none_or(|b| spec.best_metric.better(m, b)) {
                        st.best_metric = Some(m);
                        st.best_step = Some(st.global_step);
                    }
                }
                st.log_history = log.history.clone();
                st.runtime_before_s += started.elapsed().as_secs_f64();
                checkpoint::write(
                    out,
                    &st,
                    (&run.adapter_config, &run.stored(model.peft_tensors())),
                    &params::trainable_values::<B, M>(&model),
                    &opt.state_tensors(),
                )?;
                st.runtime_before_s -= started.elapsed().as_secs_f64();
                st.log_history.clear();
                let steps: Vec<usize> = checkpoint::list(out).iter().map(|(s, _)| *s).collect();
                for s in checkpoint::to_rotate(&steps, st.best_step, spec.save_total_limit) {
                    std::fs::remove_dir_all(out.join(checkpoint::dir_name(s)))?;
                }
            }
            if run.stop_after_steps == Some(st.global_step) && !last {
                return Err(TrainError::Interrupted(st.global_step));
            }
            if last {
                break 'training;
            }
        }
    }
    pb.finish_and_clear();

    // A run resumed from its final checkpoint has nothing left to do but report.
    if last_eval.is_none()
        && let Some(val) = val
        && let Some(e) = log
            .history
            .iter()
            .rev()
            .find(|l| l.contains_key("eval_loss"))
    {
        last_eval = Some(EvalResult {
            loss: e["eval_loss"].as_f64().unwrap_or(f64::NAN),
            acc: e.get("eval_acc").and_then(Value::as_f64),
            samples: val.len(),
            batches: val.len().div_ceil(spec.eval_batch_size.max(1)),
            runtime_s: e.get("eval_runtime").and_then(Value::as_f64).unwrap_or(0.0),
        });
    }
    let runtime = st.runtime_before_s + started.elapsed().as_secs_f64();
    let samples = metrics_log::train_samples(spec, max_steps, train.len());
    let mut end = Map::new();
    end.insert(
        "train_runtime".into(),
        num(crate::train::metrics_log::round_to(runtime, 4)),
    );
    end.insert(
        "train_samples_per_second".into(),
        num(crate::train::metrics_log::round_to(samples / runtime, 3)),
    );
    end.insert(
        "train_steps_per_second".into(),
        num(crate::train::metrics_log::round_to(
            max_steps as f64 / runtime,
            3,
        )),
    );
    end.insert(
        "train_loss".into(),
        num(st.total_loss / st.global_step.max(1) as f64),
    );
    log.append(finish_line(end, st.epoch, &progress(&st)))?;

    let best_checkpoint = st.best_step.map(checkpoint::dir_name);
    let last_checkpoint = checkpoint::dir_name(st.global_step);
    let mut summary = Map::new();
    summary.insert(
        "model_parameter_info".into(),
        Value::String(run.model_info.clone()),
    );
    summary.insert(
        "last_model_checkpoint".into(),
        Value::String(last_checkpoint.clone()),
    );
    summary.insert(
        "best_model_checkpoint".into(),
        best_checkpoint.clone().map_or(Value::Null, Value::String),
    );
    summary.insert(
        "best_metric".into(),
        st.best_metric.map_or(Value::Null, num),
    );
    summary.insert("global_step".into(), Value::from(st.global_step));
    summary.insert(
        "train_runtime".into(),
        num(crate::train::metrics_log::round_to(runtime, 4)),
    );
    log.append(summary)?;

    Ok((
        model,
        TrainOutcome {
            global_step: st.global_step,
            max_steps,
            resumed_from,
            best_checkpoint,
            best_metric: st.best_metric,
            last_checkpoint,
            final_eval: last_eval,
            log_history: log.history,
        },
    ))
}

/// An eval line: transformers' `eval_*` metrics, ms-swift's `eval_acc`, progress keys.
fn eval_line(r: &EvalResult, epoch: f64, p: &Progress) -> Map<String, Value> {
    use crate::train::metrics_log::round_to;
    let mut line = Map::new();
    line.insert("eval_loss".into(), num(r.loss));
    line.insert("eval_runtime".into(), num(round_to(r.runtime_s, 4)));
    line.insert(
        "eval_samples_per_second".into(),
        num(round_to(r.samples as f64 / r.runtime_s.max(1e-9), 3)),
    );
    line.insert(
        "eval_steps_per_second".into(),
        num(round_to(r.batches as f64 / r.runtime_s.max(1e-9), 3)),
    );
    if let Some(a) = r.acc {
        line.insert("eval_acc".into(), num(a));
    }
    finish_line(line, epoch, p)
}
