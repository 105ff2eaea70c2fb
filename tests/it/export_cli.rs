//! The whole chain through the binary: dataset → train → export → score. The exported
//! merged checkpoint, scored alone as `[model] path`, gives the scores of base + adapter;
//! the exported PEFT directory given as `adapter` does too; `checkpoint = "best"` picks the
//! checkpoint the train stage named; `output_dir` receives a marked copy.

use crate::score_support;

use std::path::Path;

use assert_cmd::Command;
use pipeline::safetensors_io::read_tensors;
use score_support::*;

fn run(dir: &Path, file: &str) {
    let out = Command::cargo_bin("pipeline")
        .unwrap()
        .current_dir(dir)
        .args(["run", file])
        .output()
        .unwrap();
    let text = format!(
        "$ pipeline run {file} (cwd {})\nstatus {:?}\n--- stdout\n{}\n--- stderr\n{}",
        dir.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}

fn header(name: &str, model: &Path) -> String {
    format!(
        "name = {name:?}\n[model]\npath = {:?}\ntorch_dtype = \"float32\"\ndevice = \"cpu\"\n[task]\nnum_labels = 3\n",
        model.display().to_string()
    )
}

fn data_stage(train: bool) -> String {
    let data = interop_dir().join("data/test.jsonl").display().to_string();
    let train = if train {
        format!("dataset = {data:?}\n")
    } else {
        String::new()
    };
    format!(
        "[stages.data]\nkind = \"dataset\"\n{train}val_dataset = {data:?}\nmax_pixels = 25088\n"
    )
}

fn class_logprobs(path: &Path) -> Vec<Vec<f64>> {
    read_scores(path)
        .iter()
        .map(|l| floats(&l["class_logprobs"]))
        .collect()
}

#[test]
fn train_export_score_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let final_dir = root.join("final");
    let exp = format!(
        "{}{}\
[stages.train]
kind = \"train\"
needs = [\"data\"]
lora_rank = 4
lora_alpha = 8
freeze_vit = false
max_steps = 3
per_device_train_batch_size = 2
learning_rate = 5e-3
warmup_ratio = 0.0
eval_steps = 1
save_steps = 1
logging_steps = 1

[stages.export]
kind = \"export\"
needs = [\"train\"]
checkpoint = \"best\"
output_dir = {:?}

[stages.score]
kind = \"score\"
needs = [\"data\", \"train\"]
checkpoint = \"best\"
",
        header("chain", &interop_dir().join("model")),
        data_stage(true),
        final_dir.display().to_string()
    );
    std::fs::write(root.join("chain.toml"), exp).unwrap();
    run(root, "chain.toml");
    let runs = root.join("runs/chain");

    // export/peft holds the best checkpoint's tensors.
    let best = std::fs::read_to_string(runs.join("train/best")).unwrap();
    let best_dir = runs
        .join("train")
        .join(Path::new(best.trim()).file_name().unwrap());
    assert_eq!(
        read_tensors(&runs.join("export/peft/adapter_model.safetensors")).unwrap(),
        read_tensors(&best_dir.join("adapter_model.safetensors")).unwrap()
    );
    assert!(
        final_dir.join(".pipeline-export").is_file()
            && final_dir.join("merged/config.json").is_file()
    );
    let with_adapter = class_logprobs(&runs.join("score/scores.jsonl"));

    // The merged checkpoint scored alone, and the exported adapter given as `adapter`.
    let merged = final_dir.join("merged");
    let peft = runs.join("export/peft");
    let exp = format!(
        "{}{}[stages.score]\nkind = \"score\"\nneeds = [\"data\"]\n",
        header("merged", &merged),
        data_stage(false)
    );
    std::fs::write(root.join("merged.toml"), exp).unwrap();
    run(root, "merged.toml");
    let exp = format!(
        "{}{}[stages.score]\nkind = \"score\"\nneeds = [\"data\"]\nadapter = {:?}\n",
        header("peft", &interop_dir().join("model")),
        data_stage(false),
        peft.display().to_string()
    );
    std::fs::write(root.join("peft.toml"), exp).unwrap();
    run(root, "peft.toml");

    let from_merged = class_logprobs(&root.join("runs/merged/score/scores.jsonl"));
    let from_peft = class_logprobs(&root.join("runs/peft/score/scores.jsonl"));
    let d1 = max_abs_diff(&from_merged, &with_adapter);
    let d2 = max_abs_diff(&from_peft, &with_adapter);
    eprintln!("merged vs base+adapter {d1:.2e}; exported adapter vs train adapter {d2:.2e}");
    assert!(d1 < LOGIT_TOL && d2 < 1e-6, "{d1:e} {d2:e}");
    // Training moved the model away from the base checkpoint's head.
    let base: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| log_softmax(&floats(&r["base_logits"])))
        .collect();
    assert!(max_abs_diff(&base, &with_adapter) > 1e-3);
}

#[test]
fn training_starts_from_an_imported_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The pre-4.52 key layout with a list target_modules, as old ms-swift checkpoints have.
    let adapter = interop_dir().join("peft_old").display().to_string();
    let exp = format!(
        "{}{}\
[stages.train]
kind = \"train\"
needs = [\"data\"]
adapter = {adapter:?}
lora_rank = 4
max_steps = 1
learning_rate = 1e-12
per_device_train_batch_size = 7

[stages.score]
kind = \"score\"
needs = [\"data\", \"train\"]
",
        header("resume", &interop_dir().join("model")),
        data_stage(true),
    );
    std::fs::write(root.join("resume.toml"), exp).unwrap();
    run(root, "resume.toml");
    // One step at lr 1e-12 leaves the imported adapter as it was: PEFT's scores.
    let peft: Vec<Vec<f64>> = reference_rows()
        .iter()
        .map(|r| log_softmax(&floats(&r["peft_logits"])))
        .collect();
    let got = class_logprobs(&root.join("runs/resume/score/scores.jsonl"));
    let diff = max_abs_diff(&got, &peft);
    eprintln!("train from peft_old, 1 step at lr 1e-12: max |Δ log p| vs PEFT = {diff:.2e}");
    assert!(diff < LOGIT_TOL, "{diff:e}");
    // The saved adapter keeps the imported LoRA settings and writes the current key layout.
    let cfg = read_json(&root.join("runs/resume/train/adapter/adapter_config.json"));
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()),
        (Some(4), Some(8.0))
    );
    let keys: Vec<String> =
        read_tensors(&root.join("runs/resume/train/adapter/adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("base_model.model.model.language_model.")
                || k.starts_with("base_model.model.model.visual.")
                || k == "base_model.model.score.weight"),
        "{keys:?}"
    );
}

#[test]
fn an_adapter_for_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let adapter = interop_dir().join("peft_new").display().to_string();
    let exp = format!(
        "name = \"wrong\"\n[model]\npreset = \"tiny\"\ndevice = \"cpu\"\ntorch_dtype = \"float32\"\n[task]\nnum_labels = 3\n{}\
[stages.train]\nkind = \"train\"\nneeds = [\"data\"]\nadapter = {adapter:?}\nlora_rank = 4\nmax_steps = 1\n",
        data_stage(true)
    );
    std::fs::write(root.join("wrong.toml"), exp).unwrap();
    let out = Command::cargo_bin("pipeline")
        .unwrap()
        .current_dir(root)
        .args(["run", "wrong.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("peft_new") && err.contains("model.language_model.layers.0"),
        "{err}"
    );
}
