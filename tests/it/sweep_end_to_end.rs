//! `pipeline run` on a real 2 × 2 LoRA rank × learning-rate sweep through the binary: the
//! tiny preset on a slice of shapes11 (16 train, 8 val rows), two optimizer steps with an
//! eval and a checkpoint after each, and a score stage. Shared dataset stage, summary
//! against each variant's own log, reruns, an interrupted sweep resumed, `--variant`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Out;
use serde_json::Value;

const EXPERIMENT: &str = concat!(
    "name = \"st\"\n",
    include_str!("common/tiny_train.toml"),
    r#"
[stages.score]
kind = "score"
needs = ["data", "train"]

[sweep]
"stages.train.lora_rank" = [4, 8]
"stages.train.learning_rate" = [1e-3, 2e-3]
"#
);

/// Variant names in sweep order (first key outermost).
pub(crate) const VARIANTS: [&str; 4] = ["r4-lr1e-3", "r4-lr2e-3", "r8-lr1e-3", "r8-lr2e-3"];
const INTERRUPT_ENV: &str = "PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS";

/// A temp project: `exp.toml` and the first rows of shapes11 with absolute image paths.
pub(crate) fn project() -> tempfile::TempDir {
    common::shapes11_project(EXPERIMENT, 16, 8)
}

/// `pipeline --runs-dir RUNS args…` in `dir`; panics with the whole output unless the
/// exit code is `want`.
pub(crate) fn run(dir: &Path, runs: &str, args: &[&str], env: &[(&str, &str)], want: i32) -> Out {
    let args = [&["--runs-dir", runs][..], args].concat();
    common::pipeline_out(dir, &args, env, want)
}

use common::entries;

/// `sweep.csv` as (header, rows of cells).
pub(crate) fn csv(runs: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(runs.join("st/sweep.csv")).unwrap();
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
    (lines.next().unwrap(), lines.collect())
}

pub(crate) fn adapter(runs: &Path, variant: &str) -> Vec<u8> {
    std::fs::read(runs.join(format!(
        "st/{variant}/train/adapter/adapter_model.safetensors"
    )))
    .unwrap()
}

#[test]
fn a_rank_by_lr_sweep_shares_the_dataset_and_its_summary_matches_the_logs() {
    let p = project();
    let runs = p.path().join("runs");
    let first = run(p.path(), "runs", &["run", "exp.toml"], &[], 0);
    assert_eq!(first.counts(), (9, 0), "1 dataset + 4 × (train, score)");
    assert_eq!(
        entries(&runs, "dataset").len(),
        1,
        "the dataset stage ran once"
    );
    assert_eq!(entries(&runs, "train").len(), 4);
    assert_eq!(entries(&runs, "score").len(), 4);
    let data = std::fs::canonicalize(runs.join("st").join(VARIANTS[0]).join("data")).unwrap();
    for v in VARIANTS {
        assert_eq!(
            std::fs::canonicalize(runs.join("st").join(v).join("data")).unwrap(),
            data,
            "{v} links the shared dataset entry"
        );
    }

    // Every sweep.csv row carries its variant's values and the last eval line of its own
    // logging.jsonl, exactly; rows are sorted by eval_loss (metric_for_best_model).
    let (head, rows) = csv(&runs);
    assert_eq!(
        head[..3],
        [
            "variant",
            "stages.train.lora_rank",
            "stages.train.learning_rate"
        ]
    );
    assert_eq!(rows.len(), 4);
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let eval_cols: Vec<(usize, &str)> = head
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("train.").map(|m| (i, m)))
        .filter(|(_, m)| m.starts_with("eval_"))
        .collect();
    assert!(eval_cols.len() >= 2, "eval_loss and eval_acc: {head:?}");
    let mut losses = Vec::new();
    for row in &rows {
        let v = row[0].as_str();
        let log =
            std::fs::read_to_string(runs.join(format!("st/{v}/train/logging.jsonl"))).unwrap();
        let last_eval: BTreeMap<String, Value> = log
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<BTreeMap<String, Value>>(l).unwrap())
            .find(|l| l.contains_key("eval_loss"))
            .unwrap();
        assert_eq!(last_eval["global_step/max_steps"], "2/2", "{v}");
        for &(i, metric) in &eval_cols {
            let want = last_eval[metric].as_f64().unwrap();
            assert_eq!(row[i].parse::<f64>().unwrap(), want, "{v} {metric}");
        }
        losses.push(row[col("train.eval_loss")].parse::<f64>().unwrap());
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(
                runs.join(format!("st/{v}/train/adapter/adapter_config.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg["r"].to_string(),
            row[col("stages.train.lora_rank")],
            "{v}"
        );
        let (rank, lr) = (&row[1], &row[2]);
        assert_eq!(v, format!("r{rank}-lr{lr}"));
        assert!(
            row[col("score.acc")].parse::<f64>().is_ok(),
            "score metrics too: {row:?}"
        );
    }
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "{losses:?}");
    let mut names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, VARIANTS);

    // The table is printed at the end; the heatmap is written next to it.
    assert!(
        first
            .stdout
            .contains("| variant | r | lr | train.eval_loss |"),
        "{}",
        first.stdout
    );
    let png = runs.join("st/sweep_heatmap.png");
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(img.width() > 300 && img.height() > 150);
    assert!(first.stderr.contains("heatmap: runs/st/sweep_heatmap.png"));

    // A rerun computes nothing and reports the same table; `show` reprints it.
    let csv_before = std::fs::read(runs.join("st/sweep.csv")).unwrap();
    let again = run(p.path(), "runs", &["run", "exp.toml"], &[], 0);
    assert_eq!(again.counts(), (0, 9));
    assert!(again.stderr.contains("0 computed, 9 cached"));
    assert_eq!(again.stdout, first.stdout);
    assert_eq!(
        std::fs::read(runs.join("st/sweep.csv")).unwrap(),
        csv_before
    );
    let show = run(p.path(), "runs", &["show", "exp.toml"], &[], 0);
    assert!(
        show.stdout.starts_with(first.stdout.trim_end()),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("heatmap: runs/st/sweep_heatmap.png"));
}

