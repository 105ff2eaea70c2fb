//! Adapters that PEFT saved (both transformers key layouts, regex and list
//! `target_modules`) load onto our model and give PEFT's logits; adapters that do not fit
//! are refused with the first mismatch named. References: `tools/fixtures/gen_interop.py`.

use crate::score_support;

use pipeline::adapter::apply::apply_adapter;
use pipeline::adapter::keys::KeyLayout;
use pipeline::adapter::read_peft_adapter;
use score_support::*;

fn reference_logits(key: &str) -> Vec<Vec<f64>> {
    reference_rows().iter().map(|r| floats(&r[key])).collect()
}

#[test]
fn base_model_reproduces_transformers_logits() {
    let model = fixture_model();
    let samples: Vec<_> = reference_rows()
        .iter()
        .map(|r| reference_sample(&model, r))
        .collect();
    let ours = batch_logits(&model, &samples, &Default::default());
    let diff = max_abs_diff(&ours, &reference_logits("base_logits"));
    eprintln!("base model vs transformers: max |Δlogit| = {diff:.2e}");
    assert!(diff < LOGIT_TOL, "max |Δlogit| = {diff:e}");
}

#[test]
fn peft_adapters_in_both_layouts_reproduce_peft_logits() {
    let expect = reference_logits("peft_logits");
    for (dir, layout) in [
        ("peft_new", KeyLayout::Current),
        ("peft_old", KeyLayout::Legacy),
    ] {
        let adapter = read_peft_adapter(&interop_dir().join(dir)).unwrap();
        assert_eq!(adapter.layout, layout, "{dir}");
        assert_eq!(
            adapter.modules.len(),
            24,
            "{dir}: 2 layers × 7 + 2 blocks × 5"
        );
        let model = apply_adapter(fixture_model(), &adapter).unwrap();
        let samples: Vec<_> = reference_rows()
            .iter()
            .map(|r| reference_sample(&model, r))
            .collect();
        let ours = batch_logits(&model, &samples, &Default::default());
        let diff = max_abs_diff(&ours, &expect);
        eprintln!("{dir} vs PEFT: max |Δlogit| = {diff:.2e}");
        assert!(diff < LOGIT_TOL, "{dir}: max |Δlogit| = {diff:e}");
    }
}

#[test]
fn adapter_for_another_model_is_refused_naming_the_first_mismatch() {
    use burn::tensor::DType;
    use pipeline::model::{WeightsSource, load_classifier_from};
    let adapter = read_peft_adapter(&interop_dir().join("peft_new")).unwrap();
    // The tiny preset has other dimensions than the fixture model.
    let tiny = load_classifier_from::<B>(
        WeightsSource::Preset("tiny"),
        3,
        DType::F32,
        0,
        &Default::default(),
    )
    .unwrap();
    let err = apply_adapter(tiny, &adapter).unwrap_err().to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("model.language_model.layers.0"),
        "{err}"
    );
    assert!(err.contains("lora_A") || err.contains("lora_B"), "{err}");

    // Same backbone, a 4-label head (the preset-free way: fixture weights, new head).
    let mut model = fixture_model();
    model.score = pipeline::model::lora::LoraLinear::from_tensors(
        burn::tensor::Tensor::zeros([4, 32], (&Default::default(), DType::F32)),
        None,
    );
    let err = apply_adapter(model, &adapter).unwrap_err().to_string();
    assert!(
        err.contains("3 labels") && err.contains("num_labels = 4"),
        "{err}"
    );
}
