//! The training step against transformers + PEFT (fixtures: tools/fixtures/gen_train_parity.py):
//! loss and LoRA/score gradients of one forward/backward, then 3 optimizer steps of the
//! real loop (grad accumulation 2, global-norm clipping, AdamW, warmup + cosine) — per-step
//! loss, grad_norm and learning_rate, and every trainable tensor after the run.
//! f32 on the CPU; tolerance 1e-5 relative: scalars by |got − want| / |want|, tensors by
//! ‖got − want‖₂ / ‖want‖₂. (Both sides accumulate in f32 in different orders through a
//! random network; element-wise ratios of near-zero gradient entries reach 1e-3 while the
//! tensor-relative error stays at 2–8e-6. For scale: torch's own f32 run differs from the
//! same run in f64 by 5.0e-6 in the gradients and 1.4e-6 in the final params.)

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor, TensorData};
use pipeline::adapter::keys::{AdapterKey, Factor, lora_key, parse_adapter_key, score_key};
use pipeline::adapter::read_peft_state;
use pipeline::backend::CpuBackend;
use pipeline::model::inputs::SampleInputs;
use pipeline::model::lora::{LoraSpec, TargetSelector, select_targets};
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use pipeline::task::ProblemType;
use pipeline::train::loss::{self, Target};
use pipeline::train::{Classifier, InMemorySet, PeftState, RunOptions, TrainSpec, train};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type AD = Autodiff<CpuBackend>;
const TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train")
}

fn tensors() -> BTreeMap<String, TensorData> {
    safetensors_io_read_any(&fixtures().join("parity.safetensors"))
}

/// The fixture also holds i32 tensors, which `safetensors_io::read` refuses; read them here.
fn safetensors_io_read_any(path: &Path) -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let dtype = match v.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::I32 => DType::I32,
                d => panic!("{k}: {d:?}"),
            };
            (
                k,
                TensorData::from_bytes_vec(v.data().to_vec(), v.shape().to_vec(), dtype),
            )
        })
        .collect()
}

fn spec_lora() -> LoraSpec {
    LoraSpec::new(4, 8.0, TargetSelector::all_linear(true, false, true))
}

/// The fixture backbone with the fixture's initial adapter and score head.
fn model() -> SeqClassifier<AD> {
    let device = Default::default();
    let m: SeqClassifier<AD> = load_classifier_from(
        WeightsSource::Dir(&fixtures().join("model")),
        3,
        DType::F32,
        0,
        &device,
    )
    .unwrap();
    let (cfg, tensors) = read_peft_state(&fixtures().join("initial_adapter")).unwrap();
    assert_eq!((cfg.r, cfg.lora_alpha), (4, 8.0));
    let t = |d: &TensorData| Tensor::<AD, 2>::from_data(d.clone(), &device);
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    let mut score = None;
    for (k, d) in &tensors {
        match parse_adapter_key(k) {
            Ok(AdapterKey::Lora {
                module,
                factor: Factor::A,
                ..
            }) => drop(a.insert(module, t(d))),
            Ok(AdapterKey::Lora { module, .. }) => drop(b.insert(module, t(d))),
            Ok(AdapterKey::ScoreWeight) => score = Some(t(d)),
            Err(e) => panic!("unexpected key {k}: {e:?}"),
        }
    }
    // PEFT's regex for ms-swift all-linear (freeze_vit false) wrapped exactly our selection.
    let mut wanted = select_targets(&m.linear_names(), &spec_lora().targets).unwrap();
    wanted.sort();
    assert_eq!(a.keys().cloned().collect::<Vec<_>>(), wanted);
    let adapters = a
        .into_iter()
        .map(|(k, va)| (k.clone(), va, b.remove(&k).unwrap()))
        .collect();
    m.load_lora_weights(&spec_lora(), adapters, score).unwrap()
}

fn samples(t: &BTreeMap<String, TensorData>) -> (Vec<SampleInputs>, Vec<Target>) {
    let ints = |k: &str| t[k].to_vec::<i32>().unwrap();
    let labels = ints("labels");
    let s = (0..4)
        .map(|i| SampleInputs {
            input_ids: ints(&format!("ids.{i}"))
                .into_iter()
                .map(|x| x as u32)
                .collect(),
            pixel_rows: t[&format!("rows.{i}")].to_vec::<f32>().unwrap(),
            grids: vec![{
                let g = ints(&format!("grid.{i}"));
                [g[0] as usize, g[1] as usize, g[2] as usize]
            }],
        })
        .collect();
    (
        s,
        labels
            .into_iter()
            .map(|c| Target::Class(c as usize))
            .collect(),
    )
}

/// ‖got − want‖₂ / ‖want‖₂.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (diff / norm.max(1e-60)).sqrt()
}

