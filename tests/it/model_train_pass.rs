//! The segmented training pass (`SeqClassifier::train_pass`): gradient checkpointing and the
//! memory-efficient attention give the gradients of the plain autodiff graph of
//! `forward` + loss (Burn's decomposed attention, everything recorded), on the golden
//! fixture model with its padded batches.
//!
//! Tolerances: checkpointing on and off are bit-identical (the recompute replays the same
//! kernels with the same dropout masks), far inside the 1e-6 asked of gradient
//! checkpointing. Against the plain graph, ≤ 1e-5 relative L2 per gradient tensor and on
//! the loss, the bound of the memory-efficient attention against the decomposed one: its
//! backward is FlashAttention's formula (`dS = P ∘ (dP − rowsum(dO ∘ O))`, `P` recomputed
//! from the log-sum-exp) instead of the chain rule through exp, sum and divide, which
//! rounds differently in f32 (observed: worst 8e-7 to 1.3e-6 on this model).

use crate::model_support as support;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};
use pipeline::model::inputs::ModelInputs;
use pipeline::model::lora::{LoraSpec, TargetSelector, with_dropout_stream};
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use pipeline::task::ProblemType;
use pipeline::train::loss::{self, Target};
use std::collections::BTreeMap;
use support::{B, fresh_leaves, golden_inputs, rel_l2, to_vec, with_random_adapters};

type AB = Autodiff<B>;
const TOL: f64 = 1e-5;

fn spec(vit: bool, dropout: f64) -> LoraSpec {
    LoraSpec {
        dropout,
        ..LoraSpec::new(4, 8.0, TargetSelector::all_linear(vit, vit, true))
    }
}

/// tiny_a (3 ViT blocks, one of them full attention; 2 decoder layers, GQA) with random
/// non-zero adapters on every targeted linear.
fn model(spec: &LoraSpec) -> SeqClassifier<AB> {
    let dev = Default::default();
    let base = load_classifier_from::<AB>(
        WeightsSource::Dir(&support::golden_dir().join("tiny_a")),
        5,
        DType::F32,
        0,
        &dev,
    )
    .unwrap();
    with_random_adapters(base, spec, 11, &dev)
}

fn loss_of(logits: Tensor<AB, 2>) -> Tensor<AB, 1> {
    let n = logits.dims()[0];
    let targets: Vec<Target> = (0..n).map(|i| Target::Class(i % 5)).collect();
    let refs: Vec<&Target> = targets.iter().collect();
    loss::loss(logits, &refs, ProblemType::SingleLabelClassification)
}

/// Loss and every trainable gradient by name.
struct Grads {
    loss: f64,
    by_name: BTreeMap<String, Vec<f64>>,
}

/// Move the gradients of `m`'s adapters and score out of `g` into `into`.
fn take(m: &SeqClassifier<AB>, g: &mut <AB as AutodiffBackend>::Gradients, into: &mut Grads) {
    let mut put = |name: String, t: Tensor<AB, 2>| {
        if let Some(v) = t.grad_remove(g) {
            assert!(
                into.by_name.insert(name.clone(), to_vec(v)).is_none(),
                "{name}: two gradients"
            );
        }
    };
    for (n, a, b) in m.lora_weights() {
        put(format!("{n}.A"), a);
        put(format!("{n}.B"), b);
    }
    put("score".into(), m.score_weight());
}

/// The plain graph: `forward`, loss, one backward.
fn plain(m: &SeqClassifier<AB>, x: &ModelInputs<B>) -> Grads {
    let m = &fresh_leaves(m);
    let loss = loss_of(m.forward(&ModelInputs::from_inner(x)).unwrap());
    let mut out = Grads {
        loss: to_vec(loss.clone())[0],
        by_name: BTreeMap::new(),
    };
    let mut g = loss.backward();
    take(m, &mut g, &mut out);
    out
}

fn segmented(m: &SeqClassifier<AB>, x: &ModelInputs<B>, recompute: bool) -> Grads {
    let m = &fresh_leaves(m);
    let mut out = Grads {
        loss: f64::NAN,
        by_name: BTreeMap::new(),
    };
    let mut loss = None;
    let mut parts = Vec::new();
    m.segmented_pass(
        x,
        recompute,
        &mut |logits| {
            let l = loss_of(logits);
            loss = Some(to_vec(l.clone())[0]);
            l
        },
        &mut |g| parts.push(g),
    )
    .unwrap();
    for mut g in parts {
        take(m, &mut g, &mut out);
    }
    out.loss = loss.expect("loss computed");
    out
}

fn assert_same(a: &Grads, b: &Grads) {
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "loss");
    assert_eq!(
        a.by_name.keys().collect::<Vec<_>>(),
        b.by_name.keys().collect::<Vec<_>>()
    );
    for (k, v) in &a.by_name {
        assert!(
            v == &b.by_name[k],
            "{k}: checkpointing changed the gradient"
        );
    }
}

/// Worst relative error of `got` against `want`, asserting the same tensors and ≤ [`TOL`].
fn assert_near(what: &str, got: &Grads, want: &Grads) -> f64 {
    let dl = (got.loss - want.loss).abs() / want.loss.abs();
    assert!(
        dl <= TOL,
        "{what}: loss {} vs {} ({dl:.2e})",
        got.loss,
        want.loss
    );
    assert_eq!(
        got.by_name.keys().collect::<Vec<_>>(),
        want.by_name.keys().collect::<Vec<_>>(),
        "{what}: same trainable tensors"
    );
    let mut worst = (0f64, String::new());
    for (k, w) in &want.by_name {
        assert!(
            w.iter().any(|&v| v != 0.0),
            "{what}: {k} has a zero gradient"
        );
        let e = rel_l2(&got.by_name[k], w);
        if e > worst.0 {
            worst = (e, k.clone());
        }
    }
    println!(
        "{what}: {} gradients, worst rel L2 {:.2e} ({})",
        want.by_name.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 <= TOL, "{what}: {} off by {:.2e}", worst.1, worst.0);
    worst.0
}

