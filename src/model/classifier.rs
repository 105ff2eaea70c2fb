//! `SeqClassifier`: Qwen2.5-VL backbone + `score` head pooled at the last attended token
//! (transformers `*ForSequenceClassification` / ms-swift seq_cls), with LoRA management.

use std::path::Path;

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, backend::Backend};

use super::ModelError;
use super::config::{Depth, ModelConfig};
use super::inputs::ModelInputs;
use super::lora::{LoraLinear, LoraSpec, select_targets};
use super::presets::preset_config;
use super::rope::{mrope_cos_sin, rope_index};
use super::text::{TextModel, TextRope};
use super::vision::VisionModel;
use super::weights::{CheckpointSource, RandomSource, seeded_normal};

/// Where the backbone comes from.
#[derive(Debug, Clone, Copy)]
pub enum WeightsSource<'a> {
    /// A built-in preset with seeded random weights.
    Preset(&'a str),
    /// A Hugging Face directory: `config.json` + `model.safetensors` (or an index of shards).
    Dir(&'a Path),
}

#[derive(Module, Debug)]
pub struct SeqClassifier<B: Backend> {
    pub visual: VisionModel<B>,
    pub language_model: TextModel<B>,
    /// `[num_labels, hidden]`, f32 (the trainable master; computed in the backbone's dtype),
    /// no bias.
    pub score: LoraLinear<B>,
    #[module(skip)]
    pub config: ModelConfig,
}

/// The configuration of `source` (a preset, or a directory's `config.json`), reading no
/// weights.
pub fn config_of(source: WeightsSource<'_>) -> Result<ModelConfig, ModelError> {
    match source {
        WeightsSource::Preset(name) => preset_config(name),
        WeightsSource::Dir(dir) => ModelConfig::from_dir(dir),
    }
}

/// Build the classifier: backbone from `source` in `dtype` (F32 or BF16), `score.weight` from
/// the checkpoint when present, else normal(0, initializer_range) from `seed`.
pub fn load_classifier_from<B: Backend>(
    source: WeightsSource<'_>,
    num_labels: usize,
    dtype: DType,
    seed: u64,
    device: &B::Device,
) -> Result<SeqClassifier<B>, ModelError> {
    load_classifier_at_depth(source, Depth::default(), num_labels, dtype, seed, device)
}

/// [`load_classifier_from`] cut to `depth` (benchmarks): the checkpoint's tensors of the
/// dropped layers and blocks are not read.
pub fn load_classifier_at_depth<B: Backend>(
    source: WeightsSource<'_>,
    depth: Depth,
    num_labels: usize,
    dtype: DType,
    seed: u64,
    device: &B::Device,
) -> Result<SeqClassifier<B>, ModelError> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(ModelError::Config(format!(
            "dtype {dtype:?} is not supported (valid: float32, bfloat16)"
        )));
    }
    if num_labels == 0 {
        return Err(ModelError::Config("num_labels must be at least 1".into()));
    }
    match source {
        WeightsSource::Preset(name) => {
            let cfg = preset_config(name)?.with_depth(depth)?;
            let mut src = RandomSource::<B> {
                seed,
                std: 0.02,
                dtype,
                device: device.clone(),
                device_rng: false,
            };
            let visual = VisionModel::load(&mut src, &cfg.vision)?;
            let language_model = TextModel::load(&mut src, &cfg.text)?;
            let score = random_score(&cfg, num_labels, seed, device);
            Ok(SeqClassifier {
                visual,
                language_model,
                score,
                config: cfg,
            })
        }
        WeightsSource::Dir(dir) => {
            let full = ModelConfig::from_dir(dir)?;
            let cfg = full
                .clone()
                .with_depth(depth)
                .map_err(|e| ModelError::Config(format!("{}: {e}", dir.display())))?;
            let mut src = CheckpointSource::<B>::open(dir, dtype, device)?;
            let visual = VisionModel::load(&mut src, &cfg.vision)?;
            let language_model = TextModel::load(&mut src, &cfg.text)?;
            let score = if src.contains("score.weight") {
                let data = src.data(
                    "score.weight",
                    &[num_labels, cfg.text.hidden_size],
                    DType::F32,
                )?;
                LoraLinear::from_tensors(Tensor::from_data(data, (device, DType::F32)), None)
            } else {
                random_score(&cfg, num_labels, seed, device)
            };
            // Tensors of the layers the cut dropped are not read; anything else unused
            // (beyond the checkpoint's own depth too) is still an error.
            src.finish_except(&|k| cfg.drops_key(k) && !full.drops_key(k))?;
            Ok(SeqClassifier {
                visual,
                language_model,
                score,
                config: cfg,
            })
        }
    }
}

