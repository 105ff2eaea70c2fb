//! Data parallel on the CPU (`nproc_per_node`): N replicas at one global batch train bit for
//! bit like one device (losses, eval metrics, adapter), whichever way the work is spread,
//! and a checkpoint continues with another replica count. Step counts and sample placement
//! against accelerate + transformers (tests/fixtures/train/dp_steps.json, written by
//! tools/fixtures/gen_dp_steps.py).

use crate::train_loop::{
    SERIAL, adapter_bytes, adapter_values, log_lines, on_threads, run_probe_spread, spec,
};
use pipeline::train::data_order::{EpochPlan, max_steps};
use pipeline::train::shards::{deal, shard_len};
use pipeline::train::spread::Spread;
use pipeline::train::{TrainError, TrainSpec};
use serde_json::Value;
use std::path::Path;

/// The probe's spec (38 samples, accum 2, 3 epochs, dropout 0.1) at a global batch of 8 as
/// `replicas × per_device`, cut into 4 shards of 2 as on the CPU.
fn at(replicas: usize, per_device: usize) -> TrainSpec {
    TrainSpec {
        train_batch_size: per_device,
        replicas,
        shards: 4,
        ..spec()
    }
}

fn run(
    dir: &Path,
    spec: &TrainSpec,
    stop: Option<usize>,
    spread: Spread,
) -> Result<(), TrainError> {
    run_probe_spread(dir, spec, stop, 0.1, Some(spread))
}

fn same_run(a: &Path, b: &Path, what: &str) {
    assert_eq!(log_lines(a), log_lines(b), "{what}: logging.jsonl");
    assert_eq!(adapter_bytes(a), adapter_bytes(b), "{what}: adapter");
    for f in ["metrics.json", "best"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{what}: {f}"
        );
    }
}

#[test]
fn replicas_at_one_global_batch_train_bit_for_bit_like_one_device() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let one = tempfile::tempdir().unwrap();
    on_threads(2, || run(one.path(), &at(1, 8), None, Spread::Pool)).unwrap();
    // 38 samples at 8 → 5 micro-batches (the last of 6), accum 2 → 3 steps an epoch.
    let lines = log_lines(one.path());
    let last = lines
        .iter()
        .rev()
        .find(|l| l.contains_key("global_step"))
        .unwrap();
    assert_eq!(last["global_step"], 9);
    assert!(lines.iter().any(|l| l.contains_key("eval_loss")));
    for (n, b, spread, threads) in [
        (2, 4, Spread::Pool, 2),
        (4, 2, Spread::Pool, 3),
        // A thread per replica, shards in turn: the GPU schedule, here on the CPU.
        (2, 4, Spread::Threads, 1),
        (4, 2, Spread::Threads, 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        on_threads(threads, || run(dir.path(), &at(n, b), None, spread)).unwrap();
        same_run(one.path(), dir.path(), &format!("{n} × {b}, {spread:?}"));
    }
    // Dropout is live: another seed draws other masks.
    let other = tempfile::tempdir().unwrap();
    let seeded = TrainSpec {
        seed: 5,
        ..at(2, 4)
    };
    on_threads(2, || run(other.path(), &seeded, None, Spread::Pool)).unwrap();
    assert_ne!(adapter_bytes(one.path()), adapter_bytes(other.path()));
}

