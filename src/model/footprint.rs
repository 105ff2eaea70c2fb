//! What a model is made of, from its config alone: every linear layer with its shape (the
//! names `SeqClassifier::linear_names` reports, in the same order) and the parameter count
//! of the backbone. Plan-time checks use these to validate LoRA targets and ranks and to
//! estimate memory before any weight is loaded.

use super::config::ModelConfig;

/// One linear layer: `weight [d_out, d_in]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearShape {
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub bias: bool,
}

impl LinearShape {
    fn new(name: String, d_in: usize, d_out: usize, bias: bool) -> Self {
        LinearShape {
            name,
            d_in,
            d_out,
            bias,
        }
    }

    fn params(&self) -> u64 {
        (self.d_in * self.d_out + if self.bias { self.d_out } else { 0 }) as u64
    }
}

/// Every linear layer of the backbone (ViT blocks, merger, LLM layers; not `score`).
pub fn linear_shapes(cfg: &ModelConfig) -> Vec<LinearShape> {
    let mut out = Vec::new();
    let v = &cfg.vision;
    let c = v.hidden_size;
    for i in 0..v.depth {
        let k = format!("model.visual.blocks.{i}");
        out.push(LinearShape::new(format!("{k}.attn.qkv"), c, 3 * c, true));
        out.push(LinearShape::new(format!("{k}.attn.proj"), c, c, true));
        let inter = v.intermediate_size;
        out.push(LinearShape::new(
            format!("{k}.mlp.gate_proj"),
            c,
            inter,
            true,
        ));
        out.push(LinearShape::new(format!("{k}.mlp.up_proj"), c, inter, true));
        out.push(LinearShape::new(
            format!("{k}.mlp.down_proj"),
            inter,
            c,
            true,
        ));
    }
    let m = c * v.merge_unit();
    out.push(LinearShape::new(
        "model.visual.merger.mlp.0".into(),
        m,
        m,
        true,
    ));
    out.push(LinearShape::new(
        "model.visual.merger.mlp.2".into(),
        m,
        v.out_hidden_size,
        true,
    ));
    let t = &cfg.text;
    let (c, hd) = (t.hidden_size, t.head_dim());
    let (h, kv) = (t.num_attention_heads, t.num_key_value_heads);
    for i in 0..t.num_hidden_layers {
        let k = format!("model.language_model.layers.{i}");
        out.push(LinearShape::new(
            format!("{k}.self_attn.q_proj"),
            c,
            h * hd,
            true,
        ));
        out.push(LinearShape::new(
            format!("{k}.self_attn.k_proj"),
            c,
            kv * hd,
            true,
        ));
        out.push(LinearShape::new(
            format!("{k}.self_attn.v_proj"),
            c,
            kv * hd,
            true,
        ));
        out.push(LinearShape::new(
            format!("{k}.self_attn.o_proj"),
            h * hd,
            c,
            false,
        ));
        let inter = t.intermediate_size;
        out.push(LinearShape::new(
            format!("{k}.mlp.gate_proj"),
            c,
            inter,
            false,
        ));
        out.push(LinearShape::new(
            format!("{k}.mlp.up_proj"),
            c,
            inter,
            false,
        ));
        out.push(LinearShape::new(
            format!("{k}.mlp.down_proj"),
            inter,
            c,
            false,
        ));
    }
    out
}

/// Parameters of the base classifier (no adapters, no `lm_head`, score with 11 labels):
/// sizes host-memory checks before a model is built.
pub fn param_count(cfg: &ModelConfig) -> usize {
    backbone_params(cfg) as usize + 11 * cfg.text.hidden_size
}

/// Parameters of the backbone as loaded (no `lm_head`, no `score`).
pub fn backbone_params(cfg: &ModelConfig) -> u64 {
    let (v, t) = (&cfg.vision, &cfg.text);
    let linears: u64 = linear_shapes(cfg).iter().map(LinearShape::params).sum();
    let vision_other = v.hidden_size * v.patch_dim() // patch embedding
        + v.depth * 2 * v.hidden_size // norm1, norm2
        + v.hidden_size; // merger ln_q
    let text_other = t.vocab_size * t.hidden_size // embeddings
        + t.num_hidden_layers * 2 * t.hidden_size // two norms per layer
        + t.hidden_size; // final norm
    linears + (vision_other + text_other) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    #[test]
    fn seven_b_has_its_published_size() {
        // Qwen2.5-VL-7B-Instruct: 8.29 B parameters with the tied-off 0.54 B lm_head.
        let cfg = preset_config("qwen2.5-vl-7b").unwrap();
        let n = backbone_params(&cfg) as f64 / 1e9;
        let lm_head = (cfg.text.vocab_size * cfg.text.hidden_size) as f64 / 1e9;
        assert!((n + lm_head - 8.29).abs() < 0.01, "{n} + {lm_head}");
        let lin = linear_shapes(&cfg);
        assert_eq!(lin.len(), 32 * 5 + 2 + 28 * 7);
        let k = lin
            .iter()
            .find(|l| l.name.ends_with("layers.0.self_attn.k_proj"))
            .unwrap();
        assert_eq!((k.d_in, k.d_out), (3584, 512));
    }

    #[test]
    fn shapes_match_the_built_model() {
        use crate::model::{WeightsSource, load_classifier_from};
        use burn::module::Module;
        type B = crate::backend::CpuBackend;
        let m = load_classifier_from::<B>(
            WeightsSource::Preset("tiny"),
            3,
            burn::tensor::DType::F32,
            0,
            &Default::default(),
        )
        .unwrap();
        let mut built = Vec::new();
        let mut f = |n: &str, l: &crate::model::lora::LoraLinear<B>| {
            built.push((n.to_string(), l.in_features(), l.out_features()));
        };
        m.visual.visit_linears(&mut f);
        m.language_model.visit_linears(&mut f);
        let planned: Vec<(String, usize, usize)> = linear_shapes(&m.config)
            .into_iter()
            .map(|l| (l.name, l.d_in, l.d_out))
            .collect();
        assert_eq!(planned, built);
        let score = (3 * m.config.text.hidden_size) as u64;
        assert_eq!(backbone_params(&m.config) + score, m.num_params() as u64);
    }
}
