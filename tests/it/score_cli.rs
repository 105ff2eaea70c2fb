//! `pipeline run` on a score-only experiment: a merged ms-swift-style checkpoint as
//! `[model] path`, a dataset stage with only `val_dataset`, a score stage that needs only
//! the data. The binary's scores match transformers; a rerun is served from the cache; a
//! split that does not exist is an input error (exit 2).

use crate::score_support;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use score_support::*;

fn experiment(extra_score: &str) -> String {
    let fx = interop_dir();
    format!(
        r#"name = "interop"
[model]
path = {model:?}
torch_dtype = "float32"
device = "cpu"

[task]
num_labels = 3

[stages.data]
kind = "dataset"
val_dataset = {data:?}
max_pixels = 25088

[stages.score]
kind = "score"
needs = ["data"]
batch_size = 4
{extra_score}
"#,
        model = fx.join("model").display().to_string(),
        data = fx.join("data/test.jsonl").display().to_string(),
    )
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = Command::cargo_bin("pipeline")
        .unwrap()
        .current_dir(dir)
        .env_remove("PIPELINE_QWEN_TOKENIZER")
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ pipeline {}\n(cwd {})\nstatus {:?}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        dir.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn score_only_experiment_matches_transformers_and_caches() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("exp.toml"), experiment("")).unwrap();
    let out = run(tmp.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let stage_dir = tmp.path().join("runs/interop/score");
    let scores = read_scores(&stage_dir.join("scores.jsonl"));
    let base: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| floats(&r["base_logits"]))
        .collect();
    let worst = check_single_label(&scores, &base);
    eprintln!("pipeline run: max |Δ log p| vs transformers = {worst:.2e}");
    assert!(worst < LOGIT_TOL);
    let metrics = read_json(&stage_dir.join("metrics.json"));
    assert!(metrics["acc"].as_f64().is_some() && metrics["macro_f1"].as_f64().is_some());
    let stdout =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("macro_f1"), "the metrics table is printed");

    // Nothing changed: the rerun computes nothing.
    let first = std::fs::read(stage_dir.join("scores.jsonl")).unwrap();
    let again = run(tmp.path(), &["run", "exp.toml"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        std::fs::read(stage_dir.join("scores.jsonl")).unwrap(),
        first
    );
    let plan = run(tmp.path(), &["plan", "exp.toml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.lines()
            .filter(|l| l.contains("score"))
            .any(|l| l.contains("cached")),
        "{text}"
    );
}

#[test]
fn missing_split_is_an_input_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("exp.toml"), experiment("split = \"train\"")).unwrap();
    let out = run(tmp.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("split") && err.contains("train"), "{err}");
}
