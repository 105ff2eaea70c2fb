//! Model FLOPs of one sample, for MFU: the work a train step and an eval forward execute.
//!
//! Forward: 2 FLOPs per multiply-add of every linear layer (base and LoRA branch), the patch
//! embedding and the merger, plus attention `QKᵀ` and `PV` (2·2·len²·head_dim per head):
//! full per window / full-attention segment in the ViT, causal (s(s+1)/2 pairs) in the LLM.
//! Norms, activations, rotary and softmax are left out (≪ 1%).
//!
//! Backward, counted as executed with a frozen base (autodiff skips gradients nobody needs):
//! - a frozen linear computes only its input gradient `dY·W` (1× its forward), and none when
//!   its input needs no gradient (the patch embedding, the first block's / layer's `qkv`
//!   when nothing before it is trained);
//! - a LoRA branch computes `dB`, `dA` and the gradient through `B` (and through `A` when the
//!   input needs one): 2× its forward;
//! - attention computes `dQ`, `dK` (from the scores) and `dP`, `dV`: 2× its forward;
//! - the score head computes `dW` and `dx`: 2× its forward;
//! - with the ViT frozen (`vit_lora` false) nothing in the vision tower is differentiated.
//!
//! So a train step is ≈ 2× the forward (not the "6·N·T" 3×, which assumes every weight is
//! trained); PyTorch executes the same work, and MFU on both sides uses this count.

use crate::model::config::ModelConfig;
use crate::model::vision::window_index;

/// Forward and backward FLOPs, accumulated layer by layer.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StepFlops {
    pub forward: f64,
    pub backward: f64,
}

impl StepFlops {
    /// One train step: forward + backward.
    pub fn train(&self) -> f64 {
        self.forward + self.backward
    }

    /// A frozen linear `[tokens, d_in] → [tokens, d_out]` with a rank-`r` LoRA branch (none
    /// when `r` is 0); `input_grad`: its input needs a gradient.
    fn linear(&mut self, tokens: f64, (d_in, d_out): (f64, f64), r: f64, input_grad: bool) {
        let base = 2.0 * tokens * d_in * d_out;
        let (a, b) = (2.0 * tokens * r * d_in, 2.0 * tokens * r * d_out);
        self.forward += base + a + b;
        if r > 0.0 {
            // dB and the gradient through B (each `b`), dA (`a`).
            self.backward += 2.0 * b + a;
        }
        if input_grad {
            // dX through the frozen base and through A.
            self.backward += base + a;
        }
    }

    /// Attention products of `flops` forward FLOPs (backward 2× when `grad`).
    fn attention(&mut self, flops: f64, grad: bool) {
        self.forward += flops;
        if grad {
            self.backward += 2.0 * flops;
        }
    }
}

/// FLOPs of one sample: an image of `grid` patches in a sequence of `seq` tokens, LoRA rank
/// `r` on every LLM linear and, when `vit_lora`, every ViT block linear; score head trained.
pub fn step_flops(
    cfg: &ModelConfig,
    grid: [usize; 3],
    seq: usize,
    r: usize,
    vit_lora: bool,
    num_labels: usize,
) -> StepFlops {
    let mut f = StepFlops::default();
    let v = &cfg.vision;
    let n = grid.iter().product::<usize>() as f64;
    let c = v.hidden_size as f64;
    let i = v.intermediate_size as f64;
    let rf = r as f64;
    let vr = if vit_lora { rf } else { 0.0 };
    f.linear(n, (v.patch_dim() as f64, c), 0.0, false);
    let (_, cu) = window_index(&[grid], v);
    let window_sq: f64 = cu.windows(2).map(|w| ((w[1] - w[0]) as f64).powi(2)).sum();
    let full_sq: f64 = grid[0] as f64 * ((grid[1] * grid[2]) as f64).powi(2);
    for block in 0..v.depth {
        // The first block's input (the patch embedding) needs no gradient.
        let input_grad = vit_lora && block > 0;
        f.linear(n, (c, 3.0 * c), vr, input_grad);
        let sq = if v.fullatt_block_indexes.contains(&block) {
            full_sq
        } else {
            window_sq
        };
        f.attention(4.0 * sq * c, vit_lora);
        f.linear(n, (c, c), vr, vit_lora);
        f.linear(n, (c, i), vr, vit_lora);
        f.linear(n, (c, i), vr, vit_lora);
        f.linear(n, (i, c), vr, vit_lora);
    }
    let merged = n / v.merge_unit() as f64;
    let m = c * v.merge_unit() as f64;
    f.linear(merged, (m, m), 0.0, vit_lora);
    f.linear(merged, (m, v.out_hidden_size as f64), 0.0, vit_lora);

    let t = &cfg.text;
    let s = seq as f64;
    let h = t.hidden_size as f64;
    let hd = t.head_dim() as f64;
    let q = t.num_attention_heads as f64 * hd;
    let kv = t.num_key_value_heads as f64 * hd;
    let ti = t.intermediate_size as f64;
    for layer in 0..t.num_hidden_layers {
        // The embeddings need a gradient only through the image features.
        let input_grad = vit_lora || layer > 0;
        for d_out in [q, kv, kv] {
            f.linear(s, (h, d_out), rf, input_grad);
        }
        f.attention(2.0 * q * s * (s + 1.0), true);
        f.linear(s, (q, h), rf, true);
        f.linear(s, (h, ti), rf, true);
        f.linear(s, (h, ti), rf, true);
        f.linear(s, (ti, h), rf, true);
    }
    // Score head (trained, on the last token): dW and dx.
    let score = 2.0 * h * num_labels as f64;
    f.forward += score;
    f.backward += 2.0 * score;
    f
}

