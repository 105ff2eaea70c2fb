//! Merged Hugging Face checkpoints: config.json for a seq-cls head, sharded safetensors,
//! tokenizer/preprocessor files, and safe publication to a user `output_dir`.

pub mod hf_config;
pub mod merged;
pub mod output_dir;
pub mod shards;
pub mod source;

use std::path::PathBuf;

use crate::adapter::AdapterError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tensors(#[from] AdapterError),
    #[error(transparent)]
    File(#[from] crate::safetensors_io::TensorFileError),
    #[error(
        "output_dir {path}: refusing to write there: {why}; choose another directory or remove it"
    )]
    NotOurs { path: PathBuf, why: String },
}
