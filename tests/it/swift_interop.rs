//! Against the real ms-swift 4.6 (fixtures from `tools/fixtures/gen_swift.py`, tiny random
//! Qwen2.5-VL with Qwen's real tokenizer, CPU, float32; PNG and JPEG images):
//! - swift's checkpoint scored here agrees with `swift infer --logprobs true` within 1e-4;
//! - our checkpoint scored by `swift infer --adapters DIR` (nothing else given: our
//!   args.json is all it has) agrees with our score stage within 1e-4;
//! - token ids and image grids equal swift's template on every row, including rows that
//!   end in an assistant turn;
//! - our scores.jsonl lines read with the code that reads swift's infer results;
//! - the learning rate we log is the one swift logs, step for step;
//! - our TensorBoard events decode like swift's event file, and the keys and declared
//!   defaults of our experiment schema are ms-swift 4's flag names and defaults.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use pipeline::experiment::schema::{DatasetParams, ScoreParams, TrainParams};
use pipeline::stages::score::ScoreStage;
use serde_json::{Map, Value, json};

use crate::score_support::{common_for, floats, read_json, read_scores, run_stage};

/// |Δ log p| allowed between our f32 forward and PyTorch's.
const TOL: f64 = 1e-4;
/// Where the generator assembles the model (recorded in args.json, so fixed).
pub(crate) const MODEL_DIR: &str = "/tmp/pipeline-swift-fixture/model";

pub(crate) fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swift")
}

/// The committed model files plus the gzip'd real tokenizer, unpacked into `dir`.
pub(crate) fn assemble_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(fx().join("model")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/tokenizer.json.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(dir.join("tokenizer.json"), bytes).unwrap();
}

fn dataset_params(train: bool) -> DatasetParams {
    let data = fx().join("data");
    let mut text = format!(
        "val_dataset = {:?}\nmax_pixels = 12544\n",
        data.join("val.jsonl").display().to_string()
    );
    if train {
        text.push_str(&format!(
            "dataset = {:?}\n",
            data.join("train.jsonl").display().to_string()
        ));
    }
    toml::from_str(&text).unwrap()
}

/// Dataset stage (val, and train when asked) into `out`.
fn build_data(common: &pipeline::experiment::Common, out: &Path, train: bool) {
    let stage =
        pipeline::stages::dataset::DatasetStage::new(dataset_params(train), common).unwrap();
    run_stage(&stage, "data", out, &[]).unwrap();
}

/// Our score stage on the val split with `adapter`; returns the scores.jsonl lines.
fn score(model: &Path, adapter: &Path, tmp: &Path) -> Vec<Value> {
    let common = common_for(model, 3, None);
    let data = tmp.join("data");
    build_data(&common, &data, false);
    let params: ScoreParams = toml::from_str(&format!(
        "needs = [\"data\"]\nadapter = {:?}\nbatch_size = 3",
        adapter.display().to_string()
    ))
    .unwrap();
    let out = tmp.join("score");
    run_stage(
        &ScoreStage::new(params, &common).unwrap(),
        "score",
        &out,
        &[("data", "dataset", &data)],
    )
    .unwrap();
    read_scores(&out.join("scores.jsonl"))
}

/// What a script that reads `swift infer` results takes from one line.
#[derive(Debug, PartialEq)]
struct SwiftLine {
    response: Value,
    labels: Value,
    chosen: f64,
    /// class → logprob, from top_logprobs.
    top: BTreeMap<u64, f64>,
    messages: Value,
    image_paths: Vec<String>,
}

fn read_swift_line(v: &Value) -> SwiftLine {
    let c = &v["logprobs"]["content"][0];
    let top = c["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["index"].as_u64().unwrap(), t["logprob"].as_f64().unwrap()))
        .collect();
    assert_eq!(c["index"], v["response"]);
    SwiftLine {
        response: v["response"].clone(),
        labels: v["labels"].clone(),
        chosen: c["logprobs"].as_f64().unwrap(),
        top,
        messages: v["messages"].clone(),
        image_paths: v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                assert!(i["bytes"].is_null());
                i["path"].as_str().unwrap().to_string()
            })
            .collect(),
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    read_scores(path)
}

