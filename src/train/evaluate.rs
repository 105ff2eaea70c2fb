//! Evaluation pass: forward only on the inner (non-autodiff) model, so LoRA dropout is off
//! and no graph is recorded. Metrics as transformers' `evaluation_loop` reports them:
//! `eval_loss` is the mean of per-batch mean losses weighted by batch size.

use crate::train::classifier::{Classifier, SampleSet};
use crate::train::loss::{self, Problem, Target};
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

/// Evaluate `model` on every sample of `set` in order, `batch` at a time.
pub fn evaluate<B, M, S>(
    model: &M,
    set: &dyn SampleSet<S>,
    batch: usize,
    problem: Problem,
    device: &B::Device,
) -> anyhow::Result<EvalResult>
where
    B: Backend,
    M: Classifier<B, S>,
{
    let start = Instant::now();
    let n = set.len();
    let (mut loss_sum, mut correct, mut batches) = (0f64, 0usize, 0usize);
    for start_i in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start_i..(start_i + batch).min(n)).collect();
        let samples = set.samples(&idx)?;
        let refs: Vec<&S> = samples.iter().map(|s| s.as_ref()).collect();
        let targets: Vec<&Target> = idx.iter().map(|&i| set.target(i)).collect();
        let logits = model.logits(&refs, device)?;
        let labels = logits.dims()[1];
        let l = loss::loss(logits.clone(), &targets, problem);
        let host = logits.into_data().to_vec::<f32>()?;
        let l = l.into_data().to_vec::<f32>()?[0] as f64;
        loss_sum += l * idx.len() as f64;
        if let Some(c) = loss::correct(&host, labels, &targets, problem) {
            correct += c.iter().filter(|&&x| x).count();
        }
        batches += 1;
    }
    Ok(EvalResult {
        loss: loss_sum / n.max(1) as f64,
        acc: problem.has_acc().then(|| correct as f64 / n.max(1) as f64),
        samples: n,
        batches,
        runtime_s: start.elapsed().as_secs_f64(),
    })
}
