//! Qwen2.5-VL vision encoder (transformers `Qwen2_5_VisionTransformerPretrainedModel`):
//! patch embedding as a matmul, 2D rotary, window attention with full-attention blocks,
//! RMSNorm + SwiGLU blocks, and the 2×2 patch merger.
//!
//! Attention never builds a block-diagonal mask: the token sequence is split into segments
//! (windows, or whole images for full-attention blocks), segments of equal length are
//! gathered into one batch `[n_segments, heads, len, head_dim]`, and the outputs are
//! scattered back with the inverse permutation (skipped when it is the identity).

use burn::module::{Module, Param, ParamId};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Int, Tensor, TensorData, activation, backend::Backend};

use super::ModelError;
use super::config::VisionConfig;
use super::layers::{Mlp, RmsNorm, apply_rotary};
use super::lora::{LinearMap, LinearVisit, LoraLinear};
use super::rope::{vision_cos_sin, vision_patch_positions};
use super::weights::{ParamSource, patch_embed_weight};

/// Window order of the merged tokens and the window boundaries (in patches), exactly as
/// transformers `get_window_index`: windows of `window_size / merge / patch` merged tokens
/// a side in raster order, tokens raster inside a window, consecutive duplicates removed.
pub fn window_index(grids: &[[usize; 3]], cfg: &VisionConfig) -> (Vec<usize>, Vec<usize>) {
    let merge = cfg.spatial_merge_size;
    let unit = merge * merge;
    let win = cfg.window_size / merge / cfg.patch_size;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut offset = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        // transformers pads by `win - n % win`: a full empty window when already divisible,
        // which only adds empty windows (removed below as duplicates in cu_seqlens).
        let nwh = (lh + win - lh % win) / win;
        let nww = (lw + win - lw % win) / win;
        for f in 0..t {
            for wr in 0..nwh {
                for wc in 0..nww {
                    let mut count = 0;
                    for r in wr * win..((wr + 1) * win).min(lh) {
                        for c in wc * win..((wc + 1) * win).min(lw) {
                            index.push(offset + f * lh * lw + r * lw + c);
                            count += 1;
                        }
                    }
                    let last = *cu.last().unwrap_or(&0);
                    if count > 0 {
                        cu.push(last + count * unit);
                    }
                }
            }
        }
        offset += t * lh * lw;
    }
    (index, cu)
}

/// How the attention of one block groups tokens: contiguous segments of the sequence,
/// bucketed by length.
#[derive(Debug, Clone)]
pub struct AttentionGroups {
    /// Token order that makes every bucket contiguous; `None` when it is the identity.
    gather: Option<Vec<usize>>,
    /// Inverse of `gather`.
    scatter: Option<Vec<usize>>,
    /// (segments, segment length) per bucket, in gathered order.
    buckets: Vec<(usize, usize)>,
}

impl AttentionGroups {
    /// Segments given by cumulative boundaries `cu` (starting at 0).
    pub fn from_cu(cu: &[usize]) -> Self {
        let mut lens: Vec<usize> = cu
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|&l| l > 0)
            .collect();
        lens.sort_unstable();
        lens.dedup();
        let mut gather = Vec::with_capacity(*cu.last().unwrap_or(&0));
        let mut buckets = Vec::new();
        for &len in &lens {
            let mut n = 0;
            for w in cu.windows(2) {
                if w[1] - w[0] == len {
                    gather.extend(w[0]..w[1]);
                    n += 1;
                }
            }
            buckets.push((n, len));
        }
        let identity = gather.iter().enumerate().all(|(i, &g)| i == g);
        if identity {
            return Self {
                gather: None,
                scatter: None,
                buckets,
            };
        }
        let mut scatter = vec![0; gather.len()];
        for (i, &g) in gather.iter().enumerate() {
            scatter[g] = i;
        }
        Self {
            gather: Some(gather),
            scatter: Some(scatter),
            buckets,
        }
    }
}

/// [`AttentionGroups`] on the device: permutations and rotary tables (f32, in gathered
/// order), built once per forward.
pub struct DeviceGroups<B: Backend> {
    gather: Option<Tensor<B, 1, Int>>,
    scatter: Option<Tensor<B, 1, Int>>,
    buckets: Vec<(usize, usize)>,
    cos: Tensor<B, 3>,
    sin: Tensor<B, 3>,
}

