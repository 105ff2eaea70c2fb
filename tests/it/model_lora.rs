//! LoRA: PEFT parity (logits of a PEFT-wrapped transformers model with random A and B),
//! the merged export, the dense reference `x·(W + s·B·A)ᵀ + b`, target selection, freezing
//! and gradients under Autodiff.

use crate::model_support as support;

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor, TensorData};
use pipeline::model::inputs::{PaddingSide, SampleInputs, collate};
use pipeline::model::lora::{LoraLinear, LoraSpec, TargetSelector};
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use support::{B, Fixture, assert_close, golden_dir, golden_inputs, to_vec};

fn tiny_a() -> SeqClassifier<B> {
    load_classifier_from::<B>(
        WeightsSource::Dir(&golden_dir().join("tiny_a")),
        5,
        DType::F32,
        0,
        &Default::default(),
    )
    .unwrap()
}

/// The PEFT fixture's adapters loaded onto tiny_a.
fn with_peft_adapter() -> SeqClassifier<B> {
    let fx = Fixture::open("lora_a.safetensors");
    let mut adapters = Vec::new();
    for k in fx.keys() {
        if let Some(name) = k.strip_suffix(".lora_A") {
            adapters.push((
                name.to_string(),
                fx.tensor2(&k),
                fx.tensor2(&format!("{name}.lora_B")),
            ));
        }
    }
    assert_eq!(
        adapters.len(),
        2 * 7 + 3 * 5,
        "LLM 2 layers × 7 + ViT 3 blocks × 5"
    );
    tiny_a()
        .load_lora_weights(
            &LoraSpec::new(4, 8.0, TargetSelector::all_linear(true, false, true)),
            adapters,
            Some(fx.tensor2("score.weight")),
        )
        .unwrap()
}

#[test]
fn lora_logits_match_peft() {
    let model = with_peft_adapter();
    let fx = Fixture::open("lora_a.safetensors");
    for side in ["left", "right"] {
        let got = to_vec(model.forward(&golden_inputs(side)).unwrap());
        assert_close(
            &format!("{side} PEFT logits"),
            &got,
            &fx.values(&format!("{side}.logits")),
            1e-4,
        );
    }
}

