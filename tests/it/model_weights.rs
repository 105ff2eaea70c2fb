//! Checkpoint loading: errors name the tensor, bf16 loading, seeded initialisation.

use crate::model_support as support;

use std::path::Path;

use burn::tensor::DType;
use pipeline::model::inputs::{PaddingSide, SampleInputs, collate};
use pipeline::model::{ModelError, SeqClassifier, WeightsSource, load_classifier_from};
use safetensors::SafeTensors;
use support::{B, assert_close, golden_dir, to_vec};

fn load_dir(dir: &Path, dtype: DType, seed: u64) -> Result<SeqClassifier<B>, ModelError> {
    load_classifier_from::<B>(WeightsSource::Dir(dir), 5, dtype, seed, &Default::default())
}

/// Copy tiny_a with its tensor map edited by `edit`.
fn edited_copy(
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> tempfile::TempDir {
    let src = golden_dir().join("tiny_a");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, dt, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_named() {
    let key = "model.layers.1.self_attn.k_proj.bias";
    let dir = edited_copy(|t| t.retain(|(k, ..)| k != key));
    let err = load_dir(dir.path(), DType::F32, 0)
        .expect_err("missing tensor must fail")
        .to_string();
    assert!(err.contains("missing tensor") && err.contains(key), "{err}");

    let dir = edited_copy(|t| {
        let extra = t.iter().find(|(k, ..)| k == key).unwrap().clone();
        t.push((
            "model.layers.9.self_attn.k_proj.bias".into(),
            extra.1,
            extra.2,
            extra.3,
        ));
    });
    let err = load_dir(dir.path(), DType::F32, 0)
        .expect_err("unexpected tensor must fail")
        .to_string();
    assert!(
        err.contains("unexpected") && err.contains("model.layers.9.self_attn.k_proj.bias"),
        "{err}"
    );

    let dir = edited_copy(|t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "model.norm.weight")
            .unwrap();
        e.2 = vec![32];
        e.3.truncate(32 * 4);
    });
    let err = load_dir(dir.path(), DType::F32, 0)
        .expect_err("mis-shaped tensor must fail")
        .to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("[32]") && err.contains("[64]"),
        "{err}"
    );

    // Without score.weight the head is seeded: same seed, same head; other seed, other head.
    let dir = edited_copy(|t| t.retain(|(k, ..)| k != "score.weight"));
    let s1 = to_vec(load_dir(dir.path(), DType::F32, 5).unwrap().score_weight());
    let s2 = to_vec(load_dir(dir.path(), DType::F32, 5).unwrap().score_weight());
    let s3 = to_vec(load_dir(dir.path(), DType::F32, 6).unwrap().score_weight());
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    let std = (s1.iter().map(|v| v * v).sum::<f64>() / s1.len() as f64).sqrt();
    assert!(
        (0.01..0.04).contains(&std),
        "score init std {std} should be about 0.02"
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "qwen2_vl"}"#,
    )
    .unwrap();
    let err = load_dir(dir.path(), DType::F32, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("qwen2_vl") && err.contains("qwen2_5_vl"),
        "{err}"
    );
    let err = load_dir(&dir.path().join("nowhere"), DType::F32, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nowhere"), "{err}");
}

/// bf16 model: loads, runs, and stays close to the f32 model.
#[test]
fn bf16_load_runs_close_to_f32() {
    let dir = golden_dir().join("tiny_a");
    let m32 = load_dir(&dir, DType::F32, 0).unwrap();
    let m16 = load_dir(&dir, DType::BF16, 0).unwrap();
    assert_eq!(m16.dtype(), DType::BF16);
    let sample = SampleInputs {
        input_ids: vec![257, 10, 20, 30, 40, 258],
        ..Default::default()
    };
    let x = collate::<B>(&[&sample], 256, PaddingSide::Left, &Default::default());
    let (a, b) = (
        to_vec(m32.forward(&x).unwrap()),
        to_vec(m16.forward(&x).unwrap()),
    );
    assert_close("bf16 vs f32 logits", &b, &a, 0.1);
}

#[test]
fn presets_are_deterministic_in_the_seed() {
    let load = |seed| {
        load_classifier_from::<B>(
            WeightsSource::Preset("tiny"),
            3,
            DType::F32,
            seed,
            &Default::default(),
        )
        .unwrap()
    };
    let (a, b, c) = (load(1), load(1), load(2));
    let w = |m: &SeqClassifier<B>| to_vec(m.language_model.layers[2].mlp.up_proj.weight.val());
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    let v = w(&a);
    let std = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.002, "init std {std}");
    // Norms are ones, biases zeros.
    assert!(
        to_vec(a.visual.blocks[0].norm1.weight.val())
            .iter()
            .all(|&x| x == 1.0)
    );
    assert!(
        to_vec(a.visual.blocks[0].attn.qkv.bias.as_ref().unwrap().val())
            .iter()
            .all(|&x| x == 0.0)
    );
    let err = load_classifier_from::<B>(
        WeightsSource::Preset("huge"),
        3,
        DType::F32,
        0,
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("tiny"), "{err}");
}
