//! The score stage end to end on the interop fixtures: a merged ms-swift-style checkpoint
//! scored alone reproduces transformers' per-class log-probs (images that need resizing and
//! images that do not); a PEFT adapter directory scores with PEFT's; a dataset file is
//! preprocessed like the dataset stage; wrong inputs fail with clear messages.

use crate::score_support;

use std::path::{Path, PathBuf};

use pipeline::experiment::schema::{Common, ScoreParams};
use pipeline::stages::score::ScoreStage;
use score_support::*;

fn score_params(extra: &str) -> ScoreParams {
    toml::from_str(&format!("needs = [\"data\"]\nbatch_size = 3\n{extra}")).unwrap()
}

/// Dataset entry of the fixture data (val split) for `common`.
fn dataset(common: &Common, root: &Path) -> PathBuf {
    let dir = root.join("data");
    build_fixture_dataset(common, &interop_dir().join("data/test.jsonl"), &dir);
    dir
}

/// Run a score stage with `params` on the dataset entry `data`, into `out`.
fn score(params: ScoreParams, common: &Common, data: &Path, out: &Path) {
    let stage = ScoreStage::new(params, common).unwrap();
    run_stage(&stage, "score", out, &[("data", "dataset", data)]).unwrap();
}

/// Score the fixture images at the rows of `jsonl` (written to `dir/<name>.jsonl`) with
/// the default score params; returns the stage's output folder.
fn score_rows(dir: &Path, common: &Common, name: &str, jsonl: &str) -> PathBuf {
    let file = dir.join(format!("{name}.jsonl"));
    std::fs::write(&file, jsonl).unwrap();
    let data = dir.join(format!("{name}_data"));
    build_fixture_dataset(common, &file, &data);
    let out = dir.join(format!("{name}_score"));
    score(score_params(""), common, &data, &out);
    out
}

#[test]
fn score_only_merged_checkpoint_reproduces_transformers_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let common = common_for(&interop_dir().join("model"), 3, None);
    let data = dataset(&common, tmp.path());

    // The dataset stage tokenizes exactly as the Python reference (template + image pads).
    let records = pipeline::data::record::load_split(&data, "val")
        .unwrap()
        .unwrap();
    for (rec, row) in records.iter().zip(reference_rows()) {
        let ids: Vec<u64> = row["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            rec.input_ids.iter().map(|&i| i as u64).collect::<Vec<_>>(),
            ids,
            "row {}",
            rec.index
        );
        let grids: Vec<[usize; 3]> = serde_json::from_value(row["grid_thw"].clone()).unwrap();
        assert_eq!(
            rec.images.iter().map(|i| i.grid_thw).collect::<Vec<_>>(),
            grids,
            "row {}",
            rec.index
        );
    }

    let out = tmp.path().join("score");
    let stage = ScoreStage::new(score_params(""), &common).unwrap();
    run_stage(&stage, "score", &out, &[("data", "dataset", &data)]).unwrap();
    let scores = read_scores(&out.join("scores.jsonl"));
    let base: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| floats(&r["base_logits"]))
        .collect();
    let worst = check_single_label(&scores, &base);
    eprintln!("score-only: max |Δ log p| vs transformers = {worst:.2e}");
    assert!(worst < LOGIT_TOL, "max |Δ log p| = {worst:e}");
    assert_eq!(
        scores[5]["images"],
        serde_json::json!([
            {"bytes": null, "path": "images/alpha90x60.png"},
            {"bytes": null, "path": "images/square56.png"}
        ])
    );

    // metrics.json agrees with the scores it summarises.
    let metrics = read_json(&out.join("metrics.json"));
    let n = scores.len() as f64;
    let correct = scores
        .iter()
        .filter(|s| s["response"] == s["labels"])
        .count() as f64;
    assert!((metrics["acc"].as_f64().unwrap() - correct / n).abs() < 1e-12);
    let nll: f64 = scores
        .iter()
        .map(|s| {
            -s["class_logprobs"][s["labels"].as_u64().unwrap() as usize]
                .as_f64()
                .unwrap()
        })
        .sum::<f64>()
        / n;
    assert!((metrics["nll"].as_f64().unwrap() - nll).abs() < 1e-6);
    assert_eq!(metrics["problem_type"], "single_label_classification");
    assert_eq!(metrics["num_samples"], 7);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(metrics["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 7);
    assert!(image::open(out.join("confusion.png")).is_ok());
}

#[test]
fn adapter_directory_scores_with_peft_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let common = common_for(&interop_dir().join("model"), 3, None);
    let data = dataset(&common, tmp.path());
    let peft: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| floats(&r["peft_logits"]))
        .collect();
    // The older key layout with a list target_modules; batch 1 (no padding) this time.
    let adapter = interop_dir().join("peft_old");
    let extra = format!(
        "adapter = {:?}\nbatch_size = 1",
        adapter.display().to_string()
    );
    let params: ScoreParams = toml::from_str(&format!("needs = [\"data\"]\n{extra}")).unwrap();
    let out = tmp.path().join("score");
    score(params, &common, &data, &out);
    let worst = check_single_label(&read_scores(&out.join("scores.jsonl")), &peft);
    eprintln!("adapter = peft_old: max |Δ log p| vs PEFT = {worst:.2e}");
    assert!(worst < LOGIT_TOL, "max |Δ log p| = {worst:e}");
    assert!(
        read_json(&out.join("metrics.json"))["adapter"]
            .as_str()
            .unwrap()
            .ends_with("peft_old")
    );
}