#[test]
fn an_interrupted_sweep_finishes_only_what_is_missing_and_matches_an_uninterrupted_one() {
    let p = project();
    // The reference: uninterrupted, two stages at a time (results must not depend on it).
    let reference = run(p.path(), "ref", &["run", "exp.toml", "--jobs", "2"], &[], 0);
    assert_eq!(reference.counts(), (9, 0));

    // Variant 0 first, alone; then the whole sweep, stopped after one optimizer step of
    // the next training (the test hook fails the loop there; checkpoint-1 is on disk).
    let first = run(
        p.path(),
        "cut",
        &["run", "exp.toml", "--variant", "0"],
        &[],
        0,
    );
    assert_eq!(first.counts(), (3, 0));
    let cut = p.path().join("cut");
    let stopped = run(
        p.path(),
        "cut",
        &["run", "exp.toml"],
        &[(INTERRUPT_ENV, "1")],
        1,
    );
    assert!(
        stopped.stderr.contains(&format!("train [{}]", VARIANTS[1])),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        entries(&cut, "train").len(),
        1,
        "only variant 0's training is complete"
    );
    // The partial dir, and beside it the marker that tells `gc` it is resumable.
    let partial: Vec<PathBuf> = std::fs::read_dir(cut.join("cache/.partial"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(partial[0].with_extension("resumable").is_file());
    assert!(partial[0].join("checkpoint-1").is_dir());
    assert!(!partial[0].join("checkpoint-2").exists());

    // The rerun: the dataset and variant 0 are cached, variant 1 resumes from its
    // checkpoint, variants 2 and 3 run.
    let rerun = run(p.path(), "cut", &["run", "exp.toml"], &[], 0);
    assert_eq!(rerun.counts(), (6, 3), "{}", rerun.stderr);
    assert!(
        rerun.stderr.contains(&format!(
            "[{}/train] resumed from checkpoint-1",
            VARIANTS[1]
        )),
        "{}",
        rerun.stderr
    );
    assert_eq!(rerun.stderr.matches("resumed from").count(), 1);
    assert_eq!(entries(&cut, "dataset").len(), 1);
    assert_eq!(entries(&cut, "train").len(), 4);

    let reference_dir = p.path().join("ref");
    for v in VARIANTS {
        assert!(
            adapter(&cut, v) == adapter(&reference_dir, v),
            "{v}: adapter differs from the uninterrupted sweep"
        );
    }
    assert_eq!(
        std::fs::read_to_string(cut.join("st/sweep.csv")).unwrap(),
        std::fs::read_to_string(reference_dir.join("st/sweep.csv")).unwrap()
    );
}

#[test]
fn variant_runs_only_that_variant() {
    let p = project();
    let runs = p.path().join("runs");
    let r = run(
        p.path(),
        "runs",
        &["run", "exp.toml", "--variant", "r8-lr2e-3"],
        &[],
        0,
    );
    assert_eq!(r.counts(), (3, 0));
    let dirs: Vec<String> = std::fs::read_dir(runs.join("st"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ["r8-lr2e-3"]);
    assert_eq!(entries(&runs, "train").len(), 1);
    // The summary lists every variant; those not run have no metrics yet.
    let (head, rows) = csv(&runs);
    let loss = head.iter().position(|h| h == "train.eval_loss").unwrap();
    assert_eq!(rows[0][0], "r8-lr2e-3");
    assert!(rows[0][loss].parse::<f64>().is_ok());
    assert!(rows[1..].iter().all(|r| r[loss].is_empty()), "{rows:?}");

    // By index: variant 1 reuses the dataset entry.
    let r = run(
        p.path(),
        "runs",
        &["run", "exp.toml", "--variant", "1"],
        &[],
        0,
    );
    assert_eq!(r.counts(), (2, 1));
    assert!(runs.join("st/r4-lr2e-3/train").exists());
    let bad = run(
        p.path(),
        "runs",
        &["run", "exp.toml", "--variant", "9"],
        &[],
        2,
    );
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
}
