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
use crate::model::lora::with_dropout_stream;
use crate::train::TrainError;
use crate::train::checkpoint::{self, BestMetric, TrainerState};
use crate::train::classifier::{Classifier, PeftState, SampleSet};
use crate::train::data_order::{self, EpochPlan};
use crate::train::evaluate::{EvalResult, evaluate};
use crate::train::loss::{self, Problem, Target};
use crate::train::metrics_log::{MetricsLog, Progress, finish_line, num};
use crate::train::optimizer::{AdamW, AdamWConfig, clip_grad_norm};
use crate::train::params::{self, PathTensors};
use crate::train::schedule::{LrSchedule, ScheduleKind, warmup_steps};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// Resolved hyperparameters of a run (everything that changes the result).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSpec {
    pub problem: Problem,
    pub num_labels: usize,
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
    /// Seed of the backend RNG (LoRA dropout masks).
    pub seed: u64,
    /// Concurrent shards per micro-batch (1: one autodiff graph per micro-batch, dropout
    /// from the backend RNG, the GPU path). With n > 1 (the CPU) a micro-batch is cut into
    /// n parts run on the rayon pool, each with its own dropout stream, and their gradients
    /// summed in order: the result depends on n, never on the thread count or timing.
    pub shards: usize,
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
    let v =
        serde_json::json!({ "spec": spec, "n_train": n_train, "n_val": n_val, "params": paths });
    blake3::hash(v.to_string().as_bytes()).to_hex().to_string()
}

