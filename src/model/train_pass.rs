//! The training forward and backward of [`SeqClassifier`], run as a chain of segments —
//! each ViT block, the merger, the image-token merge, each decoder layer — and a head
//! (final norm, pooling, score, loss), with gradient checkpointing and memory-efficient
//! attention.
//!
//! Burn's autodiff records a whole forward and keeps every saved tensor until backward, and
//! its attention keeps the `S×S` probabilities. Here each segment is its own small graph: a
//! fresh leaf for its input, its parameters' gradients handed to a sink after its backward,
//! and the gradient of its input passed on to the segment before it (a backward of
//! `sum(out ∘ grad_out)`, which seeds `out`'s gradient with exactly `grad_out`).
//!
//! - With `recompute` (ms-swift's `gradient_checkpointing`), the forward runs the segments
//!   on a copy of the model whose parameters are untracked (Burn keeps nothing for an
//!   untracked op) and keeps only each segment's input; the backward re-runs one segment at
//!   a time with the real parameters. Dropout masks come from the pass's dropout stream, and
//!   a recomputed segment restarts the stream where its forward started, so it draws the
//!   same masks. Both runs execute the same ops on the same values: the gradients are those
//!   of the recorded pass, bit for bit.
//! - Without, each segment's graph is recorded in the forward and kept until its backward.
//!
//! In both modes the decoder layers and the ViT full-attention blocks split at their
//! attention, which runs outside autodiff ([`attention`]: Q, K, V, the output and the
//! log-sum-exp saved; scores recomputed per block in backward); windowed ViT blocks keep
//! Burn's batched attention (64-token windows). Segments before the first trainable
//! parameter run once, untracked (a frozen ViT costs one forward and no memory).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::ModelError;
use super::attention::{self, AttnMask, Saved};
use super::classifier::{HostBatch, SeqClassifier, host_batch};
use super::config::ModelConfig;
use super::inputs::ModelInputs;
use super::lora::{DropoutState, backend_seed, with_dropout_state, with_dropout_stream};
use super::text::{DecoderLayer, TextRope};
use super::vision::{DeviceGroups, VisionBlock, VisionPlan, segments, unsegment};

type Inner<B> = <B as AutodiffBackend>::InnerBackend;
type InnerT<B> = Tensor<Inner<B>, 2>;

/// Receives the gradients of each backward call of a pass (those of parameters; segment
/// inputs are taken out first).
pub type GradSink<'a, B> = dyn FnMut(<B as AutodiffBackend>::Gradients) + 'a;

/// Maps the logits `[batch, labels]` (f32) to the scalar loss to differentiate.
pub type LossOf<'a, B> = dyn FnMut(Tensor<B, 2>) -> Tensor<B, 1> + 'a;

/// The model a segment runs with: the real one (recorded) or its untracked copy.
type M<B> = SeqClassifier<B>;
type Fwd<'a, B> = Box<dyn Fn(&M<B>, Tensor<B, 2>) -> Tensor<B, 2> + 'a>;
/// Segment input → (q, k, v) of each attention call.
type Pre<'a, B> = Box<dyn Fn(&M<B>, Tensor<B, 2>) -> Vec<[Tensor<B, 4>; 3]> + 'a>;
/// (segment input, outputs of the attention calls) → segment output.
type Post<'a, B> = Box<dyn Fn(&M<B>, Tensor<B, 2>, Vec<Tensor<B, 4>>) -> Tensor<B, 2> + 'a>;

/// A segment's computation (on the autodiff backend, with either model).
enum Body<'a, B: AutodiffBackend> {
    Plain(Fwd<'a, B>),
    /// Split at memory-efficient attention calls (one mask per call).
    Attention {
        masks: Vec<AttnMask>,
        pre: Pre<'a, B>,
        post: Post<'a, B>,
    },
}

struct Segment<'a, B: AutodiffBackend> {
    /// Holds a parameter that trains.
    trainable: bool,
    body: Body<'a, B>,
}

/// One attention call of a recorded segment.
struct AttnCall<B: AutodiffBackend> {
    qkv: [Tensor<B, 4>; 3],
    saved: Saved<Inner<B>>,
    mask: AttnMask,
    /// Leaf standing for the output in the rest of the segment.
    out: Tensor<B, 4>,
}