impl<B: Backend> DeviceGroups<B> {
    /// `(first row, segments, segment length)` of each bucket, in gathered order.
    pub fn bucket_spans(&self) -> Vec<(usize, usize, usize)> {
        let mut off = 0;
        self.buckets
            .iter()
            .map(|&(segs, len)| {
                let span = (off, segs, len);
                off += segs * len;
                span
            })
            .collect()
    }

    fn new(
        g: AttentionGroups,
        (cos, sin): (&Tensor<B, 2>, &Tensor<B, 2>),
        heads: usize,
        device: &B::Device,
    ) -> Self {
        let gather = g.gather.map(|v| index_tensor(&v, device));
        // Repeated per head `[n, heads, hd]`, contiguous: the rotation multiplies
        // same-shaped tensors (a broadcast operand is slow on the CPU backend).
        let table = |t: &Tensor<B, 2>| {
            let t = match &gather {
                Some(idx) => t.clone().select(0, idx.clone()),
                None => t.clone(),
            };
            t.unsqueeze_dim::<3>(1).repeat_dim(1, heads)
        };
        let (cos, sin) = (table(cos), table(sin));
        Self {
            gather,
            scatter: g.scatter.map(|v| index_tensor(&v, device)),
            buckets: g.buckets,
            cos,
            sin,
        }
    }
}

/// Everything about a batch of images that the blocks need, computed once per forward.
pub struct VisionPlan<B: Backend> {
    /// Merged-token window order (`window_index`) and its boundaries in patches.
    pub window_index: Vec<usize>,
    pub cu_window_seqlens: Vec<usize>,
    /// Rotary tables `[n, head_dim]` (f32) in window order.
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    window_groups: DeviceGroups<B>,
    full_groups: DeviceGroups<B>,
    /// Patch permutation into window order and the merged-token permutation back.
    to_window: Tensor<B, 1, Int>,
    from_window: Tensor<B, 1, Int>,
}

fn index_tensor<B: Backend>(idx: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [idx.len()]), device)
}

impl<B: Backend> VisionPlan<B> {
    /// Attention groups of a full-attention block (whole images) or a windowed one.
    pub fn groups(&self, full: bool) -> &DeviceGroups<B> {
        if full {
            &self.full_groups
        } else {
            &self.window_groups
        }
    }

    pub fn new(grids: &[[usize; 3]], cfg: &VisionConfig, device: &B::Device) -> Self {
        let unit = cfg.merge_unit();
        let (window_index, cu_window_seqlens) = window_index(grids, cfg);
        let patch_perm: Vec<usize> = window_index
            .iter()
            .flat_map(|&m| (0..unit).map(move |k| m * unit + k))
            .collect();
        let pos = vision_patch_positions(grids, cfg.spatial_merge_size);
        let pos: Vec<[usize; 2]> = patch_perm.iter().map(|&p| pos[p]).collect();
        let hd = cfg.head_dim();
        let (cos, sin) = vision_cos_sin(&pos, hd);
        let n = pos.len();
        let mut inverse = vec![0; window_index.len()];
        for (i, &m) in window_index.iter().enumerate() {
            inverse[m] = i;
        }
        let mut cu_full = vec![0usize];
        for &[t, h, w] in grids {
            for _ in 0..t {
                cu_full.push(cu_full.last().unwrap_or(&0) + h * w);
            }
        }
        let cos = Tensor::from_data(TensorData::new(cos, [n, hd]), (device, DType::F32));
        let sin = Tensor::from_data(TensorData::new(sin, [n, hd]), (device, DType::F32));
        Self {
            window_groups: DeviceGroups::new(
                AttentionGroups::from_cu(&cu_window_seqlens),
                (&cos, &sin),
                cfg.num_heads,
                device,
            ),
            full_groups: DeviceGroups::new(
                AttentionGroups::from_cu(&cu_full),
                (&cos, &sin),
                cfg.num_heads,
                device,
            ),
            cos,
            sin,
            to_window: index_tensor(&patch_perm, device),
            from_window: index_tensor(&inverse, device),
            window_index,
            cu_window_seqlens,
        }
    }
}

