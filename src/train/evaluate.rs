//! Evaluation pass: forward only on the inner (non-autodiff) model, so LoRA dropout is off
//! and no graph is recorded. Metrics as transformers' `evaluation_loop` reports them:
//! `eval_loss` is the mean of per-batch mean losses weighted by batch size.

use crate::task::ProblemType;
use crate::train::classifier::{Classifier, SampleSet};
use crate::train::loss::{self, Target};
use crate::train::spread::{Spread, map_batches};
use burn::tensor::backend::Backend;
use std::time::Instant;

/// Metrics of one pass over a split.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    /// Accuracy (None for regression).
    pub acc: Option<f64>,
    pub samples: usize,
    pub batches: usize,
    /// Wall-clock seconds (the only nondeterministic field).
    pub runtime_s: f64,
}

/// Evaluate `model` on every sample of `set` in order, `batch` at a time. With `parallel`
/// (the CPU) the batches are spread over the rayon pool, one model copy per thread; each
/// batch is computed alone and the sums run in batch order, so the result is the same.
pub fn evaluate<B, M, S>(
    model: &M,
    set: &dyn SampleSet<S>,
    batch: usize,
    problem: ProblemType,
    device: &B::Device,
    parallel: bool,
) -> anyhow::Result<EvalResult>
where
    B: Backend,
    M: Classifier<B, S>,
    S: Sync,
{
    let spread = if parallel {
        Spread::Pool
    } else {
        Spread::Serial
    };
    evaluate_on::<B, M, S>(
        &[(model.clone(), device.clone())],
        set,
        batch,
        problem,
        spread,
    )
}

/// [`evaluate`] with the batches spread over `replicas` (a model copy and its device each):
/// the same batches as on one device, so the same result.
pub fn evaluate_on<B, M, S>(
    replicas: &[(M, B::Device)],
    set: &dyn SampleSet<S>,
    batch: usize,
    problem: ProblemType,
    spread: Spread,
) -> anyhow::Result<EvalResult>
where
    B: Backend,
    M: Classifier<B, S>,
    S: Sync,
{
    let start = Instant::now();
    let n = set.len();
    let batch = batch.max(1);
    let batches = n.div_ceil(batch);
    let per_batch = map_batches(replicas, batches, spread, |m, device, b| {
        eval_batch(m, set, b * batch..((b + 1) * batch).min(n), problem, device)
    })?;
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for (l, c) in &per_batch {
        loss_sum += l;
        correct += c;
    }
    Ok(EvalResult {
        loss: loss_sum / n.max(1) as f64,
        acc: problem.has_acc().then(|| correct as f64 / n.max(1) as f64),
        samples: n,
        batches,
        runtime_s: start.elapsed().as_secs_f64(),
    })
}

/// Summed loss (batch mean × size) and correct count of the samples in `range`.
fn eval_batch<B, M, S>(
    model: &M,
    set: &dyn SampleSet<S>,
    range: std::ops::Range<usize>,
    problem: ProblemType,
    device: &B::Device,
) -> anyhow::Result<(f64, usize)>
where
    B: Backend,
    M: Classifier<B, S>,
{
    let idx: Vec<usize> = range.collect();
    let samples = set.samples(&idx)?;
    let refs: Vec<&S> = samples.iter().map(|s| s.as_ref()).collect();
    let targets: Vec<&Target> = idx.iter().map(|&i| set.target(i)).collect();
    let logits = model.logits(&refs, device)?;
    let labels = logits.dims()[1];
    let l = loss::loss(logits.clone(), &targets, problem);
    let host = logits.into_data().to_vec::<f32>()?;
    let l = l.into_data().to_vec::<f32>()?[0] as f64;
    let correct = loss::correct(&host, labels, &targets, problem)
        .map_or(0, |c| c.iter().filter(|&&x| x).count());
    Ok((l * idx.len() as f64, correct))
}
