//! Bad input through the real binary: exit status 2 and exactly one `error:` line that
//! names `file:line:column`, the dotted key and the valid choices — never a panic.

use crate::common;

use common::{EXPERIMENT, project, run_cli};

/// Run `plan` and `run` on `text`; both must fail with one line starting
/// `error: exp.toml:LINE:`, LINE being the first that contains `at`, and naming `parts`.
#[track_caller]
fn rejects(text: &str, at: &str, parts: &[&str]) -> String {
    let line = text.lines().position(|l| l.contains(at)).unwrap() + 1;
    let p = project(text);
    let mut last = String::new();
    for cmd in ["plan", "run"] {
        let (code, stdout, stderr) = run_cli(p.path(), &[cmd, "exp.toml"]);
        assert_eq!(code, 2, "{cmd}: stderr: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        let prefix = format!("error: exp.toml:{line}:");
        assert!(
            stderr.starts_with(&prefix),
            "expected {prefix}…, got {stderr}"
        );
        for part in parts {
            assert!(stderr.contains(part), "`{part}` missing from: {stderr}");
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"));
        last = stderr;
    }
    assert!(!p.path().join("runs/cache").exists(), "nothing ran");
    last
}

#[test]
fn unknown_key() {
    let text = EXPERIMENT.replace("lora_rank = 8", "lora_rnk = 8");
    let msg = rejects(
        &text,
        "lora_rnk",
        &[
            "stages.train.lora_rnk",
            "unknown key `lora_rnk` in [stages.train]",
            "(did you mean `lora_rank`?)",
            "valid keys: adam_beta1,",
            "lora_rank",
        ],
    );
    assert!(msg.starts_with("error: exp.toml:18:1: "), "{msg}");
}

#[test]
fn unknown_kind() {
    let text = EXPERIMENT.replace("kind = \"train\"", "kind = \"trian\"");
    rejects(
        &text,
        "trian",
        &[
            "stages.train.kind",
            "unknown stage kind `trian`",
            "valid kinds: dataset, export, score, train",
        ],
    );
}

#[test]
fn wrong_type() {
    let text = EXPERIMENT.replace("lora_rank = 8", "lora_rank = \"8\"");
    let msg = rejects(
        &text,
        "lora_rank",
        &[
            "stages.train.lora_rank",
            "expected an integer, found string \"8\"",
        ],
    );
    assert!(msg.starts_with("error: exp.toml:18:13: "), "{msg}");
}

#[test]
fn bad_choice() {
    let text = EXPERIMENT.replace(
        "preset = \"tiny\"",
        "preset = \"tiny\"\ntorch_dtype = \"fp16\"",
    );
    rejects(
        &text,
        "fp16",
        &[
            "model.torch_dtype",
            "invalid torch_dtype `fp16`",
            "valid values: bfloat16, float32",
        ],
    );
}

#[test]
fn missing_needed_stage_and_cycle() {
    let text = EXPERIMENT.replace(
        "needs = [\"data\", \"train\"]",
        "needs = [\"data\", \"trainer\"]",
    );
    rejects(
        &text,
        "trainer",
        &[
            "stages.score.needs",
            "needs `trainer`, which does not exist",
            "stages: data, score, train",
        ],
    );
    let text = EXPERIMENT.replace("needs = [\"data\"]", "needs = [\"data\", \"score\"]");
    rejects(
        &text,
        "\"score\"]",
        &[
            "stages.train.needs",
            "cycle in needs: train → score → train",
        ],
    );
}

#[test]
fn missing_input_kind_and_file() {
    let text = EXPERIMENT.replace("needs = [\"data\", \"train\"]", "needs = [\"train\"]");
    rejects(
        &text,
        "needs = [\"train\"]",
        &["stages.score.needs", "a score stage needs a dataset stage"],
    );
    let text = EXPERIMENT.replace("data/test.jsonl", "data/nope.jsonl");
    rejects(
        &text,
        "nope",
        &[
            "stages.data.val_dataset",
            "file not found",
            "data/nope.jsonl",
        ],
    );
}

#[test]
fn sweep_path_and_value() {
    let text = format!("{EXPERIMENT}\n[sweep]\n\"stages.train.lora_rnk\" = [8, 16]\n");
    rejects(
        &text,
        "lora_rnk",
        &[
            "sweep.stages.train.lora_rnk",
            "unknown key `lora_rnk` for a train stage",
            "valid keys:",
        ],
    );
    let text = format!("{EXPERIMENT}\n[sweep]\n\"stages.train.learning_rate\" = [1e-4, -1.0]\n");
    rejects(
        &text,
        "-1.0",
        &[
            "sweep.stages.train.learning_rate",
            "value -1.0",
            "learning_rate must be > 0",
        ],
    );
}

#[test]
fn invalid_toml() {
    let text = EXPERIMENT.replace("lora_rank = 8", "lora_rank = 8 8");
    rejects(&text, "lora_rank", &["invalid TOML"]);
}

#[test]
fn usage_errors_exit_2() {
    let p = project(EXPERIMENT);
    let (code, _, stderr) = run_cli(p.path(), &["run"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "error: cannot read experiment file experiments/cls11.toml: No such file or directory (os error 2)"
    );
    let (code, _, stderr) = run_cli(p.path(), &["run", "exp.toml", "--jobs", "0"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = run_cli(p.path(), &["run", "exp.toml", "--variant", "3"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("has no [sweep]"), "{stderr}");
    let (code, _, stderr) = run_cli(p.path(), &["frobnicate"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = run_cli(p.path(), &["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("plan") && stdout.contains("gc") && stdout.contains("sweep"));
}
