//! The export stage on a train stage's outputs (`adapter/`, `checkpoint-N/`, `best`):
//! `peft/` holds the chosen adapter in PEFT's format, `merged/` a checkpoint our loader
//! reads back with the adapter's logits, `output_dir` is written only when it is ours.

use crate::score_support;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use pipeline::adapter::apply::{apply_adapter, config_for, extract_adapter};
use pipeline::adapter::{read_peft_adapter, write_peft_adapter};
use pipeline::experiment::schema::ExportParams;
use pipeline::model::lora::{LoraSpec, TargetSelector};
use pipeline::model::{WeightsSource, load_classifier_from};
use pipeline::safetensors_io::read_tensors;
use pipeline::stages::export::ExportStage;
use score_support::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A train output: final adapter = ours/peft, checkpoint-3 = peft_new, best = checkpoint-3.
fn fake_train_output(root: &Path) -> PathBuf {
    let dir = root.join("train");
    copy_dir(&interop_dir().join("ours/peft"), &dir.join("adapter"));
    copy_dir(&interop_dir().join("peft_new"), &dir.join("checkpoint-3"));
    std::fs::write(dir.join("best"), "checkpoint-3\n").unwrap();
    dir
}

fn params(extra: &str) -> ExportParams {
    toml::from_str(&format!("needs = [\"train\"]\n{extra}")).unwrap()
}

fn logits_of_dir(dir: &Path) -> Vec<Vec<f64>> {
    let model = load_classifier_from::<B>(
        WeightsSource::Dir(dir),
        3,
        DType::F32,
        0,
        &Default::default(),
    )
    .unwrap();
    let samples: Vec<_> = reference_rows()
        .iter()
        .map(|r| reference_sample(&model, r))
        .collect();
    batch_logits(&model, &samples, &Default::default())
}

#[test]
fn exports_last_and_best_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let train = fake_train_output(tmp.path());
    let common = common_for(&interop_dir().join("model"), 3, None);

    let out = tmp.path().join("export_last");
    let stage = ExportStage::new(params(""), &common).unwrap();
    run_stage(&stage, "export", &out, &[("train", "train", &train)]).unwrap();
    // peft/: the final adapter's tensors, PEFT names, f32.
    assert_eq!(
        read_tensors(&out.join("peft/adapter_model.safetensors")).unwrap(),
        read_tensors(&interop_dir().join("ours/peft/adapter_model.safetensors")).unwrap()
    );
    let cfg = read_json(&out.join("peft/adapter_config.json"));
    assert_eq!(
        cfg["base_model_name_or_path"],
        interop_dir().join("model").display().to_string()
    );
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    // merged/: loads back with transformers' logits for this adapter.
    let expect: Vec<Vec<f64>> = read_json(&interop_dir().join("ours_reference.json"))["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| floats(&r["merged_logits"]))
        .collect();
    let diff = max_abs_diff(&logits_of_dir(&out.join("merged")), &expect);
    assert!(diff < LOGIT_TOL, "merged vs transformers: {diff:e}");
    for f in [
        "tokenizer.json",
        "preprocessor_config.json",
        "config.json",
        "README.md",
        "modeling_qwen2_5_vl_seq_cls.py",
    ] {
        assert!(out.join("merged").join(f).is_file(), "merged/{f}");
    }
    let summary = read_json(&out.join("export.json"));
    assert!(summary["adapter"].as_str().unwrap().ends_with("adapter"));

    // checkpoint = "best" follows the `best` file.
    let out = tmp.path().join("export_best");
    let stage = ExportStage::new(params("checkpoint = \"best\"\nmerged = false"), &common).unwrap();
    run_stage(&stage, "export", &out, &[("train", "train", &train)]).unwrap();
    assert_eq!(
        read_tensors(&out.join("peft/adapter_model.safetensors")).unwrap(),
        read_tensors(&interop_dir().join("peft_new/adapter_model.safetensors")).unwrap()
    );
    assert!(!out.join("merged").exists());
    let back = read_peft_adapter(&out.join("peft")).unwrap();
    assert_eq!(back.modules.len(), 24);
}