/// `Qwen2_5_VLVisionAttention`: fused qkv, 2D rotary in f32, per-segment attention, proj.
#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: LoraLinear<B>,
    pub proj: LoraLinear<B>,
    pub num_heads: usize,
}

impl<B: Backend> VisionAttention<B> {
    /// `x [n, hidden]` → `[n, hidden]`; rotary tables from `groups` (`[n, heads, head_dim]` f32).
    pub fn forward(&self, x: Tensor<B, 2>, groups: &DeviceGroups<B>) -> Tensor<B, 2> {
        let [q, k, v] = self.qkv(x, groups);
        let mut outs = Vec::with_capacity(groups.buckets.len());
        for (off, segs, len) in groups.bucket_spans() {
            let take = |t: &Tensor<B, 3>| segments(t, off, segs, len);
            let o = attention(
                take(&q),
                take(&k),
                take(&v),
                None,
                None,
                AttentionModuleOptions::default(),
            );
            outs.push(unsegment(o));
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one bucket")
        } else {
            Tensor::cat(outs, 0)
        };
        self.project(out, groups)
    }

    /// Rotated q, k and v `[n, heads, head_dim]` of `x [n, hidden]`, in the gathered order of
    /// `groups`.
    pub fn qkv(&self, x: Tensor<B, 2>, groups: &DeviceGroups<B>) -> [Tensor<B, 3>; 3] {
        let [n, hidden] = x.dims();
        let heads = self.num_heads;
        let hd = hidden / heads;
        let dtype = x.dtype();
        // Per-token ops commute with the permutation: gather the input once, rotate with
        // tables in the same order, scatter the projected output back.
        let x = match &groups.gather {
            Some(g) => x.select(0, g.clone()),
            None => x,
        };
        let qkv = self.qkv.forward(x).reshape([n, 3, heads, hd]);
        let part = |i: usize| qkv.clone().narrow(1, i, 1).reshape([n, heads, hd]);
        let (cos, sin) = (groups.cos.clone(), groups.sin.clone());
        let q = apply_rotary(part(0).cast(DType::F32), cos.clone(), sin.clone()).cast(dtype);
        let k = apply_rotary(part(1).cast(DType::F32), cos, sin).cast(dtype);
        [q, k, part(2)]
    }

    /// `proj` of the attention output `[n, hidden]` (gathered order), scattered back to
    /// token order.
    pub fn project(&self, o: Tensor<B, 2>, groups: &DeviceGroups<B>) -> Tensor<B, 2> {
        let out = self.proj.forward(o);
        match &groups.scatter {
            Some(s) => out.select(0, s.clone()),
            None => out,
        }
    }
}

/// Rows `off..off + segs·len` of `t [n, heads, hd]` as `segs` sequences
/// `[segs, heads, len, hd]`.
pub fn segments<B: Backend>(t: &Tensor<B, 3>, off: usize, segs: usize, len: usize) -> Tensor<B, 4> {
    let [_, heads, hd] = t.dims();
    t.clone()
        .narrow(0, off, segs * len)
        .reshape([segs, len, heads, hd])
        .swap_dims(1, 2)
}

/// Inverse of [`segments`] for an attention output: `[segs, heads, len, hd]` →
/// `[segs·len, heads·hd]`.
pub fn unsegment<B: Backend>(o: Tensor<B, 4>) -> Tensor<B, 2> {
    let [segs, heads, len, hd] = o.dims();
    o.swap_dims(1, 2).reshape([segs * len, heads * hd])
}

/// `Qwen2_5_VLVisionBlock`: `x += attn(norm1(x)); x += mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: RmsNorm<B>,
    pub norm2: RmsNorm<B>,
    pub attn: VisionAttention<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> VisionBlock<B> {
    pub fn forward(&self, x: Tensor<B, 2>, plan: &VisionPlan<B>, full: bool) -> Tensor<B, 2> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), plan.groups(full));
        self.mlp_block(x)
    }

    /// The attention's inputs (`VisionAttention::qkv` of the normed `x`).
    pub fn attention_inputs(&self, x: Tensor<B, 2>, groups: &DeviceGroups<B>) -> [Tensor<B, 3>; 3] {
        self.attn.qkv(self.norm1.forward(x), groups)
    }

    /// The block after its attention: `x + proj(o)` (scattered back), then the MLP block.
    pub fn finish(
        &self,
        x: Tensor<B, 2>,
        o: Tensor<B, 2>,
        groups: &DeviceGroups<B>,
    ) -> Tensor<B, 2> {
        self.mlp_block(x + self.attn.project(o, groups))
    }

    fn mlp_block(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// `Qwen2_5_VLPatchMerger`: RMSNorm per patch, 4 patches concatenated, Linear → GELU (erf)
/// → Linear.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub ln_q: RmsNorm<B>,
    pub fc1: LoraLinear<B>,
    pub fc2: LoraLinear<B>,
}