fn random_score<B: Backend>(
    cfg: &ModelConfig,
    num_labels: usize,
    seed: u64,
    device: &B::Device,
) -> LoraLinear<B> {
    let h = cfg.text.hidden_size;
    let w = seeded_normal(
        seed,
        "score.weight",
        num_labels * h,
        cfg.text.initializer_range,
    );
    LoraLinear::from_tensors(
        Tensor::from_data(TensorData::new(w, [num_labels, h]), (device, DType::F32)),
        None,
    )
}

/// Host copies of the batch's ids and mask.
pub(super) struct HostBatch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
}

pub(super) fn host_batch<B: Backend>(inputs: &ModelInputs<B>) -> Result<HostBatch, ModelError> {
    let [batch, seq] = inputs.input_ids.dims();
    let ids = inputs
        .input_ids
        .to_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    let mask = inputs
        .attention_mask
        .to_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    if ids.len() != batch * seq || mask.len() != batch * seq {
        return Err(ModelError::Inputs(
            "input_ids and attention_mask must have the same shape".into(),
        ));
    }
    Ok(HostBatch {
        batch,
        seq,
        ids,
        mask,
    })
}

impl HostBatch {
    /// Flat row `r·s + p` of each sample's last attended token (the pooled one).
    pub fn last_tokens(&self) -> Result<Vec<i64>, ModelError> {
        let s = self.seq;
        (0..self.batch)
            .map(|r| {
                (0..s)
                    .rev()
                    .find(|&p| self.mask[r * s + p] == 1)
                    .map(|p| (r * s + p) as i64)
                    .ok_or_else(|| {
                        ModelError::Inputs(format!("sample {r} of the batch has no attended token"))
                    })
            })
            .collect()
    }

    /// Rows of `cat([embeddings [b·s], image features])` that make the decoder input: image
    /// features replace the embeddings at `<|image_pad|>` positions, in order
    /// (`masked_scatter` in `Qwen2_5_VLModel.forward`). Checks the counts agree.
    pub fn image_rows(&self, image: i64, n_feats: Option<usize>) -> Result<Vec<i64>, ModelError> {
        let n = self.batch * self.seq;
        let n_tokens = self.ids.iter().filter(|&&t| t == image).count();
        match n_feats {
            Some(f) if f != n_tokens => {
                return Err(ModelError::Inputs(format!(
                    "image features and image tokens do not match: {n_tokens} <|image_pad|> tokens, {f} feature rows"
                )));
            }
            None if n_tokens > 0 => {
                return Err(ModelError::Inputs(format!(
                    "image features and image tokens do not match: {n_tokens} <|image_pad|> tokens, no pixel_values"
                )));
            }
            _ => {}
        }
        let mut k = 0i64;
        Ok((0..n)
            .map(|p| {
                if self.ids[p] == image {
                    k += 1;
                    n as i64 + k - 1
                } else {
                    p as i64
                }
            })
            .collect())
    }
}

impl<B: Backend> SeqClassifier<B> {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn num_labels(&self) -> usize {
        self.score.out_features()
    }

    /// Decoder output before the final norm, `[batch, seq, hidden]`.
    fn backbone(
        &self,
        inputs: &ModelInputs<B>,
        host: &HostBatch,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let (b, s) = (host.batch, host.seq);
        let x = self.language_model.embed(inputs.input_ids.clone());
        let feats = inputs
            .pixel_values
            .as_ref()
            .map(|px| self.visual.forward(px.clone(), &inputs.image_grid_thw));
        let x = self.decoder_input(
            x.reshape([b * s, self.config.text.hidden_size]),
            feats,
            host,
        )?;
        let rope = self.text_rope(&inputs.image_grid_thw, host, &x.device())?;
        let heads = self.config.text.num_attention_heads;
        let mask = padding_mask::<B>(&host.mask, b, s, heads, &x.device());
        Ok(self.language_model.forward(
            x.reshape([b, s, self.config.text.hidden_size]),
            &rope,
            mask.as_ref(),
        ))
    }

