//! Qwen2.5-VL sequence classifier in Burn, generic over the backend, plus LoRA.
//! The model knows nothing of TOML or files other than checkpoints.
//!
//! Public API (contract between `model`, `train`, `stages`):
//!
//! ```text
//! model::config::ModelConfig                       // text + vision config, parsed from any config.json shape
//!   ModelConfig::from_hf_json(&serde_json::Value) -> Result<ModelConfig, ModelError>
//! model::presets::{preset_config(name) -> Result<ModelConfig>, PRESETS}   // "tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"
//! model::tokenizer::load_tokenizer(source: &ModelSource) -> Result<tokenizers::Tokenizer>
//! model::ModelSource { Preset(String), Path(PathBuf) }
//!
//! model::processor::pixel_rows(img: &image::RgbImage, vision: &VisionConfig) -> (Vec<f32>, [usize; 3])
//!     // rescale, CLIP-normalise, repeat to temporal_patch_size, rows in merge-block order
//! model::inputs::SampleInputs { input_ids: Vec<u32>, pixel_rows: Vec<f32>, grids: Vec<[usize;3]> }
//! model::inputs::ModelInputs<B> { input_ids: Tensor<B,2,Int>, attention_mask: Tensor<B,2,Int>,
//!                                 pixel_values: Option<Tensor<B,2>>, image_grid_thw: Vec<[usize;3]> }
//! model::inputs::collate::<B>(samples: &[&SampleInputs], pad_id: u32, side: PaddingSide, device) -> ModelInputs<B>
//!
//! model::classifier::SeqClassifier<B>              // #[derive(Module)] backbone + `score`
//!   load_classifier::<B>(source: &ModelSource, num_labels, dtype: DType, seed: u64, device) -> Result<SeqClassifier<B>>
//!   SeqClassifier::forward(&self, inputs: &ModelInputs<B>) -> Tensor<B, 2>   // f32 logits [batch, num_labels]
//!
//! model::lora::{LoraSpec { r, alpha, dropout, use_rslora, targets: TargetSelector },
//!               TargetSelector::{AllLinear { vit, aligner, llm }, Names(Vec<String>), Regex(String)}}
//!   SeqClassifier::apply_lora(self, spec: &LoraSpec, seed) -> Result<SeqClassifier<B>>  // freezes the base
//!   SeqClassifier::linear_names(&self) -> Vec<String>   // HF module names, for error messages
//!   SeqClassifier::lora_weights(&self) -> Vec<(String /*hf module name*/, Tensor<B,2> /*A [r,in]*/, Tensor<B,2> /*B [out,r]*/)>
//!   SeqClassifier::load_lora_weights(self, named A/B + score) -> Result<Self>
//!   SeqClassifier::merged_state(&self) -> Vec<(String /*hub key*/, TensorData)> // LoRA folded in
//! ```
pub mod tokenizer;
