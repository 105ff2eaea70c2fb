//! The runner through its public API, from an experiment file on disk to `runs/`, with a
//! stand-in stage kind: plan explanations, cache hits and their speed, sweep summaries,
//! and real processes (killed mid-stage, or racing for the same entry).

use crate::common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{EXPERIMENT, project};
use indicatif::{MultiProgress, ProgressDrawTarget};
use pipeline::experiment::{Variant, load};
use pipeline::graph::devices::no_gpus;
use pipeline::graph::{Plan, RunOptions, RunReport, execute, explain};
use pipeline::report::sweep_summary::sweep_summary;
use pipeline::store::{KeyLock, Lookup, Store};
use pipeline::testkit::{Behavior, Kit};

fn quiet() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
}

/// `dir/exp.toml` planned with stand-in stages.
fn plan(dir: &Path, kit: &Kit) -> (Plan, Store) {
    let loaded = load(&dir.join("exp.toml")).unwrap();
    let variants: Vec<&Variant> = loaded.variants.iter().collect();
    let store = Store::new(dir.join("runs"));
    let devices = &loaded.base.devices;
    let plan = Plan::build(
        loaded.name(),
        &variants,
        devices,
        no_gpus,
        &store,
        &*kit.factory(),
    );
    (plan.unwrap(), store)
}

fn plan_text(dir: &Path) -> String {
    let (plan, store) = plan(dir, &Kit::new(dir));
    explain::render(&plan, &explain::explain(&plan, &store))
}

/// Run `dir/exp.toml` with stand-in stages; stage `slow` sleeps `sleep` first.
fn run(dir: &Path, slow: &str, sleep: Duration) -> RunReport {
    let kit = Kit::new(dir).with(slow, Behavior::Sleep(sleep));
    let (plan, store) = plan(dir, &kit);
    execute(&plan, &store, &RunOptions::default(), &quiet()).unwrap()
}

/// How many times stage `stage` of `dir`'s experiment ran, across processes.
fn runs_of(dir: &Path, stage: &str) -> usize {
    Kit::new(dir).count(stage)
}

#[test]
fn plan_explains_and_reruns_are_cached() {
    let p = project(EXPERIMENT);
    let text = plan_text(p.path());
    assert_eq!(text.matches("will run: never run").count(), 3, "{text}");
    assert!(text.starts_with("experiment demo\n"), "{text}");
    assert_eq!(run(p.path(), "", Duration::ZERO).computed.len(), 3);
    let text = plan_text(p.path());
    assert_eq!(text.matches("cached").count(), 4, "{text}"); // 3 lines + the total
    assert!(
        text.contains("3 stage computation(s): 3 cached, 0 to run"),
        "{text}"
    );

    let exp = p.path().join("exp.toml");
    std::fs::write(
        &exp,
        EXPERIMENT.replace("learning_rate = 1e-4", "learning_rate = 2e-4"),
    )
    .unwrap();
    let text = plan_text(p.path());
    let line = |stage: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{stage} ")))
            .unwrap()
            .to_string()
    };
    assert!(line("data").ends_with("cached"), "{text}");
    assert!(
        line("train").contains("will run: `learning_rate` changed: 0.0001 → 0.0002"),
        "{text}"
    );
    assert!(
        line("score").contains("will run: upstream `train` changed"),
        "{text}"
    );
    let r = run(p.path(), "", Duration::ZERO);
    assert_eq!((r.computed.len(), r.cached), (2, 1));
    assert_eq!(runs_of(p.path(), "data"), 1);
}

#[test]
fn a_fully_cached_rerun_takes_well_under_a_second() {
    let p = project(EXPERIMENT);
    // A 64 MB "dataset": rehashing it on every rerun is what the stat cache avoids.
    let big = p.path().join("data/train.jsonl");
    std::fs::write(&big, vec![b'x'; 64 << 20]).unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_modified(past)
        .unwrap();
    run(p.path(), "", Duration::ZERO);
    let t = Instant::now();
    let r = run(p.path(), "", Duration::ZERO);
    let took = t.elapsed();
    assert_eq!((r.computed.len(), r.cached), (0, 3));
    eprintln!("fully cached rerun (load + plan + execute): {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "cached rerun took {took:?}"
    );
}

