//! Data-parallel replicas: ms-swift's `NPROC_PER_NODE=N` (N DDP ranks, each taking
//! `per_device_train_batch_size` samples of every micro-batch) inside one process.
//!
//! Replica 0 is the trainer's model on the first device; replicas 1.. are copies on the
//! others. In an optimizer step every replica computes its shards of each of the step's
//! micro-batches (see [`crate::train::shards`]) and adds each shard's gradients to the sum
//! of that shard's slot, on its own device. Once per step the slot sums are gathered onto
//! the first device and added in slot order, which is rank order (a replica holds
//! consecutive slots); the optimizer steps there and the new trainable values are copied
//! to the other replicas. The gathered gradient is DDP's rank average: every shard's loss
//! is scaled by its share of the global micro-batch, as one device with the global batch
//! would weigh it.
//!
//! Per slot over the micro-batches, then over the slots in order: that is one summation
//! order for every replica count, so with shards that line up (`shards::aligned`) N
//! replicas give the bits of one on a deterministic backend. Each shard draws its LoRA
//! dropout masks from its own stream, seeded by (seed, step, micro-batch, slot): no
//! process-wide RNG, no lock, whatever runs beside it.

use crate::model::lora::with_dropout_stream;
use crate::task::ProblemType;
use crate::train::TrainError;
use crate::train::classifier::{Classifier, SampleSet};
use crate::train::loss::{self, Target};
use crate::train::optimizer::{AdamW, clip_grad_norm};
use crate::train::params::{self, PathTensors};
use crate::train::shards::{Shard, deal};
use crate::train::spread::Spread;
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The model copies of a data-parallel training, one per device.
pub struct Replicas<B: AutodiffBackend, M> {
    devices: Vec<B::Device>,
    /// Replicas 1.. (replica 0 is the caller's model).
    copies: Vec<M>,
    spread: Spread,
}

/// One optimizer step's work.
pub struct StepWork<'a, S> {
    pub set: &'a dyn SampleSet<S>,
    /// Sample indices of each (global) micro-batch of the step.
    pub micro: &'a [Vec<usize>],
    /// Samples of a micro-batch each replica takes.
    pub per_device: usize,
    /// Samples per shard (`shards::shard_len`).
    pub shard_len: usize,
    pub problem: ProblemType,
    pub seed: u64,
    /// 0-based optimizer step (seeds the dropout streams).
    pub step: usize,
    /// Recompute each segment in backward (`TrainSpec::gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    /// Called after each backward segment's gradients are taken (the benchmark samples
    /// device memory there); `None` in training.
    pub after_segment: Option<&'a (dyn Fn() + Sync)>,
}

/// Inference copies of a replicated model (`I`), each with its device (`D`).
pub type EvalCopies<I, D> = Vec<(I, D)>;

/// What one optimizer step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDone {
    /// The sum over the step's micro-batches of their mean loss / micro-batch count.
    pub loss: f64,
    /// Global gradient norm before clipping (None when not clipping).
    pub grad_norm: Option<f64>,
    /// (correct, seen) predictions (None for regression).
    pub correct: Option<(u64, u64)>,
}

/// One optimizer step as the training loop runs it (and `pipeline bench` times it): every
/// replica's shards of `work`, their gradients gathered in slot order, global-norm clipping
/// when `max_grad_norm > 0`, AdamW at `lr` on the first device, and the new trainable
/// values copied to the other replicas.
pub fn optimizer_step<B, M, S>(
    replicas: &mut Replicas<B, M>,
    model: M,
    opt: &mut AdamW<B::InnerBackend>,
    work: &StepWork<S>,
    (max_grad_norm, lr): (f64, f64),
) -> Result<(M, StepDone), TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S>,
    S: Sync,
{
    let (mut grads, mut done) = replicas.step(&model, work)?;
    done.grad_norm = (max_grad_norm > 0.0).then(|| clip_grad_norm(&mut grads, max_grad_norm));
    let model = opt.step::<B, M>(model, grads, lr);
    replicas.broadcast(&model)?;
    Ok((model, done))
}

