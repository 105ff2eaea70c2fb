//! `gc`, `show` and `sweep --emit slurm` through the real binary, on `runs/` trees laid
//! out by hand (these commands need no stage kinds).

use crate::common;

use std::path::Path;

use common::{EXPERIMENT, project, run_cli};

fn entry(runs: &Path, name: &str, bytes: usize) {
    let d = runs.join("cache").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("blob"), vec![0u8; bytes]).unwrap();
}

fn link(runs: &Path, at: &str, target: &str) {
    let l = runs.join(at);
    std::fs::create_dir_all(l.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, l).unwrap();
}

#[test]
fn gc_dry_run_then_real() {
    let p = project(EXPERIMENT);
    let runs = p.path().join("runs");
    entry(&runs, "dataset-1111111111111111", 10);
    entry(&runs, "train-2222222222222222", 2000);
    entry(&runs, "train-3333333333333333", 30);
    link(&runs, "demo/data", "../cache/dataset-1111111111111111");
    link(&runs, "demo/r8/train", "../../cache/train-3333333333333333");
    std::fs::create_dir_all(runs.join("cache/.partial/train-4444444444444444")).unwrap();

    let (code, out, err) = run_cli(p.path(), &["gc", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would remove runs/cache/train-2222222222222222 (2.0 kB)"),
        "{out}"
    );
    assert!(
        out.contains("would remove runs/cache/.partial/train-4444444444444444"),
        "{out}"
    );
    assert!(
        out.contains("would remove 2 item(s), 2.0 kB; kept 2 linked entries"),
        "{out}"
    );
    assert!(runs.join("cache/train-2222222222222222").exists());

    let (code, out, _) = run_cli(p.path(), &["gc"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("removed runs/cache/train-2222222222222222"),
        "{out}"
    );
    assert!(!runs.join("cache/train-2222222222222222").exists());
    assert!(!runs.join("cache/.partial/train-4444444444444444").exists());
    assert!(runs.join("cache/dataset-1111111111111111").exists());
    assert!(runs.join("cache/train-3333333333333333").exists());
    let (_, out, _) = run_cli(p.path(), &["gc", "--runs-dir", "runs"]);
    assert!(
        out.contains("removed 0 item(s), 0 B; kept 2 linked entries"),
        "{out}"
    );
}

#[test]
fn show_prints_latest_metrics_or_the_sweep_summary() {
    let p = project(EXPERIMENT);
    let runs = p.path().join("runs");
    entry(&runs, "score-5555555555555555", 1);
    std::fs::write(
        runs.join("cache/score-5555555555555555/metrics.json"),
        r#"{"acc": 0.875, "nll": 0.25, "per_class": [1]}"#,
    )
    .unwrap();
    link(&runs, "demo/score", "../cache/score-5555555555555555");
    let (code, out, err) = run_cli(p.path(), &["show", "exp.toml"]);
    assert_eq!(code, 0, "{err}");
    let score = out.lines().find(|l| l.starts_with("score")).unwrap();
    assert!(
        score.contains("acc=0.8750")
            && score.contains("nll=0.2500")
            && !score.contains("per_class"),
        "{out}"
    );
    assert!(
        out.lines()
            .find(|l| l.starts_with("train"))
            .unwrap()
            .contains("not run yet"),
        "{out}"
    );

    // A sweep: the table is rebuilt from the links (a stale sweep.md is not trusted).
    let sweep = format!("{EXPERIMENT}\n[sweep]\n\"stages.train.lora_rank\" = [8, 16]\n");
    std::fs::write(p.path().join("exp.toml"), sweep).unwrap();
    std::fs::write(runs.join("demo/sweep.md"), "| stale |\n").unwrap();
    link(
        &runs,
        "demo/r16/score",
        "../../cache/score-5555555555555555",
    );
    let (code, out, err) = run_cli(p.path(), &["show", "exp.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("stale"), "{out}");
    let row = |v: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("| {v} |")))
            .unwrap()
    };
    assert!(row("r16").contains("| 16 | 0.8750 |"), "{out}");
    assert!(row("r8").contains("| 8 | – |"), "{out}");
}

#[test]
fn sweep_emits_a_slurm_array_script() {
    let text = format!(
        "{EXPERIMENT}\n[sweep]\n\"stages.train.lora_rank\" = [8, 16]\n\"stages.train.learning_rate\" = [1e-4, 5e-5]\n"
    );
    let p = project(&text);
    let (code, out, err) = run_cli(
        p.path(),
        &[
            "sweep",
            "exp.toml",
            "--emit",
            "slurm",
            "--sbatch",
            "--gres=gpu:1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(4 array tasks)"), "{out}");
    let script = std::fs::read_to_string(p.path().join("runs/demo/sweep.sbatch")).unwrap();
    let root = p.path().canonicalize().unwrap_or(p.path().to_path_buf());
    for part in [
        "#!/bin/bash\n",
        "#SBATCH --array=0-3\n",
        "#SBATCH --gres=gpu:1\n",
        "#     0  r8-lr1e-4\n",
        "#     3  r16-lr5e-5\n",
        " run '",
        "exp.toml' --runs-dir '",
        " --variant \"$SLURM_ARRAY_TASK_ID\"\n",
    ] {
        assert!(script.contains(part), "`{part}` missing from:\n{script}");
    }
    assert!(
        script.contains(&root.join("runs").display().to_string())
            || script.contains(&p.path().join("runs").display().to_string())
    );
    let status = std::process::Command::new("bash")
        .arg("-n")
        .arg(p.path().join("runs/demo/sweep.sbatch"))
        .status()
        .unwrap();
    assert!(status.success(), "valid shell syntax");

    let plain = project(EXPERIMENT);
    let (code, _, err) = run_cli(plain.path(), &["sweep", "exp.toml", "--emit", "slurm"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "error: exp.toml has no [sweep] table");
}

#[test]
fn bench_prints_one_json_line_per_phase() {
    let p = project(EXPERIMENT);
    let args = [
        "bench", "--preset", "tiny", "--device", "cpu", "--pixels", "12544", "--text", "40",
        "--rank", "4", "--steps", "1", "--warmup", "0",
    ];
    let (code, out, err) = run_cli(p.path(), &args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = lines.iter().map(|l| l["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["train", "eval"], "{out}");
    for l in &lines {
        assert_eq!(l["workload"]["model"], "tiny");
        assert_eq!(l["workload"]["lora_rank"], 4);
        assert_eq!(l["steps"], 1);
        assert!(l["samples_per_s"].as_f64().unwrap() > 0.0);
    }
    assert!(lines[0]["loss"].as_f64().unwrap().is_finite());

    let (code, _, err) = run_cli(p.path(), &["bench", "--batch", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let (code, _, _) = run_cli(p.path(), &["bench", "--mode", "fast"]);
    assert_eq!(code, 2);
}