    /// Token embeddings `[b·s, hidden]` with the image features `[n, hidden]` in place of the
    /// `<|image_pad|>` tokens.
    pub(super) fn decoder_input(
        &self,
        embeds: Tensor<B, 2>,
        feats: Option<Tensor<B, 2>>,
        host: &HostBatch,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let image = self.config.tokens.image_token_id as i64;
        let rows = host.image_rows(image, feats.as_ref().map(|f| f.dims()[0]))?;
        let Some(feats) = feats else {
            return Ok(embeds);
        };
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(rows, [host.batch * host.seq]),
            &embeds.device(),
        );
        let all = Tensor::cat(vec![embeds, feats.cast(self.dtype())], 0);
        Ok(all.select(0, idx))
    }

    /// M-RoPE tables of the batch (images of `grids`).
    pub(super) fn text_rope(
        &self,
        grids: &[[usize; 3]],
        host: &HostBatch,
        device: &B::Device,
    ) -> Result<TextRope<B>, ModelError> {
        let cfg = &self.config;
        let (b, s) = (host.batch, host.seq);
        let pos = rope_index(cfg, &host.ids, &host.mask, b, s, grids)?;
        let hd = cfg.text.head_dim();
        let (cos, sin) = mrope_cos_sin(&pos, b, s, hd, cfg.text.rope_theta, cfg.text.mrope_section);
        Ok(TextRope::new(
            (&cos, &sin),
            [b, s, hd],
            [cfg.text.num_attention_heads, cfg.text.num_key_value_heads],
            self.dtype(),
            device,
        ))
    }

    /// Model dtype (of the embedding table).
    pub fn dtype(&self) -> DType {
        self.language_model.embed_tokens.val().dtype()
    }

    /// Final hidden states after the last norm, `[batch, seq, hidden]` in the model dtype
    /// (the `last_hidden_state` of transformers; padded rows are unspecified).
    pub fn last_hidden_state(&self, inputs: &ModelInputs<B>) -> Result<Tensor<B, 3>, ModelError> {
        let host = host_batch(inputs)?;
        let h = self.backbone(inputs, &host)?;
        Ok(self.language_model.norm.forward(h))
    }

    /// 3D M-RoPE position ids `[3, batch, seq]` (as `get_rope_index`).
    pub fn position_ids(&self, inputs: &ModelInputs<B>) -> Result<Vec<i64>, ModelError> {
        let host = host_batch(inputs)?;
        rope_index(
            &self.config,
            &host.ids,
            &host.mask,
            host.batch,
            host.seq,
            &inputs.image_grid_thw,
        )
    }

    /// Class logits `[batch, num_labels]` in f32, from the hidden state of the last token whose
    /// attention mask is 1 (correct for left and right padding).
    pub fn forward(&self, inputs: &ModelInputs<B>) -> Result<Tensor<B, 2>, ModelError> {
        let host = host_batch(inputs)?;
        let h = self.backbone(inputs, &host)?;
        let (b, s) = (host.batch, host.seq);
        let h = h.reshape([b * s, self.config.text.hidden_size]);
        Ok(self.head(h, host.last_tokens()?))
    }

    /// Logits of the decoder output `h [b·s, hidden]` pooled at `rows`.
    pub(super) fn head(&self, h: Tensor<B, 2>, rows: Vec<i64>) -> Tensor<B, 2> {
        let n = rows.len();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &h.device());
        // The final norm is per token: normalising only the pooled rows is equivalent.
        let pooled = self.language_model.norm.forward(h.select(0, idx));
        // The head computes in the backbone's dtype, as ms-swift's does: PEFT's
        // modules_to_save copy of a bf16 `score` Linear is bf16 and runs under bf16 autocast,
        // so bf16 logits reach the f32 loss. Its trainable weight stays an f32 master here
        // (like LoRA A/B), cast for each forward; on f32 this is the plain f32 product.
        let w = super::lora::cast_to(self.score.weight.val(), pooled.dtype());
        pooled.matmul(w.transpose()).cast(DType::F32)
    }
}