/// Max |Δ log p| over classes and rows between our lines and swift's, after checking that
/// both read the same way.
fn compare(ours: &[Value], swift: &[Value]) -> f64 {
    assert_eq!(ours.len(), swift.len());
    let mut worst = 0f64;
    for (o, s) in ours.iter().zip(swift) {
        let (o, s) = (read_swift_line(o), read_swift_line(s));
        assert_eq!(o.labels, s.labels);
        assert_eq!(o.image_paths, s.image_paths);
        assert_eq!(o.top.len(), s.top.len());
        for (c, lp) in &s.top {
            worst = worst.max((o.top[c] - lp).abs());
        }
        worst = worst.max((o.chosen - s.top[&o.response.as_u64().unwrap()]).abs());
        // Same prediction unless two classes are within the tolerance of each other.
        if o.response != s.response {
            let (a, b) = (o.response.as_u64().unwrap(), s.response.as_u64().unwrap());
            assert!((s.top[&a] - s.top[&b]).abs() < TOL, "{o:?} vs {s:?}");
        } else {
            assert_eq!(o.messages, s.messages);
        }
    }
    worst
}

#[test]
fn swift_checkpoint_scores_as_swift_infer_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assemble_model(&model);
    let ours = score(&model, &fx().join("swift_ckpt"), tmp.path());
    let swift = jsonl(&fx().join("swift_infer.jsonl"));
    let worst = compare(&ours, &swift);
    eprintln!("swift checkpoint: max |Δ log p| ours vs swift infer = {worst:.2e}");
    assert!(worst < TOL, "max |Δ log p| = {worst:e}");
    // The classes are told apart well beyond the tolerance, so the check can fail.
    let spread = swift
        .iter()
        .map(|l| {
            let t = floats(
                &l["logprobs"]["content"][0]["top_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["logprob"].clone())
                    .collect::<Value>(),
            );
            t[0] - t[t.len() - 1]
        })
        .fold(0.0, f64::max);
    assert!(spread > 100.0 * TOL, "spread {spread}");
    // Our lines carry index and class_logprobs besides swift's keys.
    for (i, l) in ours.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["class_logprobs"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn token_ids_and_grids_equal_swifts_template() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assemble_model(&model);
    let common = common_for(&model, 3, None);
    build_data(&common, &tmp.path().join("data"), false);
    let recs = pipeline::data::record::load_split(&tmp.path().join("data"), "val")
        .unwrap()
        .unwrap();
    let want = read_json(&fx().join("swift_encoded.json"));
    let want = want.as_array().unwrap();
    assert_eq!(recs.len(), want.len());
    let mut assistant_rows = 0;
    for (r, w) in recs.iter().zip(want) {
        let ids: Vec<u64> = r.input_ids.iter().map(|&t| u64::from(t)).collect();
        let want_ids: Vec<u64> = w["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "row {}", r.index);
        let grids: Vec<Vec<u64>> = r
            .images
            .iter()
            .map(|i| i.grid_thw.iter().map(|&g| g as u64).collect())
            .collect();
        assert_eq!(json!(grids), w["image_grid_thw"], "row {}", r.index);
        if r.messages
            .last()
            .is_some_and(|(role, _)| role == "assistant")
        {
            assistant_rows += 1;
            // `<|im_end|>\n` closes the assistant turn; no new generation prompt follows.
            assert_eq!(&ids[ids.len() - 2..], [151645, 198]);
        }
    }
    assert_eq!(assistant_rows, 2);
}

#[test]
fn our_checkpoint_scores_as_swift_infer_does_on_it() {
    let ckpt = fx().join("ours_ckpt");
    let args = read_json(&ckpt.join("args.json"));
    assert_eq!(args["model"], MODEL_DIR);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assemble_model(&model);
    let ours = score(&model, &ckpt, tmp.path());
    let swift = jsonl(&fx().join("ours_infer.jsonl"));
    let worst = compare(&ours, &swift);
    eprintln!("our checkpoint: max |Δ log p| ours vs swift infer = {worst:.2e}");
    assert!(worst < TOL, "max |Δ log p| = {worst:e}");
}

/// Every key we write to args.json is one ms-swift writes, with the same JSON type.
#[test]
fn args_json_uses_swifts_keys_and_types() {
    let ours = read_json(&fx().join("ours_ckpt/args.json"));
    let swift = read_json(&fx().join("swift_ckpt/args.json"));
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    };
    for (k, v) in ours.as_object().unwrap() {
        let Some(s) = swift.get(k) else {
            panic!("args.json key {k} is not one ms-swift writes");
        };
        if !v.is_null() && !s.is_null() {
            assert_eq!(kind(v), kind(s), "{k}: ours {v}, swift {s}");
        }
    }
    for k in [
        "model",
        "model_type",
        "template",
        "task_type",
        "num_labels",
        "problem_type",
        "tuner_type",
        "swift_version",
    ] {
        assert!(ours.get(k).is_some_and(|v| !v.is_null()), "{k}");
        assert_eq!(kind(&ours[k]), kind(&swift[k]), "{k}");
    }
}

/// trainer_state.json has the Hugging Face Trainer's keys (as swift's checkpoint does),
/// and its log_history entries the same keys as swift's.
#[test]
fn trainer_state_follows_the_hf_schema() {
    let ours = read_json(&fx().join("ours_ckpt/trainer_state.json"));
    let swift = read_json(&fx().join("swift_ckpt/trainer_state.json"));
    for k in ours.as_object().unwrap().keys() {
        assert!(
            swift.get(k).is_some(),
            "trainer_state key {k} is not transformers'"
        );
    }
    for k in [
        "global_step",
        "max_steps",
        "log_history",
        "best_metric",
        "best_model_checkpoint",
    ] {
        assert!(ours.get(k).is_some(), "{k}");
    }
    assert_eq!(ours["global_step"], swift["global_step"]);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let (o, s) = (&ours["log_history"], &swift["log_history"]);
    assert_eq!(o.as_array().unwrap().len(), s.as_array().unwrap().len());
    for (a, b) in o.as_array().unwrap().iter().zip(s.as_array().unwrap()) {
        assert_eq!(keys(a), keys(b));
        assert_eq!(a["step"], b["step"]);
    }
}

/// transformers logs the rate after the step's scheduler update; swift's logging.jsonl
/// (max_steps 4, warmup_ratio 0.3, lr 5e-2, cosine) is the reference.
#[test]
fn logged_learning_rate_is_swifts() {
    use pipeline::train::schedule::{LrSchedule, ScheduleKind, warmup_steps};
    let log = std::fs::read_to_string(fx().join("swift_run/logging.jsonl")).unwrap();
    let swift: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["learning_rate"].as_f64().unwrap())
        .collect();
    let s = LrSchedule {
        kind: ScheduleKind::Cosine,
        base_lr: 5e-2,
        warmup_steps: warmup_steps(0, 0.3, 4),
        max_steps: 4,
    };
    let ours: Vec<f64> = (1..=4).map(|step| s.lr(step)).collect();
    assert_eq!(swift.len(), 4);
    for (o, w) in ours.iter().zip(&swift) {
        assert!((o - w).abs() < 1e-12, "ours {ours:?} swift {swift:?}");
    }
}