#[test]
fn checkpointed_pass_matches_the_plain_graph_on_padded_batches() {
    let m = model(&spec(true, 0.0));
    for side in ["left", "right"] {
        let x = golden_inputs(side);
        let want = plain(&m, &x);
        // Every adapter (ViT blocks, merger, decoder layers) and the score head.
        assert_eq!(want.by_name.len(), 2 * m.lora_weights().len() + 1);
        let on = segmented(&m, &x, true);
        let off = segmented(&m, &x, false);
        assert_same(&on, &off);
        assert_near(&format!("{side} padding"), &on, &want);
    }
}

/// `train_pass` without recompute records short sequences as one graph (the plain graph,
/// bit for bit, dropout included) and takes the segments above the size limit; with
/// recompute it always takes the segments.
#[test]
fn train_pass_picks_the_whole_graph_for_short_sequences() {
    use pipeline::model::train_pass::{WHOLE_GRAPH_ATTENTION_BYTES, attention_score_bytes};
    let m = model(&spec(true, 0.3));
    let x = golden_inputs("right");
    let cfg = m.config();
    let [b, s] = x.input_ids.dims();
    let patches: usize = x
        .image_grid_thw
        .iter()
        .map(|g| g.iter().product::<usize>().pow(2))
        .sum();
    let bytes = 4
        * (cfg.text.num_hidden_layers * b * cfg.text.num_attention_heads * s * s
            + cfg.vision.fullatt_block_indexes.len() * cfg.vision.num_heads * patches);
    assert_eq!(attention_score_bytes(cfg, &x), bytes);
    assert!(bytes < WHOLE_GRAPH_ATTENTION_BYTES);
    let pass = |recompute: bool| {
        let m = fresh_leaves(&m);
        let mut out = Grads {
            loss: f64::NAN,
            by_name: BTreeMap::new(),
        };
        let mut parts = Vec::new();
        with_dropout_stream(5, || {
            m.train_pass(
                &x,
                recompute,
                &mut |logits| {
                    let l = loss_of(logits);
                    out.loss = to_vec(l.clone())[0];
                    l
                },
                &mut |g| parts.push(g),
            )
        })
        .unwrap();
        (m, out, parts)
    };
    let (m1, mut whole, parts) = pass(false);
    assert_eq!(parts.len(), 1, "one graph, one backward");
    for mut g in parts {
        take(&m1, &mut g, &mut whole);
    }
    assert_same(&whole, &with_dropout_stream(5, || plain(&m, &x)));
    let (_, _, parts) = pass(true);
    assert!(parts.len() > 1, "recompute runs the segments");
}

/// LoRA dropout: the recompute redraws the forward's masks from the stream, so all three
/// passes see the same masks.
#[test]
fn recompute_redraws_the_same_dropout_masks() {
    let m = model(&spec(true, 0.3));
    let x = golden_inputs("right");
    let want = with_dropout_stream(5, || plain(&m, &x));
    let on = with_dropout_stream(5, || segmented(&m, &x, true));
    let off = with_dropout_stream(5, || segmented(&m, &x, false));
    assert_same(&on, &off);
    assert_near("dropout 0.3", &on, &want);
    // Other masks give other gradients (the masks are really in play).
    let other = with_dropout_stream(6, || segmented(&m, &x, true));
    assert!(rel_l2(&other.by_name["score"], &on.by_name["score"]) > 1e-3);
}

/// A frozen ViT runs once without a tape; only the LLM adapters and the score train.
#[test]
fn frozen_vision_tower() {
    let m = model(&spec(false, 0.0));
    let x = golden_inputs("left");
    let want = plain(&m, &x);
    assert!(want.by_name.keys().all(|k| !k.contains("visual")));
    let on = segmented(&m, &x, true);
    assert_same(&on, &segmented(&m, &x, false));
    assert_near("frozen ViT", &on, &want);
}

/// Text-only batch (no image): the pass starts at the decoder.
#[test]
fn text_only_batch() {
    let m = model(&spec(true, 0.0));
    let ids = vec![1i64, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let mask = vec![1i64, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    let t = |v: Vec<i64>| {
        Tensor::<B, 2, burn::tensor::Int>::from_data(
            TensorData::new(v, [2, 5]),
            &Default::default(),
        )
    };
    let x = ModelInputs {
        input_ids: t(ids),
        attention_mask: t(mask),
        pixel_values: None,
        image_grid_thw: vec![],
    };
    let want = plain(&m, &x);
    assert!(want.by_name.keys().all(|k| !k.contains("visual")));
    let on = segmented(&m, &x, true);
    assert_same(&on, &segmented(&m, &x, false));
    assert_near("text only", &on, &want);
}

/// Inputs the plain forward refuses are refused before anything runs.
#[test]
fn mismatched_image_tokens_are_an_error() {
    let m = model(&spec(true, 0.0));
    let mut x = golden_inputs("right");
    x.pixel_values = None;
    x.image_grid_thw.clear();
    let e = m
        .train_pass(&x, true, &mut loss_of, &mut |_| {
            panic!("no backward expected")
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image features and image tokens do not match"),
        "{e}"
    );
}