/// A segment's recorded graph.
struct Recorded<B: AutodiffBackend> {
    /// Leaf input of the graph that reaches `out` (residual, MLP, ...).
    input: Tensor<B, 2>,
    out: Tensor<B, 2>,
    /// Leaf input of the graph up to the attention calls, and the calls.
    attention: Option<(Tensor<B, 2>, Vec<AttnCall<B>>)>,
}

/// What the forward kept of a segment for its backward.
enum Kept<B: AutodiffBackend> {
    Graph(Recorded<B>),
    Input {
        x: InnerT<B>,
        grad_in: bool,
        /// Boxed: the stream state is ~300 bytes, the other variant a few pointers.
        dropout: Box<DropoutState>,
    },
}

fn leaf<B: AutodiffBackend, const D: usize>(x: Tensor<Inner<B>, D>, grad: bool) -> Tensor<B, D> {
    let t = Tensor::from_inner(x);
    if grad { t.require_grad() } else { t }
}

impl<B: AutodiffBackend> Segment<'_, B> {
    /// Forward with `model`'s parameters from a leaf input (requiring grad iff `grad_in`);
    /// `track` makes the attention outputs leaves that collect gradients. With the untracked
    /// copy and neither, nothing is recorded.
    fn forward(&self, model: &M<B>, x: InnerT<B>, grad_in: bool, track: bool) -> Recorded<B> {
        match &self.body {
            Body::Plain(f) => {
                let input = leaf::<B, 2>(x, grad_in);
                Recorded {
                    out: f(model, input.clone()),
                    input,
                    attention: None,
                }
            }
            Body::Attention { masks, pre, post } => {
                let pre_in = leaf::<B, 2>(x.clone(), grad_in);
                let mut calls = Vec::with_capacity(masks.len());
                for ([q, k, v], mask) in pre(model, pre_in.clone()).into_iter().zip(masks) {
                    let saved = attention::forward(
                        q.clone().inner(),
                        k.clone().inner(),
                        v.clone().inner(),
                        mask,
                    );
                    calls.push(AttnCall {
                        out: leaf::<B, 4>(saved.out.clone(), track),
                        qkv: [q, k, v],
                        saved,
                        mask: mask.clone(),
                    });
                }
                let input = leaf::<B, 2>(x, grad_in);
                let out = post(
                    model,
                    input.clone(),
                    calls.iter().map(|c| c.out.clone()).collect(),
                );
                Recorded {
                    input,
                    out,
                    attention: Some((pre_in, calls)),
                }
            }
        }
    }

    /// Forward recording the segment's graph.
    fn record(&self, model: &M<B>, x: InnerT<B>, grad_in: bool) -> Recorded<B> {
        self.forward(model, x, grad_in, true)
    }

    /// Forward without a tape: the untracked model, untracked inputs.
    fn run(&self, detached: &M<B>, x: InnerT<B>) -> InnerT<B> {
        self.forward(detached, x, false, false).out.inner()
    }
}

/// Backward of `s`, plus a zero leaf (in `s`'s dtype) so that a surrogate whose graph holds
/// no tracked tensor (LoRA only after the attention, input needing no gradient) still runs.
fn backward_of<B: AutodiffBackend>(s: Tensor<B, 1>) -> B::Gradients {
    let anchor = Tensor::<B, 1>::zeros([1], (&s.device(), s.dtype())).require_grad();
    (s + anchor).backward()
}

/// Backward of a recorded segment for the gradient `g` of its output: parameter gradients
/// to `sink`, the input's gradient returned (`None` when the input needs none).
fn backward<B: AutodiffBackend>(
    rec: Recorded<B>,
    g: InnerT<B>,
    sink: &mut GradSink<'_, B>,
) -> Option<InnerT<B>> {
    let Recorded {
        input,
        out,
        attention,
    } = rec;
    let mut grads = backward_of((out * Tensor::from_inner(g)).sum());
    let mut grad_in = input.grad_remove(&mut grads);
    let Some((pre_in, calls)) = attention else {
        sink(grads);
        return grad_in;
    };
    let grad_attn: Vec<_> = calls
        .iter()
        .map(|c| c.out.grad_remove(&mut grads))
        .collect();
    sink(grads);
    let mut surrogate: Option<Tensor<B, 1>> = None;
    for (call, g_out) in calls.into_iter().zip(grad_attn) {
        let Some(g_out) = g_out else { continue };
        let [q, k, v] = call.qkv;
        let (dq, dk, dv) = attention::backward(
            (q.clone().inner(), k.clone().inner(), v.clone().inner()),
            &call.saved,
            g_out,
            &call.mask,
        );
        let part = (q * Tensor::from_inner(dq)).sum()
            + (k * Tensor::from_inner(dk)).sum()
            + (v * Tensor::from_inner(dv)).sum();
        surrogate = Some(match surrogate {
            Some(s) => s + part,
            None => part,
        });
    }
    if let Some(s) = surrogate {
        let mut grads = backward_of(s);
        if let Some(g) = pre_in.grad_remove(&mut grads) {
            grad_in = Some(match grad_in {
                Some(r) => r + g,
                None => g,
            });
        }
        sink(grads);
    }
    grad_in
}