/// A shard's report: its share of the step loss, host logits, label count.
struct ShardOut {
    loss: f64,
    logits: Vec<f32>,
    labels: usize,
}

/// Gradient sums of one replica, by slot.
type Slots<B> = BTreeMap<usize, PathTensors<<B as AutodiffBackend>::InnerBackend>>;
/// Reports of one replica: (micro-batch, slot, report).
type Reports = Vec<(usize, usize, ShardOut)>;

/// Dropout stream of slot `slot` of micro-batch `micro` in optimizer step `step`.
pub fn shard_stream(seed: u64, step: usize, micro: usize, slot: usize) -> u64 {
    mix(mix(seed, step, micro), slot, usize::MAX)
}

fn mix(seed: u64, a: usize, b: usize) -> u64 {
    let h = blake3::hash(format!("{seed}/{a}/{b}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl<B, M> Replicas<B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    /// Copies of `model` on `devices[1..]` (`devices[0]` is where `model` lives).
    pub fn new(model: &M, devices: Vec<B::Device>, spread: Spread) -> Self {
        assert!(!devices.is_empty(), "at least one device");
        let copies = devices[1..].iter().map(|d| model.clone().fork(d)).collect();
        Self {
            devices,
            copies,
            spread,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Give every copy the trainable values of `model` (after an optimizer step).
    pub fn broadcast(&mut self, model: &M) -> Result<(), TrainError> {
        if self.copies.is_empty() {
            return Ok(());
        }
        let values: BTreeMap<_, _> = params::trainable_values::<B, M>(model)
            .into_iter()
            .collect();
        for c in &mut self.copies {
            let copy = std::mem::replace(c, model.clone());
            *c = params::restore_trainable(copy, &values).map_err(TrainError::Checkpoint)?;
        }
        Ok(())
    }

    /// Inference copies for an evaluation pass, with their devices, and how to spread it.
    pub fn eval_copies(&self, model: &M) -> (EvalCopies<M::InnerModule, B::Device>, Spread) {
        let models = std::iter::once(model).chain(&self.copies);
        let copies = models
            .zip(&self.devices)
            .map(|(m, d)| (m.valid(), d.clone()))
            .collect();
        (copies, self.spread)
    }

    /// Forward and backward of every shard of `work`, gradients gathered onto the first
    /// device in slot order (not yet clipped).
    pub fn step<S>(
        &mut self,
        model: &M,
        work: &StepWork<S>,
    ) -> Result<(PathTensors<B::InnerBackend>, StepDone), TrainError>
    where
        M: Classifier<B, S>,
        S: Sync,
    {
        let n = self.devices.len();
        // deals[k][r]: replica r's shards of micro-batch k.
        let deals: Vec<Vec<Vec<Shard>>> = work
            .micro
            .iter()
            .map(|idx| deal(idx.len(), work.per_device, n, work.shard_len))
            .collect();
        let mut slots: Vec<Slots<B>> = (0..n).map(|_| BTreeMap::new()).collect();
        let mut reports: Vec<Reports> = (0..n).map(|_| Vec::new()).collect();
        match self.spread {
            Spread::Serial | Spread::Pool => {
                let concurrent = self.spread == Spread::Pool;
                for (k, deal) in deals.iter().enumerate() {
                    // Every shard of the micro-batch as a job with fresh leaves of its
                    // replica (separate autodiff graphs that can run side by side). Fresh
                    // leaves are also what keeps concurrent backward passes sound on Burn
                    // 0.21: each backward sweeps every graph in the process, and a graph
                    // begun from a reused (already consumed) leaf can be swept mid-op,
                    // losing that leaf's gradient without an error (tracel-ai/burn#5573).
                    // A fresh leaf is held by the job's module, so its graph stays live.
                    let mut jobs = Vec::new();
                    for (r, shards) in deal.iter().enumerate() {
                        let m = if r == 0 { model } else { &self.copies[r - 1] };
                        for sh in shards {
                            jobs.push((r, sh.clone(), M::from_inner(m.valid())));
                        }
                    }
                    let run = |(r, sh, m): (usize, Shard, M)| {
                        let mut grads = PathTensors::new();
                        let out =
                            shard_pass::<B, M, S>(&m, &self.devices[r], work, k, &sh, &mut grads);
                        (r, sh.slot, out.map(|o| (o, grads)))
                    };
                    let done: Vec<_> = if concurrent {
                        jobs.into_par_iter().map(run).collect()
                    } else {
                        jobs.into_iter().map(run).collect()
                    };
                    for (r, slot, out) in done {
                        let (report, grads) = out?;
                        add_grads::<B>(slots[r].entry(slot).or_default(), grads);
                        reports[r].push((k, slot, report));
                    }
                }
            }
            Spread::Threads => {
                let copies = std::mem::take(&mut self.copies);
                let devices = &self.devices;
                let deals = &deals;
                let own = |r: usize, m: &M| replica_pass::<B, M, S>(m, &devices[r], r, deals, work);
                let (first, rest) = std::thread::scope(|s| {
                    let handles: Vec<_> = copies
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| {
                            s.spawn(move || {
                                let out = own(i + 1, &m);
                                (m, out)
                            })
                        })
                        .collect();
                    let first = own(0, model);
                    let rest: Vec<_> = handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect();
                    (first, rest)
                });
                let mut outs = vec![first];
                for (m, out) in rest {
                    self.copies.push(m);
                    outs.push(out);
                }
                for (r, out) in outs.into_iter().enumerate() {
                    let (s, rep) = out?;
                    slots[r] = s;
                    reports[r] = rep;
                }
            }
        }
        let stats = stats(work, reports)?;
        Ok((self.gather(slots), stats))
    }

    /// The slot sums of every replica, added on the first device in (slot, replica) order.
    fn gather(&self, slots: Vec<Slots<B>>) -> PathTensors<B::InnerBackend> {
        let mut all: Vec<(usize, usize, PathTensors<B::InnerBackend>)> = slots
            .into_iter()
            .enumerate()
            .flat_map(|(r, s)| s.into_iter().map(move |(j, g)| (j, r, g)))
            .collect();
        all.sort_by_key(|(j, r, _)| (*j, *r));
        let home = &self.devices[0];
        let mut total = PathTensors::new();
        for (_, _, grads) in all {
            let grads = grads.into_iter().map(|(p, g)| (p, g.to_device(home)));
            add_grads::<B>(&mut total, grads.collect());
        }
        total
    }
}

/// `acc += part`, path by path.
fn add_grads<B: AutodiffBackend>(
    acc: &mut PathTensors<B::InnerBackend>,
    part: PathTensors<B::InnerBackend>,
) {
    for (path, g) in part {
        let sum = match acc.remove(&path) {
            Some(prev) => prev + g,
            None => g,
        };
        acc.insert(path, sum);
    }
}

/// Everything replica `r` computes in a step, one shard after another on its device.
fn replica_pass<B, M, S>(
    model: &M,
    device: &B::Device,
    r: usize,
    deals: &[Vec<Vec<Shard>>],
    work: &StepWork<S>,
) -> Result<(Slots<B>, Reports), TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S>,
    S: Sync,
{
    let mut slots: Slots<B> = BTreeMap::new();
    let mut reports = Vec::new();
    for (k, deal) in deals.iter().enumerate() {
        for sh in &deal[r] {
            let leaves = M::from_inner(model.valid());
            let mut grads = PathTensors::new();
            let report = shard_pass::<B, M, S>(&leaves, device, work, k, sh, &mut grads)?;
            add_grads::<B>(slots.entry(sh.slot).or_default(), grads);
            reports.push((k, sh.slot, report));
        }
    }
    Ok((slots, reports))
}

/// Forward and backward of one shard of micro-batch `k`, its loss scaled by its share of
/// the step (`n_shard / (n_micro · micro_len)`); its gradients go to `grads` (the model may
/// hand them over in parts: `Classifier::backward_pass`).
fn shard_pass<B, M, S>(
    model: &M,
    device: &B::Device,
    work: &StepWork<S>,
    k: usize,
    shard: &Shard,
    grads: &mut PathTensors<B::InnerBackend>,
) -> Result<ShardOut, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Classifier<B, S>,
{
    let micro = &work.micro[k];
    let idx = &micro[shard.samples.clone()];
    let samples = work.set.samples(idx).map_err(TrainError::Data)?;
    let refs: Vec<&S> = samples.iter().map(|s| s.as_ref()).collect();
    let targets: Vec<&Target> = idx.iter().map(|&i| work.set.target(i)).collect();
    let stream = shard_stream(work.seed, work.step, k, shard.slot);
    let div = (work.micro.len() * micro.len()) as f64 / idx.len() as f64;
    let mut out: Option<Result<ShardOut, TrainError>> = None;
    let mut loss_of = |logits: Tensor<B, 2>| {
        let (report, scaled) = shard_loss::<B>(logits, &targets, work.problem, div);
        out = Some(report);
        scaled
    };
    let mut sink = |g| {
        params::accumulate_grads::<B, M>(model, g, grads);
        if let Some(after) = work.after_segment {
            after();
        }
    };
    with_dropout_stream(stream, || {
        model.backward_pass(
            &refs,
            device,
            work.gradient_checkpointing,
            &mut loss_of,
            &mut sink,
        )
    })
    .map_err(TrainError::Model)?;
    out.unwrap_or_else(|| {
        Err(TrainError::Data(anyhow::anyhow!(
            "the model's backward pass computed no loss"
        )))
    })
}

/// Loss of `logits` divided by `div` (to differentiate), and the report: its value and
/// the host logits.
fn shard_loss<B: AutodiffBackend>(
    logits: Tensor<B, 2>,
    targets: &[&Target],
    problem: ProblemType,
    div: f64,
) -> (Result<ShardOut, TrainError>, Tensor<B, 1>) {
    let labels = logits.dims()[1];
    let host = logits.clone().inner().into_data().to_vec::<f32>();
    let scaled = loss::loss(logits, targets, problem).div_scalar(div);
    let value = scaled.clone().inner().into_data().to_vec::<f32>();
    let report = match (host, value) {
        (Ok(logits), Ok(v)) => Ok(ShardOut {
            loss: v[0] as f64,
            logits,
            labels,
        }),
        (Err(e), _) | (_, Err(e)) => Err(data_err(e)),
    };
    (report, scaled)
}

fn data_err(e: burn::tensor::DataError) -> TrainError {
    TrainError::Data(anyhow::anyhow!("{e:?}"))
}

/// Step loss and accuracy from every shard's report, summed in (micro-batch, slot) order.
fn stats<S>(work: &StepWork<S>, reports: Vec<Reports>) -> Result<StepDone, TrainError> {
    let mut all: Vec<(usize, usize, ShardOut)> = reports.into_iter().flatten().collect();
    all.sort_by_key(|(k, j, _)| (*k, *j));
    let mut stats = StepDone {
        loss: 0.0,
        grad_norm: None,
        correct: None,
    };
    let mut it = all.into_iter().peekable();
    for (k, idx) in work.micro.iter().enumerate() {
        let (mut loss, mut logits, mut labels) = (0f64, Vec::new(), 0);
        while let Some((_, _, out)) = it.next_if(|(kk, _, _)| *kk == k) {
            loss += out.loss;
            logits.extend(out.logits);
            labels = out.labels;
        }
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: work.step + 1,
            });
        }
        stats.loss += loss;
        let targets: Vec<&Target> = idx.iter().map(|&i| work.set.target(i)).collect();
        if let Some(c) = loss::correct(&logits, labels, &targets, work.problem) {
            let (right, seen) = stats.correct.unwrap_or((0, 0));
            let hits = c.iter().filter(|&&x| x).count() as u64;
            stats.correct = Some((right + hits, seen + c.len() as u64));
        }
    }
    Ok(stats)
}
