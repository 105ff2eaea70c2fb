//! What we export loads elsewhere: PEFT reads our adapter and transformers our merged
//! checkpoint with the same logits as our model (references in
//! `tests/fixtures/interop/ours_reference.json`, made by `gen_interop.py ours` from the files
//! `regenerate_ours` wrote), and our own loader reads the merged checkpoint back, sharded or
//! not, f32 or bf16.
//!
//! Regenerate after a format change:
//!   cargo test --release --test it export_interop::regenerate_ours -- --ignored
//!   python3 tools/fixtures/gen_interop.py ours

use crate::score_support;

use std::path::Path;

use burn::tensor::{DType, TensorData};
use pipeline::adapter::apply::{apply_adapter, model_shapes};
use pipeline::adapter::keys::KeyLayout;
use pipeline::adapter::{
    AdapterConfig, LoraPair, PeftAdapter, read_peft_adapter, write_peft_adapter,
};
use pipeline::export::hf_config::HeadSpec;
use pipeline::export::merged::{copy_processor_files, write_merged};
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use pipeline::safetensors_io::read_tensors;
use rand::{Rng, SeedableRng};
use score_support::*;

/// LoRA on a mix of modules (so the exported regex must be exact): LLM q/v/down, ViT qkv
/// and mlp.down_proj of block 1 only, merger mlp.0.
fn chosen(module: &str) -> bool {
    module.ends_with("self_attn.q_proj")
        || module.ends_with("self_attn.v_proj")
        || (module.starts_with("model.language_model") && module.ends_with("mlp.down_proj"))
        || module.ends_with("attn.qkv")
        || module == "model.visual.blocks.1.mlp.down_proj"
        || module == "model.visual.merger.mlp.0"
}

/// The fixture model with seeded random LoRA factors and head ("a trained adapter").
fn adapter_for(model: &SeqClassifier<B>, dir: &Path) -> PeftAdapter {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut uniform = |n: usize, scale: f32| {
        (0..n)
            .map(|_| rng.random_range(-scale..scale))
            .collect::<Vec<f32>>()
    };
    let r = 4;
    let modules: Vec<LoraPair> = model_shapes(model)
        .linears
        .into_iter()
        .filter(|(m, _)| chosen(m))
        .map(|(module, [out, inp])| LoraPair {
            module,
            a: TensorData::new(uniform(r * inp, 0.25), [r, inp]),
            b: TensorData::new(uniform(out * r, 0.25), [out, r]),
        })
        .collect();
    let names: Vec<String> = modules.iter().map(|p| p.module.clone()).collect();
    PeftAdapter {
        dir: dir.to_path_buf(),
        config: AdapterConfig::for_modules(r, 8.0, 0.05, false, &names, "../model"),
        modules,
        score: Some(TensorData::new(uniform(3 * 32, 0.4), [3, 32])),
        layout: KeyLayout::Current,
    }
}

fn head() -> HeadSpec<'static> {
    HeadSpec {
        num_labels: 3,
        problem_type: "single_label_classification",
        labels: None,
        pad_token_id: 256,
        torch_dtype: "float32",
    }
}

/// Write `ours/peft` and `ours/merged` (f32) under `root`, as the export stage does.
fn export_into(root: &Path, max_shard_bytes: u64) {
    let model_dir = interop_dir().join("model");
    let base = fixture_model();
    let adapter = adapter_for(&base, &root.join("peft"));
    write_peft_adapter(
        &root.join("peft"),
        &adapter.config,
        &adapter.modules,
        adapter.score.as_ref(),
    )
    .unwrap();
    let merged = apply_adapter(base, &adapter).unwrap();
    let config = read_json(&model_dir.join("config.json"));
    write_merged(
        &root.join("merged"),
        &merged,
        &config,
        &head(),
        max_shard_bytes,
    )
    .unwrap();
    copy_processor_files(&model_dir, &root.join("merged")).unwrap();
}

#[test]
#[ignore = "rewrites tests/fixtures/interop/ours; run by hand, then `gen_interop.py ours`"]
fn regenerate_ours() {
    let root = interop_dir().join("ours");
    let _ = std::fs::remove_dir_all(&root);
    export_into(&root, u64::MAX);
}

