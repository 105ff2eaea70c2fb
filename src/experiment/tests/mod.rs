//! Experiment parsing/validation/sweep tests: every bad input gives one line with
//! `file:line:column`, the dotted key and the valid choices.

use std::path::{Path, PathBuf};

use super::*;

pub(crate) const BASE: &str = r#"seed = 42

[model]
preset = "tiny"

[task]
num_labels = 3

[stages.data]
kind = "dataset"
dataset = "data/train.jsonl"
val_dataset = "data/test.jsonl"

[stages.train]
kind = "train"
needs = ["data"]
lora_rank = 8
eval_steps = 1

[stages.export]
kind = "export"
needs = ["train"]

[stages.score]
kind = "score"
needs = ["data", "train"]
"#;

pub(crate) fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train.jsonl"), "{}\n").unwrap();
    std::fs::write(dir.path().join("data/test.jsonl"), "{}\n").unwrap();
    dir
}

fn file(dir: &Path) -> PathBuf {
    dir.join("exp.toml")
}

fn load_text(dir: &Path, text: &str) -> Result<Loaded, ExperimentError> {
    std::fs::write(file(dir), text).unwrap();
    load(&file(dir))
}

/// The error for `text`, checked to be one line starting at `file:line:`.
#[track_caller]
fn error_at(text: &str, line: usize) -> String {
    let dir = project();
    let msg = load_text(dir.path(), text)
        .expect_err("should be rejected")
        .to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    let prefix = format!("{}:{line}:", file(dir.path()).display());
    assert!(msg.starts_with(&prefix), "expected {prefix}…, got: {msg}");
    msg
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

/// BASE with `old` replaced by `new`.
fn with(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "{old}");
    BASE.replacen(old, new, 1)
}

