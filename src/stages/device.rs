//! Running a stage on the backend its `device` setting (or the scheduler's pin) resolves to:
//! one place for the CPU/CUDA dispatch that train, export and score share.

use burn::tensor::DType;
use burn::tensor::backend::Backend;

use crate::backend::{CpuBackend, CudaBackend, DeviceKind, resolve_device};
use crate::experiment::Common;
use crate::export::source::model_dtype;
use crate::graph::{StageContext, StageError};

/// A stage body generic over the backend it computes on.
pub(crate) trait OnBackend {
    /// Run with every device the scheduler handed the stage (`StageContext::devices`, at
    /// least one, all of kind `on.0`, which says whether `B` is the CPU or a GPU); stages
    /// without replicas use the first.
    fn run_on_all<B: Backend>(
        &self,
        ctx: &StageContext,
        on: (DeviceKind, Vec<B::Device>),
        dtype: DType,
    ) -> Result<(), StageError>;
}

/// How a stage treats a bf16 `torch_dtype` on the CPU.
#[derive(Clone, Copy)]
pub(crate) enum CpuDtype {
    /// Compute in f32 (bf16 matmuls are slow on the CPU backend); the verb names the work
    /// in the notice ("training", "scoring").
    F32For(&'static str),
    /// Keep the model dtype (the output must be written in it).
    Keep,
}

/// The dtype a stage computes in on the CPU (`on_cpu`) or a GPU, for a model `dtype`.
fn compute_dtype(on_cpu: bool, dtype: DType, cpu: CpuDtype) -> DType {
    match cpu {
        CpuDtype::F32For(_) if on_cpu => DType::F32,
        _ => dtype,
    }
}

/// The Burn dtype of the experiment's `torch_dtype` (`export::source::model_dtype` is the
/// one mapping; plan-time checks have already rejected a bad value).
pub(crate) fn model_dtype_of(common: &Common) -> Result<DType, StageError> {
    model_dtype(&common.model.torch_dtype)
        .map(|(dtype, _)| dtype)
        .map_err(StageError::Input)
}

/// `Stage::device_key` of a model stage: the device kind and the dtype it computes in there
/// (a bfloat16 experiment trains in float32 on the CPU and in bfloat16 on a GPU).
pub(crate) fn device_key(common: &Common, device_kind: &str, cpu: CpuDtype) -> serde_json::Value {
    let dtype = model_dtype_of(common).unwrap_or(DType::F32);
    let name = match compute_dtype(device_kind == "cpu", dtype, cpu) {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    serde_json::json!({ "device": device_kind, "compute_dtype": name })
}

/// Resolve the `[model] device` setting (the scheduler's pins in `ctx.devices` win), say
/// what was chosen, and run `job` on that backend, with every pinned device, in the dtype
/// `cpu` picks from `torch_dtype`.
pub(crate) fn run_on_device(
    job: &impl OnBackend,
    ctx: &StageContext,
    common: &Common,
    cpu: CpuDtype,
) -> Result<(), StageError> {
    let dtype = model_dtype_of(common)?;
    let setting = common.model.device.as_str();
    let specs: Vec<&str> = match ctx.devices {
        [] => vec![ctx.device.unwrap_or(setting)],
        pinned => pinned.iter().map(String::as_str).collect(),
    };
    let mut kinds = Vec::with_capacity(specs.len());
    for spec in &specs {
        let (kind, why) = resolve_device(spec).map_err(|e| StageError::Input(e.to_string()))?;
        if kinds.is_empty() {
            ctx.say(format!("[{}] {why}", ctx.name));
        }
        kinds.push(kind);
    }
    let kind = kinds[0];
    if kinds
        .iter()
        .any(|k| (*k == DeviceKind::Cpu) != (kind == DeviceKind::Cpu))
    {
        return Err(StageError::Input(format!(
            "devices {} mix the CPU and GPUs; one stage runs on one kind",
            specs.join(", ")
        )));
    }
    if kinds.len() > 1 {
        let on: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        ctx.say(format!(
            "[{}] {} replicas on {}",
            ctx.name,
            kinds.len(),
            on.join(", ")
        ));
    }
    match kind {
        DeviceKind::Cpu => {
            if let CpuDtype::F32For(work) = cpu
                && dtype == DType::BF16
            {
                ctx.say(format!(
                    "[{}] torch_dtype bfloat16 → {work} in float32 on the CPU (bf16 matmuls are slow there)",
                    ctx.name
                ));
            }
            let devices = vec![Default::default(); kinds.len()];
            job.run_on_all::<CpuBackend>(ctx, (kind, devices), compute_dtype(true, dtype, cpu))
        }
        DeviceKind::Cuda(_) => {
            let devices = kinds.iter().filter_map(|k| k.cuda_device()).collect();
            job.run_on_all::<CudaBackend>(ctx, (kind, devices), compute_dtype(false, dtype, cpu))
        }
    }
}

/// The pool rules of `key = n` replicas (the train and score stages' `nproc_per_node`), as
/// one line naming the key, `n` and the pool: at most the pool, one kind of device, and on
/// GPUs a divisor of the pool so that no device is left idle.
pub(crate) fn check_replica_pool(key: &str, n: usize, pool: &[String]) -> Result<(), StageError> {
    match crate::experiment::replica_pool_problem(n, pool) {
        None => Ok(()),
        Some(why) => Err(StageError::Input(format!("{key} = {n} {why}"))),
    }
}