#[test]
fn dataset_file_is_preprocessed_like_the_dataset_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let common = common_for(&interop_dir().join("model"), 3, None);
    let data = dataset(&common, tmp.path());
    let split_out = tmp.path().join("split");
    score(score_params(""), &common, &data, &split_out);
    let file = interop_dir().join("data/test.jsonl");
    let params = score_params(&format!("dataset = {:?}", file.display().to_string()));
    let file_out = tmp.path().join("file");
    score(params, &common, &data, &file_out);
    assert_eq!(
        read_scores(&split_out.join("scores.jsonl")),
        read_scores(&file_out.join("scores.jsonl"))
    );
    assert!(
        file_out.join("data/score.jsonl").is_file(),
        "the file's records are kept with the scores"
    );
}

#[test]
fn multi_label_and_regression_follow_swift_semantics() {
    let tmp = tempfile::tempdir().unwrap();
    let images = interop_dir().join("data/images");
    let row = |label: &str, img: &str| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"<image>What shape is this?\"}}], \"images\": [{:?}], \"label\": {label}}}\n",
            images.join(img).display().to_string()
        )
    };
    let base: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| floats(&r["base_logits"]))
        .collect();

    // Multi-label: rows 0 and 1 of the fixture (same images and prompt), list labels.
    let common = common_for(
        &interop_dir().join("model"),
        3,
        Some("multi_label_classification"),
    );
    let rows = row("[0, 2]", "square56.png") + &row("[]", "wide112x84.png");
    let out = score_rows(tmp.path(), &common, "multi", &rows);
    let scores = read_scores(&out.join("scores.jsonl"));
    for (line, z) in scores.iter().zip(&base) {
        let expect: Vec<f64> = z.iter().map(|&v| -((-v).exp().ln_1p())).collect();
        let got = floats(&line["class_logprobs"]);
        assert!(
            got.iter()
                .zip(&expect)
                .all(|(a, b)| (a - b).abs() < LOGIT_TOL),
            "{got:?} vs {expect:?}"
        );
        let preds: Vec<u64> = (0..3).filter(|&c| z[c] >= 0.0).map(|c| c as u64).collect();
        assert_eq!(line["response"], serde_json::json!(preds));
        assert_eq!(
            line["logprobs"]["content"][0]["index"],
            serde_json::json!(preds)
        );
    }
    assert_eq!(scores[0]["labels"], serde_json::json!([0, 2]));
    let metrics = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["problem_type"], "multi_label_classification");
    assert!(!out.join("confusion.png").exists());

    // Multi-target regression: the raw outputs, no log-probs.
    let common = common_for(&interop_dir().join("model"), 3, Some("regression"));
    let out = score_rows(
        tmp.path(),
        &common,
        "reg",
        &row("[0.5, -1.0, 2.0]", "square56.png"),
    );
    let line = &read_scores(&out.join("scores.jsonl"))[0];
    let got = floats(&line["response"]);
    assert!(
        got.iter()
            .zip(&base[0])
            .all(|(a, b)| (a - b).abs() < LOGIT_TOL),
        "{got:?}"
    );
    assert!(line["logprobs"].is_null() && line["class_logprobs"].is_null());
    let mse = base[0]
        .iter()
        .zip([0.5, -1.0, 2.0])
        .map(|(p, g)| (p - g).powi(2))
        .sum::<f64>()
        / 3.0;
    assert!(
        (read_json(&out.join("metrics.json"))["mse"]
            .as_f64()
            .unwrap()
            - mse)
            .abs()
            < 1e-3
    );
}

