//! Trainable parameters addressed by their Burn module path (`backbone.layers.0.q_proj.lora_a`):
//! counting, pulling gradients out of a backward pass, and restoring saved values.
//!
//! Paths are stable for a given model structure, so optimizer state and resumable
//! checkpoints are keyed by them (PEFT names are only used for the exported adapter).
//! Tensors are handled flattened to 1-D so one map can hold parameters of any rank.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// Flattened inner-backend tensors keyed by parameter path.
pub type PathTensors<B> = BTreeMap<String, Tensor<B, 1>>;

/// Name stack maintained from `enter_module`/`exit_module`.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn push(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn pop(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

/// Parameter counts of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub trainable: usize,
    pub total: usize,
}

impl ParamCounts {
    /// ms-swift's wording: `12.3456M Params (0.1234M Trainable [1.0000%])`.
    pub fn describe(&self) -> String {
        let pct = if self.total > 0 {
            100.0 * self.trainable as f64 / self.total as f64
        } else {
            0.0
        };
        format!(
            "{:.4}M Params ({:.4}M Trainable [{pct:.4}%])",
            self.total as f64 / 1e6,
            self.trainable as f64 / 1e6
        )
    }
}

struct Census {
    stack: PathStack,
    counts: ParamCounts,
    trainable: Vec<(String, ParamId, usize)>,
}

impl<B: Backend> ModuleVisitor<B> for Census {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.counts.total += n;
        if param.is_require_grad() {
            self.counts.trainable += n;
            self.trainable.push((self.stack.path(), param.id, n));
        }
    }
}

/// Trainable/total parameter counts (float params only; a param is trainable when it
/// requires grad).
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> ParamCounts {
    census(module).0
}

/// `(path, numel)` of every trainable parameter, in module order.
pub fn trainable_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, usize)> {
    census(module)
        .1
        .into_iter()
        .map(|(p, _, n)| (p, n))
        .collect()
}

fn census<B: Backend, M: Module<B>>(module: &M) -> (ParamCounts, Vec<(String, ParamId, usize)>) {
    let mut c = Census {
        stack: PathStack::default(),
        counts: ParamCounts {
            trainable: 0,
            total: 0,
        },
        trainable: Vec::new(),
    };
    module.visit(&mut c);
    (c.counts, c.trainable)
}

struct GradTaker<'a, B: AutodiffBackend> {
    stack: PathStack,
    grads: &'a mut B::Gradients,
    into: &'a mut PathTensors<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradTaker<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let Some(grad) = param.val().grad_remove(self.grads) else {
            return;
        };
        let n = grad.shape().num_elements();
        let grad = grad.reshape([n]);
        let path = self.stack.path();
        // Sum over micro-batches like torch's `.grad +=`.
        let acc = match self.into.remove(&path) {
            Some(prev) => prev + grad,
            None => grad,
        };
        self.into.insert(path, acc);
    }
}

/// Move the gradients of `module`'s trainable params out of `grads`, adding them to `acc`.
pub fn accumulate_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: B::Gradients,
    acc: &mut PathTensors<B::InnerBackend>,
) {
    let mut taker = GradTaker::<B> {
        stack: PathStack::default(),
        grads: &mut grads,
        into: acc,
    };
    module.visit(&mut taker);
}

struct ValueReader<B: Backend> {
    stack: PathStack,
    trainable_only: bool,
    out: Vec<(String, TensorData)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for ValueReader<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.trainable_only && !param.is_require_grad() {
            return;
        }
        self.out.push((self.stack.path(), param.val().into_data()));
    }
}

/// Values of the trainable params (with their shapes), in module order.
pub fn trainable_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    let mut r = ValueReader::<B> {
        stack: PathStack::default(),
        trainable_only: true,
        out: Vec::new(),
        _b: Default::default(),
    };
    module.visit(&mut r);
    r.out
}

struct Restorer<'a> {
    stack: PathStack,
    values: &'a BTreeMap<String, TensorData>,
    restored: usize,
    errors: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Restorer<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let path = self.stack.path();
        let Some(data) = self.values.get(&path) else {
            self.errors
                .push(format!("{path}: missing from the checkpoint"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if data.shape != tensor.shape() {
            self.errors.push(format!(
                "{path}: checkpoint shape {:?} != model shape {:?}",
                data.shape,
                tensor.shape()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let inner =
            Tensor::<B::InnerBackend, D>::from_data(data.clone(), &device).cast(tensor.dtype());
        self.restored += 1;
        Param::from_mapped_value(id, Tensor::from_inner(inner).require_grad(), mapper)
    }
}

/// Replace every trainable param by the value saved under its path. Errors list params that
/// are missing or have another shape, and saved values that match no trainable param.
pub fn restore_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    values: &BTreeMap<String, TensorData>,
) -> Result<M, String> {
    let mut r = Restorer {
        stack: PathStack::default(),
        values,
        restored: 0,
        errors: Vec::new(),
    };
    let module = module.map(&mut r);
    if r.restored != values.len() && r.errors.is_empty() {
        r.errors.push(format!(
            "checkpoint holds {} trainable tensors, the model {}",
            values.len(),
            r.restored
        ));
    }
    if r.errors.is_empty() {
        Ok(module)
    } else {
        Err(r.errors.join("; "))
    }
}
