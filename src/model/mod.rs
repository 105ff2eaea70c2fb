//! Qwen2.5-VL sequence classifier in Burn, generic over the backend, plus LoRA.
//! The model knows nothing of TOML or files other than checkpoints.
//!
//! Public API (contract between `model`, `train`, `stages`; final signatures):
//!
//! ```text
//! model::ModelError                                 // one error enum for the whole module
//! model::config::{ModelConfig, TextConfig, VisionConfig, TokenIds}
//!   ModelConfig::from_hf_json(&serde_json::Value) -> Result<ModelConfig, ModelError>
//! model::presets::{preset_config(name) -> Result<ModelConfig, ModelError>, PRESETS}
//!     // "tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"
//! model::tokenizer::load_tokenizer(source: &ModelSource) -> Result<tokenizers::Tokenizer>  // other helper
//! model::ModelSource { Preset(String), Path(PathBuf) }                                   // other helper
//!
//! model::processor::pixel_rows(img: &image::RgbImage, vision: &VisionConfig)
//!     -> Result<(Vec<f32>, [usize; 3]), ModelError>     // CHANGED: Result (size not a multiple of 28)
//!     // rescale, CLIP-normalise, repeat to temporal_patch_size, rows in merge-block order
//! model::inputs::SampleInputs { input_ids: Vec<u32>, pixel_rows: Vec<f32>, grids: Vec<[usize;3]> }
//! model::inputs::ModelInputs<B> { input_ids: Tensor<B,2,Int>, attention_mask: Tensor<B,2,Int>,
//!                                 pixel_values: Option<Tensor<B,2>>, image_grid_thw: Vec<[usize;3]> }
//! model::inputs::PaddingSide { Left, Right }
//! model::inputs::collate::<B>(samples: &[&SampleInputs], pad_id: u32, side: PaddingSide, device)
//!     -> ModelInputs<B>
//!
//! model::classifier::SeqClassifier<B>              // #[derive(Module)] visual + language_model + score
//!   load_classifier::<B>(source: &ModelSource, num_labels, dtype: DType, seed: u64, device)
//!       -> Result<SeqClassifier<B>, ModelError>
//!   load_classifier_from::<B>(source: WeightsSource<'_> /*Preset(&str) | Dir(&Path)*/, num_labels,
//!       dtype /*F32 | BF16*/, seed, device) -> Result<SeqClassifier<B>, ModelError>
//!   SeqClassifier::forward(&self, inputs: &ModelInputs<B>) -> Result<Tensor<B, 2>, ModelError>
//!       // CHANGED: Result (image-token/feature count mismatch). f32 logits [batch, num_labels]
//!   SeqClassifier::last_hidden_state(&self, inputs) -> Result<Tensor<B, 3>, ModelError> // normed
//!   SeqClassifier::position_ids(&self, inputs) -> Result<Vec<i64> /*[3, batch, seq]*/, ModelError>
//!   SeqClassifier::config(&self) -> &ModelConfig;  num_labels(&self) -> usize;  dtype(&self) -> DType
//!   model::vision::VisionModel::{forward(pixels, grids), trace(pixels, grids)}  // trace: every intermediate
//!
//! model::lora::{LoraSpec { r, alpha, dropout, use_rslora, targets: TargetSelector },
//!               TargetSelector::{AllLinear { vit, aligner, llm }, Names(Vec<String>), Regex(String)},
//!               LoraLinear<B>}
//!   SeqClassifier::apply_lora(self, spec: &LoraSpec, seed: u64) -> Result<Self, ModelError> // freezes the base
//!   SeqClassifier::linear_names(&self) -> Vec<String>   // HF (≥ 4.52) module names
//!   SeqClassifier::lora_weights(&self) -> Vec<(String /*hf module name*/, Tensor<B,2> /*A [r,in]*/, Tensor<B,2> /*B [out,r]*/)>
//!   SeqClassifier::score_weight(&self) -> Tensor<B, 2>  // [num_labels, hidden] f32
//!   SeqClassifier::load_lora_weights(self, spec: &LoraSpec,
//!       adapters: Vec<(String, Tensor<B,2>, Tensor<B,2>)>, score: Option<Tensor<B,2>>) -> Result<Self, ModelError>
//!       // adapters are placed on the named modules (spec gives r/alpha/dropout/rslora); freezes the base
//!   SeqClassifier::merged_state(&self) -> Vec<(String /*hub key*/, TensorData)> // LoRA folded in
//!   SeqClassifier::trainable_params(&self) -> usize;  SeqClassifier::total_params(&self) -> usize
//!   SeqClassifier::<B: AutodiffBackend>::train_pass(&self, inputs: &ModelInputs<B::InnerBackend>,
//!       recompute: bool, loss_of: &mut dyn FnMut(Tensor<B,2>) -> Tensor<B,1>,
//!       sink: &mut dyn FnMut(B::Gradients)) -> Result<(), ModelError>
//!       // training forward + backward: in segments (gradient checkpointing when `recompute`,
//!       // memory-efficient attention) unless short sequences make one graph cheaper;
//!       // gradients reach `sink` in parts. `segmented_pass`: the segments always
//! ```
//!
//! Module names: `model.visual.blocks.{i}.attn.qkv`, `model.language_model.layers.{i}.self_attn.q_proj`,
//! `model.visual.merger.mlp.0`, `score` (transformers ≥ 4.52 in-memory names). Checkpoint keys
//! are read in both layouts and written in the hub layout (`visual.*`, `model.layers.*`).

pub mod attention;
pub mod classifier;
pub mod config;
pub mod footprint;
pub mod inputs;
pub mod layers;
pub mod lora;
pub mod presets;
pub mod processor;
pub mod rope;
pub mod seed;
pub mod text;
pub mod tokenizer;
pub mod train_pass;
pub mod vision;
pub mod weights;

pub use classifier::{SeqClassifier, WeightsSource, config_of, load_classifier_from};
pub use config::ModelConfig;
pub use tokenizer::ModelSource;

use burn::tensor::{DType, backend::Backend};

/// Build the classifier for a `ModelSource` (preset name or Hugging Face directory).
pub fn load_classifier<B: Backend>(
    source: &ModelSource,
    num_labels: usize,
    dtype: DType,
    seed: u64,
    device: &B::Device,
) -> Result<SeqClassifier<B>, ModelError> {
    let weights = match source {
        ModelSource::Preset(name) => WeightsSource::Preset(name),
        ModelSource::Path(dir) => WeightsSource::Dir(dir),
    };
    load_classifier_from(weights, num_labels, dtype, seed, device)
}

/// Every failure of the model layer: bad config, bad checkpoint, bad inputs, bad LoRA spec.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("unknown model preset {0:?} (valid: tiny, qwen2.5-vl-3b, qwen2.5-vl-7b)")]
    UnknownPreset(String),
    #[error("weights {file}: {msg}")]
    Weights { file: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model inputs: {0}")]
    Inputs(String),
    #[error("lora: {0}")]
    Lora(String),
    #[error(transparent)]
    File(#[from] crate::safetensors_io::TensorFileError),
}
