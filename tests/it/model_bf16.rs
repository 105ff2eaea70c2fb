//! Mixed precision on the CPU backend: the frozen base in bf16, LoRA A/B and the score head's
//! master weight in f32; the head computes in bf16 as ms-swift's does (explicit casts at the
//! adapter and head boundaries; Burn has no dtype promotion). A
//! forward and a backward of the tiny preset run and stay within documented tolerances of the
//! same weights in f32.
//!
//! Tolerances (relative L2, ‖bf16 − f32‖ / ‖f32‖): bf16 keeps 8 mantissa bits (relative
//! rounding 2⁻⁹ ≈ 2e-3 per op); through 4 ViT blocks, 4 decoder layers, attention softmax in
//! bf16 (Burn's decomposed attention keeps the input dtype, transformers' eager path upcasts
//! the softmax) and the final norm, the logits drift ~1e-2 and the gradients a few 1e-2.
//! Observed on this preset (Flex, 2 threads): logits 1.07e-2, loss 1.0e-3, worst gradient
//! 2.6e-2 (a layer-2 `q_proj.lora_A`); the bounds are ~3× those.

use crate::model_support as support;

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor, TensorData};
use pipeline::bench::workload::{bench_sample, lora_spec};
use pipeline::model::inputs::{PaddingSide, collate};
use pipeline::model::presets::preset_config;
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use support::{B, rel_l2, to_vec, with_random_adapters};

type AB = Autodiff<B>;

const TOL_LOGITS: f64 = 3e-2;
const TOL_LOSS: f64 = 3e-3;
const TOL_GRAD: f64 = 6e-2;

/// Tiny preset in `dtype` with the same f32 adapters (A and B random, so every LoRA branch and
/// every A/B gradient is non-zero) and dropout 0.
fn model(dtype: DType) -> SeqClassifier<AB> {
    let device = Default::default();
    let base =
        load_classifier_from::<AB>(WeightsSource::Preset("tiny"), 11, dtype, 0, &device).unwrap();
    let mut spec = lora_spec(8, false);
    spec.dropout = 0.0;
    with_random_adapters(base, &spec, 7, &device)
}

/// Logits, loss and the gradients of every trainable tensor (score first, then A/B in module
/// order), with their dtypes.
struct Pass {
    logits: Vec<f64>,
    loss: f64,
    grads: Vec<(String, DType, Vec<f64>)>,
}

fn pass(m: &SeqClassifier<AB>) -> Pass {
    let m = &support::fresh_leaves(m);
    let x = collate::<AB>(
        &[&sample(), &sample()],
        0,
        PaddingSide::Right,
        &Default::default(),
    );
    let logits = m.forward(&x).unwrap();
    let loss = loss_of(logits.clone());
    let grads = loss.backward();
    Pass {
        logits: to_vec(logits),
        loss: to_vec(loss)[0],
        grads: gradients(m, &mut |t| t.grad(&grads)),
    }
}

/// The same through the training pass (segments, memory-efficient attention, recompute).
fn segmented_pass(m: &SeqClassifier<AB>) -> Pass {
    let m = &support::fresh_leaves(m);
    let x = collate::<B>(
        &[&sample(), &sample()],
        0,
        PaddingSide::Right,
        &Default::default(),
    );
    let (mut logits, mut loss) = (vec![], 0.0);
    let mut parts = Vec::new();
    m.segmented_pass(
        &x,
        true,
        &mut |l| {
            logits = to_vec(l.clone());
            let v = loss_of(l);
            loss = to_vec(v.clone())[0];
            v
        },
        &mut |g| parts.push(g),
    )
    .unwrap();
    let grads = gradients(m, &mut |t| parts.iter().find_map(|g| t.grad(g)));
    Pass {
        logits,
        loss,
        grads,
    }
}

fn sample() -> pipeline::model::inputs::SampleInputs {
    bench_sample(&preset_config("tiny").unwrap(), 12_544, 40, 0)
}

type Grad = Option<Tensor<B, 2>>;

