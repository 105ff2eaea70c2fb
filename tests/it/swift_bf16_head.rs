//! The score head under `torch_dtype = "bfloat16"`, against what a real `swift sft
//! --torch_dtype bfloat16` (ms-swift 4.6, peft 0.20; `tools/fixtures/gen_swift.py
//! bf16-head`) did, recorded in `bf16_head.json`:
//! - both `score` Linears (PEFT's frozen original and the trainable `modules_to_save`
//!   copy) are bf16 parameters, and the copy's forward sees a bf16 input and gives bf16
//!   logits (autocast bf16, bf16 weights);
//! - the checkpoint stores `base_model.model.score.weight` in bf16 and every LoRA factor
//!   in f32 (PEFT upcasts adapter weights to f32).
//!
//! Ours stores the same keys in the same dtypes, and the head computes in bf16 on a bf16
//! backbone. One difference stays: our trainable head is an f32 master weight cast to bf16
//! for each forward (as LoRA A/B are f32), where swift's AdamW updates the bf16 copy itself.

use std::collections::BTreeMap;

use burn::tensor::{DType, bf16};
use pipeline::bench::workload::bench_sample;
use pipeline::experiment::schema::TrainParams;
use pipeline::model::inputs::{PaddingSide, collate};
use pipeline::model::{WeightsSource, load_classifier_from};
use pipeline::safetensors_io::read_tensors;
use serde_json::Value;

use crate::model_support::B;
use crate::score_support::{common_for, read_json, run_stage};
use crate::swift_interop::{assemble_model, fx};

fn facts() -> Value {
    read_json(&fx().join("bf16_head.json"))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "other",
    }
}

#[test]
fn swift_keeps_the_score_head_in_bf16() {
    let f = facts();
    assert_eq!(f["torch_dtype"], "bfloat16");
    assert_eq!(f["bf16"], true);
    for (name, p) in f["score_params"].as_object().unwrap() {
        assert_eq!(p["dtype"], "bfloat16", "{name}");
    }
    let fwd = &f["score_forward"]["base_model.model.score.modules_to_save.default"];
    for k in ["input", "weight", "output"] {
        assert_eq!(fwd[k], "bfloat16", "{k}");
    }
}

/// A bf16 training of the swift fixture model (on the CPU: computed in f32, stored as a
/// bf16 run stores) writes the keys swift's checkpoint has, each in swift's dtype.
#[test]
fn bf16_checkpoint_stores_swifts_keys_and_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assemble_model(&model);
    let mut common = common_for(&model, 3, None);
    common.model.torch_dtype = "bfloat16".into();
    let data = tmp.path().join("data");
    crate::swift_training::train_data(&common, &fx().join("data/train.jsonl"), &data);
    // The flags of the swift run (gen_swift.py bf16_head).
    let params: TrainParams = toml::from_str(
        "needs = [\"data\"]\nlora_rank = 4\nlora_alpha = 8\nfreeze_vit = false\n\
         max_steps = 2\nper_device_train_batch_size = 2\nlearning_rate = 1e-2\n\
         save_steps = 2\nlogging_steps = 1\nattn_impl = \"eager\"",
    )
    .unwrap();
    let stage = pipeline::stages::train::TrainStage::new(params, &common).unwrap();
    let out = tmp.path().join("train");
    run_stage(&stage, "train", &out, &[("data", "dataset", &data)]).unwrap();
    let want: BTreeMap<String, String> = facts()["saved"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for file in [
        "checkpoint-2/adapter_model.safetensors",
        "adapter/adapter_model.safetensors",
    ] {
        let got: BTreeMap<String, String> = read_tensors(&out.join(file))
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, dtype_name(t.dtype).to_string()))
            .collect();
        assert_eq!(got, want, "{file}");
    }
}

/// On a bf16 backbone (how a GPU runs a bf16 experiment) the head's output is bf16: every
/// logit is a bf16 value. The same weights in f32 give logits that are not, so the check
/// can fail.
#[test]
fn score_head_computes_in_bf16_on_a_bf16_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    assemble_model(&dir);
    let device = Default::default();
    let logits = |dtype: DType| {
        let m = load_classifier_from::<B>(WeightsSource::Dir(&dir), 3, dtype, 0, &device).unwrap();
        assert_eq!(m.score_weight().dtype(), DType::F32, "the trainable master");
        let cfg = m.config().clone();
        let (a, b) = (
            bench_sample(&cfg, 12_544, 20, 0),
            bench_sample(&cfg, 12_544, 33, 1),
        );
        let x = collate::<B>(&[&a, &b], 151_643, PaddingSide::Right, &device);
        let y = m.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F32, "logits reach the loss in f32");
        y.into_data().to_vec::<f32>().unwrap()
    };
    let is_bf16 = |v: &f32| bf16::from_f32(*v).to_f32() == *v;
    let l16 = logits(DType::BF16);
    assert_eq!(l16.len(), 6);
    assert!(l16.iter().all(is_bf16), "{l16:?}");
    let l32 = logits(DType::F32);
    assert!(!l32.iter().all(is_bf16), "{l32:?}");
    let fwd = &facts()["score_forward"]["base_model.model.score.modules_to_save.default"];
    assert_eq!(fwd["output"], dtype_name(DType::BF16));
}
