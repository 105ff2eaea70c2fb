//! `pipeline sweep --submit/--status` against a real Slurm (a private single-node cluster,
//! see `slurm_support`): the 2 × 2 tiny sweep of `sweep_end_to_end` as an array job,
//! shared stages computed once, the summary complete, a resubmission computing nothing,
//! and a task cancelled mid-training resuming from its checkpoint when resubmitted.
//!
//! Ignored by default (they start daemons and take a minute or two); `.ci/run` installs
//! Slurm and runs them with `cargo test --release --test it slurm_cluster -- --ignored`,
//! where a missing Slurm fails them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::entries;
use crate::slurm_support::Cluster;
use crate::sweep_end_to_end::{adapter, csv, project};

/// Generous for 2 CPUs shared with other work.
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// `pipeline --runs-dir runs ARGS` in `dir` with the cluster in its environment; panics
/// with the output unless it exits 0. Returns stdout.
fn pipeline(cluster: &Cluster, dir: &Path, args: &[&str]) -> String {
    let mut cmd = crate::common::pipeline(dir);
    cmd.args(["--runs-dir", "runs"]).args(args);
    for (k, v) in cluster.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "pipeline {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Submit the sweep; returns the job id.
fn submit(cluster: &Cluster, dir: &Path) -> String {
    let id = pipeline(cluster, dir, &["sweep", "exp.toml", "--submit"])
        .trim()
        .to_string();
    assert!(id.parse::<u64>().is_ok(), "job id: {id:?}");
    id
}

/// The log of array task `k` of `job`.
fn task_log(runs: &Path, job: &str, k: usize) -> String {
    let path = runs.join(format!("st/slurm-{job}_{k}.out"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (computed, cached) from a task log's closing line.
fn counts(log: &str) -> (usize, usize) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" computed, "))
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    (n[0], n[1])
}

/// `--mem` of the emitted script, in bytes.
fn script_mem(runs: &Path) -> u64 {
    let script = std::fs::read_to_string(runs.join("st/sweep.sbatch")).unwrap();
    let mib = script
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --mem="))
        .and_then(|m| m.strip_suffix('M'))
        .unwrap_or_else(|| panic!("no --mem=…M in\n{script}"));
    mib.parse::<u64>().unwrap() << 20
}

/// The peak resident memory a task log reports, in bytes.
fn peak_mem(log: &str) -> u64 {
    let mib = log
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .and_then(|l| l.split(" MiB").next())
        .unwrap_or_else(|| panic!("no peak memory line in:\n{log}"));
    mib.parse::<u64>().unwrap() << 20
}

/// `--status` rows as (variant, state, detail).
fn status(cluster: &Cluster, dir: &Path) -> Vec<(String, String, String)> {
    let out = pipeline(cluster, dir, &["sweep", "exp.toml", "--status"]);
    out.lines()
        .skip(1)
        .filter(|l| !l.contains(" variants: "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (state, rest) = if f[2] == "not" {
                ("not run".to_string(), &f[4..])
            } else {
                (f[2].to_string(), &f[3..])
            };
            (f[1].to_string(), state, rest.join(" "))
        })
        .collect()
}

/// One CPU per task, so the 2-CPU node runs two tasks at a time and they contend for the
/// shared dataset stage.
fn with_one_cpu_per_task(dir: &Path) {
    let exp = dir.join("exp.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, format!("{text}\n[slurm]\ncpus_per_task = 1\n")).unwrap();
}

#[test]
#[ignore = "needs Slurm (slurm-wlm, munge) and starts daemons: run by .ci/run"]
fn an_array_job_computes_shared_stages_once_and_a_resubmission_computes_nothing() {
    let cluster = Cluster::start();
    let p = project();
    with_one_cpu_per_task(p.path());
    let runs = p.path().join("runs");

    let job = submit(&cluster, p.path());
    cluster.wait_for_job(&job, JOB_LIMIT);
    let logs: Vec<String> = (0..4).map(|k| task_log(&runs, &job, k)).collect();
    let all = logs.join("\n");
    for (k, log) in logs.iter().enumerate() {
        assert!(!log.contains("error:"), "task {k}:\n{log}");
        // Each task runs the threads it was given, not the node's cores.
        assert!(
            log.contains("(Flex backend, 1 threads)"),
            "task {k} threads:\n{log}"
        );
        assert!(
            peak_mem(log) <= script_mem(&runs),
            "task {k} used more than the script asked for:\n{log}"
        );
    }
    // The dataset stage ran in exactly one task; the others found it cached (some after
    // waiting on its lock). Each task computed its own train and score stages.
    assert_eq!(all.matches("✓ data [").count(), 4, "{all}");
    let computed_data = logs
        .iter()
        .filter(|l| {
            l.lines()
                .any(|x| x.starts_with("✓ data [") && x.contains(" done in "))
        })
        .count();
    assert_eq!(computed_data, 1, "{all}");
    let total: usize = logs.iter().map(|l| counts(l).0).sum();
    assert_eq!(total, 1 + 4 * 2, "{all}");
    assert_eq!(entries(&runs, "dataset").len(), 1);
    assert_eq!(entries(&runs, "train").len(), 4);
    assert_eq!(entries(&runs, "score").len(), 4);

    // sweep.csv was rewritten by each task under the summary lock: every row complete.
    let (head, rows) = csv(&runs);
    assert_eq!(rows.len(), 4);
    let loss = head.iter().position(|h| h == "train.eval_loss").unwrap();
    let acc = head.iter().position(|h| h == "score.acc").unwrap();
    for r in &rows {
        assert!(r[loss].parse::<f64>().is_ok(), "{rows:?}");
        assert!(r[acc].parse::<f64>().is_ok(), "{rows:?}");
    }
    let st = status(&cluster, p.path());
    assert_eq!(st.len(), 4);
    assert!(st.iter().all(|(_, s, _)| s == "done"), "{st:?}");

    // A resubmission finds everything cached and leaves the summary as it was.
    let csv_before = std::fs::read(runs.join("st/sweep.csv")).unwrap();
    let again = submit(&cluster, p.path());
    assert_ne!(again, job);
    cluster.wait_for_job(&again, JOB_LIMIT);
    for k in 0..4 {
        let log = task_log(&runs, &again, k);
        assert_eq!(counts(&log), (0, 3), "task {k}:\n{log}");
    }
    assert_eq!(
        std::fs::read(runs.join("st/sweep.csv")).unwrap(),
        csv_before
    );
}

#[test]
#[ignore = "needs Slurm (slurm-wlm, munge) and starts daemons: run by .ci/run"]
fn a_cancelled_task_resumes_from_its_checkpoint_when_resubmitted() {
    let p = project();
    // Two variants with a longer training (a checkpoint after every step).
    let exp = p.path().join("exp.toml");
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("max_steps = 2", &format!("max_steps = {STEPS}"))
        .replace("eval_steps = 1", &format!("eval_steps = {STEPS}"))
        .replace("\"stages.train.learning_rate\" = [1e-3, 2e-3]\n", "");
    std::fs::write(&exp, format!("{text}\n[slurm]\ncpus_per_task = 1\n")).unwrap();
    // The reference: the same sweep uninterrupted, without Slurm.
    crate::sweep_end_to_end::run(p.path(), "ref", &["run", "exp.toml"], &[], 0);

    let cluster = Cluster::start();
    let runs = p.path().join("runs");
    let job = submit(&cluster, p.path());
    // Cancel task 0 once it has written a checkpoint (and is still training).
    // r4's training partial: a `train-*` directory (not its `.resumable` marker file beside
    // it) whose checkpoints hold a rank-4 adapter. r8 trains at the same time in task 1.
    let partial = || -> Option<PathBuf> {
        let dir = std::fs::read_dir(runs.join("cache/.partial")).ok()?;
        dir.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            let train = p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("train-");
            train && adapter_rank(p) == Some(4)
        })
    };
    let first_train = |log: &str| log.contains("[r4/train]");
    cluster.wait_for("a checkpoint of variant r4", JOB_LIMIT, || {
        let log =
            std::fs::read_to_string(runs.join(format!("st/slurm-{job}_0.out"))).unwrap_or_default();
        first_train(&log) && partial().is_some_and(|d| d.join("checkpoint-2").is_dir())
    });
    let cancel = cluster
        .client("scancel")
        .arg(format!("{job}_0"))
        .status()
        .unwrap();
    assert!(cancel.success());
    cluster.wait_for_job(&job, JOB_LIMIT);

    // The cancelled task left its partial with complete checkpoints, and no entry.
    let log0 = task_log(&runs, &job, 0);
    assert!(log0.contains("CANCELLED"), "{log0}");
    assert!(
        !log0.contains(" computed, "),
        "task 0 was cut short:\n{log0}"
    );
    let kept = partial().expect("the cancelled training's partial directory is kept");
    let steps: Vec<usize> = std::fs::read_dir(&kept)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-")?.parse().ok()
        })
        .collect();
    let newest = *steps.iter().max().unwrap();
    assert!((2..STEPS).contains(&newest), "{steps:?}");
    assert_eq!(entries(&runs, "train").len(), 1, "only r8 finished");
    let st = status(&cluster, p.path());
    assert_eq!(st[0].0, "r4");
    assert_eq!(st[0].1, "failed", "{st:?}");
    assert!(st[0].2.contains("CANCELLED"), "{st:?}");
    assert!(
        st[0].2.contains("train partial; a rerun resumes it"),
        "{st:?}"
    );
    assert_eq!(
        (st[1].0.as_str(), st[1].1.as_str()),
        ("r8", "done"),
        "{st:?}"
    );

    // Resubmitted: task 0 resumes from its newest checkpoint, task 1 computes nothing,
    // and both adapters equal the uninterrupted run's.
    let again = submit(&cluster, p.path());
    cluster.wait_for_job(&again, JOB_LIMIT);
    let log0 = task_log(&runs, &again, 0);
    assert!(
        log0.contains(&format!("[r4/train] resumed from checkpoint-{newest}")),
        "{log0}"
    );
    assert_eq!(counts(&log0), (2, 1), "{log0}");
    assert_eq!(counts(&task_log(&runs, &again, 1)), (0, 3));
    let reference = p.path().join("ref");
    for v in ["r4", "r8"] {
        assert!(
            adapter(&runs, v) == adapter(&reference, v),
            "{v}: adapter differs from the uninterrupted sweep"
        );
    }
    assert_eq!(
        std::fs::read_to_string(runs.join("st/sweep.csv")).unwrap(),
        std::fs::read_to_string(reference.join("st/sweep.csv")).unwrap()
    );
}

/// LoRA rank of the adapters in the checkpoints of training dir `dir` (the first complete
/// `checkpoint-*/adapter_config.json`; checkpoints appear by rename, whole).
fn adapter_rank(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir).ok()?.find_map(|e| {
        let e = e.ok()?;
        if !e.file_name().to_string_lossy().starts_with("checkpoint-") {
            return None;
        }
        let text = std::fs::read_to_string(e.path().join("adapter_config.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["r"].as_u64()
    })
}

/// Optimizer steps of the cancelled training: enough that it is still running when the
/// test sees its second checkpoint. A tiny step takes ~10-50 ms: 40 steps ended a whole
/// task in 3 s, so 400 leave seconds of margin between the poll and the scancel.
const STEPS: usize = 400;