#[track_caller]
fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` missing from: {msg}");
    }
}

#[test]
fn preset_names_match_the_model_layer() {
    // The experiment layer knows no model code; this keeps its copy of the names honest.
    let mut presets: Vec<&str> = crate::model::presets::PRESETS.to_vec();
    presets.sort_unstable();
    assert_eq!(presets, validate::MODEL_PRESETS);
}

#[test]
fn valid_file_is_typed_and_resolved() {
    let dir = project();
    let l = load_text(dir.path(), BASE).unwrap();
    assert_eq!(l.name(), "exp");
    assert!(!l.is_sweep());
    assert_eq!(l.variants.len(), 1);
    let e = &l.base;
    let order: Vec<&str> = e.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["data", "train", "export", "score"]);
    let StageParams::Dataset(d) = &e.stage("data").unwrap().params else {
        panic!()
    };
    assert_eq!(
        PathBuf::from(d.dataset.as_ref().unwrap()),
        dir.path().join("data/train.jsonl")
    );
    let StageParams::Train(t) = &e.stage("train").unwrap().params else {
        panic!()
    };
    assert_eq!(
        (t.lora_rank, t.lora_alpha, t.learning_rate),
        (8, 32.0, 1e-4)
    );
    assert_eq!(e.stage("score").unwrap().needs, ["data", "train"]);
    assert_eq!(e.common.seed, 42);
}

#[test]
fn explicit_name_and_model_path() {
    let dir = project();
    std::fs::create_dir_all(dir.path().join("models/m")).unwrap();
    let text = with("preset = \"tiny\"", "path = \"models/./m\"").replacen(
        "seed = 42",
        "name = \"cls\"\nseed = 42",
        1,
    );
    let l = load_text(dir.path(), &text).unwrap();
    assert_eq!(l.name(), "cls");
    assert_eq!(
        PathBuf::from(l.base.common.model.path.clone().unwrap()),
        dir.path().join("models/m")
    );
}

#[test]
fn unknown_stage_key_names_line_key_and_valid_keys() {
    let text = with("lora_rank = 8", "lora_rnk = 8");
    let msg = error_at(&text, line_of(&text, "lora_rnk"));
    assert_has(
        &msg,
        &[
            "stages.train.lora_rnk",
            "unknown key `lora_rnk` in [stages.train]",
            "did you mean `lora_rank`",
            "valid keys: adam_beta1, adam_beta2, adam_epsilon, adapter, attn_impl, data_seed,",
        ],
    );
    assert!(msg.contains(":17:1:"), "{msg}");
}

#[test]
fn unknown_kind_lists_kinds() {
    let text = with("kind = \"train\"", "kind = \"trian\"");
    let msg = error_at(&text, line_of(&text, "trian"));
    assert_has(
        &msg,
        &[
            "stages.train.kind",
            "unknown stage kind `trian`",
            "valid kinds: dataset, export, score, train",
        ],
    );
}

#[test]
fn missing_kind() {
    let text = with("kind = \"export\"\n", "");
    let msg = error_at(&text, line_of(&text, "[stages.export]"));
    assert_has(
        &msg,
        &[
            "stages.export",
            "missing `kind`",
            "valid kinds: dataset, export, score, train",
        ],
    );
}

#[test]
fn wrong_types_name_the_key_and_column() {
    let text = with("lora_rank = 8", "lora_rank = \"eight\"");
    let msg = error_at(&text, line_of(&text, "eight"));
    assert_has(
        &msg,
        &[
            "stages.train.lora_rank",
            "expected an integer, found string \"eight\"",
        ],
    );
    assert!(msg.contains(":17:13:"), "column of the value: {msg}");

    let text = with("lora_rank = 8", "learning_rate = \"1e-4\"");
    let msg = error_at(&text, line_of(&text, "learning_rate"));
    assert_has(&msg, &["stages.train.learning_rate", "expected a number"]);

    let text = with("lora_rank = 8", "lora_rank = -8");
    let msg = error_at(&text, line_of(&text, "lora_rank"));
    assert_has(&msg, &["stages.train.lora_rank", "expected an integer ≥ 0"]);

    let text = with("num_labels = 3", "num_labels = 3.5");
    let msg = error_at(&text, line_of(&text, "num_labels"));
    assert_has(&msg, &["task.num_labels", "expected an integer"]);

    let text = with("needs = [\"train\"]", "needs = \"train\"");
    let msg = error_at(&text, line_of(&text, "needs = \"train\""));
    assert_has(&msg, &["stages.export.needs", "expected an array"]);

    let text = with("lora_rank = 8", "target_modules = 3");
    let msg = error_at(&text, line_of(&text, "target_modules"));
    assert_has(&msg, &["stages.train.target_modules", "all-linear"]);
}

#[test]
fn top_level_and_table_errors() {
    let text = BASE.replacen("seed = 42", "seed = 42\nsed = 1", 1);
    let msg = error_at(&text, 2);
    assert_has(
        &msg,
        &[
            "sed",
            "unknown key `sed` at the top level",
            "valid keys: devices, model, name, seed, slurm, stages, sweep, task",
        ],
    );

    let text = with("num_labels = 3", "");
    let msg = error_at(&text, line_of(&text, "[task]"));
    assert_has(
        &msg,
        &["task.num_labels", "missing required key `num_labels`"],
    );

    let text = with("[task]\nnum_labels = 3\n", "");
    let msg = error_at(&text, 1);
    assert_has(&msg, &["task", "missing table [task]"]);

    let text = with("preset = \"tiny\"", "preset = \"tiny\"\ncolor = 1");
    let msg = error_at(&text, line_of(&text, "color"));
    assert_has(
        &msg,
        &[
            "model.color",
            "valid keys: device, model, path, preset, torch_dtype",
        ],
    );

    let text = BASE.replacen("seed = 42", "seed = 42 42", 1);
    let msg = error_at(&text, 1);
    assert_has(&msg, &["invalid TOML"]);
}

#[test]
fn model_and_task_rules() {
    let text = with("preset = \"tiny\"", "preset = \"tiny\"\npath = \"m\"");
    assert_has(
        &error_at(&text, line_of(&text, "path")),
        &[
            "model.path",
            "exactly one of `preset`",
            "not preset and path",
        ],
    );

    let text = with("preset = \"tiny\"", "torch_dtype = \"float32\"");
    assert_has(
        &error_at(&text, line_of(&text, "[model]")),
        &["model", "exactly one of", "tiny"],
    );

    let text = with("preset = \"tiny\"", "preset = \"huge\"");
    assert_has(
        &error_at(&text, line_of(&text, "huge")),
        &[
            "model.preset",
            "valid values: qwen2.5-vl-3b, qwen2.5-vl-7b, tiny",
        ],
    );

    let text = with("preset = \"tiny\"", "path = \"models/none\"");
    assert_has(
        &error_at(&text, line_of(&text, "models/none")),
        &[
            "model.path",
            "directory not found",
            "models/none",
            "relative paths resolve",
        ],
    );

    let text = with(
        "preset = \"tiny\"",
        "preset = \"tiny\"\ntorch_dtype = \"float16\"",
    );
    assert_has(
        &error_at(&text, line_of(&text, "float16")),
        &[
            "model.torch_dtype",
            "invalid torch_dtype `float16`",
            "valid values: bfloat16, float32",
        ],
    );

    let text = with("preset = \"tiny\"", "preset = \"tiny\"\ndevice = \"gpu\"");
    assert_has(
        &error_at(&text, line_of(&text, "gpu")),
        &["model.device", "auto, cpu, cuda, cuda:N"],
    );
    let text = with(
        "preset = \"tiny\"",
        "preset = \"tiny\"\ndevice = \"cuda:1\"",
    );
    project_ok(&text);

    let text = with("num_labels = 3", "num_labels = 0");
    assert_has(
        &error_at(&text, line_of(&text, "num_labels")),
        &["task.num_labels", "≥ 1"],
    );

    let text = with(
        "num_labels = 3",
        "num_labels = 3\ntask_type = \"causal_lm\"",
    );
    assert_has(
        &error_at(&text, line_of(&text, "causal_lm")),
        &["task.task_type", "valid values: seq_cls"],
    );

    let text = with("num_labels = 3", "num_labels = 3\nproblem_type = \"multi\"");
    assert_has(
        &error_at(&text, line_of(&text, "multi")),
        &[
            "task.problem_type",
            "multi_label_classification, regression, single_label_classification",
        ],
    );

    let text = with("num_labels = 3", "num_labels = 3\nlabels = [\"a\", \"b\"]");
    assert_has(
        &error_at(&text, line_of(&text, "labels = [")),
        &["task.labels", "2 labels given but num_labels = 3"],
    );

    let text = BASE.replacen("seed = 42", "seed = 42\ndevices = [\"cuda:0\", \"tpu\"]", 1);
    assert_has(&error_at(&text, 2), &["devices", "invalid device `tpu`"]);
    let text = BASE.replacen("seed = 42", "seed = 42\ndevices = [\"cuda:0\", \"cpu\"]", 1);
    assert_has(&error_at(&text, 2), &["devices", "mixes `cpu` and CUDA"]);
}

#[track_caller]
fn project_ok(text: &str) -> Loaded {
    let dir = project();
    load_text(dir.path(), text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn graph_rules() {
    let text = with(
        "needs = [\"data\", \"train\"]",
        "needs = [\"dat\", \"train\"]",
    );
    assert_has(
        &error_at(&text, line_of(&text, "\"dat\"")),
        &[
            "stages.score.needs",
            "needs `dat`, which does not exist",
            "did you mean `data`",
            "stages: data, export, score, train",
        ],
    );

    let text = with("needs = [\"data\"]\n", "");
    assert_has(
        &error_at(&text, line_of(&text, "[stages.train]")),
        &[
            "stages.train.needs",
            "a train stage needs a dataset stage",
            "dataset stages: data",
        ],
    );

    let text = with("needs = [\"train\"]", "needs = [\"data\"]");
    assert_has(
        &error_at(&text, 22),
        &["stages.export.needs", "an export stage needs a train stage"],
    );

    let text = with("needs = [\"data\", \"train\"]", "needs = [\"train\"]");
    assert_has(
        &error_at(&text, 26),
        &["stages.score.needs", "a score stage needs a dataset stage"],
    );

    // a → b → a between two dataset stages.
    let cyc = format!(
        "{BASE}\n[stages.a]\nkind = \"dataset\"\ndataset = \"data/train.jsonl\"\nneeds = [\"b\"]\n\n[stages.b]\nkind = \"dataset\"\ndataset = \"data/train.jsonl\"\nneeds = [\"a\"]\n"
    );
    let msg = error_at(&cyc, line_of(&cyc, "needs = [\"b\"]"));
    assert_has(&msg, &["stages.a.needs", "cycle in needs: a → b → a"]);

    let text = with("needs = [\"train\"]", "needs = [\"export\"]");
    assert_has(
        &error_at(&text, line_of(&text, "[\"export\"]")),
        &["needs itself", "export → export"],
    );
}

#[test]
fn dataset_rules() {
    let text = with(
        "dataset = \"data/train.jsonl\"\nval_dataset = \"data/test.jsonl\"\n",
        "",
    );
    assert_has(
        &error_at(&text, line_of(&text, "[stages.data]")),
        &["stages.data", "needs `dataset`, `val_dataset`, or both"],
    );

    let text = with("data/train.jsonl", "data/missing.jsonl");
    assert_has(
        &error_at(&text, line_of(&text, "missing.jsonl")),
        &[
            "stages.data.dataset",
            "file not found",
            "data/missing.jsonl",
        ],
    );

    let text = with(
        "val_dataset = \"data/test.jsonl\"",
        "val_dataset = \"data/test.jsonl\"\nmax_pixels = 100\nmin_pixels = 200",
    );
    assert_has(
        &error_at(&text, line_of(&text, "max_pixels")),
        &[
            "stages.data.max_pixels",
            "max_pixels (100) must be ≥ min_pixels (200)",
        ],
    );

    let text = with(
        "val_dataset = \"data/test.jsonl\"",
        "val_dataset = \"data/test.jsonl\"\ntruncation_strategy = \"cut\"",
    );
    assert_has(
        &error_at(&text, line_of(&text, "cut")),
        &[
            "stages.data.truncation_strategy",
            "valid values: delete, left, right, raise, error",
        ],
    );

    // eval_steps needs a val set.
    let text = with("val_dataset = \"data/test.jsonl\"\n", "").replacen(
        "needs = [\"data\", \"train\"]",
        "needs = [\"data\", \"train\"]\nsplit = \"train\"",
        1,
    );
    assert_has(
        &error_at(&text, line_of(&text, "eval_steps")),
        &[
            "stages.train.eval_steps",
            "dataset stage `data` has no `val_dataset`",
        ],
    );
}

#[test]
fn train_rules() {
    for (old, new, key, needle) in [
        (
            "lora_rank = 8",
            "lora_rank = 0",
            "stages.train.lora_rank",
            "lora_rank must be ≥ 1",
        ),
        (
            "lora_rank = 8",
            "learning_rate = 0.0",
            "stages.train.learning_rate",
            "learning_rate must be > 0",
        ),
        (
            "lora_rank = 8",
            "gradient_accumulation_steps = 0",
            "stages.train.gradient_accumulation_steps",
            "must be ≥ 1",
        ),
        (
            "lora_rank = 8",
            "per_device_train_batch_size = 0",
            "stages.train.per_device_train_batch_size",
            "must be ≥ 1",
        ),
        (
            "lora_rank = 8",
            "per_device_eval_batch_size = 0",
            "stages.train.per_device_eval_batch_size",
            "must be ≥ 1",
        ),
        (
            "lora_rank = 8",
            "lr_scheduler_type = \"step\"",
            "stages.train.lr_scheduler_type",
            "valid values: constant, cosine, linear",
        ),
        (
            "lora_rank = 8",
            "metric_for_best_model = \"f1\"",
            "stages.train.metric_for_best_model",
            "valid values: acc, loss",
        ),
        (
            "eval_steps = 1",
            "eval_steps = 0",
            "stages.train.eval_steps",
            "eval_steps must be ≥ 1",
        ),
        (
            "lora_rank = 8",
            "train_type = \"full\"",
            "stages.train.train_type",
            "valid values: lora",
        ),
        (
            "lora_rank = 8",
            "tuner_type = \"full\"",
            "stages.train.tuner_type",
            "valid values: lora",
        ),
        (
            "lora_rank = 8",
            "target_modules = \"(q_proj\"",
            "stages.train.target_modules",
            "not a valid regex",
        ),
        (
            "lora_rank = 8",
            "warmup_ratio = 1.5",
            "stages.train.warmup_ratio",
            "[0, 1]",
        ),
        (
            "lora_rank = 8",
            "adapter = \"nope\"",
            "stages.train.adapter",
            "directory not found",
        ),
    ] {
        let text = with(old, new);
        let line = line_of(&text, new.split(' ').next().unwrap());
        assert_has(&error_at(&text, line), &[key, needle]);
    }
    // eval_steps = 1 in BASE is on line 18; dup key → invalid TOML at that line.
    let text = with("lora_rank = 8", "eval_steps = 2");
    assert_has(&error_at(&text, 18), &["invalid TOML"]);
}

#[test]
fn export_and_score_rules() {
    let text = with(
        "needs = [\"train\"]",
        "needs = [\"train\"]\ncheckpoint = \"final\"",
    );
    assert_has(
        &error_at(&text, line_of(&text, "final")),
        &["stages.export.checkpoint", "valid values: best, last"],
    );

    let text = with(
        "needs = [\"data\", \"train\"]",
        "needs = [\"data\", \"train\"]\nsplit = \"test\"",
    );
    assert_has(
        &error_at(&text, line_of(&text, "\"test\"")),
        &["stages.score.split", "valid values: train, val"],
    );

    let text = with(
        "needs = [\"train\"]",
        "needs = [\"train\"]\npeft = false\nmerged = false",
    );
    assert_has(
        &error_at(&text, line_of(&text, "merged")),
        &["stages.export.merged", "nothing to export"],
    );

    // best needs evaluation
    let text = with("val_dataset = \"data/test.jsonl\"\n", "")
        .replacen("eval_steps = 1\n", "", 1)
        .replacen(
            "needs = [\"train\"]",
            "needs = [\"train\"]\ncheckpoint = \"best\"",
            1,
        )
        .replacen(
            "needs = [\"data\", \"train\"]",
            "needs = [\"data\", \"train\"]\nsplit = \"train\"",
            1,
        );
    assert_has(
        &error_at(&text, line_of(&text, "\"best\"")),
        &["stages.export.checkpoint", "needs evaluation"],
    );

    // scoring the val split needs a val set
    let text = with("val_dataset = \"data/test.jsonl\"\n", "").replacen("eval_steps = 1\n", "", 1);
    assert_has(
        &error_at(&text, line_of(&text, "[stages.score]")),
        &["stages.score.split", "has no `val_dataset`"],
    );

    let export_out = with(
        "needs = [\"train\"]",
        "needs = [\"train\"]\noutput_dir = \"out/x\"",
    );
    let l = project_ok(&export_out);
    let StageParams::Export(e) = &l.base.stage("export").unwrap().params else {
        panic!()
    };
    assert!(Path::new(e.output_dir.as_ref().unwrap()).is_absolute());
}

#[test]
fn inline_stage_tables_are_located_too() {
    let text = "[model]\npreset = \"tiny\"\n[task]\nnum_labels = 2\n[stages]\ndata = { kind = \"dataset\", dataset = \"data/train.jsonl\", max_lenght = 5 }\n";
    let msg = error_at(text, 6);
    assert_has(
        &msg,
        &["stages.data.max_lenght", "did you mean `max_length`"],
    );
    assert!(msg.contains(":6:58:"), "{msg}");
}

mod sweep;
