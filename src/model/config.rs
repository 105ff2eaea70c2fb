//! Qwen2.5-VL configuration, parsed from every `config.json` shape in circulation:
//!
//! - hub files (transformers < 4.52): text keys at the top level, `vision_config`,
//!   `rope_scaling: {type|rope_type: "mrope", mrope_section}`;
//! - 4.52+ `save_pretrained`: text keys nested under `text_config` (rope type rewritten to
//!   `"default"`);
//! - 5.x: `rope_parameters: {rope_type, rope_theta, mrope_section}`.
//!
//! Missing keys take the *class* defaults of transformers 4.57
//! `models/qwen2_5_vl/configuration_qwen2_5_vl.py` (`Qwen2_5_VLTextConfig`,
//! `Qwen2_5_VLVisionConfig`, `Qwen2_5_VLConfig`), which are not the 7B values (e.g. text
//! `rms_norm_eps` defaults to 1e-5, vision `hidden_size` to 3584).

use serde_json::{Map, Value};

use super::ModelError;

/// Text decoder (Qwen2) hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies per M-RoPE section (t, h, w); sums to `head_dim / 2`.
    pub mrope_section: [usize; 3],
    pub hidden_act: Activation,
    pub initializer_range: f64,
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Vision encoder (ViT with window attention) hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub window_size: usize,
    pub out_hidden_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub hidden_act: Activation,
    pub tokens_per_second: f64,
    pub initializer_range: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Values per pixel row: C · T · p · p (1176 for Qwen2.5-VL).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Patches merged into one LLM token (4).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

/// Special token ids the model itself needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenIds {
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

/// Whole model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
}

/// MLP activations found in Qwen2/Qwen2.5-VL configs (transformers `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    GeluTanh,
}

impl Activation {
    fn parse(name: &str, field: &str) -> Result<Self, ModelError> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            other => Err(ModelError::Config(format!(
                "{field} = {other:?} is not supported (valid: silu, gelu, gelu_pytorch_tanh)"
            ))),
        }
    }
}

/// Reads keys of one JSON object with typed accessors and class defaults.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Obj<'a> {
    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, v, "an unsigned integer")),
        }
    }
    fn f64(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, v, "a number")),
        }
    }
    fn bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, v, "a boolean")),
        }
    }
    fn str(&self, key: &str, default: &'a str) -> Result<&'a str, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, v, "a string")),
        }
    }
    fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.bad(key, v, "a list of integers"))?;
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .map(|u| u as usize)
                    .ok_or_else(|| self.bad(key, v, "a list of integers"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    fn bad(&self, key: &str, v: &Value, what: &str) -> ModelError {
        ModelError::Config(format!("{} = {v} must be {what}", self.field(key)))
    }
}

/// A shallower copy of a model: the first `layers` decoder layers and `vision_blocks` ViT
/// blocks (`None` keeps all), for benchmarks at real widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub layers: Option<usize>,
    pub vision_blocks: Option<usize>,
}

impl ModelConfig {
    /// This config cut to `depth`. A cut ViT keeps at least one full-attention block: when
    /// none of the kept blocks is one, the last kept block becomes one (Qwen2.5-VL's first is
    /// block 7).
    pub fn with_depth(mut self, depth: Depth) -> Result<Self, ModelError> {
        let check = |n: usize, max: usize, what: &str| {
            if n == 0 || n > max {
                Err(ModelError::Config(format!(
                    "{what} {n}: must be between 1 and {max} (the model's depth)"
                )))
            } else {
                Ok(n)
            }
        };
        if let Some(n) = depth.layers {
            self.text.num_hidden_layers = check(n, self.text.num_hidden_layers, "layers")?;
        }
        if let Some(m) = depth.vision_blocks {
            let v = &mut self.vision;
            v.depth = check(m, v.depth, "vision blocks")?;
            v.fullatt_block_indexes.retain(|&i| i < m);
            if v.fullatt_block_indexes.is_empty() {
                v.fullatt_block_indexes.push(m - 1);
            }
        }
        Ok(self)
    }

