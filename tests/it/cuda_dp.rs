//! Data parallel on CUDA: the dropout masks drawn on the device match their host reference,
//! and replicas (two on one GPU, or one per GPU) at one global batch train like one device:
//! the same shards and dropout draws, gradients gathered in slot order, within 1e-5.
//!
//! `#[ignore]`d like tests/it/cuda_parity.rs: on a GPU machine run
//! `cargo test --release --test it cuda_dp -- --ignored` (tools/device_check.sh does). Their
//! CPU counterparts run on every CPU run (tests/it/train_dp.rs, model::lora's unit tests).

use crate::train_loop::{SERIAL, adapter_values, log_lines, run_probe_with, spec};
use burn::backend::Autodiff;
use pipeline::backend::{CudaBackend, CudaDevice, CudaProbe, cuda_available, cuda_probe};
use pipeline::model::lora::{hashed_keep, hashed_keep_mask};
use pipeline::train::TrainSpec;
use pipeline::train::spread::Spread;
use std::path::Path;

type AdCuda = Autodiff<CudaBackend>;

/// The first `n` CUDA devices; a test that runs here was asked for (`--ignored`).
fn gpus(n: usize) -> Vec<CudaDevice> {
    let found = cuda_device_count();
    assert!(found >= n, "needs {n} CUDA GPUs; here: {:?}", cuda_probe());
    (0..n).map(|index| CudaDevice { index }).collect()
}

fn cuda_device_count() -> usize {
    match cuda_probe() {
        CudaProbe::Available { devices, .. } if cuda_available() => *devices,
        _ => 0,
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --ignored on a GPU machine"]
fn dropout_masks_on_cuda_follow_the_host_hash() {
    let dev = gpus(1).remove(0);
    let (keep, key) = (0.95, 0xDEAD_BEEF_0BAD_F00D_u64);
    let mask = hashed_keep_mask::<CudaBackend, 2>([300, 517], keep, key, &dev)
        .into_data()
        .to_vec::<bool>()
        .unwrap();
    for (i, m) in mask.iter().enumerate() {
        assert_eq!(*m, hashed_keep(i as u32, keep, key), "element {i}");
    }
}

/// The probe at a global batch of 8 as `n × 8/n`, 8 shards (the GPU's), dropout 0.1.
fn at(n: usize) -> TrainSpec {
    TrainSpec {
        train_batch_size: 8 / n,
        replicas: n,
        shards: 8,
        ..spec()
    }
}

fn train_on(dir: &Path, devices: &[CudaDevice]) {
    let spec = at(devices.len());
    run_probe_with::<AdCuda>(dir, &spec, (None, 0.1), Some((devices, Spread::Threads))).unwrap();
}

fn assert_close(a: &Path, b: &Path, what: &str) {
    let num = |l: &serde_json::Map<String, serde_json::Value>, k: &str| l.get(k)?.as_f64();
    for (x, y) in log_lines(a).iter().zip(log_lines(b)) {
        for k in ["loss", "eval_loss", "grad_norm"] {
            if let (Some(p), Some(q)) = (num(x, k), num(&y, k)) {
                assert!(
                    (p - q).abs() <= 1e-5 * p.abs().max(1e-3),
                    "{what}: {k} {p} vs {q}"
                );
            }
        }
    }
    for ((k, p), (_, q)) in adapter_values(a).iter().zip(adapter_values(b)) {
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let diff = p
            .iter()
            .zip(&q)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "{what}: {k}: {diff}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --ignored on a GPU machine"]
fn two_replicas_on_one_gpu_train_like_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = gpus(1).remove(0);
    let one = tempfile::tempdir().unwrap();
    train_on(one.path(), std::slice::from_ref(&dev));
    let two = tempfile::tempdir().unwrap();
    train_on(two.path(), &[dev.clone(), dev]);
    assert_close(one.path(), two.path(), "2 replicas on cuda:0");
}

#[test]
#[ignore = "needs 2 CUDA GPUs: run with --ignored on a machine with two or more"]
fn replicas_on_two_and_four_gpus_train_like_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let all = gpus(2);
    let one = tempfile::tempdir().unwrap();
    train_on(one.path(), &all[..1]);
    let two = tempfile::tempdir().unwrap();
    train_on(two.path(), &all[..2]);
    assert_close(one.path(), two.path(), "cuda:0 + cuda:1");
    if let Some(four) = (cuda_device_count() >= 4).then(|| gpus(4)) {
        let dir = tempfile::tempdir().unwrap();
        train_on(dir.path(), &four);
        assert_close(one.path(), dir.path(), "cuda:0..3");
    }
}
