//! `pipeline from-swift` and the MAX_PIXELS environment variable, through the binary.

use crate::common::{EXPERIMENT, pipeline, run_cli};

/// The common project with rows `plan` can read (it checks the dataset's rows).
fn project(text: &str) -> tempfile::TempDir {
    let dir = crate::common::project(text);
    let row = |label: u32| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], \"label\": {label}}}\n"
        )
    };
    std::fs::write(dir.path().join("data/train.jsonl"), row(0)).unwrap();
    std::fs::write(dir.path().join("data/test.jsonl"), row(1)).unwrap();
    dir
}

#[test]
fn from_swift_prints_an_experiment_that_plans() {
    let dir = project(EXPERIMENT);
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "from-swift",
            "--",
            "MAX_PIXELS=12544",
            "swift",
            "sft",
            "--model",
            "Qwen2.5-VL-7B-Instruct",
            "--task_type",
            "seq_cls",
            "--num_labels",
            "2",
            "--tuner_type",
            "lora",
            "--dataset",
            "data/train.jsonl",
            "--val_dataset",
            "data/test.jsonl",
            "--lora_rank",
            "4",
            "--eval_steps",
            "1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_pixels = 12544") && out.contains("tuner_type = \"lora\""));
    // With the hub id swapped for a preset (no model cache here), the file plans.
    let text = out.replace("model = \"Qwen2.5-VL-7B-Instruct\"", "preset = \"tiny\"");
    std::fs::write(dir.path().join("swift.toml"), text).unwrap();
    let (code, _, err) = run_cli(dir.path(), &["plan", "swift.toml"]);
    assert_eq!(code, 0, "{err}");
    // The hub id itself: one line naming where it looked.
    std::fs::write(dir.path().join("hub.toml"), &out).unwrap();
    let (code, _, err) = run_cli(dir.path(), &["plan", "hub.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("Qwen2.5-VL-7B-Instruct is not in a local cache")
            && err.contains("models--Qwen--Qwen2.5-VL-7B-Instruct/snapshots"),
        "{err}"
    );
    // Unknown flags: one line each, exit 2.
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "from-swift",
            "--",
            "swift",
            "sft",
            "--deepspeed",
            "zero2",
            "--foo",
            "1",
        ],
    );
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "error: unknown flag --deepspeed (no equivalent key)",
            "error: unknown flag --foo (no equivalent key)"
        ]
    );
}

#[test]
fn max_pixels_from_the_environment_when_the_file_sets_none() {
    let dir = project(EXPERIMENT);
    let plan = |env: Option<&str>| {
        let mut c = pipeline(dir.path());
        c.args(["plan", "exp.toml"]);
        if let Some(v) = env {
            c.env("MAX_PIXELS", v);
        }
        let o = c.output().unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, base, _) = plan(None);
    assert_eq!(code, 0);
    let (code, with_env, err) = plan(Some("50176"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "notice: [stages.data] max_pixels = 50176 from the environment variable MAX_PIXELS"
        ),
        "{err}"
    );
    // The resolved value is in the dataset stage's key.
    assert_ne!(base, with_env);
    let (code, _, err) = plan(Some("lots"));
    assert_eq!(code, 2);
    assert!(
        err.contains("MAX_PIXELS=\"lots\" is not a whole number"),
        "{err}"
    );
}
