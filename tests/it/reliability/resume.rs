//! A damaged newest checkpoint gives way to the previous good one (and says so), with the
//! same result as an uninterrupted run; without a terminal a training prints one plain
//! progress line per log step and eval; `train_samples_per_second` honours `max_steps`.

use std::path::Path;

use serde_json::Value;

use super::{BASE, entry, pipeline, project, train_partial};

const STOP: &str = "PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS";

/// Three steps with a checkpoint after each.
fn three_steps() -> String {
    BASE.replace("max_steps = 2", "max_steps = 3")
}

fn adapter(dir: &Path) -> Vec<u8> {
    std::fs::read(entry(dir, "train").join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one() {
    let text = three_steps();
    let whole = project(&text);
    pipeline(whole.path(), &["run", "exp.toml"], &[], 0);
    let expected = adapter(whole.path());

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("train_state.safetensors", |d| {
            let f = d.join("train_state.safetensors");
            let b = std::fs::read(&f).unwrap();
            std::fs::write(&f, &b[..b.len() / 2]).unwrap();
        }),
        ("trainer_state.json", |d| {
            std::fs::write(d.join("trainer_state.json"), "").unwrap()
        }),
        // Same size, other bytes: only the checkpoint's digests notice.
        ("adapter_model.safetensors", |d| {
            let f = d.join("adapter_model.safetensors");
            let mut b = std::fs::read(&f).unwrap();
            let n = b.len();
            b[n - 1] ^= 0x40;
            std::fs::write(&f, &b).unwrap();
        }),
    ];
    for (file, damage) in damages {
        let p = project(&text);
        pipeline(p.path(), &["run", "exp.toml"], &[(STOP, "2")], 1);
        let partial = train_partial(p.path());
        damage(&partial.join("checkpoint-2"));
        let out = pipeline(p.path(), &["run", "exp.toml"], &[], 0);
        let skipped = out
            .stderr
            .lines()
            .find(|l| l.contains("skipped damaged"))
            .unwrap_or_else(|| panic!("{file}: no skip line:\n{}", out.shown));
        assert!(
            skipped.contains("checkpoint-2") && skipped.contains(file),
            "{file}: {skipped}"
        );
        assert!(
            out.stderr.contains("resumed from checkpoint-1"),
            "{}",
            out.shown
        );
        assert_eq!(
            adapter(p.path()),
            expected,
            "{file}: same result as uninterrupted"
        );
    }

    // Every checkpoint damaged: start over.
    let p = project(&text);
    pipeline(p.path(), &["run", "exp.toml"], &[(STOP, "2")], 1);
    let partial = train_partial(p.path());
    for c in ["checkpoint-1", "checkpoint-2"] {
        std::fs::write(partial.join(c).join("trainer_state.json"), "{").unwrap();
    }
    let out = pipeline(p.path(), &["run", "exp.toml"], &[], 0);
    assert_eq!(
        out.stderr.matches("skipped damaged").count(),
        2,
        "{}",
        out.shown
    );
    assert!(!out.stderr.contains("resumed from"), "{}", out.shown);
    assert_eq!(adapter(p.path()), expected);
}

#[test]
fn without_a_terminal_training_prints_plain_progress_lines() {
    let text = three_steps().replace(
        "per_device_train_batch_size = 2",
        "per_device_train_batch_size = 2\ngradient_accumulation_steps = 2",
    );
    let p = project(&text);
    // assert_cmd pipes stderr: no terminal, as under Slurm or nohup.
    let out = pipeline(p.path(), &["run", "exp.toml"], &[], 0);
    let steps: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("[train] step ") && l.contains("%)  loss "))
        .collect();
    assert_eq!(steps.len(), 3, "one line per logging step:\n{}", out.shown);
    assert!(
        steps[0].starts_with("[train] step 1/3 (33.3%)  loss "),
        "{}",
        steps[0]
    );
    for l in &steps[1..] {
        assert!(
            l.contains("  lr ") && l.contains(" steps/s, ") && l.contains(" samples/s  ETA "),
            "{l}"
        );
    }
    let evals = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("[train] step ") && l.contains(": eval_loss "))
        .count();
    assert_eq!(evals, 3, "one line per eval:\n{}", out.shown);

    // transformers: max_steps × batch × accumulation samples over the runtime.
    let log = std::fs::read_to_string(entry(p.path(), "train").join("logging.jsonl")).unwrap();
    let end: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l.get("train_samples_per_second").is_some())
        .unwrap();
    let runtime = end["train_runtime"].as_f64().unwrap();
    let speed = end["train_samples_per_second"].as_f64().unwrap();
    let want = 3.0 * 2.0 * 2.0 / runtime;
    assert!(
        (speed - want).abs() <= 0.0011 + want * 1e-3,
        "{speed} vs {want}"
    );
}