#[test]
fn a_sweep_writes_a_summary_sorted_by_the_best_metric() {
    let text = format!(
        "{EXPERIMENT}\n[sweep]\n\"stages.train.lora_rank\" = [8, 16]\n\"stages.train.learning_rate\" = [1e-4, 5e-5]\n"
    );
    let p = project(&text);
    let r = run(p.path(), "", Duration::ZERO);
    assert_eq!(r.computed.len(), 1 + 4 * 2, "one shared dataset stage");
    let loaded = load(&p.path().join("exp.toml")).unwrap();
    let store = Store::new(p.path().join("runs"));
    let s = sweep_summary(&store, &loaded);
    let order: Vec<&str> = s.rows.iter().map(|r| r.variant.as_str()).collect();
    // loss = 1/(1+r) + 1000·lr: 0.109 < 0.159 < 0.161 < 0.211
    assert_eq!(
        order,
        ["r16-lr5e-5", "r16-lr1e-4", "r8-lr5e-5", "r8-lr1e-4"]
    );
    assert_eq!(s.sort_by, Some(("train.eval_loss".to_string(), true)));
    assert!((s.rows[0].metrics["train.eval_loss"] - (1.0 / 17.0 + 0.05)).abs() < 1e-12);
    assert_eq!(s.rows[0].metrics["score.acc"], 0.9);
    assert!(
        !s.columns
            .iter()
            .any(|c| c.contains("runtime") || c.contains("confusion")),
        "{:?}",
        s.columns
    );
    // The heatmap grid: rank down, learning rate across, both ascending.
    let map = s.heatmap().unwrap();
    assert_eq!(
        (map.y_ticks.clone(), map.x_ticks.clone()),
        (
            vec!["8".to_string(), "16".to_string()],
            vec!["5e-5".to_string(), "1e-4".to_string()]
        )
    );
    for (row, r) in map.values.iter().zip([8.0, 16.0]) {
        for (cell, lr) in row.iter().zip([5e-5, 1e-4]) {
            let want = 1.0 / (1.0 + r) + 1000.0 * lr;
            assert!(
                (cell.unwrap() - want).abs() < 1e-12,
                "r{r} lr{lr}: {cell:?}"
            );
        }
    }
    assert!(map.lower_is_better && map.title.contains("train.eval_loss"));
    assert_eq!(map.x_label, "lr (stages.train.learning_rate)");
    let files = s.write(&store).unwrap();
    let png = files.heatmap.unwrap();
    assert_eq!(png, p.path().join("runs/demo/sweep_heatmap.png"));
    assert!(image::open(&png).is_ok());
    let (csv, md) = (files.csv, files.md);
    let csv = std::fs::read_to_string(csv).unwrap();
    assert!(
        csv.starts_with(
            "variant,stages.train.lora_rank,stages.train.learning_rate,train.eval_loss,"
        ),
        "{csv}"
    );
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("r16-lr5e-5,16,5e-5,"),
        "{csv}"
    );
    let md = std::fs::read_to_string(md).unwrap();
    assert!(
        md.contains("| variant | r | lr | train.eval_loss |"),
        "{md}"
    );
    assert!(
        md.contains("Sorted by `train.eval_loss` (lower is better)"),
        "{md}"
    );
}

// ---- real processes -------------------------------------------------------------------

const CHILD_DIR: &str = "PIPELINE_TEST_CHILD_DIR";
const CHILD_SLEEP: &str = "PIPELINE_TEST_CHILD_SLEEP_MS";

/// Not a test: the body of the child processes below (runs only when they set the env).
#[test]
#[ignore = "helper: run by the process tests as a child"]
fn child_run() {
    let dir = std::env::var(CHILD_DIR).expect("run by a parent test");
    let ms: u64 = std::env::var(CHILD_SLEEP).unwrap().parse().unwrap();
    run(Path::new(&dir), "data", Duration::from_millis(ms));
}

fn spawn_child(dir: &Path, sleep_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "runner_end_to_end::child_run",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_SLEEP, sleep_ms.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_stage_leaves_no_entry_and_no_lock() {
    let p = project(EXPERIMENT);
    let store = Store::new(p.path().join("runs"));
    let mut child = spawn_child(p.path(), 60_000);
    let partial_root = store.partial_root();
    wait_for("the stage to start", || {
        std::fs::read_dir(&partial_root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("started").exists())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let key_of_data = {
        let (plan, _) = plan(p.path(), &Kit::new(p.path()));
        plan.graph
            .node_weights()
            .find(|n| n.kind == "dataset")
            .unwrap()
            .key
            .clone()
    };
    assert!(
        !store.entry_dir("dataset", &key_of_data).exists(),
        "no complete-looking entry"
    );
    assert!(matches!(
        store.lookup("dataset", &key_of_data),
        Lookup::Miss
    ));
    assert!(
        store
            .partial_dir("dataset", &key_of_data)
            .join("started")
            .exists(),
        "the partial dir is where it worked"
    );
    assert!(store.read_pointer("demo", None, "data").is_none());
    assert!(
        KeyLock::try_exclusive(&store.lock_path("dataset", &key_of_data))
            .unwrap()
            .is_some(),
        "the dead holder's lock is gone"
    );
    // The next run recomputes from scratch and completes.
    let r = run(p.path(), "", Duration::ZERO);
    assert_eq!(r.computed.len(), 3);
    assert!(matches!(
        store.lookup("dataset", &key_of_data),
        Lookup::Hit(_)
    ));
}

#[test]
fn two_processes_compute_a_shared_entry_once() {
    let p = project(EXPERIMENT);
    let children = [spawn_child(p.path(), 700), spawn_child(p.path(), 700)];
    for mut c in children {
        assert!(c.wait().unwrap().success(), "both runs succeed");
    }
    for s in ["data", "train", "score"] {
        assert_eq!(
            runs_of(p.path(), s),
            1,
            "{s} computed once across two processes"
        );
    }
}
