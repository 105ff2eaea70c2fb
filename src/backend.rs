//! Backend aliases and device selection shared by every stage that runs a model.

use std::path::Path;

/// Pure-Rust CPU backend (tests and the embedded default).
pub type CpuBackend = burn::backend::Flex;
/// CUDA backend (NVRTC at run time; builds without CUDA installed).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// Where a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Whether an NVIDIA driver is present, without touching CUDA (no panic, no init):
/// the kernel module's proc entry or a loadable `libcuda.so.1` in a usual place.
pub fn cuda_driver_present() -> bool {
    if Path::new("/proc/driver/nvidia/version").exists() {
        return true;
    }
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
        "/usr/lib/wsl/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

/// Resolve a `device` setting (`auto` | `cpu` | `cuda` | `cuda:N`); a device pinned by the
/// scheduler wins. `auto` is CUDA 0 when a driver is present, else the CPU.
pub fn resolve_device(setting: &str, pinned: Option<&str>) -> Result<ComputeDevice, String> {
    let s = pinned.unwrap_or(setting);
    match s {
        "auto" => Ok(if cuda_driver_present() {
            ComputeDevice::Cuda(0)
        } else {
            ComputeDevice::Cpu
        }),
        "cpu" => Ok(ComputeDevice::Cpu),
        "cuda" => Ok(ComputeDevice::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(ComputeDevice::Cuda)
            .ok_or_else(|| format!("device {s:?} is not valid (valid: auto, cpu, cuda, cuda:N)")),
    }
}