/// Score first, then A/B in module order, with their dtypes.
fn gradients(
    m: &SeqClassifier<AB>,
    grad: &mut dyn FnMut(&Tensor<AB, 2>) -> Grad,
) -> Vec<(String, DType, Vec<f64>)> {
    let mut out = Vec::new();
    let g = grad(&m.score_weight()).expect("score gradient");
    out.push(("score".to_string(), g.dtype(), to_vec(g)));
    for (n, a, b) in m.lora_weights() {
        for (label, t) in [("A", a), ("B", b)] {
            let g = grad(&t).unwrap_or_else(|| panic!("{n}.{label}: no gradient"));
            out.push((format!("{n}.lora_{label}"), g.dtype(), to_vec(g)));
        }
    }
    out
}

fn loss_of(logits: Tensor<AB, 2>) -> Tensor<AB, 1> {
    assert_eq!(logits.dtype(), DType::F32);
    let target = Tensor::<AB, 2>::from_data(
        TensorData::new(
            (0..22)
                .map(|i| if i % 11 == 3 { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            [2, 11],
        ),
        (&Default::default(), DType::F32),
    );
    (burn::tensor::activation::log_softmax(logits, 1) * target)
        .sum()
        .neg()
        .div_scalar(2.0)
}

#[test]
fn bf16_base_with_f32_adapters_tracks_f32() {
    let m32 = model(DType::F32);
    let m16 = model(DType::BF16);
    assert_eq!(m16.dtype(), DType::BF16);
    assert_eq!(
        m16.language_model.layers[0]
            .mlp
            .up_proj
            .weight
            .val()
            .dtype(),
        DType::BF16
    );
    assert_eq!(m16.score_weight().dtype(), DType::F32);
    for (n, a, b) in m16.lora_weights() {
        assert_eq!((a.dtype(), b.dtype()), (DType::F32, DType::F32), "{n}");
    }
    let p32 = pass(&m32);
    compare(&pass(&m16), &p32);
    // The training pass (bf16 LoRA matmuls, f32 attention softmax) within the same bounds,
    // and its f32 run equal to the plain graph's within the memory-efficient attention's
    // 1e-5 (tests/it/model_train_pass.rs).
    compare(&segmented_pass(&m16), &p32);
    let s32 = segmented_pass(&m32);
    for ((n, _, g), (_, _, w)) in s32.grads.iter().zip(&p32.grads) {
        assert!(
            rel_l2(g, w) <= 1e-5,
            "{n}: training pass f32 vs plain graph"
        );
    }
}

fn compare(p16: &Pass, p32: &Pass) {
    let d = rel_l2(&p16.logits, &p32.logits);
    println!(
        "logits: rel L2 {d:.3e} (max |logit| {:.3})",
        max_abs(&p32.logits)
    );
    assert!(d <= TOL_LOGITS, "logits drift {d:e} > {TOL_LOGITS:e}");
    let dl = (p16.loss - p32.loss).abs() / p32.loss.abs();
    println!(
        "loss: f32 {:.6} bf16 {:.6} rel {dl:.3e}",
        p32.loss, p16.loss
    );
    assert!(dl <= TOL_LOSS, "loss drift {dl:e}");
    assert_eq!(p16.grads.len(), p32.grads.len());
    let mut worst = (0.0f64, String::new());
    for ((n, dt, g16), (_, _, g32)) in p16.grads.iter().zip(&p32.grads) {
        // Trainable tensors and their gradients stay f32 in the bf16 model.
        assert_eq!(*dt, DType::F32, "{n}");
        let d = rel_l2(g16, g32);
        if d > worst.0 {
            worst = (d, n.clone());
        }
    }
    println!("gradients: worst rel L2 {:.3e} ({})", worst.0, worst.1);
    assert!(
        worst.0 <= TOL_GRAD,
        "gradient drift {:e} at {}",
        worst.0,
        worst.1
    );
    // The adapters really are in the graph: gradients are non-trivial.
    assert!(
        p16.grads
            .iter()
            .all(|(_, _, g)| g.iter().any(|&x| x != 0.0))
    );
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}
