//! Evaluation pass: forward only on the inner (non-autodiff) model, so LoRA dropout is off
//! and no graph is recorded. Metrics as transformers' `evaluation_loop` reports them:
//! `eval_loss` is the mean of per-batch mean losses weighted by batch size.

use crate::train::classifier::{Classifier, SampleSet};
use crate::train::loss::{self, Problem, Target};
use burn::tensor::backend::Backend;
use rayon::prelude::*;
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
    problem: Problem,
    device: &B::Device,
    parallel: bool,
) -> anyhow::Result<EvalResult>
where
    B: Backend,
    M: Classifier<B, S>,
    S: Sync,
{
    let start = Instant::now();
    let n = set.len();
    let starts: Vec<usize> = (0..n).step_by(batch.max(1)).collect();
    let threads = if parallel {
        rayon::current_num_threads().clamp(1, starts.len().max(1))
    } else {
        1
    };
    let per = starts.len().div_ceil(threads).max(1);
    let groups: Vec<(M, &[usize])> = starts.chunks(per).map(|c| (model.clone(), c)).collect();
    let run = |(m, group): (M, &[usize])| -> anyhow::Result<Vec<(f64, usize)>> {
        group
            .iter()
            .map(|&s| eval_batch(&m, set, s..(s + batch).min(n), problem, device))
            .collect()
    };
    let per_batch: Vec<(f64, usize)> = if threads > 1 {
        let parts: Vec<anyhow::Result<Vec<(f64, usize)>>> =
            groups.into_par_iter().map(run).collect();
        let mut all = Vec::with_capacity(starts.len());
        for p in parts {
            all.extend(p?);
        }
        all
    } else {
        groups
            .into_iter()
            .map(run)
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat()
    };
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for (l, c) in &per_batch {
        loss_sum += l;
        correct += c;
    }
    Ok(EvalResult {
        loss: loss_sum / n.max(1) as f64,
        acc: problem.has_acc().then(|| correct as f64 / n.max(1) as f64),
        samples: n,
        batches: starts.len(),
        runtime_s: start.elapsed().as_secs_f64(),
    })
}

/// Summed loss (batch mean × size) and correct count of the samples in `range`.
fn eval_batch<B, M, S>(
    model: &M,
    set: &dyn SampleSet<S>,
    range: std::ops::Range<usize>,
    problem: Problem,
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