/// `merged_state` written as a hub checkpoint loads back and reproduces the PEFT logits.
#[test]
fn merged_state_reloads_with_same_logits() {
    let model = with_peft_adapter();
    let state = model.merged_state();
    assert!(
        state
            .iter()
            .all(|(k, _)| !k.starts_with("lm_head") && !k.contains("language_model"))
    );
    assert!(state.iter().any(|(k, _)| k == "score.weight"));
    assert!(
        state
            .iter()
            .any(|(k, _)| k == "visual.blocks.0.attn.qkv.weight")
    );
    assert!(
        state
            .iter()
            .any(|(k, _)| k == "model.layers.1.mlp.down_proj.weight")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden_dir().join("tiny_a/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = state
        .iter()
        .map(|(k, d)| {
            assert_eq!(d.dtype, DType::F32, "{k}");
            let shape: Vec<usize> = d.shape.to_vec();
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, d.as_bytes())
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let merged = load_classifier_from::<B>(
        WeightsSource::Dir(dir.path()),
        5,
        DType::F32,
        0,
        &Default::default(),
    )
    .unwrap();
    let fx = Fixture::open("lora_a.safetensors");
    let got = to_vec(merged.forward(&golden_inputs("left")).unwrap());
    assert_close(
        "merged logits vs PEFT",
        &got,
        &fx.values("left.logits"),
        1e-4,
    );
}

/// `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` against a dense f64 reference with `W + s·B·A`.
#[test]
fn lora_linear_matches_dense_reference() {
    let dev = Default::default();
    let (n, d_in, d_out, r) = (5, 12, 7, 3);
    let rnd = |k: usize, salt: usize| -> Vec<f32> {
        (0..k)
            .map(|i| (((i * 7919 + salt * 104729) % 1000) as f32 / 500.0 - 1.0) * 0.7)
            .collect()
    };
    let (w, b, a, bb, x) = (
        rnd(d_out * d_in, 1),
        rnd(d_out, 2),
        rnd(r * d_in, 3),
        rnd(d_out * r, 4),
        rnd(n * d_in, 5),
    );
    let t2 = |v: &Vec<f32>, s: [usize; 2]| {
        Tensor::<B, 2>::from_data(TensorData::new(v.clone(), s), (&dev, DType::F32))
    };
    let s = LoraSpec::new(r, 6.0, TargetSelector::all_linear(true, true, true));
    let lin = LoraLinear::from_tensors(
        t2(&w, [d_out, d_in]),
        Some(Tensor::from_data(TensorData::new(b.clone(), [d_out]), &dev)),
    )
    .with_adapter(&s, t2(&a, [r, d_in]), t2(&bb, [d_out, r]));
    let got = to_vec(lin.forward(t2(&x, [n, d_in]).reshape([1, n, d_in])));
    let scaling = s.scaling();
    assert_eq!(scaling, 2.0);
    let mut want = vec![0f64; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            let mut acc = b[o] as f64;
            for k in 0..d_in {
                let ba: f64 = (0..r)
                    .map(|j| bb[o * r + j] as f64 * a[j * d_in + k] as f64)
                    .sum();
                acc += x[i * d_in + k] as f64 * (w[o * d_in + k] as f64 + scaling * ba);
            }
            want[i * d_out + o] = acc;
        }
    }
    assert_close("LoraLinear vs dense", &got, &want, 1e-5);
    assert_close(
        "merged weight",
        &to_vec(lin.merged_weight()),
        &{
            let mut m = vec![0f64; d_out * d_in];
            for o in 0..d_out {
                for k in 0..d_in {
                    m[o * d_in + k] = w[o * d_in + k] as f64
                        + scaling
                            * (0..r)
                                .map(|j| bb[o * r + j] as f64 * a[j * d_in + k] as f64)
                                .sum::<f64>();
                }
            }
            m
        },
        1e-5,
    );
}

fn tiny_preset<Bk: burn::tensor::backend::Backend>(seed: u64) -> SeqClassifier<Bk> {
    load_classifier_from::<Bk>(
        WeightsSource::Preset("tiny"),
        3,
        DType::F32,
        seed,
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn all_linear_target_counts_and_parameter_counts() {
    let m = tiny_preset::<B>(1);
    // tiny: 4 LLM layers × 7, 4 ViT blocks × 5, merger 2.
    assert_eq!(m.linear_names().len(), 28 + 20 + 2);
    let cases = [
        (TargetSelector::all_linear(false, false, true), 28),
        (TargetSelector::all_linear(true, false, true), 48),
        (TargetSelector::all_linear(true, true, true), 50),
    ];
    for (sel, n) in cases {
        let l = tiny_preset::<B>(1)
            .apply_lora(&LoraSpec::new(8, 16.0, sel.clone()), 3)
            .unwrap();
        assert_eq!(l.lora_weights().len(), n, "{sel:?}");
    }
    let l = tiny_preset::<B>(1)
        .apply_lora(
            &LoraSpec::new(8, 16.0, TargetSelector::all_linear(true, false, true)),
            3,
        )
        .unwrap();
    // r·(in + out) per adapter + score [3, 128].
    let mut expect = 3 * 128;
    for (_, a, b) in l.lora_weights() {
        let (r, d_in, d_out) = (a.dims()[0], a.dims()[1], b.dims()[0]);
        assert_eq!(r, 8);
        expect += r * (d_in + d_out);
    }
    assert_eq!(l.trainable_params(), expect);
    assert_eq!(l.total_params(), m.total_params() + expect - 3 * 128);
    let names = l
        .lora_weights()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect::<Vec<_>>();
    assert!(names.contains(&"model.language_model.layers.0.self_attn.q_proj".to_string()));
    assert!(names.contains(&"model.visual.blocks.3.attn.qkv".to_string()));
    assert!(!names.iter().any(|n| n.contains("merger")));
}

#[test]
fn selectors_by_name_and_regex() {
    let by_name = tiny_preset::<B>(1)
        .apply_lora(
            &LoraSpec::new(
                2,
                4.0,
                TargetSelector::Names(vec!["q_proj".into(), "qkv".into()]),
            ),
            0,
        )
        .unwrap();
    assert_eq!(by_name.lora_weights().len(), 4 + 4);
    let re =
        TargetSelector::Regex(r"model\.language_model\.layers\.[01]\.mlp\.(up|down)_proj".into());
    assert_eq!(
        tiny_preset::<B>(1)
            .apply_lora(&LoraSpec::new(2, 4.0, re), 0)
            .unwrap()
            .lora_weights()
            .len(),
        4
    );
    let err = tiny_preset::<B>(1)
        .apply_lora(
            &LoraSpec::new(2, 4.0, TargetSelector::Names(vec!["qkv_proj".into()])),
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"qkv_proj\"") && err.contains("model.visual.blocks.*.attn.qkv"),
        "{err}"
    );
}

/// Same seed → same A; B starts at zero, so LoRA does not change the logits at init.
#[test]
fn init_is_deterministic_and_neutral() {
    let s = LoraSpec::new(4, 8.0, TargetSelector::all_linear(true, false, true));
    let a1 = tiny_preset::<B>(1).apply_lora(&s, 9).unwrap();
    let a2 = tiny_preset::<B>(1).apply_lora(&s, 9).unwrap();
    let a3 = tiny_preset::<B>(1).apply_lora(&s, 10).unwrap();
    let (w1, w2, w3) = (a1.lora_weights(), a2.lora_weights(), a3.lora_weights());
    let (v1, v2, v3) = (
        to_vec(w1[0].1.clone()),
        to_vec(w2[0].1.clone()),
        to_vec(w3[0].1.clone()),
    );
    assert_eq!(v1, v2);
    assert_ne!(v1, v3);
    // kaiming_uniform(a=√5): U(-1/√in, 1/√in).
    let bound = 1.0 / (w1[0].1.dims()[1] as f64).sqrt();
    assert!(v1.iter().all(|v| v.abs() <= bound) && v1.iter().any(|v| v.abs() > 0.8 * bound));
    assert!(to_vec(w1[0].2.clone()).iter().all(|&v| v == 0.0));
    let sample = SampleInputs {
        input_ids: vec![257, 1, 2, 3, 258],
        ..Default::default()
    };
    let x = collate::<B>(&[&sample], 256, PaddingSide::Right, &Default::default());
    let base = to_vec(tiny_preset::<B>(1).forward(&x).unwrap());
    assert_eq!(to_vec(a1.forward(&x).unwrap()), base);
}

/// Under Autodiff only the adapters and `score` receive gradients.
#[test]
fn only_adapters_and_score_get_gradients() {
    type AB = Autodiff<B>;
    let m = tiny_preset::<AB>(1)
        .apply_lora(
            &LoraSpec::new(4, 8.0, TargetSelector::all_linear(true, false, true)),
            2,
        )
        .unwrap();
    let px: Vec<f32> = (0..16 * 1176)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    let mut ids = vec![257, 259];
    ids.extend([261; 4]);
    ids.extend([260, 65, 66, 258]);
    let sample = SampleInputs {
        input_ids: ids,
        pixel_rows: px,
        grids: vec![[1, 4, 4]],
    };
    let x = collate::<AB>(
        &[&sample, &sample],
        256,
        PaddingSide::Right,
        &Default::default(),
    );
    let loss = m.forward(&x).unwrap().sum();
    let grads = loss.backward();
    let (name, a, b) = &m.lora_weights()[0];
    // B = 0 at init: dL/dB ≠ 0, dL/dA = 0.
    let gb = b
        .grad(&grads)
        .unwrap_or_else(|| panic!("{name}: no grad for lora_B"));
    assert!(to_vec(gb).iter().any(|v| v.abs() > 0.0));
    assert!(
        m.score_weight().grad(&grads).is_some(),
        "score must be trainable"
    );
    assert!(a.grad(&grads).is_some());
    let base = m.language_model.layers[0].self_attn.q_proj.weight.val();
    assert!(
        base.grad(&grads).is_none(),
        "frozen base weight got a gradient"
    );
    assert!(m.language_model.embed_tokens.val().grad(&grads).is_none());
    assert!(m.visual.patch_embed.val().grad(&grads).is_none());
}