#[test]
fn wrong_inputs_fail_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let common = common_for(&interop_dir().join("model"), 3, None);
    let data = dataset(&common, tmp.path());
    let run = |params: ScoreParams, common: &pipeline::experiment::schema::Common| {
        let stage = ScoreStage::new(params, common)?;
        run_stage(
            &stage,
            "score",
            &tmp.path().join("x"),
            &[("data", "dataset", &data)],
        )
    };

    // The dataset stage has only a val split.
    let e = run(score_params("split = \"train\""), &common)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no `train` split") && e.contains("it has: val"),
        "{e}"
    );

    // An adapter for another model (the fixture adapter on the tiny preset).
    let mut tiny = common.clone();
    tiny.model.path = None;
    tiny.model.preset = Some("tiny".into());
    let adapter = interop_dir().join("peft_new").display().to_string();
    let e = run(score_params(&format!("adapter = {adapter:?}")), &tiny)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("peft_new") && e.contains("model.language_model.layers.0"),
        "{e}"
    );

    // A directory that is no adapter.
    let e = ScoreStage::new(
        score_params(&format!("adapter = {:?}", tmp.path().display().to_string())),
        &common,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a PEFT adapter directory"), "{e}");

    // Labels that do not fit the task (class 2 with num_labels 2): the dataset stage
    // already refuses them; a scored file is checked the same way.
    let mut two = common.clone();
    two.task.num_labels = 2;
    let file = interop_dir().join("data/test.jsonl").display().to_string();
    let e = run(score_params(&format!("dataset = {file:?}")), &two)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label") && e.contains("test.jsonl"), "{e}");
}

#[test]
fn our_exported_adapter_scores_as_peft_runs_it() {
    // `ours/peft` was written by our exporter; PEFT's logits for it are in ours_reference.json.
    let tmp = tempfile::tempdir().unwrap();
    let common = common_for(&interop_dir().join("model"), 3, None);
    let data = dataset(&common, tmp.path());
    let adapter = interop_dir().join("ours/peft").display().to_string();
    let out = tmp.path().join("score");
    let stage = ScoreStage::new(score_params(&format!("adapter = {adapter:?}")), &common).unwrap();
    run_stage(&stage, "score", &out, &[("data", "dataset", &data)]).unwrap();
    let peft: Vec<Vec<f64>> = read_json(&interop_dir().join("ours_reference.json"))["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| floats(&r["peft_logits"]))
        .collect();
    let worst = check_single_label(&read_scores(&out.join("scores.jsonl")), &peft);
    eprintln!("adapter = ours/peft: max |Δ log p| vs PEFT = {worst:.2e}");
    assert!(worst < LOGIT_TOL, "max |Δ log p| = {worst:e}");
}
