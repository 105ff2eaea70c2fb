//! AdamW exactly as `torch.optim.AdamW` (torch 2.5 `_single_tensor_adamw`, the CPU path),
//! and global-norm clipping as `torch.nn.utils.clip_grad_norm_`.
//!
//! Per step t (1-based), for each trainable param p with gradient g:
//! ```text
//! p ← p·(1 − lr·wd)                      decoupled weight decay
//! m ← m + (1 − β1)·(g − m)               (torch's lerp)
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//! ```
//! Scalars are computed in f64 like Python and applied to f32 tensors. Burn's own AdamW
//! computes the bias corrections in f32 and cannot save its state by parameter name, so the
//! loop uses this one. State is keyed by parameter path (see `train::params`).

use crate::train::params::PathTensors;
use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// ms-swift's defaults (`--adam_beta1 0.9 --adam_beta2 0.95 --adam_epsilon 1e-8
    /// --weight_decay 0.1`), as the experiment schema's; a test in `stages::train` keeps the
    /// two equal.
    pub const SWIFT: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
}

/// First and second moments of one param (flattened).
#[derive(Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
}

/// AdamW with its state. `B` is the inner (non-autodiff) backend.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Number of steps taken (torch's `state["step"]`, equal for every param).
    pub step: u64,
    pub moments: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Apply one update with learning rate `lr` to every trainable param of `module` that
    /// has a gradient in `grads` (consumed).
    pub fn step<AB, M>(&mut self, module: M, grads: PathTensors<B>, lr: f64) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.step += 1;
        let t = self.step as i32;
        let c = self.config;
        let mut mapper = StepMapper::<B> {
            stack: Vec::new(),
            grads,
            moments: &mut self.moments,
            decay: 1.0 - lr * c.weight_decay,
            step_size: lr / (1.0 - c.beta1.powi(t)),
            bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            config: c,
        };
        let module = module.map(&mut mapper);
        debug_assert!(
            mapper.grads.is_empty(),
            "gradients without a trainable param"
        );
        module
    }

    /// State as named tensors (`<path>.exp_avg`, `<path>.exp_avg_sq`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::new();
        for (path, m) in &self.moments {
            out.push((format!("{path}.exp_avg"), m.exp_avg.clone().into_data()));
            out.push((
                format!("{path}.exp_avg_sq"),
                m.exp_avg_sq.clone().into_data(),
            ));
        }
        out
    }

    /// Restore from `state_tensors` output and the saved step count.
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: &BTreeMap<String, TensorData>,
        device: &B::Device,
    ) -> Result<(), String> {
        let mut moments = BTreeMap::new();
        for (key, data) in tensors {
            let Some(path) = key.strip_suffix(".exp_avg") else {
                continue;
            };
            let sq = tensors
                .get(&format!("{path}.exp_avg_sq"))
                .ok_or_else(|| format!("{path}: exp_avg_sq missing"))?;
            let n = data.num_elements();
            moments.insert(
                path.to_string(),
                Moments {
                    exp_avg: Tensor::<B, 1>::from_data(data.clone(), device).reshape([n]),
                    exp_avg_sq: Tensor::<B, 1>::from_data(sq.clone(), device).reshape([n]),
                },
            );
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}

struct StepMapper<'a, B: Backend> {
    stack: Vec<String>,
    grads: PathTensors<B>,
    moments: &'a mut BTreeMap<String, Moments<B>>,
    decay: f64,
    step_size: f64,
    bc2_sqrt: f64,
    config: AdamWConfig,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for StepMapper<'_, AB::InnerBackend> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let path = self.stack.join(".");
        let Some(grad) = self.grads.remove(&path) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]);
        let c = self.config;
        let (m, v) = match self.moments.remove(&path) {
            Some(s) => (s.exp_avg, s.exp_avg_sq),
            None => (grad.zeros_like(), grad.zeros_like()),
        };
        let m = m.clone() + (grad.clone() - m).mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + (grad.clone() * grad).mul_scalar(1.0 - c.beta2);
        let denom = v.clone().sqrt().div_scalar(self.bc2_sqrt).add_scalar(c.eps);
        let p = p.mul_scalar(self.decay) - (m.clone() / denom).mul_scalar(self.step_size);
        self.moments.insert(
            path,
            Moments {
                exp_avg: m,
                exp_avg_sq: v,
            },
        );
        let p = Tensor::<AB, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, p, mapper)
    }
}

/// Global L2 norm of all gradients (torch: norm of the per-tensor norms), computed in f32
/// on the device like torch; returns it as f64.
pub fn global_grad_norm<B: Backend>(grads: &PathTensors<B>) -> f64 {
    let sq: Vec<Tensor<B, 1>> = grads
        .values()
        .map(|g| g.clone().powi_scalar(2).sum())
        .collect();
    if sq.is_empty() {
        return 0.0;
    }
    let total = Tensor::cat(sq, 0).sum().sqrt();
    total.into_data().to_vec::<f32>().expect("f32 norm")[0] as f64
}

/// `clip_grad_norm_(max_norm)`: scale every gradient by `max_norm / (norm + 1e-6)` when that
/// is below 1. Returns the norm before clipping (what transformers logs as `grad_norm`).
pub fn clip_grad_norm<B: Backend>(grads: &mut PathTensors<B>, max_norm: f64) -> f64 {
    let norm = global_grad_norm(grads);
    // torch computes clip_coef = max_norm / (total_norm + 1e-6) as an f32 tensor.
    let coef = (max_norm as f32) / (norm as f32 + 1e-6f32);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = g.clone().mul_scalar(coef);
        }
    }
    norm
}