// ------------------------------------------------------------ TensorBoard event files

fn masked_crc32c(data: &[u8]) -> u32 {
    // bitwise CRC-32C (Castagnoli, reflected 0x82F63B78), independent of the writer's crate
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    (!crc).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Records of a TFRecord file, CRCs checked.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(len_bytes), "length CRC at {at}");
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(data), "data CRC at {at}");
        out.push(data);
        at += 16 + len;
    }
    out
}

/// Protobuf fields of a message: (field number, wire type, varint or bytes).
fn fields(mut b: &[u8]) -> Vec<(u64, u8, u64, &[u8])> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => out.push((field, wire, varint(&mut b), &[][..])),
            1 => {
                out.push((field, wire, 0, &b[..8]));
                b = &b[8..];
            }
            2 => {
                let n = varint(&mut b) as usize;
                out.push((field, wire, 0, &b[..n]));
                b = &b[n..];
            }
            5 => {
                out.push((field, wire, 0, &b[..4]));
                b = &b[4..];
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

/// (tag, step) → simple_value of every scalar, plus the file_version string.
fn scalars(path: &Path) -> (String, BTreeMap<(String, u64), Vec<f32>>) {
    let bytes = std::fs::read(path).unwrap();
    let mut version = String::new();
    let mut out: BTreeMap<(String, u64), Vec<f32>> = BTreeMap::new();
    for rec in records(&bytes) {
        let f = fields(rec);
        let step = f.iter().find(|x| x.0 == 2).map_or(0, |x| x.2);
        for (field, _, _, bytes) in &f {
            match field {
                3 => version = String::from_utf8(bytes.to_vec()).unwrap(),
                5 => {
                    for (_, _, _, value) in fields(bytes).into_iter().filter(|x| x.0 == 1) {
                        let vf = fields(value);
                        let tag = vf.iter().find(|x| x.0 == 1).unwrap().3;
                        // Only simple_value scalars (swift's text summaries have none).
                        if let Some(v) = vf.iter().find(|x| x.0 == 2 && x.1 == 5) {
                            out.entry((String::from_utf8(tag.to_vec()).unwrap(), step))
                                .or_default()
                                .push(f32::from_le_bytes(v.3.try_into().unwrap()));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    (version, out)
}

#[test]
fn our_event_files_decode_like_swifts() {
    let swift_file = fx().join("swift_run/events.out.tfevents.swift");
    let (version, swift) = scalars(&swift_file);
    assert_eq!(version, "brain.Event:2");
    // Our writer, fed swift's own logging.jsonl lines, gives the same scalars.
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<Map<String, Value>> =
        std::fs::read_to_string(fx().join("swift_run/logging.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let w = pipeline::train::tensorboard::EventWriter::create(tmp.path(), &lines[..2]).unwrap();
    for l in &lines[2..] {
        w.append(l).unwrap();
    }
    let (version, ours) = scalars(
        &tmp.path()
            .join("runs")
            .join(pipeline::train::tensorboard::EVENTS_FILE),
    );
    assert_eq!(version, "brain.Event:2");
    assert_eq!(ours, swift);
    assert!(swift.contains_key(&("eval/acc".to_string(), 4)));
}

/// The committed event file of our own training run (which TensorBoard's EventAccumulator
/// reads in the generator) decodes too.
#[test]
fn our_run_event_file_decodes() {
    let (_, run) = scalars(&fx().join("ours_run/events.out.tfevents.0.pipeline"));
    assert!(run.keys().any(|(t, _)| t == "train/loss"));
    assert!(run.keys().any(|(t, _)| t == "eval/loss"));
}

// ------------------------------------------------------------- names and defaults

/// Our keys that ms-swift 4.6 has no flag for (or spells differently), and why.
const OUR_OWN_KEYS: &[&str] = &[
    "needs",          // the stage graph
    "adapter", // start from a PEFT directory (ms-swift: --resume_from_checkpoint / --adapters)
    "preset",  // built-in random models
    "path",    // a model folder (ms-swift: --model accepts both; we split path and hub id)
    "device",  // ms-swift: CUDA_VISIBLE_DEVICES
    "labels",  // class names for id2label
    "min_pixels", // ms-swift reads MIN_PIXELS from the environment only
    "nproc_per_node", // ms-swift: the NPROC_PER_NODE environment variable
];

#[test]
fn keys_are_swift_flags_and_defaults_are_swifts() {
    use pipeline::experiment::schema::{ModelSpec, TaskSpec};
    let swift = read_json(&fx().join("sft_fields.json"));
    let fields_of = |v: Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let train: TrainParams = toml::from_str("").unwrap();
    let data: DatasetParams = toml::from_str("").unwrap();
    let model: ModelSpec = toml::from_str("").unwrap();
    let task: TaskSpec = toml::from_str("num_labels = 2").unwrap();
    let mut keys = Vec::new();
    for v in [
        serde_json::to_value(&train).unwrap(),
        serde_json::to_value(&data).unwrap(),
        serde_json::to_value(&model).unwrap(),
        serde_json::to_value(&task).unwrap(),
    ] {
        keys.extend(fields_of(v));
    }
    for k in &keys {
        assert!(
            swift.get(k).is_some() || OUR_OWN_KEYS.contains(&k.as_str()),
            "key {k} is neither a `swift sft` flag nor one of ours"
        );
    }
    // Where ms-swift declares a default, ours is the same.
    let ours = serde_json::to_value(&train).unwrap();
    let mut compared = 0;
    for (k, v) in ours.as_object().unwrap() {
        let Some(s) = swift.get(k).filter(|s| !s.is_null()) else {
            continue;
        };
        let same = match (v, s) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Value::String(a), Value::Array(b)) => b.len() == 1 && b[0] == *a,
            (a, b) => a == b,
        };
        assert!(same, "default of {k}: ours {v}, ms-swift {s}");
        compared += 1;
    }
    assert!(compared >= 20, "{compared}");
    // Defaults ms-swift resolves after parsing (sft_args.json of the fixture run).
    let resolved = read_json(&fx().join("sft_args.json"));
    assert_eq!(
        resolved["truncation_strategy"],
        json!(data.truncation_strategy)
    );
    assert_eq!(resolved["tuner_type"], json!(train.tuner_type));
    assert_eq!(
        resolved["metric_for_best_model"],
        json!(train.metric_for_best_model)
    );
    // data_seed is 42 whatever `seed` is (DataArguments.data_seed), as ours.
    assert_eq!(swift["data_seed"], json!(train.data_seed));
    // Both spellings of the tuner flag read as one key.
    let a: TrainParams = toml::from_str("train_type = \"lora\"").unwrap();
    let b: TrainParams = toml::from_str("tuner_type = \"lora\"").unwrap();
    assert_eq!(a, b);
}

// ------------------------------------------------------------- regenerating ours_ckpt

/// Train with our train stage on the swift fixture data and keep the final checkpoint in
/// `tests/fixtures/swift/ours_ckpt` (then `gen_swift.py ours` scores it with swift infer).
#[test]
#[ignore = "regenerates a fixture; run by hand, then tools/fixtures/gen_swift.py ours"]
fn regenerate_swift_ours() {
    let model = Path::new(MODEL_DIR);
    let _ = std::fs::remove_dir_all(model);
    assemble_model(model);
    let common = common_for(model, 3, None);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    build_data(&common, &data, true);
    let params: TrainParams = toml::from_str(
        "needs = [\"data\"]\ntuner_type = \"lora\"\nlora_rank = 4\nlora_alpha = 8\n\
         freeze_vit = false\nmax_steps = 4\nlearning_rate = 5e-2\nwarmup_ratio = 0.3\n\
         per_device_train_batch_size = 2\nper_device_eval_batch_size = 2\neval_steps = 1\n\
         save_steps = 4\nlogging_steps = 1\nattn_impl = \"eager\"",
    )
    .unwrap();
    let stage = pipeline::stages::train::TrainStage::new(params, &common).unwrap();
    let out = tmp.path().join("train");
    run_stage(&stage, "train", &out, &[("data", "dataset", &data)]).unwrap();
    let dst = fx().join("ours_ckpt");
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "args.json",
        "trainer_state.json",
    ] {
        std::fs::copy(out.join("checkpoint-4").join(f), dst.join(f)).unwrap();
    }
    let run = fx().join("ours_run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::copy(out.join("logging.jsonl"), run.join("logging.jsonl")).unwrap();
    let ev = pipeline::train::tensorboard::EVENTS_FILE;
    std::fs::copy(out.join("runs").join(ev), run.join(ev)).unwrap();
}
