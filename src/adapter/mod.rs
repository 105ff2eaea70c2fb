//! PEFT LoRA adapters on disk: the one reader/writer of `adapter_config.json` +
//! `adapter_model.safetensors` used by training checkpoints, the export stage and imports
//! (`adapter = "path"`).
//!
//! Module names inside this crate are transformers ≥ 4.52 in-memory names
//! (`model.language_model.layers.3.self_attn.q_proj`, `model.visual.blocks.0.attn.qkv`,
//! `model.visual.merger.mlp.0`), as `model::SeqClassifier::lora_weights` reports them.

pub mod apply;
pub mod check;
pub mod keys;
pub mod peft;
pub mod targets;

use std::path::PathBuf;

pub use peft::{
    AdapterConfig, LoraPair, PeftAdapter, read_peft_adapter, read_peft_state, write_peft_adapter,
    write_peft_state,
};

/// What can go wrong reading, writing or applying an adapter. Messages name the file and
/// the offending key or field.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEFT adapter directory (no {missing})")]
    NotAnAdapter {
        path: PathBuf,
        missing: &'static str,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    File(#[from] crate::safetensors_io::TensorFileError),
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error("{path}: tensor `{key}`: {message}")]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// The adapter does not fit the model it is applied to.
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
}