/// Whether `m` holds a parameter that requires a gradient.
fn has_trainable<B: Backend, M: Module<B>>(m: &M) -> bool {
    struct Any(bool);
    impl<B: Backend> ModuleVisitor<B> for Any {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0 |= p.is_require_grad();
        }
    }
    let mut a = Any(false);
    m.visit(&mut a);
    a.0
}

/// Runs `segs` from `x`, then `head` and `loss_of`, then the backward sweep.
fn run_chain<B: AutodiffBackend>(
    (model, detached): (&M<B>, &M<B>),
    segs: &[Segment<'_, B>],
    x: InnerT<B>,
    recompute: bool,
    head: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    loss_of: &mut LossOf<'_, B>,
    sink: &mut GradSink<'_, B>,
) {
    let mut x = x;
    let mut grad = false;
    let mut kept: Vec<Option<Kept<B>>> = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        if !(grad || seg.trainable) {
            // Nothing before or in it trains: a constant.
            x = seg.run(detached, x);
            kept.push(None);
            continue;
        }
        // The last segment would be recomputed right away: record it instead.
        if recompute && i + 1 < segs.len() {
            let dropout = Box::new(DropoutState::now());
            let out = seg.run(detached, x.clone());
            kept.push(Some(Kept::Input {
                x,
                grad_in: grad,
                dropout,
            }));
            x = out;
        } else {
            let rec = seg.record(model, x, grad);
            x = rec.out.clone().inner();
            kept.push(Some(Kept::Graph(rec)));
        }
        grad = true;
    }
    let h = leaf::<B, 2>(x, grad);
    let mut grads = loss_of(head(h.clone())).backward();
    let mut g = h.grad_remove(&mut grads);
    sink(grads);
    for (seg, k) in segs.iter().zip(kept).rev() {
        let (Some(k), Some(g_out)) = (k, g.take()) else {
            break;
        };
        let rec = match k {
            Kept::Graph(r) => r,
            Kept::Input {
                x,
                grad_in,
                dropout,
            } => with_dropout_state(&dropout, || seg.record(model, x, grad_in)),
        };
        g = backward(rec, g_out, sink);
    }
}

/// Without recompute, a pass whose attention probabilities (f32, every decoder layer and
/// full-attention ViT block) stay under this size is recorded as one graph with Burn's
/// batched attention: at short sequences the segments' extra backward calls and the
/// blockwise attention cost more time than the scores cost memory (the 20-epoch tiny
/// `cls11` ran 1.33× slower end to end through segments). The seed's workload (1280 image
/// tokens, 5120 patches) holds gigabytes of scores and always takes the segments.
pub const WHOLE_GRAPH_ATTENTION_BYTES: usize = 64 << 20;

/// f32 bytes of the attention probabilities a recorded plain forward of `inputs` keeps:
/// decoder layers × batch × heads × seq², plus full-attention ViT blocks × heads × Σ
/// patches² (full attention is per image); windowed blocks are batched in both paths.
pub fn attention_score_bytes<B: Backend>(cfg: &ModelConfig, inputs: &ModelInputs<B>) -> usize {
    let [b, s] = inputs.input_ids.dims();
    let text = cfg.text.num_hidden_layers * b * cfg.text.num_attention_heads * s * s;
    let per_image: usize = inputs
        .image_grid_thw
        .iter()
        .map(|g| g.iter().product::<usize>().pow(2))
        .sum();
    let vision = cfg.vision.fullatt_block_indexes.len() * cfg.vision.num_heads * per_image;
    (text + vision) * 4
}

/// Runs `f` in this thread's dropout stream, opening one seeded from the backend RNG when
/// none is set (so `B::seed` keeps a bare pass reproducible).
fn in_dropout_stream<B: Backend, R>(device: &B::Device, f: impl FnOnce() -> R) -> R {
    if DropoutState::now().is_set() {
        f()
    } else {
        with_dropout_stream(backend_seed::<B>(device), f)
    }
}