fn ours_reference(key: &str) -> Vec<Vec<f64>> {
    read_json(&interop_dir().join("ours_reference.json"))["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| floats(&r[key]))
        .collect()
}

fn logits_of(model: &SeqClassifier<B>) -> Vec<Vec<f64>> {
    let samples: Vec<_> = reference_rows()
        .iter()
        .map(|r| reference_sample(model, r))
        .collect();
    batch_logits(model, &samples, &Default::default())
}

fn load_dir(dir: &Path, dtype: DType) -> SeqClassifier<B> {
    load_classifier_from::<B>(WeightsSource::Dir(dir), 3, dtype, 0, &Default::default()).unwrap()
}

#[test]
fn committed_export_is_what_the_code_writes() {
    let tmp = tempfile::tempdir().unwrap();
    export_into(tmp.path(), u64::MAX);
    let ours = interop_dir().join("ours");
    for file in ["peft/adapter_model.safetensors", "merged/model.safetensors"] {
        let fresh = read_tensors(&tmp.path().join(file)).unwrap();
        let committed = read_tensors(&ours.join(file)).unwrap();
        assert_eq!(
            fresh, committed,
            "{file} differs: rerun regenerate_ours and `gen_interop.py ours`"
        );
    }
    for file in ["peft/adapter_config.json", "merged/config.json"] {
        assert_eq!(
            read_json(&tmp.path().join(file)),
            read_json(&ours.join(file)),
            "{file} differs"
        );
    }
}

#[test]
fn peft_loads_our_adapter_with_our_logits() {
    // Ours: the committed adapter read back and applied to the fixture model.
    let adapter = read_peft_adapter(&interop_dir().join("ours/peft")).unwrap();
    let model = apply_adapter(fixture_model(), &adapter).unwrap();
    let diff = max_abs_diff(&logits_of(&model), &ours_reference("peft_logits"));
    eprintln!("our adapter: ours vs PEFT max |Δlogit| = {diff:.2e}");
    assert!(diff < LOGIT_TOL, "max |Δlogit| = {diff:e}");
}

#[test]
fn transformers_loads_our_merged_checkpoint_with_our_logits() {
    let merged = load_dir(&interop_dir().join("ours/merged"), DType::F32);
    let diff = max_abs_diff(&logits_of(&merged), &ours_reference("merged_logits"));
    eprintln!("merged: ours vs transformers max |Δlogit| = {diff:.2e}");
    assert!(diff < LOGIT_TOL, "max |Δlogit| = {diff:e}");
}

#[test]
fn merged_checkpoint_round_trips_through_our_loader() {
    // Base + adapter, and the merged weights reloaded: the same function.
    let base = fixture_model();
    let adapter = adapter_for(&base, Path::new("unused"));
    let with_lora = apply_adapter(base, &adapter).unwrap();
    let expect = logits_of(&with_lora);

    let tmp = tempfile::tempdir().unwrap();
    let model_dir = interop_dir().join("model");
    let config = read_json(&model_dir.join("config.json"));
    // 60 kB shards force several files and an index.
    let files = write_merged(tmp.path(), &with_lora, &config, &head(), 60_000).unwrap();
    assert!(
        files.len() > 3 && files.last().unwrap() == "model.safetensors.index.json",
        "{files:?}"
    );
    let index = read_json(&tmp.path().join("model.safetensors.index.json"));
    let keys: Vec<&String> = index["weight_map"].as_object().unwrap().keys().collect();
    assert!(keys.iter().any(|k| *k == "score.weight"));
    assert!(
        keys.iter()
            .all(|k| !k.starts_with("lm_head") && !k.contains("lora")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("visual.blocks."))
            && keys.iter().any(|k| k.starts_with("model.layers."))
    );
    let reloaded = load_dir(tmp.path(), DType::F32);
    let diff = max_abs_diff(&logits_of(&reloaded), &expect);
    eprintln!("sharded merged reload: max |Δlogit| = {diff:.2e}");
    assert!(diff < 1e-5, "max |Δlogit| = {diff:e}");
    let cfg = read_json(&tmp.path().join("config.json"));
    assert_eq!(cfg["num_labels"], 3);
    assert_eq!(
        cfg["architectures"][0],
        "Qwen2_5_VLForConditionalGeneration"
    );
}

#[test]
fn bf16_merged_checkpoint_keeps_the_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = interop_dir().join("model");
    let base = load_dir(&model_dir, DType::BF16);
    let adapter = adapter_for(&fixture_model(), Path::new("unused"));
    let merged = apply_adapter(base, &adapter).unwrap();
    let mut h = head();
    h.torch_dtype = "bfloat16";
    write_merged(
        tmp.path(),
        &merged,
        &read_json(&model_dir.join("config.json")),
        &h,
        u64::MAX,
    )
    .unwrap();
    let tensors = read_tensors(&tmp.path().join("model.safetensors")).unwrap();
    assert!(
        tensors.iter().all(|(_, t)| t.dtype == DType::BF16),
        "every merged tensor is bf16"
    );
    assert_eq!(
        read_json(&tmp.path().join("config.json"))["torch_dtype"],
        "bfloat16"
    );
    // bf16 rounding of weights moves logits by a little, not a lot.
    let reloaded = load_dir(tmp.path(), DType::F32);
    let f32_lora = apply_adapter(fixture_model(), &adapter).unwrap();
    let diff = max_abs_diff(&logits_of(&reloaded), &logits_of(&f32_lora));
    eprintln!("bf16 merged vs f32 LoRA: max |Δlogit| = {diff:.2e}");
    assert!(diff < 0.15, "max |Δlogit| = {diff}");
}