#[test]
fn shards_above_the_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let train = fake_train_output(tmp.path());
    let common = common_for(&interop_dir().join("model"), 3, None);
    let out = tmp.path().join("export");
    let stage = ExportStage::new(params("peft = false"), &common)
        .unwrap()
        .with_max_shard_bytes(100_000);
    run_stage(&stage, "export", &out, &[("train", "train", &train)]).unwrap();
    let index = read_json(&out.join("merged/model.safetensors.index.json"));
    let files: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    assert!(!out.join("merged/model.safetensors").exists());
    let single = tmp.path().join("single");
    run_stage(
        &ExportStage::new(params("peft = false"), &common).unwrap(),
        "export",
        &single,
        &[("train", "train", &train)],
    )
    .unwrap();
    let diff = max_abs_diff(
        &logits_of_dir(&out.join("merged")),
        &logits_of_dir(&single.join("merged")),
    );
    assert!(
        diff == 0.0,
        "sharded and single-file checkpoints hold the same tensors: {diff:e}"
    );
}

#[test]
fn output_dir_is_written_only_when_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let train = fake_train_output(tmp.path());
    let common = common_for(&interop_dir().join("model"), 3, None);
    let dest = tmp.path().join("exported");
    let p = params(&format!(
        "merged = false\noutput_dir = {:?}",
        dest.display().to_string()
    ));
    run_stage(
        &ExportStage::new(p.clone(), &common).unwrap(),
        "export",
        &tmp.path().join("e1"),
        &[("train", "train", &train)],
    )
    .unwrap();
    assert!(dest.join("peft/adapter_model.safetensors").is_file());
    assert!(dest.join(".pipeline-export").is_file());
    // Ours: rewritten.
    run_stage(
        &ExportStage::new(p, &common).unwrap(),
        "export",
        &tmp.path().join("e2"),
        &[("train", "train", &train)],
    )
    .unwrap();

    let user = tmp.path().join("my_models");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "keep me").unwrap();
    let p = params(&format!("output_dir = {:?}", user.display().to_string()));
    let err = ExportStage::new(p, &common)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("my_models") && err.contains(".pipeline-export"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(user.join("notes.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn preset_export_ships_the_built_in_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut common = common_for(Path::new("unused"), 3, None);
    common.model.path = None;
    common.model.preset = Some("tiny".into());
    // A train output for the tiny preset: all-linear LoRA with random B, as training leaves it.
    let device = Default::default();
    let base = load_classifier_from::<B>(
        WeightsSource::Preset("tiny"),
        3,
        DType::F32,
        common.seed,
        &device,
    )
    .unwrap();
    let spec = LoraSpec::new(4, 8.0, TargetSelector::all_linear(true, false, true));
    let model = base.apply_lora(&spec, 1).unwrap();
    let (mut modules, score) = extract_adapter(&model);
    for (i, p) in modules.iter_mut().enumerate() {
        let n = p.b.num_elements();
        let v: Vec<f32> = (0..n)
            .map(|k| ((k * 7 + i * 13) % 17) as f32 / 17.0 - 0.5)
            .collect();
        p.b = burn::tensor::TensorData::new(v, p.b.shape.clone());
    }
    let train = tmp.path().join("train");
    write_peft_adapter(
        &train.join("adapter"),
        &config_for(&model, &spec, "tiny"),
        &modules,
        Some(&score),
    )
    .unwrap();

    let out = tmp.path().join("export");
    run_stage(
        &ExportStage::new(params(""), &common).unwrap(),
        "export",
        &out,
        &[("train", "train", &train)],
    )
    .unwrap();
    let merged = out.join("merged");
    let tok = tokenizers::Tokenizer::from_file(merged.join("tokenizer.json")).unwrap();
    assert_eq!(tok.token_to_id("<|image_pad|>"), Some(261));
    let pre = read_json(&merged.join("preprocessor_config.json"));
    assert_eq!(pre["patch_size"], 14);
    let cfg = read_json(&merged.join("config.json"));
    assert_eq!(cfg["pad_token_id"], 256);
    // The merged tiny model equals base + adapter.
    let adapter = read_peft_adapter(&train.join("adapter")).unwrap();
    let with_lora = apply_adapter(
        load_classifier_from::<B>(
            WeightsSource::Preset("tiny"),
            3,
            DType::F32,
            common.seed,
            &device,
        )
        .unwrap(),
        &adapter,
    )
    .unwrap();
    let reloaded =
        load_classifier_from::<B>(WeightsSource::Dir(&merged), 3, DType::F32, 0, &device).unwrap();
    let sample = pipeline::model::inputs::SampleInputs {
        input_ids: vec![257, 10, 20, 30, 259, 261, 261, 261, 261, 260, 40, 258],
        pixel_rows: (0..16 * 1176)
            .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
            .collect(),
        grids: vec![[1, 4, 4]],
    };
    let a = batch_logits(&with_lora, std::slice::from_ref(&sample), &device);
    let b = batch_logits(&reloaded, std::slice::from_ref(&sample), &device);
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-4, "tiny merged vs base + adapter: {diff:e}");
}