impl<B: AutodiffBackend> SeqClassifier<B> {
    /// One training forward and backward of `inputs`: `loss_of` maps the logits to the
    /// scalar to differentiate; the gradients of every trainable parameter reach `sink`
    /// (summing to those of `loss_of(self.forward(inputs))`). With `recompute` (ms-swift's
    /// `gradient_checkpointing`), or when the attention scores would exceed
    /// [`WHOLE_GRAPH_ATTENTION_BYTES`], this is [`Self::segmented_pass`]; otherwise one
    /// recorded graph of `forward`.
    pub fn train_pass(
        &self,
        inputs: &ModelInputs<Inner<B>>,
        recompute: bool,
        loss_of: &mut LossOf<'_, B>,
        sink: &mut GradSink<'_, B>,
    ) -> Result<(), ModelError> {
        in_dropout_stream::<B, _>(&inputs.input_ids.device(), || {
            if recompute
                || attention_score_bytes(&self.config, inputs) > WHOLE_GRAPH_ATTENTION_BYTES
            {
                return self.segments(inputs, recompute, loss_of, sink);
            }
            let loss = loss_of(self.forward(&ModelInputs::from_inner(inputs))?);
            sink(loss.backward());
            Ok(())
        })
    }

    /// The training pass in segments (see the module doc), whatever the sequence length:
    /// gradient checkpointing when `recompute`, memory-efficient attention always; the
    /// gradients reach `sink` in several parts.
    ///
    /// LoRA dropout draws from this thread's dropout stream (`lora::with_dropout_stream`);
    /// without one, the pass opens a stream seeded from the backend RNG.
    pub fn segmented_pass(
        &self,
        inputs: &ModelInputs<Inner<B>>,
        recompute: bool,
        loss_of: &mut LossOf<'_, B>,
        sink: &mut GradSink<'_, B>,
    ) -> Result<(), ModelError> {
        in_dropout_stream::<B, _>(&inputs.input_ids.device(), || {
            self.segments(inputs, recompute, loss_of, sink)
        })
    }

    /// The segments of [`Self::segmented_pass`], in the caller's dropout stream.
    fn segments(
        &self,
        inputs: &ModelInputs<Inner<B>>,
        recompute: bool,
        loss_of: &mut LossOf<'_, B>,
        sink: &mut GradSink<'_, B>,
    ) -> Result<(), ModelError> {
        let detached = &self.clone().no_grad();
        let host = host_batch(inputs)?;
        let device = inputs.input_ids.device();
        let cfg = &self.config;
        let hidden = cfg.text.hidden_size;
        let (b, s) = (host.batch, host.seq);
        let rows = host.last_tokens()?;
        let grids = &inputs.image_grid_thw;
        // Counts checked up front: the segments cannot fail.
        let n_feats = inputs.pixel_values.as_ref().map(|_| {
            grids
                .iter()
                .map(|g| g.iter().product::<usize>())
                .sum::<usize>()
                / cfg.vision.merge_unit()
        });
        host.image_rows(cfg.tokens.image_token_id as i64, n_feats)?;
        let plan = inputs
            .pixel_values
            .as_ref()
            .map(|_| VisionPlan::<B>::new(grids, &cfg.vision, &device));
        let rope = self.text_rope(grids, &host, &device)?;
        let mask = AttnMask::Causal {
            keep: host.mask.iter().map(|&m| m == 1).collect(),
        };
        let ids = Tensor::<B, 2, burn::tensor::Int>::from_inner(inputs.input_ids.clone());
        let embeds = detached
            .language_model
            .embed(ids)
            .reshape([b * s, hidden])
            .inner();

        let mut segs = Vec::new();
        let x = match (&inputs.pixel_values, &plan) {
            (Some(px), Some(plan)) => {
                self.vision_segments(plan, &mut segs);
                segs.push(merge_segment(embeds, &host));
                detached
                    .visual
                    .block_input(Tensor::from_inner(px.clone()), plan)
                    .inner()
            }
            _ => embeds,
        };
        self.text_segments(&rope, &mask, [b, s], &mut segs);
        let head = |h: Tensor<B, 2>| self.head(h, rows.clone());
        run_chain((self, detached), &segs, x, recompute, &head, loss_of, sink);
        Ok(())
    }