#[test]
fn a_checkpoint_continues_with_another_replica_count() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let saving = |n, b| TrainSpec {
        save_steps: 2,
        ..at(n, b)
    };
    let full = tempfile::tempdir().unwrap();
    on_threads(2, || run(full.path(), &saving(2, 4), None, Spread::Pool)).unwrap();
    // Checkpoints every 2 steps: stop on 2 replicas after step 3 (checkpoint-2), go on with
    // 1 until step 7 (checkpoint-6), finish on 4.
    let cut = tempfile::tempdir().unwrap();
    for (stop, spec) in [(3, saving(2, 4)), (7, saving(1, 8))] {
        match on_threads(2, || run(cut.path(), &spec, Some(stop), Spread::Pool)) {
            Err(TrainError::Interrupted(s)) => assert_eq!(s, stop),
            other => panic!("expected an interruption, got {other:?}"),
        }
    }
    on_threads(2, || run(cut.path(), &saving(4, 2), None, Spread::Threads)).unwrap();
    same_run(full.path(), cut.path(), "2 → 1 → 4 replicas");
    // Another global batch is another run: its checkpoint is refused.
    let refused = tempfile::tempdir().unwrap();
    assert!(matches!(
        run(refused.path(), &at(2, 4), Some(6), Spread::Pool),
        Err(TrainError::Interrupted(6))
    ));
    match run(refused.path(), &at(2, 2), None, Spread::Pool) {
        Err(TrainError::Checkpoint(m)) => assert!(m.contains("other settings"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn shards_that_do_not_line_up_with_the_replicas_change_only_rounding() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 8 replicas × 1 at shards of 2: each replica's sample is a shard of its own. Without
    // dropout that changes the float summation only.
    let run0 = |dir: &Path, spec: &TrainSpec| {
        on_threads(2, || {
            run_probe_spread(dir, spec, None, 0.0, Some(Spread::Pool))
        })
    };
    let one = tempfile::tempdir().unwrap();
    run0(one.path(), &at(1, 8)).unwrap();
    let eight = tempfile::tempdir().unwrap();
    run0(eight.path(), &at(8, 1)).unwrap();
    for ((k, a), (_, b)) in adapter_values(one.path())
        .iter()
        .zip(adapter_values(eight.path()))
    {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "{k}: {diff}");
    }
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/dp_steps.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn step_counts_and_placement_follow_accelerate_and_transformers() {
    let u = |v: &Value| v.as_u64().unwrap() as usize;
    for case in fixture()["cases"].as_array().unwrap() {
        let (n, b, world, accum) = (
            u(&case["n"]),
            u(&case["per_device"]),
            u(&case["nproc"]),
            u(&case["accum"]),
        );
        let what = format!("n {n}, {world} × {b}, accum {accum}");
        let plan = EpochPlan::new(n, b * world, accum);
        // One global micro-batch per rank batch; steps and max_steps as the Trainer's.
        assert_eq!(plan.micro.len(), u(&case["len_dataloader"]), "{what}");
        assert_eq!(plan.micro.len(), u(&case["steps_in_epoch"]), "{what}");
        assert_eq!(plan.steps(), u(&case["steps_per_epoch"]), "{what}");
        let epochs = case["epochs"].as_f64().unwrap();
        assert_eq!(
            max_steps(-1, epochs, plan.steps()),
            u(&case["max_steps"]),
            "{what}"
        );
        assert_eq!(b * world * accum, u(&case["total_train_batch_size"]));

        // Replica r of global micro-batch k takes rank r's batch k. The epoch's last global
        // batch is where accelerate (even_batches) tops the ranks up with the epoch's first
        // samples again; the trainer leaves it short, weighted as one device weighs it.
        let ranks = case["rank_batches"].as_array().unwrap();
        let mut padding = Vec::new();
        for (k, micro) in plan.micro.iter().enumerate() {
            let dealt = deal(micro.len(), b, world, shard_len(b * world, world));
            for (r, rank) in ranks.iter().enumerate() {
                let theirs: Vec<usize> = rank[k].as_array().unwrap().iter().map(u).collect();
                let ours: Vec<usize> = dealt[r]
                    .iter()
                    .flat_map(|s| s.samples.clone())
                    .map(|i| micro.start + i)
                    .collect();
                assert_eq!(theirs[..ours.len()], ours, "{what}: micro {k}, rank {r}");
                if k + 1 < plan.micro.len() {
                    assert_eq!(theirs.len(), ours.len(), "{what}: micro {k}, rank {r}");
                }
                padding.extend_from_slice(&theirs[ours.len()..]);
            }
        }
        let wrap: Vec<usize> = (0..padding.len()).map(|i| i % n).collect();
        assert_eq!(padding, wrap, "{what}: accelerate's top-up");
        let short = n % (b * world);
        let expected_pad = if world == 1 || short == 0 {
            0
        } else {
            b * world - short
        };
        assert_eq!(padding.len(), expected_pad, "{what}");
    }
}
