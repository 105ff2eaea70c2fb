//! Shared helpers for the integration tests: a project folder with an experiment file
//! and data, and the `pipeline` binary run in it. (The stand-in stage kind for driving
//! the runner without model code is the crate's `pipeline::testkit`.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub const EXPERIMENT: &str = r#"name = "demo"
seed = 7

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
learning_rate = 1e-4
eval_steps = 1

[stages.score]
kind = "score"
needs = ["data", "train"]
"#;

/// A temp project: `exp.toml` (`text`) and `data/{train,test}.jsonl`.
pub fn project(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train.jsonl"), "{\"label\": 0}\n").unwrap();
    std::fs::write(dir.path().join("data/test.jsonl"), "{\"label\": 1}\n").unwrap();
    std::fs::write(dir.path().join("exp.toml"), text).unwrap();
    dir
}

/// The first rows of shapes11 as `dir/data/<split>.jsonl` for each `(split, rows)`, with
/// absolute image paths (so the copy works from any folder).
pub fn shapes11_slice(dir: &Path, splits: &[(&str, usize)]) {
    let shapes = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/shapes11");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for (split, rows) in splits {
        let text = std::fs::read_to_string(shapes.join(format!("{split}.jsonl"))).unwrap();
        let mut out = String::new();
        for line in text.lines().take(*rows) {
            let mut row: Value = serde_json::from_str(line).unwrap();
            for img in row["images"].as_array_mut().unwrap() {
                *img = shapes
                    .join(img.as_str().unwrap())
                    .display()
                    .to_string()
                    .into();
            }
            out.push_str(&format!("{row}\n"));
        }
        std::fs::write(dir.join(format!("data/{split}.jsonl")), out).unwrap();
    }
}

/// The `pipeline` binary, run in `dir` with a scrubbed environment.
pub fn pipeline(dir: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_pipeline"));
    c.current_dir(dir).env_clear().env("NO_COLOR", "1");
    c
}

/// Run `pipeline args…` in `dir`; return (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = pipeline(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temp project: `exp.toml` (`text`) and the first `train` / `test` rows of shapes11
/// with absolute image paths.
pub fn shapes11_project(text: &str, train: usize, test: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    shapes11_slice(dir.path(), &[("train", train), ("test", test)]);
    std::fs::write(dir.path().join("exp.toml"), text).unwrap();
    dir
}

/// What one `pipeline` call did.
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub shown: String,
}

impl Out {
    /// `(computed, cached)` from the closing `N computed, M cached in T` line.
    pub fn counts(&self) -> (usize, usize) {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.contains(" computed, "))
            .unwrap_or_else(|| panic!("no summary line in:\n{}", self.shown));
        let n: Vec<usize> = line
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').parse().ok())
            .collect();
        (n[0], n[1])
    }

    /// The single `error:` line of a rejected call (and nothing else on stderr).
    #[track_caller]
    pub fn one_error_line(&self) -> &str {
        assert_eq!(self.stderr.lines().count(), 1, "one line:\n{}", self.shown);
        assert!(self.stderr.starts_with("error: "), "{}", self.shown);
        for bad in [
            "panicked",
            "RUST_BACKTRACE",
            "memory allocation",
            "capacity overflow",
        ] {
            assert!(!self.stderr.contains(bad), "{}", self.shown);
        }
        self.stderr.trim_end()
    }
}

/// `pipeline args…` in `dir` with `env`; panics with the whole output unless it exits
/// with `want`.
#[track_caller]
pub fn pipeline_out(dir: &Path, args: &[&str], env: &[(&str, &str)], want: i32) -> Out {
    let mut cmd = pipeline(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let code = out.status.code().unwrap_or(-1);
    let shown = format!(
        "$ pipeline {} (in {})\nexit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        dir.display()
    );
    assert_eq!(code, want, "{shown}");
    Out {
        stdout,
        stderr,
        shown,
    }
}

/// The complete cache entries of `kind` under `runs/cache`, sorted (each one's manifest
/// names the kind).
pub fn entries(runs: &Path, kind: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(runs.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{kind}-"))
        })
        .collect();
    out.sort();
    for e in &out {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(e.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["kind"], kind, "{}", e.display());
    }
    out
}
