//! Model FLOPs of one sample, for MFU.
//!
//! Forward: 2 FLOPs per multiply-add of every linear layer (base and LoRA branch), the patch
//! embedding and the merger, plus attention `QKᵀ` and `PV` (2·2·len²·head_dim per head):
//! full per window / full-attention segment in the ViT, causal (s(s+1)/2 pairs) in the LLM.
//! Norms, activations, rotary and softmax are left out (≪ 1%).
//!
//! Train = 3 × forward, the usual "6·N·T" model-FLOPs convention (forward, input gradients,
//! weight gradients), so MFU compares with published numbers. With a frozen base the weight
//! gradients of the base are never computed: the work actually executed is ≈ 2 × forward, so
//! hardware utilisation ≈ ⅔ of the reported train MFU.

use crate::model::config::ModelConfig;
use crate::model::vision::window_index;

/// Forward FLOPs of one sample: an image of `grid` patches in a sequence of `seq` tokens, LoRA
/// rank `r` on every LLM linear and, when `vit_lora`, every ViT block linear.
pub fn forward_flops(
    cfg: &ModelConfig,
    grid: [usize; 3],
    seq: usize,
    r: usize,
    vit_lora: bool,
    num_labels: usize,
) -> f64 {
    let v = &cfg.vision;
    let n = grid.iter().product::<usize>() as f64;
    let c = v.hidden_size as f64;
    let i = v.intermediate_size as f64;
    let rf = r as f64;
    // (in, out) of each adapted ViT block linear: qkv, proj, gate, up, down.
    let vit_linears = [(c, 3.0 * c), (c, c), (c, i), (c, i), (i, c)];
    let vit_block: f64 = vit_linears.iter().map(|(a, b)| a * b).sum::<f64>() * 2.0 * n;
    let vit_lora_block = if vit_lora {
        vit_linears.iter().map(|(a, b)| rf * (a + b)).sum::<f64>() * 2.0 * n
    } else {
        0.0
    };
    let (_, cu) = window_index(&[grid], v);
    let window_sq: f64 = cu.windows(2).map(|w| ((w[1] - w[0]) as f64).powi(2)).sum();
    let full_sq: f64 = grid[0] as f64 * ((grid[1] * grid[2]) as f64).powi(2);
    let attn = |sq: f64| 4.0 * sq * c;
    let n_full = v.fullatt_block_indexes.len().min(v.depth) as f64;
    let n_win = v.depth as f64 - n_full;
    let merged = n / v.merge_unit() as f64;
    let m = c * v.merge_unit() as f64;
    let vision = 2.0 * n * v.patch_dim() as f64 * c
        + v.depth as f64 * (vit_block + vit_lora_block)
        + n_win * attn(window_sq)
        + n_full * attn(full_sq)
        + 2.0 * merged * (m * m + m * v.out_hidden_size as f64);

    let t = &cfg.text;
    let s = seq as f64;
    let h = t.hidden_size as f64;
    let hd = t.head_dim() as f64;
    let q = t.num_attention_heads as f64 * hd;
    let kv = t.num_key_value_heads as f64 * hd;
    let ti = t.intermediate_size as f64;
    let llm_linears = [(h, q), (h, kv), (h, kv), (q, h), (h, ti), (h, ti), (ti, h)];
    let layer = 2.0 * s * llm_linears.iter().map(|(a, b)| a * b).sum::<f64>()
        + 2.0 * s * llm_linears.iter().map(|(a, b)| rf * (a + b)).sum::<f64>()
        + 2.0 * q * s * (s + 1.0);
    vision + t.num_hidden_layers as f64 * layer + 2.0 * h * num_labels as f64
}

/// Parameters of the base classifier (no adapters, no `lm_head`, score with 11 labels):
/// sizes host-memory checks before a model is built.
pub fn param_count(cfg: &ModelConfig) -> usize {
    let v = &cfg.vision;
    let (c, i) = (v.hidden_size, v.intermediate_size);
    let lin = |a: usize, b: usize, bias: bool| a * b + if bias { b } else { 0 };
    let block =
        lin(c, 3 * c, true) + lin(c, c, true) + 2 * lin(c, i, true) + lin(i, c, true) + 2 * c;
    let m = c * v.merge_unit();
    let vision =
        c * v.patch_dim() + v.depth * block + c + lin(m, m, true) + lin(m, v.out_hidden_size, true);
    let t = &cfg.text;
    let h = t.hidden_size;
    let q = t.num_attention_heads * t.head_dim();
    let kv = t.num_key_value_heads * t.head_dim();
    let layer = lin(h, q, true)
        + 2 * lin(h, kv, true)
        + lin(q, h, false)
        + 3 * h * t.intermediate_size
        + 2 * h;
    vision + t.vocab_size * h + t.num_hidden_layers * layer + h + 11 * h
}

/// Train-step FLOPs of one sample under the 3 × forward convention (module doc).
pub fn train_flops(forward: f64) -> f64 {
    3.0 * forward
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    #[test]
    fn seven_b_workload_is_dominated_by_2_params_tokens() {
        let cfg = preset_config("qwen2.5-vl-7b").unwrap();
        let f = forward_flops(&cfg, [1, 64, 80], 1401, 32, true, 11);
        // Linear weights: LLM 28 layers × 233.0M ≈ 6.53B over 1401 tokens; ViT 32 blocks ×
        // 19.66M ≈ 629M over 5120 patches; merger 45.9M over 1280 tokens.
        let llm =
            2.0 * 1401.0 * 28.0 * (3584.0 * (3584.0 * 2.0 + 512.0 * 2.0) + 3.0 * 3584.0 * 18944.0);
        let vit = 2.0 * 5120.0 * 32.0 * (4.0 * 1280.0 * 1280.0 + 3.0 * 1280.0 * 3420.0);
        let base = llm + vit;
        assert!(f > base && f < 1.15 * base, "{f:e} vs {base:e}");
        // 26.2969 TFLOP per forward (same formula evaluated independently in Python).
        assert!((f / 1e12 - 26.2969).abs() < 1e-3, "{}", f / 1e12);
        assert_eq!(train_flops(1.0), 3.0);
    }

    #[test]
    fn param_count_matches_the_model() {
        use crate::model::{WeightsSource, load_classifier_from};
        let m = load_classifier_from::<burn::backend::Flex>(
            WeightsSource::Preset("tiny"),
            11,
            burn::tensor::DType::F32,
            0,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(param_count(m.config()), m.total_params());
        // Qwen2.5-VL-7B without lm_head: 8.29B - 0.545B.
        let seven = param_count(&preset_config("qwen2.5-vl-7b").unwrap());
        assert!((7.74e9..7.76e9).contains(&(seven as f64)), "{seven}");
    }

    #[test]
    fn lora_and_attention_terms_count() {
        let cfg = preset_config("tiny").unwrap();
        let with = forward_flops(&cfg, [1, 8, 8], 57, 16, true, 11);
        let no_vit = forward_flops(&cfg, [1, 8, 8], 57, 16, false, 11);
        // ViT LoRA: 4 blocks × 64 patches × 2·16·(in+out) summed over qkv/proj/gate/up/down.
        let vit_lora = 4.0 * 64.0 * 2.0 * 16.0 * ((64.0 + 192.0) + 128.0 + 3.0 * (64.0 + 128.0));
        assert!((with - no_vit - vit_lora).abs() < 1.0);
        let longer = forward_flops(&cfg, [1, 8, 8], 58, 16, true, 11);
        assert!(longer > with);
    }
}
