//! What the training loop needs from a model and from a split: a classifier that maps a
//! batch of samples to f32 logits, PEFT-named trainable tensors for checkpoints, and a
//! split that hands out samples by index.
//!
//! The loop is generic over these traits so that it can be exercised with a tiny model in
//! tests; `stages::train` implements them for `model::SeqClassifier`.

use crate::train::loss::Target;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::sync::Arc;

/// A sequence classifier over samples of type `S`.
pub trait Classifier<B: Backend, S>: Module<B> {
    /// f32 logits `[batch.len(), num_labels]`.
    fn logits(&self, batch: &[&S], device: &B::Device) -> anyhow::Result<Tensor<B, 2>>;

    /// Forward and backward of one batch: `loss_of` maps the logits to the scalar to
    /// differentiate, the gradients go to `sink` (at once here; a model that trains in
    /// segments hands them over in parts). `gradient_checkpointing` lets such a model keep
    /// only segment inputs and recompute in backward.
    fn backward_pass(
        &self,
        batch: &[&S],
        device: &B::Device,
        gradient_checkpointing: bool,
        loss_of: &mut dyn FnMut(Tensor<B, 2>) -> Tensor<B, 1>,
        sink: &mut dyn FnMut(B::Gradients),
    ) -> anyhow::Result<()>
    where
        B: AutodiffBackend,
    {
        let _ = gradient_checkpointing;
        let loss = loss_of(self.logits(batch, device)?);
        sink(loss.backward());
        Ok(())
    }
}

/// The trainable weights in PEFT's adapter layout (key names as in
/// `adapter_model.safetensors`, see `crate::adapter`).
pub trait PeftState {
    /// `(key, f32 tensor)` pairs: `base_model.model.<module>.lora_A.weight` `[r, in]`,
    /// `...lora_B.weight` `[out, r]`, `base_model.model.score.weight` `[num_labels, hidden]`.
    fn peft_tensors(&self) -> Vec<(String, TensorData)>;
}

/// A split of samples addressable by index.
pub trait SampleSet<S>: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Target of sample `i`.
    fn target(&self, i: usize) -> &Target;
    /// The samples at `indices`, in that order (loaded or taken from a cache).
    fn samples(&self, indices: &[usize]) -> anyhow::Result<Vec<Arc<S>>>;
}

/// A split held entirely in memory.
pub struct InMemorySet<S> {
    samples: Vec<Arc<S>>,
    targets: Vec<Target>,
}

impl<S> InMemorySet<S> {
    pub fn new(samples: Vec<S>, targets: Vec<Target>) -> Self {
        assert_eq!(samples.len(), targets.len(), "one target per sample");
        Self {
            samples: samples.into_iter().map(Arc::new).collect(),
            targets,
        }
    }
}

impl<S: Send + Sync> SampleSet<S> for InMemorySet<S> {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn target(&self, i: usize) -> &Target {
        &self.targets[i]
    }
    fn samples(&self, indices: &[usize]) -> anyhow::Result<Vec<Arc<S>>> {
        Ok(indices.iter().map(|&i| self.samples[i].clone()).collect())
    }
}