    /// Whether a hub checkpoint key belongs to a layer or block that `self` (a cut) drops.
    pub fn drops_key(&self, key: &str) -> bool {
        let index_after = |prefix: &str| {
            key.strip_prefix(prefix)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
        };
        index_after("model.layers.").is_some_and(|i| i >= self.text.num_hidden_layers)
            || index_after("visual.blocks.").is_some_and(|i| i >= self.vision.depth)
    }

    /// Read `dir/config.json` (a Hugging Face model folder).
    pub fn from_dir(dir: &std::path::Path) -> Result<ModelConfig, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: invalid JSON: {e}", path.display())))?;
        ModelConfig::from_hf_json(&json)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse a Qwen2.5-VL `config.json` in any of its shapes (see module docs).
    pub fn from_hf_json(json: &Value) -> Result<ModelConfig, ModelError> {
        let root = json
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json must be a JSON object".into()))?;
        let top = Obj {
            map: root,
            prefix: "",
        };
        let model_type = top.str("model_type", "")?;
        if model_type != "qwen2_5_vl" {
            return Err(ModelError::Config(format!(
                "model_type = {model_type:?} is not supported (valid: \"qwen2_5_vl\")"
            )));
        }
        // Nested `text_config` (4.52+) or flat text keys at the top level (hub files).
        let text_obj = match root.get("text_config").filter(|v| !v.is_null()) {
            Some(v) => Obj {
                map: v.as_object().ok_or_else(|| {
                    ModelError::Config("text_config must be a JSON object".into())
                })?,
                prefix: "text_config.",
            },
            None => Obj {
                map: root,
                prefix: "",
            },
        };
        let empty = Map::new();
        let vision_obj = match root.get("vision_config").filter(|v| !v.is_null()) {
            Some(v) => Obj {
                map: v.as_object().ok_or_else(|| {
                    ModelError::Config("vision_config must be a JSON object".into())
                })?,
                prefix: "vision_config.",
            },
            None => Obj {
                map: &empty,
                prefix: "vision_config.",
            },
        };
        let text = parse_text(&text_obj, &top)?;
        let vision = parse_vision(&vision_obj)?;
        let tokens = TokenIds {
            image_token_id: top.usize("image_token_id", 151655)? as u32,
            video_token_id: top.usize("video_token_id", 151656)? as u32,
            vision_start_token_id: top.usize("vision_start_token_id", 151652)? as u32,
            vision_end_token_id: top.usize("vision_end_token_id", 151653)? as u32,
        };
        let cfg = ModelConfig {
            text,
            vision,
            tokens,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Shape rules the forward pass relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let t = &self.text;
        let v = &self.vision;
        let err = |m: String| Err(ModelError::Config(m));
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return err(format!(
                "hidden_size {} must be divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if t.mrope_section.iter().sum::<usize>() * 2 != t.head_dim() {
            return err(format!(
                "mrope_section {:?} must sum to head_dim/2 = {}",
                t.mrope_section,
                t.head_dim() / 2
            ));
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !v.head_dim().is_multiple_of(4)
        {
            return err(format!(
                "vision hidden_size {} / num_heads {} must give a head_dim divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return err(format!(
                "vision_config.out_hidden_size {} must equal the text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        let unit = v.spatial_merge_size * v.patch_size;
        if v.spatial_merge_size == 0
            || unit == 0
            || !v.window_size.is_multiple_of(unit)
            || v.window_size == 0
        {
            return err(format!(
                "vision window_size {} must be a positive multiple of patch_size·spatial_merge_size = {unit}",
                v.window_size
            ));
        }
        if let Some(&i) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return err(format!(
                "vision fullatt_block_indexes contains {i} ≥ depth {}",
                v.depth
            ));
        }
        Ok(())
    }
}

/// `Qwen2_5_VLTextConfig` class defaults; `top` supplies `tie_word_embeddings` when the
/// nested text config lacks it.
fn parse_text(o: &Obj, top: &Obj) -> Result<TextConfig, ModelError> {
    let heads = o.usize("num_attention_heads", 64)?;
    let hidden = o.usize("hidden_size", 8192)?;
    // num_key_value_heads = None means multi-head attention.
    let kv = match o.get("num_key_value_heads") {
        None => {
            if o.map.contains_key("num_key_value_heads") {
                heads
            } else {
                8
            }
        }
        Some(_) => o.usize("num_key_value_heads", 8)?,
    };
    let (rope_theta, mrope_section) = parse_rope(o)?;
    let tie = match o.bool("tie_word_embeddings")? {
        Some(b) => b,
        None => top.bool("tie_word_embeddings")?.unwrap_or(false),
    };
    Ok(TextConfig {
        vocab_size: o.usize("vocab_size", 152064)?,
        hidden_size: hidden,
        intermediate_size: o.usize("intermediate_size", 29568)?,
        num_hidden_layers: o.usize("num_hidden_layers", 80)?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        rms_norm_eps: o.f64("rms_norm_eps", 1e-5)?,
        rope_theta,
        mrope_section,
        hidden_act: Activation::parse(o.str("hidden_act", "silu")?, &o.field("hidden_act"))?,
        initializer_range: o.f64("initializer_range", 0.02)?,
        tie_word_embeddings: tie,
    })
}

/// `rope_scaling` (≤ 4.57) or `rope_parameters` (5.x): only M-RoPE without scaling.
fn parse_rope(o: &Obj) -> Result<(f64, [usize; 3]), ModelError> {
    let (key, params) = match (o.get("rope_parameters"), o.get("rope_scaling")) {
        (Some(p), _) => ("rope_parameters", p),
        (None, Some(s)) => ("rope_scaling", s),
        (None, None) => {
            return Err(ModelError::Config(format!(
                "{} is missing: Qwen2.5-VL needs mrope_section (e.g. [16, 24, 24])",
                o.field("rope_scaling")
            )));
        }
    };
    let field = o.field(key);
    let map = params
        .as_object()
        .ok_or_else(|| ModelError::Config(format!("{field} must be a JSON object")))?;
    let p = Obj { map, prefix: "" };
    let kind = match p.get("rope_type").or_else(|| p.get("type")) {
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| {
            ModelError::Config(format!("{field}.rope_type = {v} must be a string"))
        })?,
    };
    if kind != "default" && kind != "mrope" {
        return Err(ModelError::Config(format!(
            "{field}.rope_type = {kind:?} is not supported (valid: \"mrope\", \"default\")"
        )));
    }
    if p.bool("mrope_interleaved")?.unwrap_or(false) {
        return Err(ModelError::Config(format!(
            "{field}.mrope_interleaved = true is Qwen3-VL's layout, not Qwen2.5-VL's"
        )));
    }
    let section = p.usize_list("mrope_section")?.ok_or_else(|| {
        ModelError::Config(format!(
            "{field}.mrope_section is missing (e.g. [16, 24, 24])"
        ))
    })?;
    let section: [usize; 3] = section.as_slice().try_into().map_err(|_| {
        ModelError::Config(format!(
            "{field}.mrope_section = {section:?} must have 3 entries"
        ))
    })?;
    let theta = match p.get("rope_theta") {
        Some(_) => p.f64("rope_theta", 1e6)?,
        None => o.f64("rope_theta", 1e6)?,
    };
    Ok((theta, section))
}

/// `Qwen2_5_VLVisionConfig` class defaults.
fn parse_vision(o: &Obj) -> Result<VisionConfig, ModelError> {
    // Hub files spell it `in_chans`; transformers ignores that key and uses 3.
    let in_channels = match o.get("in_channels") {
        Some(_) => o.usize("in_channels", 3)?,
        None => o.usize("in_chans", 3)?,
    };
    Ok(VisionConfig {
        depth: o.usize("depth", 32)?,
        hidden_size: o.usize("hidden_size", 3584)?,
        intermediate_size: o.usize("intermediate_size", 3420)?,
        num_heads: o.usize("num_heads", 16)?,
        in_channels,
        patch_size: o.usize("patch_size", 14)?,
        spatial_merge_size: o.usize("spatial_merge_size", 2)?,
        temporal_patch_size: o.usize("temporal_patch_size", 2)?,
        window_size: o.usize("window_size", 112)?,
        out_hidden_size: o.usize("out_hidden_size", 3584)?,
        fullatt_block_indexes: o
            .usize_list("fullatt_block_indexes")?
            .unwrap_or_else(|| vec![7, 15, 23, 31]),
        hidden_act: Activation::parse(o.str("hidden_act", "silu")?, &o.field("hidden_act"))?,
        tokens_per_second: o.f64("tokens_per_second", 4.0)?,
        initializer_range: o.f64("initializer_range", 0.02)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_cut_keeps_a_full_attention_block() {
        let cfg = crate::model::presets::preset_config("qwen2.5-vl-7b").unwrap();
        let cut = |layers, vision_blocks| {
            cfg.clone().with_depth(Depth {
                layers,
                vision_blocks,
            })
        };
        let c = cut(Some(2), Some(4)).unwrap();
        assert_eq!((c.text.num_hidden_layers, c.vision.depth), (2, 4));
        // None of blocks 0..4 is full attention in Qwen2.5-VL: the last kept one becomes one.
        assert_eq!(c.vision.fullatt_block_indexes, vec![3]);
        let c = cut(None, Some(16)).unwrap();
        assert_eq!(c.vision.fullatt_block_indexes, vec![7, 15]);
        assert_eq!(c.text.num_hidden_layers, 28);
        assert_eq!(cut(None, None).unwrap(), cfg);
        for bad in [cut(Some(0), None), cut(Some(29), None), cut(None, Some(33))] {
            assert!(
                bad.unwrap_err()
                    .to_string()
                    .contains("must be between 1 and")
            );
        }
        let c = cut(Some(2), Some(4)).unwrap();
        assert!(c.drops_key("model.layers.2.mlp.up_proj.weight"));
        assert!(!c.drops_key("model.layers.1.mlp.up_proj.weight"));
        assert!(c.drops_key("visual.blocks.4.norm1.weight"));
        assert!(!c.drops_key("visual.blocks.3.norm1.weight"));
        assert!(!c.drops_key("visual.merger.mlp.0.weight") && !c.drops_key("model.norm.weight"));
    }

    fn hub_7b() -> Value {
        json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "vocab_size": 152064, "tie_word_embeddings": false,
            "image_token_id": 151655, "video_token_id": 151656,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
        })
    }

    #[test]
    fn flat_hub_config() {
        let c = ModelConfig::from_hf_json(&hub_7b()).unwrap();
        assert_eq!(c.text.hidden_size, 3584);
        assert_eq!(c.text.head_dim(), 128);
        assert_eq!(c.text.mrope_section, [16, 24, 24]);
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.vision.head_dim(), 80);
        assert_eq!(c.vision.patch_dim(), 1176);
        assert!(!c.text.tie_word_embeddings);
    }

    #[test]
    fn nested_and_rope_parameters_shapes() {
        let nested = json!({
            "model_type": "qwen2_5_vl",
            "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                "tie_word_embeddings": true,
                "rope_scaling": {"rope_type": "default", "type": "default", "mrope_section": [16, 24, 24]}},
            "vision_config": {"hidden_size": 1280, "out_hidden_size": 2048}
        });
        let c = ModelConfig::from_hf_json(&nested).unwrap();
        assert!(c.text.tie_word_embeddings);
        // Class defaults where keys are missing.
        assert_eq!(c.text.rms_norm_eps, 1e-5);
        assert_eq!(c.vision.depth, 32);
        assert_eq!(c.vision.tokens_per_second, 4.0);
        let v5 = json!({
            "model_type": "qwen2_5_vl",
            "text_config": {"hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [16, 24, 24]}},
            "vision_config": {"hidden_size": 1280, "out_hidden_size": 2048}
        });
        let c = ModelConfig::from_hf_json(&v5).unwrap();
        assert_eq!(c.text.rope_theta, 5e5);
    }

    #[test]
    fn errors_name_the_field() {
        let mut bad = hub_7b();
        bad["model_type"] = json!("llava");
        let e = ModelConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("llava") && e.contains("qwen2_5_vl"), "{e}");
        let mut bad = hub_7b();
        bad["rope_scaling"] = json!({"type": "yarn", "mrope_section": [16, 24, 24]});
        let e = ModelConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("yarn"),
            "{e}"
        );
        let mut bad = hub_7b();
        bad["hidden_size"] = json!("big");
        let e = ModelConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
