//! Qwen2.5-VL text decoder (transformers `Qwen2_5_VLTextModel`): pre-norm blocks with GQA
//! attention (q/k/v bias, no o bias), M-RoPE and a SwiGLU MLP without bias.

use burn::module::{Module, Param, ParamId};
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, backend::Backend};

use super::ModelError;
use super::config::TextConfig;
use super::layers::{Mlp, RmsNorm, apply_rotary};
use super::lora::{LinearMap, LinearVisit, LoraLinear};
use super::weights::{Init, ParamSource};

/// Rotary tables repeated per head, `[b, s, heads, head_dim]` for queries and
/// `[b, s, kv_heads, head_dim]` for keys (model dtype), contiguous: the rotation then runs
/// on same-shaped contiguous tensors, before the heads move in front of the sequence
/// (broadcast or transposed operands take a slow strided path on the CPU backend).
pub struct TextRope<B: Backend> {
    pub cos_q: Tensor<B, 4>,
    pub sin_q: Tensor<B, 4>,
    pub cos_k: Tensor<B, 4>,
    pub sin_k: Tensor<B, 4>,
}

impl<B: Backend> TextRope<B> {
    /// From host tables `[b, s, hd]` (f32, as `rope::mrope_cos_sin` returns them).
    pub fn new(
        (cos, sin): (&[f32], &[f32]),
        [b, s, hd]: [usize; 3],
        [heads, kv_heads]: [usize; 2],
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let per_head = |t: &[f32], n: usize| {
            let v: Vec<f32> = t
                .chunks(hd)
                .flat_map(|row| std::iter::repeat_n(row, n).flatten().copied())
                .collect();
            Tensor::<B, 4>::from_data(TensorData::new(v, [b, s, n, hd]), (device, DType::F32))
                .cast(dtype)
        };
        Self {
            cos_q: per_head(cos, heads),
            sin_q: per_head(sin, heads),
            cos_k: per_head(cos, kv_heads),
            sin_k: per_head(sin, kv_heads),
        }
    }
}

/// `Qwen2_5_VLAttention` (eager semantics: scale head_dim^-0.5, kv heads repeated).
#[derive(Module, Debug)]
pub struct TextAttention<B: Backend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

impl<B: Backend> TextAttention<B> {
    /// `x [b, s, hidden]`, `mask` `[b, heads, s, s]` (true = masked; `None` = causal
    /// only) → `[b, s, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &TextRope<B>,
        mask: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let [q, k, v] = self.qkv(x, rope);
        let n = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(k, n), repeat_kv(v, n));
        let opts = AttentionModuleOptions {
            is_causal: mask.is_none(),
            ..Default::default()
        };
        self.project(attention(q, k, v, mask.cloned(), None, opts))
    }

    /// Rotated queries `[b, heads, s, head_dim]`, keys and values `[b, kv_heads, s, head_dim]`
    /// of `x [b, s, hidden]`.
    pub fn qkv(&self, x: Tensor<B, 3>, rope: &TextRope<B>) -> [Tensor<B, 4>; 3] {
        let [b, s, hidden] = x.dims();
        let (h, kvh) = (self.num_heads, self.num_kv_heads);
        let hd = hidden / h;
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]);
        let q = split(self.q_proj.forward(x.clone()), h);
        let k = split(self.k_proj.forward(x.clone()), kvh);
        let v = split(self.v_proj.forward(x), kvh).swap_dims(1, 2);
        let q = apply_rotary(q, rope.cos_q.clone(), rope.sin_q.clone()).swap_dims(1, 2);
        let k = apply_rotary(k, rope.cos_k.clone(), rope.sin_k.clone()).swap_dims(1, 2);
        [q, k, v]
    }

    /// `o_proj` of the attention output `o [b, heads, s, head_dim]` → `[b, s, hidden]`.
    pub fn project(&self, o: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, h, s, hd] = o.dims();
        self.o_proj
            .forward(o.swap_dims(1, 2).reshape([b, s, h * hd]))
    }
}

/// `[b, kv, s, d]` → `[b, kv·n, s, d]`, kv head j serving query heads j·n..(j+1)·n.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n: usize) -> Tensor<B, 4> {
    if n == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, n, s, d])
        .reshape([b, kv * n, s, d])
}