/// Held while a training seeds the backend RNG and draws from it (see its use).
static RNG_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Backend seed for micro-batch `micro` of optimizer step `step` (0-based).
fn micro_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let h = blake3::hash(format!("{seed}/{step}/{micro}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Train `model` on `train`, evaluating on `val`, writing logs and checkpoints to
/// `run.out_dir`. Returns the trained model and the outcome; final artifacts (`adapter/`,
/// `best`, `metrics.json`, plot) are written by `train::outputs::finish`.
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
    let started = Instant::now();
    let plan = EpochPlan::new(train.len(), spec.train_batch_size, spec.grad_accum);
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
    let mut st = match checkpoint::list(out).pop() {
        Some((step, dir)) => {
            let loaded = checkpoint::read(&dir).map_err(TrainError::Checkpoint)?;
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

    'training: while st.global_step < max_steps {
        let order = data_order::epoch_order(train.len(), spec.data_seed, st.data_epoch);
        for g in st.data_group..plan.groups.len() {
            let group = plan.groups[g].clone();
            let n_micro = group.len();
            let mut grads: PathTensors<B::InnerBackend> = PathTensors::new();
            let mut step_loss = 0f64;
            for (k, mb) in group.enumerate() {
                let idx: Vec<usize> = order[plan.micro[mb].clone()].to_vec();
                let samples = train.samples(&idx).map_err(TrainError::Data)?;
                let refs: Vec<&S> = samples.iter().map(|s| s.as_ref()).collect();
                let targets: Vec<&Target> = idx.iter().map(|&i| train.target(i)).collect();
                let seed = micro_seed(spec.seed, st.global_step, k);
                let out = micro_batch::<B, M, S>(
                    &model,
                    (&refs, &targets),
                    n_micro,
                    spec,
                    seed,
                    device,
                    &mut grads,
                )?;
                if !out.loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: st.global_step + 1,
                    });
                }
                step_loss += out.loss;
                if let Some(c) = loss::correct(&out.logits, out.labels, &targets, spec.problem) {
                    st.acc_correct += c.iter().filter(|&&x| x).count() as u64;
                    st.acc_seen += c.len() as u64;
                }
            }
            let grad_norm =
                (spec.max_grad_norm > 0.0).then(|| clip_grad_norm(&mut grads, spec.max_grad_norm));
            let lr = schedule.lr(st.global_step);
            model = opt.step::<B, M>(model, grads, lr);
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
                line.insert("learning_rate".into(), num(lr));
                if st.acc_seen > 0 {
                    line.insert(
                        "acc".into(),
                        num(st.acc_correct as f64 / st.acc_seen as f64),
                    );
                }
                let line = finish_line(line, st.epoch, &progress(&st));
                pb.set_message(format!(
                    "loss {:.4}  acc {}  lr {:.2e}",
                    st.tr_loss / steps,
                    line.get("acc")
                        .and_then(Value::as_f64)
                        .map_or("-".into(), |a| format!("{a:.3}")),
                    lr
                ));
                log.append(line)?;
                st.tr_loss = 0.0;
                st.acc_correct = 0;
                st.acc_seen = 0;
                st.last_logged_step = st.global_step;
            }
            pb.set_position(st.global_step as u64);

            let eval_now = last || spec.eval_steps.is_some_and(|e| st.global_step % e == 0);
            if let (true, Some(val)) = (eval_now, val) {
                let r = evaluate::<B::InnerBackend, _, S>(
                    &model.valid(),
                    val,
                    spec.eval_batch_size,
                    spec.problem,
                    device,
                    spec.shards > 1,
                )
                .map_err(TrainError::Data)?;
                log.append(eval_line(&r, st.epoch, &progress(&st)))?;
                pb.println(format!(
                    "step {}/{}: eval_loss {:.4}{}",
                    st.global_step,
                    max_steps,
                    r.loss,
                    r.acc
                        .map_or(String::new(), |a| format!("  eval_acc {a:.4}"))
                ));
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
                    (&run.adapter_config, &model.peft_tensors()),
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
    let samples = spec.num_train_epochs * train.len() as f64;
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

/// A finished shard: its model replica (to read the gradients by parameter path), its
/// report and its gradients.
type ShardDone<B, M> = Result<(M, MicroOut, <B as AutodiffBackend>::Gradients), TrainError>;

/// What one micro-batch reports: its share of the step loss, host logits, label count.
struct MicroOut {
    loss: f64,
    logits: Vec<f32>,
    labels: usize,
}

/// Forward and backward of one micro-batch, its gradients (of `loss / n_micro`) added to
/// `grads`; `spec.shards` decides whether it runs as one graph or as concurrent shards.
fn micro_batch<B, M, S>(
    model: &M,
    (samples, targets): (&[&S], &[&Target]),
    n_micro: usize,
    spec: &TrainSpec,
    seed: u64,
    device: &B::Device,
    grads: &mut PathTensors<B::InnerBackend>,
) -> Result<MicroOut, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S>,
    S: Sync,
{
    if spec.shards <= 1 {
        let logits = {
            // Burn's RNG (LoRA dropout) is one per process: trainings running side by side
            // (a sweep with --jobs) take turns from seeding to the end of the forward pass,
            // so each draws exactly its own masks.
            let _rng = RNG_TURN.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(device, seed);
            model.logits(samples, device).map_err(TrainError::Model)?
        };
        let (out, g) = shard_backward::<B>(logits, targets, spec.problem, n_micro as f64)?;
        params::accumulate_grads::<B, M>(model, g, grads);
        return Ok(out);
    }
    let len = samples.len().div_ceil(spec.shards);
    // Fresh leaves per shard (same parameter ids): separate autodiff graphs that can run
    // concurrently without merging into one locked graph.
    let jobs: Vec<(usize, M)> = (0..samples.len().div_ceil(len))
        .map(|j| (j, M::from_inner(model.valid())))
        .collect();
    let scale = |n: usize| n_micro as f64 * samples.len() as f64 / n as f64;
    let done: Vec<ShardDone<B, M>> = jobs
        .into_par_iter()
        .map(|(j, replica)| {
            let range = j * len..((j + 1) * len).min(samples.len());
            let stream = micro_seed(seed, j, usize::MAX);
            let logits =
                with_dropout_stream(stream, || replica.logits(&samples[range.clone()], device))
                    .map_err(TrainError::Model)?;
            let (out, g) = shard_backward::<B>(
                logits,
                &targets[range.clone()],
                spec.problem,
                scale(range.len()),
            )?;
            Ok((replica, out, g))
        })
        .collect();
    let mut total = MicroOut {
        loss: 0.0,
        logits: Vec::with_capacity(samples.len() * 2),
        labels: 0,
    };
    for r in done {
        let (replica, out, g) = r?;
        params::accumulate_grads::<B, M>(&replica, g, grads);
        total.loss += out.loss;
        total.logits.extend(out.logits);
        total.labels = out.labels;
    }
    Ok(total)
}

/// Loss of `logits` divided by `div`, its value and host logits, and its gradients.
fn shard_backward<B: AutodiffBackend>(
    logits: burn::tensor::Tensor<B, 2>,
    targets: &[&Target],
    problem: Problem,
    div: f64,
) -> Result<(MicroOut, B::Gradients), TrainError> {
    let labels = logits.dims()[1];
    let host = logits
        .clone()
        .inner()
        .into_data()
        .to_vec::<f32>()
        .map_err(data_err)?;
    let scaled = loss::loss(logits, targets, problem).div_scalar(div);
    let value = scaled
        .clone()
        .inner()
        .into_data()
        .to_vec::<f32>()
        .map_err(data_err)?[0];
    let out = MicroOut {
        loss: value as f64,
        logits: host,
        labels,
    };
    Ok((out, scaled.backward()))
}

fn data_err(e: burn::tensor::DataError) -> TrainError {
    TrainError::Data(anyhow::anyhow!("{e:?}"))
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