fn close(what: &str, got: f64, want: f64) {
    let e = (got - want).abs() / want.abs().max(1e-12);
    assert!(e < TOL, "{what}: {got} vs {want} (rel {e:.2e})");
}

#[test]
fn one_forward_backward_matches_peft() {
    let t = tensors();
    let m = model();
    let (s, targets) = samples(&t);
    let refs: Vec<&SampleInputs> = s.iter().collect();
    let trefs: Vec<&Target> = targets.iter().collect();
    let logits = m.logits(&refs, &Default::default()).unwrap();
    let l = loss::loss(logits, &trefs, ProblemType::SingleLabelClassification);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("parity.json")).unwrap())
            .unwrap();
    let got = l.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
    close("loss", got, report["one_batch_loss"].as_f64().unwrap());

    let grads = l.backward();
    let mut worst = 0f64;
    let mut n = 0;
    let mut check = |key: String, g: Tensor<CpuBackend, 2>| {
        let want = t[&format!("grad.{key}")].to_vec::<f32>().unwrap();
        let e = rel_err(&g.into_data().to_vec::<f32>().unwrap(), &want);
        assert!(e < TOL, "grad {key}: rel {e:.2e}");
        worst = worst.max(e);
        n += 1;
    };
    for (name, a, b) in m.lora_weights() {
        check(lora_key(&name, Factor::A), a.grad(&grads).unwrap());
        check(lora_key(&name, Factor::B), b.grad(&grads).unwrap());
    }
    check(score_key(), m.score_weight().grad(&grads).unwrap());
    assert_eq!(n, t.keys().filter(|k| k.starts_with("grad.")).count());
    eprintln!("{n} gradients, worst rel err {worst:.2e}");
}

#[test]
fn three_adamw_steps_with_accumulation_match_transformers() {
    let t = tensors();
    let (s, targets) = samples(&t);
    let set = InMemorySet::new(s, targets);
    // The loop tests' spec but for the fixture's batch, schedule and clipping.
    let spec = TrainSpec {
        num_labels: 3,
        train_batch_size: 2,
        eval_batch_size: 2,
        num_train_epochs: 1.0,
        max_steps: 3,
        learning_rate: 1e-3,
        warmup_steps: 1,
        warmup_ratio: 0.0,
        max_grad_norm: 0.05,
        eval_steps: None,
        save_steps: 100,
        save_total_limit: None,
        logging_steps: 1,
        ..crate::train_loop::spec()
    };
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = read_peft_state(&fixtures().join("initial_adapter")).unwrap();
    let opts = RunOptions {
        out_dir: dir.path(),
        adapter_config: cfg,
        progress: indicatif::ProgressBar::hidden(),
        stop_after_steps: None,
        model_info: String::new(),
        head_dtype: burn::tensor::DType::F32,
    };
    let (m, outcome) =
        train::<AD, _, _>(model(), &set, None, &spec, &opts, &Default::default()).unwrap();
    assert_eq!(outcome.global_step, 3);

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("parity.json")).unwrap())
            .unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l.get("loss").is_some())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, (got, want)) in lines
        .iter()
        .zip(report["steps"].as_array().unwrap())
        .enumerate()
    {
        for k in ["loss", "grad_norm", "learning_rate"] {
            // The fixture records the rate each step used; transformers (and so ms-swift)
            // logs the rate after the step's scheduler update: the next step's rate.
            let w = if k == "learning_rate" {
                match report["steps"].get(i + 1) {
                    Some(next) => next[k].as_f64().unwrap(),
                    None => continue,
                }
            } else {
                want[k].as_f64().unwrap()
            };
            let g = got[k].as_f64().unwrap();
            if w == 0.0 {
                assert_eq!(g, 0.0, "step {} {k}", i + 1);
            } else {
                close(&format!("step {} {k}", i + 1), g, w);
            }
        }
    }
    let mut worst = 0f64;
    let finals = m.peft_tensors();
    for (key, d) in &finals {
        let want = t[&format!("final.{key}")].to_vec::<f32>().unwrap();
        let e = rel_err(&d.to_vec::<f32>().unwrap(), &want);
        assert!(e < TOL, "param {key} after 3 steps: rel {e:.2e}");
        worst = worst.max(e);
    }
    assert_eq!(
        finals.len(),
        t.keys().filter(|k| k.starts_with("final.")).count()
    );
    eprintln!(
        "{} tensors after 3 steps, worst rel err {worst:.2e}",
        finals.len()
    );
    // The saved adapter holds the same tensors.
    let (_, saved) = read_peft_state(&dir.path().join("checkpoint-3")).unwrap();
    assert_eq!(saved.len(), finals.len());
}
