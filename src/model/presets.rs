//! Built-in model shapes (random weights): `tiny` for tests and the embedded default, and
//! the real Qwen2.5-VL 3B / 7B shapes (the published config.json files of Qwen2.5-VL-3B/7B-Instruct).

use super::ModelError;
use super::config::{Activation, ModelConfig, TextConfig, TokenIds, VisionConfig};

/// Preset names accepted by [`preset_config`].
pub const PRESETS: &[&str] = &["tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"];

/// Special-token ids of the tiny byte-level tokenizer (`model::tokenizer`): ids 0..255 are
/// bytes, then `<|endoftext|>` 256, `<|im_start|>` 257, `<|im_end|>` 258,
/// `<|vision_start|>` 259, `<|vision_end|>` 260, `<|image_pad|>` 261, `<|video_pad|>` 262.
const TINY_TOKENS: TokenIds = TokenIds {
    image_token_id: 261,
    video_token_id: 262,
    vision_start_token_id: 259,
    vision_end_token_id: 260,
};

const QWEN_TOKENS: TokenIds = TokenIds {
    image_token_id: 151655,
    video_token_id: 151656,
    vision_start_token_id: 151652,
    vision_end_token_id: 151653,
};

fn vision(
    depth: usize,
    hidden: usize,
    heads: usize,
    inter: usize,
    full: Vec<usize>,
    out: usize,
) -> VisionConfig {
    VisionConfig {
        depth,
        hidden_size: hidden,
        intermediate_size: inter,
        num_heads: heads,
        in_channels: 3,
        patch_size: 14,
        spatial_merge_size: 2,
        temporal_patch_size: 2,
        window_size: 112,
        out_hidden_size: out,
        fullatt_block_indexes: full,
        hidden_act: Activation::Silu,
        tokens_per_second: 2.0,
        initializer_range: 0.02,
    }
}

#[allow(clippy::too_many_arguments)]
fn text(
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    section: [usize; 3],
    tie: bool,
) -> TextConfig {
    TextConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        mrope_section: section,
        hidden_act: Activation::Silu,
        initializer_range: 0.02,
        tie_word_embeddings: tie,
    }
}

/// Configuration of a built-in preset.
pub fn preset_config(name: &str) -> Result<ModelConfig, ModelError> {
    let cfg = match name {
        "tiny" => ModelConfig {
            text: text(320, 128, 256, 4, 4, 2, [4, 6, 6], false),
            vision: vision(4, 64, 2, 128, vec![1, 3], 128),
            tokens: TINY_TOKENS,
        },
        "qwen2.5-vl-3b" => ModelConfig {
            text: text(151936, 2048, 11008, 36, 16, 2, [16, 24, 24], true),
            vision: vision(32, 1280, 16, 3420, vec![7, 15, 23, 31], 2048),
            tokens: QWEN_TOKENS,
        },
        "qwen2.5-vl-7b" => ModelConfig {
            text: text(152064, 3584, 18944, 28, 28, 4, [16, 24, 24], false),
            vision: vision(32, 1280, 16, 3420, vec![7, 15, 23, 31], 3584),
            tokens: QWEN_TOKENS,
        },
        other => return Err(ModelError::UnknownPreset(other.to_string())),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A preset as a hub-style `config.json` (flat text keys, `vision_config`, `rope_scaling`), e.g.
/// for the PyTorch baseline benchmark or an exported merged model.
pub fn to_hf_json(cfg: &ModelConfig) -> serde_json::Value {
    let t = &cfg.text;
    let v = &cfg.vision;
    let act = |a: Activation| match a {
        Activation::Silu => "silu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    serde_json::json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "hidden_act": act(t.hidden_act),
        "initializer_range": t.initializer_range,
        "tie_word_embeddings": t.tie_word_embeddings,
        "rope_scaling": {"type": "mrope", "mrope_section": t.mrope_section},
        "image_token_id": cfg.tokens.image_token_id,
        "video_token_id": cfg.tokens.video_token_id,
        "vision_start_token_id": cfg.tokens.vision_start_token_id,
        "vision_end_token_id": cfg.tokens.vision_end_token_id,
        "vision_config": {
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size,
            "fullatt_block_indexes": v.fullatt_block_indexes,
            "hidden_act": act(v.hidden_act),
            // transformers declares it `int` and (5.x, strict configs) rejects 2.0.
            "tokens_per_second": v.tokens_per_second.round() as u64,
            "initializer_range": v.initializer_range,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_round_trip() {
        for name in PRESETS {
            let c = preset_config(name).unwrap();
            assert_eq!(
                ModelConfig::from_hf_json(&to_hf_json(&c)).unwrap(),
                c,
                "{name}"
            );
        }
        assert!(matches!(
            preset_config("huge"),
            Err(ModelError::UnknownPreset(_))
        ));
    }
}