/// `Qwen2_5_VLDecoderLayer`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: TextAttention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &TextRope<B>,
        mask: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, mask);
        self.mlp_block(x)
    }

    /// The attention's inputs (`TextAttention::qkv` of the normed `x`).
    pub fn attention_inputs(&self, x: Tensor<B, 3>, rope: &TextRope<B>) -> [Tensor<B, 4>; 3] {
        self.self_attn.qkv(self.input_layernorm.forward(x), rope)
    }

    /// The layer after its attention: `x + o_proj(o)`, then the MLP block.
    pub fn finish(&self, x: Tensor<B, 3>, o: Tensor<B, 4>) -> Tensor<B, 3> {
        self.mlp_block(x + self.self_attn.project(o))
    }

    fn mlp_block(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

impl<B: Backend> TextModel<B> {
    /// Build from hub keys under `model.`.
    pub fn load(src: &mut impl ParamSource<B>, cfg: &TextConfig) -> Result<Self, ModelError> {
        src.set_std(cfg.initializer_range);
        let c = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let embed = src.tensor::<2>(
            "model.embed_tokens.weight",
            [cfg.vocab_size, c],
            Init::Normal,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let k = format!("model.layers.{i}");
            let lin = |src: &mut _, name: &str, d_in, d_out, bias| {
                LoraLinear::load(src, &format!("{k}.{name}"), d_in, d_out, bias)
            };
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(
                    src,
                    &format!("{k}.input_layernorm"),
                    c,
                    cfg.rms_norm_eps,
                )?,
                self_attn: TextAttention {
                    q_proj: lin(src, "self_attn.q_proj", c, h * hd, true)?,
                    k_proj: lin(src, "self_attn.k_proj", c, kv * hd, true)?,
                    v_proj: lin(src, "self_attn.v_proj", c, kv * hd, true)?,
                    o_proj: lin(src, "self_attn.o_proj", h * hd, c, false)?,
                    num_heads: h,
                    num_kv_heads: kv,
                },
                post_attention_layernorm: RmsNorm::load(
                    src,
                    &format!("{k}.post_attention_layernorm"),
                    c,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp::load(
                    src,
                    &format!("{k}.mlp"),
                    c,
                    cfg.intermediate_size,
                    false,
                    cfg.hidden_act,
                )?,
            });
        }
        Ok(Self {
            embed_tokens: Param::initialized(ParamId::new(), embed.set_require_grad(false)),
            layers,
            norm: RmsNorm::load(src, "model.norm", c, cfg.rms_norm_eps)?,
        })
    }

    /// Token embeddings `[b, s] → [b, s, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.embed_tokens.val(), ids)
    }

    /// Decoder stack without the final norm: `[b, s, hidden]` → `[b, s, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &TextRope<B>,
        mask: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        self.layers.iter().fold(x, |x, l| l.forward(x, rope, mask))
    }

    pub fn visit_linears(&self, f: &mut LinearVisit<'_, B>) {
        for (i, l) in self.layers.iter().enumerate() {
            let k = format!("model.language_model.layers.{i}");
            let a = &l.self_attn;
            for (n, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                f(&format!("{k}.self_attn.{n}"), lin);
            }
            l.mlp.visit_linears(&format!("{k}.mlp"), f);
        }
    }

    pub fn map_linears(self, f: &mut LinearMap<'_, B>) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.into_iter().enumerate() {
            let k = format!("model.language_model.layers.{i}");
            let a = l.self_attn;
            layers.push(DecoderLayer {
                input_layernorm: l.input_layernorm,
                self_attn: TextAttention {
                    q_proj: f(&format!("{k}.self_attn.q_proj"), a.q_proj)?,
                    k_proj: f(&format!("{k}.self_attn.k_proj"), a.k_proj)?,
                    v_proj: f(&format!("{k}.self_attn.v_proj"), a.v_proj)?,
                    o_proj: f(&format!("{k}.self_attn.o_proj"), a.o_proj)?,
                    num_heads: a.num_heads,
                    num_kv_heads: a.num_kv_heads,
                },
                post_attention_layernorm: l.post_attention_layernorm,
                mlp: l.mlp.map_linears(&format!("{k}.mlp"), f)?,
            });
        }
        Ok(Self {
            embed_tokens: self.embed_tokens,
            layers,
            norm: self.norm,
        })
    }
}