/// Masks of up to this many elements are built per head, contiguous: the CPU backend's
/// `mask_fill` copies a broadcast mask element by element in every layer, forward and
/// backward. Larger ones (real models on a GPU) stay broadcast over heads.
const DENSE_MASK_MAX: usize = 1 << 22;

/// Causal + key-padding mask `[b, heads, s, s]` (true = masked), or `None` (plain causal
/// attention) for a large batch without padding.
fn padding_mask<B: Backend>(
    mask: &[i64],
    b: usize,
    s: usize,
    heads: usize,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let dense = b * heads * s * s <= DENSE_MASK_MAX;
    if !dense && mask.iter().all(|&m| m == 1) {
        return None;
    }
    let copies = if dense { heads } else { 1 };
    let mut m = Vec::with_capacity(b * copies * s * s);
    for r in 0..b {
        for _ in 0..copies {
            for i in 0..s {
                m.extend((0..s).map(|j| j > i || mask[r * s + j] == 0));
            }
        }
    }
    let t = Tensor::<B, 4, Bool>::from_data(TensorData::new(m, [b, copies, s, s]), device);
    Some(if dense { t } else { t.expand([b, heads, s, s]) })
}

/// LoRA management and export.
impl<B: Backend> SeqClassifier<B> {
    /// HF (≥ 4.52) module names of every linear layer that can carry an adapter.
    pub fn linear_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.visual
            .visit_linears(&mut |n, _| names.push(n.to_string()));
        self.language_model
            .visit_linears(&mut |n, _| names.push(n.to_string()));
        names
    }

    fn map_linears(self, f: &mut super::lora::LinearMap<'_, B>) -> Result<Self, ModelError> {
        Ok(Self {
            visual: self.visual.map_linears(f)?,
            language_model: self.language_model.map_linears(f)?,
            score: self.score,
            config: self.config,
        })
    }

    /// Freeze the whole base, keep `score` trainable (PEFT `modules_to_save`).
    fn freeze_base(self) -> Self {
        let mut m = self.no_grad();
        m.score.weight = m.score.weight.set_require_grad(true);
        m
    }

    /// Attach fresh adapters to the modules `spec.targets` selects (A kaiming-uniform from
    /// `seed`, B zeros); freezes every base parameter, leaves A/B and `score` trainable.
    pub fn apply_lora(self, spec: &LoraSpec, seed: u64) -> Result<Self, ModelError> {
        if spec.r == 0 {
            return Err(ModelError::Lora("lora_rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&spec.dropout) {
            return Err(ModelError::Lora(format!(
                "lora_dropout {} must be in [0, 1)",
                spec.dropout
            )));
        }
        let targets = select_targets(&self.linear_names(), &spec.targets)?;
        let m = self.freeze_base();
        m.map_linears(&mut |name, lin| {
            Ok(if targets.iter().any(|t| t == name) {
                lin.with_new_adapter(spec, seed, name)
            } else {
                lin
            })
        })
    }

    /// `(module name, A [r, in], B [out, r])` for every adapter, in module order.
    pub fn lora_weights(&self) -> Vec<(String, Tensor<B, 2>, Tensor<B, 2>)> {
        let mut out = Vec::new();
        let mut f = |n: &str, l: &LoraLinear<B>| {
            if let Some(a) = &l.adapter {
                out.push((n.to_string(), a.lora_a.val(), a.lora_b.val()));
            }
        };
        self.visual.visit_linears(&mut f);
        self.language_model.visit_linears(&mut f);
        out
    }

    /// The `score` weight `[num_labels, hidden]` (f32).
    pub fn score_weight(&self) -> Tensor<B, 2> {
        self.score.weight.val()
    }

    /// Put saved adapters on the named modules (scaling and dropout from `spec`) and, when
    /// given, replace the `score` weight. Freezes the base like [`Self::apply_lora`].
    pub fn load_lora_weights(
        self,
        spec: &LoraSpec,
        adapters: Vec<(String, Tensor<B, 2>, Tensor<B, 2>)>,
        score: Option<Tensor<B, 2>>,
    ) -> Result<Self, ModelError> {
        let names = self.linear_names();
        if let Some((bad, _, _)) = adapters.iter().find(|(n, _, _)| !names.contains(n)) {
            return Err(ModelError::Lora(format!(
                "adapter for unknown module {bad:?}; available: {}",
                super::lora::name_patterns(&names).join(", ")
            )));
        }
        let mut m = self.freeze_base();
        if let Some(w) = score {
            let want = m.score.weight.dims();
            if w.dims() != want {
                return Err(ModelError::Lora(format!(
                    "score weight has shape {:?}, expected {want:?}",
                    w.dims()
                )));
            }
            m.score.weight = Param::initialized(ParamId::new(), w.cast(DType::F32).require_grad());
        }
        let mut adapters = adapters;
        m.map_linears(&mut |name, lin| {
            let Some(i) = adapters.iter().position(|(n, _, _)| n == name) else {
                return Ok(lin);
            };
            let (_, a, b) = adapters.swap_remove(i);
            let (d_in, d_out) = (lin.in_features(), lin.out_features());
            let r = a.dims()[0];
            if a.dims() != [r, d_in] || b.dims() != [d_out, r] {
                return Err(ModelError::Lora(format!(
                    "{name}: lora_A {:?} / lora_B {:?} do not fit a [{d_out}, {d_in}] layer",
                    a.dims(),
                    b.dims()
                )));
            }
            Ok(lin.with_adapter(spec, a, b))
        })
    }

    /// Trainable parameter count (adapters + score once LoRA is applied).
    pub fn trainable_params(&self) -> usize {
        let mut n = self.score.weight.shape().num_elements();
        for (_, a, b) in self.lora_weights() {
            n += a.shape().num_elements() + b.shape().num_elements();
        }
        n
    }

    /// All parameters, adapters included.
    pub fn total_params(&self) -> usize {
        self.num_params()
    }

    /// Every tensor under its hub key (`visual.*`, `model.*`, `score.weight`; no `lm_head`)
    /// with adapters folded in, in the model dtype.
    pub fn merged_state(&self) -> Vec<(String, TensorData)> {
        let dtype = self.dtype();
        let mut out: Vec<(String, TensorData)> = Vec::new();
        let v = &self.visual.cfg;
        let pe = self.visual.patch_embed.val().reshape([
            v.hidden_size,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ]);
        out.push(("visual.patch_embed.proj.weight".into(), pe.into_data()));
        let mut lin = |name: &str, l: &LoraLinear<B>| {
            let hub = super::weights::hub_key(name).unwrap_or_else(|| name.to_string());
            out.push((format!("{hub}.weight"), l.merged_weight().into_data()));
            if let Some(b) = &l.bias {
                out.push((format!("{hub}.bias"), b.val().into_data()));
            }
        };
        self.visual.visit_linears(&mut lin);
        self.language_model.visit_linears(&mut lin);
        for (i, b) in self.visual.blocks.iter().enumerate() {
            out.push((
                format!("visual.blocks.{i}.norm1.weight"),
                b.norm1.weight.val().into_data(),
            ));
            out.push((
                format!("visual.blocks.{i}.norm2.weight"),
                b.norm2.weight.val().into_data(),
            ));
        }
        out.push((
            "visual.merger.ln_q.weight".into(),
            self.visual.merger.ln_q.weight.val().into_data(),
        ));
        let lm = &self.language_model;
        out.push((
            "model.embed_tokens.weight".into(),
            lm.embed_tokens.val().into_data(),
        ));
        for (i, l) in lm.layers.iter().enumerate() {
            out.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                l.input_layernorm.weight.val().into_data(),
            ));
            out.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.val().into_data(),
            ));
        }
        out.push(("model.norm.weight".into(), lm.norm.weight.val().into_data()));
        out.push((
            "score.weight".into(),
            self.score.weight.val().cast(dtype).into_data(),
        ));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