/// Forward FLOPs of one sample (see [`step_flops`]).
pub fn forward_flops(
    cfg: &ModelConfig,
    grid: [usize; 3],
    seq: usize,
    r: usize,
    vit_lora: bool,
    num_labels: usize,
) -> f64 {
    step_flops(cfg, grid, seq, r, vit_lora, num_labels).forward
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::footprint::param_count;
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
    }

    /// Backward of a frozen base ≈ 1× its forward: a train step is ≈ 2× the forward, a bit
    /// more for the LoRA and attention terms (2×), a bit less for the patch embedding (0×).
    #[test]
    fn train_is_about_twice_the_forward_with_a_frozen_base() {
        let cfg = preset_config("qwen2.5-vl-7b").unwrap();
        let s = step_flops(&cfg, [1, 64, 80], 1401, 32, true, 11);
        let ratio = s.train() / s.forward;
        assert!((2.0..2.1).contains(&ratio), "{ratio}");
        let frozen = step_flops(&cfg, [1, 64, 80], 1401, 32, false, 11);
        assert!(frozen.train() < s.train());
    }

    /// Every backward term of the tiny preset, by hand.
    #[test]
    fn backward_terms_by_hand() {
        let cfg = preset_config("tiny").unwrap();
        let (v, t) = (&cfg.vision, &cfg.text);
        let (c, i) = (v.hidden_size as f64, v.intermediate_size as f64);
        assert_eq!((c, i, v.depth), (64.0, 128.0, 4));
        let (h, ti, layers) = (
            t.hidden_size as f64,
            t.intermediate_size as f64,
            t.num_hidden_layers,
        );
        let q = (t.num_attention_heads * t.head_dim()) as f64;
        let kv = (t.num_key_value_heads * t.head_dim()) as f64;
        let (n, s, r) = (64.0, 57.0, 16.0);
        let text_linears = [(h, q), (h, kv), (h, kv), (q, h), (h, ti), (h, ti), (ti, h)];
        let base =
            |l: &[(f64, f64)], tok: f64| -> f64 { l.iter().map(|(a, b)| 2.0 * tok * a * b).sum() };
        let lora_a =
            |l: &[(f64, f64)], tok: f64| -> f64 { l.iter().map(|(a, _)| 2.0 * tok * r * a).sum() };
        let lora_b =
            |l: &[(f64, f64)], tok: f64| -> f64 { l.iter().map(|(_, b)| 2.0 * tok * r * b).sum() };
        let text_attn = 2.0 * q * s * (s + 1.0);
        // ViT frozen: vision has no backward; layer 0's q/k/v have no input gradient.
        let frozen = step_flops(&cfg, [1, 8, 8], 57, 16, false, 11);
        let qkv = &text_linears[..3];
        // Per linear with an input gradient: dX through the base; dB and dH through B
        // (2 × b); dA and dX through A (2 × a).
        let per_layer = base(&text_linears, s)
            + 2.0 * lora_a(&text_linears, s)
            + 2.0 * lora_b(&text_linears, s)
            + 2.0 * text_attn;
        let want = layers as f64 * per_layer - base(qkv, s) - lora_a(qkv, s) + 2.0 * 2.0 * h * 11.0;
        assert!(
            (frozen.backward - want).abs() < 1.0,
            "{} vs {want}",
            frozen.backward
        );
        // ViT LoRA on: every vision linear but the patch embedding (and block 0's qkv input)
        // adds its input gradient and its LoRA terms; attention 2×; merger 1×.
        let with = step_flops(&cfg, [1, 8, 8], 57, 16, true, 11);
        let vit_linears = [(c, 3.0 * c), (c, c), (c, i), (c, i), (i, c)];
        let (_, cu) = window_index(&[[1, 8, 8]], v);
        let sq: f64 = cu.windows(2).map(|w| ((w[1] - w[0]) as f64).powi(2)).sum();
        let full = 64.0f64 * 64.0;
        let attn: f64 = (0..4)
            .map(|b| {
                4.0 * c
                    * if v.fullatt_block_indexes.contains(&b) {
                        full
                    } else {
                        sq
                    }
            })
            .sum();
        let m = 4.0 * c;
        let merger = 2.0 * 16.0 * (m * m + m * v.out_hidden_size as f64);
        let vit_first = &vit_linears[..1];
        let vision = 4.0
            * (base(&vit_linears, n)
                + 2.0 * lora_a(&vit_linears, n)
                + 2.0 * lora_b(&vit_linears, n))
            - base(vit_first, n)
            - lora_a(vit_first, n)
            + 2.0 * attn
            + merger;
        let text_gain = base(qkv, s) + lora_a(qkv, s);
        let diff = with.backward - frozen.backward;
        assert!(
            (diff - vision - text_gain).abs() < 1.0,
            "{diff} vs {}",
            vision + text_gain
        );
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