    /// ViT blocks (full-attention ones split at their attention) and the merger.
    fn vision_segments<'a>(&self, plan: &'a VisionPlan<B>, segs: &mut Vec<Segment<'a, B>>) {
        for (i, blk) in self.visual.blocks.iter().enumerate() {
            let trainable = has_trainable(blk);
            if !self.visual.is_full_attention(i) {
                segs.push(Segment {
                    trainable,
                    body: Body::Plain(Box::new(move |m, x| {
                        m.visual.blocks[i].forward(x, plan, false)
                    })),
                });
                continue;
            }
            let groups = plan.groups(true);
            segs.push(Segment {
                trainable,
                body: Body::Attention {
                    masks: vec![AttnMask::Full; groups.bucket_spans().len()],
                    pre: Box::new(move |m, x| image_qkv(&m.visual.blocks[i], x, groups)),
                    post: Box::new(move |m, x, o| image_finish(&m.visual.blocks[i], x, o, groups)),
                },
            });
        }
        segs.push(Segment {
            trainable: has_trainable(&self.visual.merger),
            body: Body::Plain(Box::new(move |m, x| m.visual.merge(x, plan))),
        });
    }

    /// Decoder layers, split at their attention; activations flat `[b·s, hidden]`.
    fn text_segments<'a>(
        &self,
        rope: &'a TextRope<B>,
        mask: &AttnMask,
        bs: [usize; 2],
        segs: &mut Vec<Segment<'a, B>>,
    ) {
        for (j, l) in self.language_model.layers.iter().enumerate() {
            segs.push(Segment {
                trainable: has_trainable(l),
                body: Body::Attention {
                    masks: vec![mask.clone()],
                    pre: Box::new(move |m, x| layer_qkv(&m.language_model.layers[j], x, rope, bs)),
                    post: Box::new(move |m, x, o| {
                        layer_finish(&m.language_model.layers[j], x, o, bs)
                    }),
                },
            });
        }
    }
}

/// Image features → decoder input (the token embeddings are constants).
fn merge_segment<'a, B: AutodiffBackend>(embeds: InnerT<B>, host: &'a HostBatch) -> Segment<'a, B> {
    let embeds = Tensor::<B, 2>::from_inner(embeds);
    Segment {
        trainable: false,
        body: Body::Plain(Box::new(move |m, f| {
            m.decoder_input(embeds.clone(), Some(f), host)
                .expect("feature count checked by train_pass")
        })),
    }
}

/// q, k, v `[segments, heads, len, head_dim]` of each bucket of a full-attention block.
fn image_qkv<B: Backend>(
    blk: &VisionBlock<B>,
    x: Tensor<B, 2>,
    groups: &DeviceGroups<B>,
) -> Vec<[Tensor<B, 4>; 3]> {
    let [q, k, v] = blk.attention_inputs(x, groups);
    groups
        .bucket_spans()
        .into_iter()
        .map(|(off, n, len)| {
            let t = |t: &Tensor<B, 3>| segments(t, off, n, len);
            [t(&q), t(&k), t(&v)]
        })
        .collect()
}

fn image_finish<B: Backend>(
    blk: &VisionBlock<B>,
    x: Tensor<B, 2>,
    o: Vec<Tensor<B, 4>>,
    groups: &DeviceGroups<B>,
) -> Tensor<B, 2> {
    let mut o: Vec<_> = o.into_iter().map(unsegment).collect();
    let o = if o.len() == 1 {
        o.pop().expect("one bucket")
    } else {
        Tensor::cat(o, 0)
    };
    blk.finish(x, o, groups)
}

fn layer_qkv<B: Backend>(
    l: &DecoderLayer<B>,
    x: Tensor<B, 2>,
    rope: &TextRope<B>,
    [b, s]: [usize; 2],
) -> Vec<[Tensor<B, 4>; 3]> {
    let hidden = x.dims()[1];
    vec![l.attention_inputs(x.reshape([b, s, hidden]), rope)]
}

fn layer_finish<B: Backend>(
    l: &DecoderLayer<B>,
    x: Tensor<B, 2>,
    mut o: Vec<Tensor<B, 4>>,
    [b, s]: [usize; 2],
) -> Tensor<B, 2> {
    let hidden = x.dims()[1];
    let o = o.pop().expect("one attention call per layer");
    l.finish(x.reshape([b, s, hidden]), o)
        .reshape([b * s, hidden])
}
