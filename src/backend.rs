//! Backend aliases and device selection shared by every stage that runs a model.

/// Pure-Rust CPU backend (tests and the embedded default).
pub type CpuBackend = burn::backend::Flex;
/// CUDA backend (NVRTC at run time; builds without CUDA installed).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;
