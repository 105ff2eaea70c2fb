//! Our train stage against a real `swift sft --task_type seq_cls --tuner_type lora` run
//! (ms-swift 4.6 / transformers 5.19, CPU, float32; `tools/fixtures/gen_swift.py accum`):
//! 7 rows, batch 2, gradient accumulation 3, 3 epochs, file order, LoRA dropout 0, both
//! runs starting from the adapter swift initialised (`accum/init`, saved before its first
//! step). Each epoch has micro-batches of 2, 2, 2 and 1 rows, so every other optimizer
//! step is the remainder group: one micro-batch of one row.
//!
//! What transformers does there (`Trainer._inner_training_loop`: `remainder =
//! steps_in_epoch % gradient_accumulation_steps`, `current_gradient_accumulation_steps =
//! len(batch_samples)`; `training_step`: `loss / current_gradient_accumulation_steps`,
//! since ms-swift's seq_cls model takes no loss kwargs): each micro-batch contributes its
//! row-mean loss divided by the number of micro-batches in its group, so the lone row of
//! the remainder group weighs as much as a whole step. `accum/micro.json` records that
//! per micro-batch (labels in file order, the divisor, the scaled loss).

use std::collections::BTreeMap;
use std::path::Path;

use pipeline::experiment::schema::{DatasetParams, TrainParams};
use pipeline::safetensors_io::read_tensors;
use serde_json::Value;

use crate::score_support::{common_for, read_json, run_stage};
use crate::swift_interop::{assemble_model, fx};

/// Per-step |Δ loss| and relative |Δ grad_norm| allowed against swift. Measured: loss
/// 6.7e-7, grad_norm 1.2e-6 relative (f32 on both sides, different summation orders).
const TOL_STEP: f64 = 1e-5;
/// Relative L2 distance allowed between the final adapters, per tensor. Measured 3.2e-5
/// worst: six AdamW steps (lr 2e-2) divide by √v, which amplifies the f32 gradient
/// differences of the smallest entries; every tensor moved ≥ 0.107 from the initial one.
const TOL_ADAPTER: f64 = 1e-4;

fn swift_steps() -> Vec<Value> {
    std::fs::read_to_string(fx().join("accum/logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("loss").is_some() && l.get("grad_norm").is_some())
        .collect()
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
    read_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v = t.convert::<f32>().into_vec::<f32>().unwrap();
            (k, v.into_iter().map(f64::from).collect())
        })
        .collect()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n.max(1e-30)).sqrt()
}