impl<B: Backend> PatchMerger<B> {
    /// `[n, hidden]` → `[n/4, out_hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let d = self.fc1.in_features();
        let x: Tensor<B, 2> = self.ln_q.forward(x).reshape([-1, d as i32]);
        self.fc2.forward(activation::gelu(self.fc1.forward(x)))
    }
}

/// Intermediate results of the vision encoder (golden tests, debugging).
pub struct VisionTrace<B: Backend> {
    pub patch_embed: Tensor<B, 2>,
    /// Output of every block, in window order.
    pub blocks: Vec<Tensor<B, 2>>,
    /// Merger output in original (non-window) order: the image features.
    pub merger: Tensor<B, 2>,
}

#[derive(Module, Debug)]
pub struct VisionModel<B: Backend> {
    /// Conv3d weight viewed as `[hidden, C·T·p·p]`.
    pub patch_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    #[module(skip)]
    pub cfg: VisionConfig,
}

impl<B: Backend> VisionModel<B> {
    /// Build from hub keys under `visual.`.
    pub fn load(src: &mut impl ParamSource<B>, cfg: &VisionConfig) -> Result<Self, ModelError> {
        src.set_std(cfg.initializer_range);
        let c = cfg.hidden_size;
        let conv = [
            c,
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.patch_size,
        ];
        let pe = patch_embed_weight(src, "visual.patch_embed.proj.weight", conv)?;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let k = format!("visual.blocks.{i}");
            blocks.push(VisionBlock {
                norm1: RmsNorm::load(src, &format!("{k}.norm1"), c, 1e-6)?,
                norm2: RmsNorm::load(src, &format!("{k}.norm2"), c, 1e-6)?,
                attn: VisionAttention {
                    qkv: LoraLinear::load(src, &format!("{k}.attn.qkv"), c, 3 * c, true)?,
                    proj: LoraLinear::load(src, &format!("{k}.attn.proj"), c, c, true)?,
                    num_heads: cfg.num_heads,
                },
                mlp: Mlp::load(
                    src,
                    &format!("{k}.mlp"),
                    c,
                    cfg.intermediate_size,
                    true,
                    cfg.hidden_act,
                )?,
            });
        }
        let m = c * cfg.merge_unit();
        let merger = PatchMerger {
            ln_q: RmsNorm::load(src, "visual.merger.ln_q", c, 1e-6)?,
            fc1: LoraLinear::load(src, "visual.merger.mlp.0", m, m, true)?,
            fc2: LoraLinear::load(src, "visual.merger.mlp.2", m, cfg.out_hidden_size, true)?,
        };
        Ok(Self {
            patch_embed: Param::initialized(ParamId::new(), pe.set_require_grad(false)),
            blocks,
            merger,
            cfg: cfg.clone(),
        })
    }

    /// Image features `[Σ t·h·w / 4, out_hidden]` from pixel rows `[Σ t·h·w, C·T·p·p]`.
    pub fn forward(&self, pixels: Tensor<B, 2>, grids: &[[usize; 3]]) -> Tensor<B, 2> {
        self.run(pixels, grids, false).merger
    }

    /// Like `forward`, keeping every intermediate.
    pub fn trace(&self, pixels: Tensor<B, 2>, grids: &[[usize; 3]]) -> VisionTrace<B> {
        self.run(pixels, grids, true)
    }

    fn run(&self, pixels: Tensor<B, 2>, grids: &[[usize; 3]], keep: bool) -> VisionTrace<B> {
        let device = pixels.device();
        let plan = VisionPlan::<B>::new(grids, &self.cfg, &device);
        let pe = self.embed_patches(pixels);
        let mut x = pe.clone().select(0, plan.to_window.clone());
        let mut blocks = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(x, &plan, self.is_full_attention(i));
            if keep {
                blocks.push(x.clone());
            }
        }
        VisionTrace {
            patch_embed: pe,
            blocks,
            merger: self.merge(x, &plan),
        }
    }

    /// Patch embedding `[n, hidden]` of pixel rows `[n, C·T·p·p]`, in patch order.
    pub fn embed_patches(&self, pixels: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = self.patch_embed.val();
        pixels.cast(w.dtype()).matmul(w.transpose())
    }

    /// The blocks' input: patch embeddings in window order.
    pub fn block_input(&self, pixels: Tensor<B, 2>, plan: &VisionPlan<B>) -> Tensor<B, 2> {
        self.embed_patches(pixels).select(0, plan.to_window.clone())
    }

    /// Whether block `i` attends over whole images (else within windows).
    pub fn is_full_attention(&self, i: usize) -> bool {
        self.cfg.fullatt_block_indexes.contains(&i)
    }

    /// Merger of the last block's output (window order) → image features in token order.
    pub fn merge(&self, x: Tensor<B, 2>, plan: &VisionPlan<B>) -> Tensor<B, 2> {
        self.merger.forward(x).select(0, plan.from_window.clone())
    }

    pub fn visit_linears(&self, f: &mut LinearVisit<'_, B>) {
        for (i, b) in self.blocks.iter().enumerate() {
            let k = format!("model.visual.blocks.{i}");
            f(&format!("{k}.attn.qkv"), &b.attn.qkv);
            f(&format!("{k}.attn.proj"), &b.attn.proj);
            b.mlp.visit_linears(&format!("{k}.mlp"), f);
        }
        f("model.visual.merger.mlp.0", &self.merger.fc1);
        f("model.visual.merger.mlp.2", &self.merger.fc2);
    }

    pub fn map_linears(self, f: &mut LinearMap<'_, B>) -> Result<Self, ModelError> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.into_iter().enumerate() {
            let k = format!("model.visual.blocks.{i}");
            blocks.push(VisionBlock {
                norm1: b.norm1,
                norm2: b.norm2,
                attn: VisionAttention {
                    qkv: f(&format!("{k}.attn.qkv"), b.attn.qkv)?,
                    proj: f(&format!("{k}.attn.proj"), b.attn.proj)?,
                    num_heads: b.attn.num_heads,
                },
                mlp: b.mlp.map_linears(&format!("{k}.mlp"), f)?,
            });
        }
        let merger = PatchMerger {
            ln_q: self.merger.ln_q,
            fc1: f("model.visual.merger.mlp.0", self.merger.fc1)?,
            fc2: f("model.visual.merger.mlp.2", self.merger.fc2)?,
        };
        Ok(Self {
            patch_embed: self.patch_embed,
            blocks,
            merger,
            cfg: self.cfg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    #[test]
    fn window_index_test_vector() {
        let cfg = preset_config("qwen2.5-vl-7b").unwrap().vision;
        let (idx, cu) = window_index(&[[1, 12, 10]], &cfg);
        assert_eq!(
            idx,
            vec![
                0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 4, 9, 14, 19, 20, 21, 22,
                23, 25, 26, 27, 28, 24, 29
            ]
        );
        assert_eq!(cu, vec![0, 64, 80, 112, 120]);
    }

    #[test]
    fn groups_bucket_equal_lengths() {
        let g = AttentionGroups::from_cu(&[0, 64, 80, 112, 120]);
        assert_eq!(g.buckets, vec![(1, 8), (1, 16), (1, 32), (1, 64)]);
        let gather = g.gather.clone().unwrap();
        assert_eq!(&gather[..8], &[112, 113, 114, 115, 116, 117, 118, 119]);
        let scatter = g.scatter.unwrap();
        assert!(scatter.iter().enumerate().all(|(i, &s)| gather[s] == i));
        let id = AttentionGroups::from_cu(&[0, 16, 32]);
        assert!(id.gather.is_none());
        assert_eq!(id.buckets, vec![(2, 16)]);
    }
}
