//! Running a stage on the backend its `device` setting (or the scheduler's pin) resolves to:
//! one place for the CPU/CUDA dispatch that train, export and score share.

use burn::tensor::DType;
use burn::tensor::backend::Backend;

use crate::backend::{CpuBackend, CudaBackend, DeviceKind, resolve_device};
use crate::graph::{StageContext, StageError};

/// A stage body generic over the backend it computes on.
pub(crate) trait OnBackend {
    /// `on.0` says which backend `B` is (the CPU or a GPU) for choices that depend on it.
    fn run_on<B: Backend>(
        &self,
        ctx: &StageContext,
        on: (DeviceKind, B::Device),
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

/// Resolve `setting` (a scheduler pin in `ctx.device` wins), say what was chosen, and run
/// `job` on that backend.
pub(crate) fn run_on_device(
    job: &impl OnBackend,
    ctx: &StageContext,
    setting: &str,
    dtype: DType,
    cpu: CpuDtype,
) -> Result<(), StageError> {
    let spec = ctx.device.unwrap_or(setting);
    let (kind, why) = resolve_device(spec).map_err(|e| StageError::Input(e.to_string()))?;
    ctx.say(format!("[{}] {why}", ctx.name));
    match kind {
        DeviceKind::Cpu => {
            let dtype = match cpu {
                CpuDtype::F32For(work) if dtype == DType::BF16 => {
                    ctx.say(format!(
                        "[{}] torch_dtype bfloat16 → {work} in float32 on the CPU (bf16 matmuls are slow there)",
                        ctx.name
                    ));
                    DType::F32
                }
                CpuDtype::F32For(_) => DType::F32,
                CpuDtype::Keep => dtype,
            };
            job.run_on::<CpuBackend>(ctx, (kind, Default::default()), dtype)
        }
        DeviceKind::Cuda(i) => {
            let device = burn::backend::cuda::CudaDevice::new(i);
            job.run_on::<CudaBackend>(ctx, (kind, device), dtype)
        }
    }
}