/// The fixture itself shows the remainder rule: groups of 3, 1, 3, 1, ... micro-batches,
/// the lone row's loss undivided, and each step's loss the sum of its micro-batches'.
#[test]
fn swift_divides_the_remainder_group_by_its_own_length() {
    let micro = read_json(&fx().join("accum/micro.json"));
    let micro = micro.as_array().unwrap();
    let steps = swift_steps();
    assert_eq!(steps.len(), 6);
    let mut at = 0;
    for (s, step) in steps.iter().enumerate() {
        let group = if s % 2 == 0 { 3 } else { 1 };
        let mut sum = 0.0;
        for m in &micro[at..at + group] {
            assert_eq!(m["global_step"], s);
            assert_eq!(m["current_gradient_accumulation_steps"], group);
            assert_eq!(m["model_accepts_loss_kwargs"], false);
            let rows = m["labels"].as_array().unwrap().len();
            assert_eq!(rows, if group == 1 { 1 } else { 2 });
            sum += m["loss"].as_f64().unwrap();
        }
        let logged = step["loss"].as_f64().unwrap();
        assert!(
            (sum - logged).abs() < 1e-6,
            "step {}: {sum} vs {logged}",
            s + 1
        );
        at += group;
    }
    assert_eq!(at, micro.len());
    // File order, every epoch (dataset_shuffle and train_dataloader_shuffle off).
    let labels: Vec<u64> = micro
        .iter()
        .flat_map(|m| m["labels"].as_array().unwrap().clone())
        .map(|v| v.as_u64().unwrap())
        .collect();
    let file: Vec<u64> = std::fs::read_to_string(fx().join("data/accum.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(labels, [file.clone(), file.clone(), file].concat());
}

/// Dataset stage on `jsonl` alone (a train split, no val) into `out`.
pub(crate) fn train_data(common: &pipeline::experiment::Common, jsonl: &Path, out: &Path) {
    let params: DatasetParams = toml::from_str(&format!(
        "dataset = {:?}\nmax_pixels = 12544\n",
        jsonl.display().to_string()
    ))
    .unwrap();
    let stage = pipeline::stages::dataset::DatasetStage::new(params, common).unwrap();
    run_stage(&stage, "data", out, &[]).unwrap();
}

#[test]
fn accumulation_remainder_trains_as_swift_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assemble_model(&model);
    let common = common_for(&model, 3, None);
    let data_dir = tmp.path().join("data");
    train_data(&common, &fx().join("data/accum.jsonl"), &data_dir);
    let params: TrainParams = toml::from_str(&format!(
        "needs = [\"data\"]\nadapter = {:?}\nlora_rank = 4\nlora_alpha = 8\nfreeze_vit = false\n\
         lora_dropout = 0\nnum_train_epochs = 3\n\
         per_device_train_batch_size = 2\ngradient_accumulation_steps = 3\n\
         learning_rate = 2e-2\nwarmup_ratio = 0.2\nsave_steps = 6\nlogging_steps = 1\n\
         dataset_shuffle = false\ntrain_dataloader_shuffle = false\nattn_impl = \"eager\"",
        fx().join("accum/init").display().to_string()
    ))
    .unwrap();
    let stage = pipeline::stages::train::TrainStage::new(params, &common).unwrap();
    let out = tmp.path().join("train");
    run_stage(&stage, "train", &out, &[("data", "dataset", &data_dir)]).unwrap();

    let ours: Vec<Value> = std::fs::read_to_string(out.join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("loss").is_some() && l.get("grad_norm").is_some())
        .collect();
    let swift = swift_steps();
    assert_eq!(ours.len(), swift.len());
    let (mut worst_loss, mut worst_norm) = (0f64, 0f64);
    for (i, (o, s)) in ours.iter().zip(&swift).enumerate() {
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        assert_eq!(o["global_step/max_steps"], s["global_step/max_steps"]);
        assert!(
            (f(o, "epoch") - f(s, "epoch")).abs() < 1e-9,
            "step {}",
            i + 1
        );
        assert!(
            (f(o, "learning_rate") - f(s, "learning_rate")).abs() < 1e-9,
            "step {}",
            i + 1
        );
        worst_loss = worst_loss.max((f(o, "loss") - f(s, "loss")).abs());
        worst_norm = worst_norm.max((f(o, "grad_norm") / f(s, "grad_norm") - 1.0).abs());
    }
    let got: BTreeMap<String, Vec<f64>> =
        tensors(&out.join("checkpoint-6/adapter_model.safetensors"));
    let want = tensors(&fx().join("accum/ckpt/adapter_model.safetensors"));
    let init = tensors(&fx().join("accum/init/adapter_model.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut worst_adapter = 0f64;
    for (k, w) in &want {
        let d = rel_l2(&got[k], w);
        // Training moved every tensor well beyond the tolerance, so the check can fail.
        assert!(
            rel_l2(&init[k], w) > 100.0 * TOL_ADAPTER,
            "{k} did not move"
        );
        worst_adapter = worst_adapter.max(d);
    }
    eprintln!(
        "vs swift sft: per-step |Δ loss| ≤ {worst_loss:.2e}, |Δ grad_norm|/grad_norm ≤ \
         {worst_norm:.2e}, adapter rel L2 ≤ {worst_adapter:.2e}"
    );
    assert!(worst_loss < TOL_STEP, "{worst_loss:e}");
    assert!(worst_norm < TOL_STEP, "{worst_norm:e}");
    assert!(worst_adapter < TOL_ADAPTER, "{worst_adapter:e}");
}
