//! A merged checkpoint directory: LoRA folded into the base weights (hub key names,
//! `score.weight`, no `lm_head`, the model's dtype), config.json with the head, the
//! remote-code class, and the tokenizer/preprocessor files of the base model.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde_json::Value;

use super::ExportError;
use super::hf_config::{HeadSpec, MODELING_FILE, MODELING_SOURCE, merged_config};
use super::shards::write_sharded;
use crate::model::SeqClassifier;

/// Files of a Hugging Face model directory that describe its tokenizer and processor; the
/// ones present are copied next to the merged weights.
pub const PROCESSOR_FILES: [&str; 11] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Write weights (sharded above `max_shard_bytes`), config.json and the modeling file into
/// `dir` (created). Returns the weight file names.
pub fn write_merged<B: Backend>(
    dir: &Path,
    model: &SeqClassifier<B>,
    base_config: &Value,
    head: &HeadSpec<'_>,
    max_shard_bytes: u64,
) -> Result<Vec<String>, ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = write_sharded(dir, model.merged_state(), max_shard_bytes)?;
    let config = merged_config(base_config, head);
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("JSON values serialize") + "\n",
    )
    .map_err(io(&path))?;
    let path = dir.join(MODELING_FILE);
    std::fs::write(&path, MODELING_SOURCE).map_err(io(&path))?;
    let path = dir.join("README.md");
    std::fs::write(&path, LOADING_NOTES).map_err(io(&path))?;
    Ok(files)
}

/// README.md of a merged directory: which loaders accept it and how.
pub const LOADING_NOTES: &str = "\
# Merged Qwen2.5-VL sequence classifier (written by `pipeline export`)

LoRA folded into the base weights; hub key names (`visual.*`, `model.*`), the head as
`score.weight` [num_labels, hidden], no `lm_head`. config.json carries `num_labels`,
`id2label`, `label2id`, `problem_type`, and `architectures` as ms-swift writes them.

Loaders that accept this directory:

- transformers (>= 4.52; tested with 4.57.1): transformers has no Qwen2.5-VL
  sequence-classification class, so the class ships here as remote code:

      from transformers import AutoModelForSequenceClassification
      model = AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)
      logits = model(input_ids=..., attention_mask=..., pixel_values=..., image_grid_thw=...).logits

  Without `trust_remote_code`, `AutoModelForSequenceClassification` refuses the
  `qwen2_5_vl` config, and `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads the
  backbone but drops `score.weight` (attach it yourself, as ms-swift does).
- ms-swift (`swift infer --model <dir> --task_type seq_cls --num_labels N`): the layout
  `swift export --merge_lora true` writes.
- pipeline: `[model] path = \"<dir>\"` with a score stage that needs only the dataset.

Images: resize with qwen-vl-utils `smart_resize` and the same `max_pixels` as in training
before the processor (`do_resize=False`); the processor's own bounds are not the ones
training used.
";

/// Copy the tokenizer/preprocessor files `src` has into `dest`; returns their names.
pub fn copy_processor_files(src: &Path, dest: &Path) -> Result<Vec<String>, ExportError> {
    let mut copied = Vec::new();
    for name in PROCESSOR_FILES {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, dest.join(name)).map_err(|source| ExportError::Io {
                path: from.clone(),
                source,
            })?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

/// `preprocessor_config.json` of the Qwen2-VL image processor for a model without one (a
/// preset): patch/merge sizes from the vision config, CLIP mean/std, and the pixel bounds.
pub fn preprocessor_config(
    vision: &crate::model::config::VisionConfig,
    min_pixels: u64,
    max_pixels: u64,
) -> Value {
    use crate::model::processor::{CLIP_MEAN, CLIP_STD};
    serde_json::json!({
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "max_pixels": max_pixels,
        "merge_size": vision.spatial_merge_size,
        "min_pixels": min_pixels,
        "patch_size": vision.patch_size,
        "processor_class": "Qwen2_5_VLProcessor",
        "resample": 3,
        "rescale_factor": 1.0 / 255.0,
        "size": {"longest_edge": max_pixels, "shortest_edge": min_pixels},
        "temporal_patch_size": vision.temporal_patch_size,
    })
}
