//! Helpers shared by the `score_*` and `export_*` integration tests: the interop fixtures
//! (`tests/fixtures/interop/`, from `tools/fixtures/gen_interop.py`) and logit checks.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{DType, backend::Backend};
use pipeline::model::inputs::{PaddingSide, SampleInputs, collate};
use pipeline::model::processor::pixel_rows;
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use serde_json::Value;

pub type B = burn::backend::Flex;

/// Tolerance on f32 class logits against PyTorch (different summation orders).
pub const LOGIT_TOL: f64 = 1e-4;

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop")
}

pub fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `reference.json` rows.
pub fn reference_rows() -> Vec<Value> {
    read_json(&interop_dir().join("reference.json"))["rows"]
        .as_array()
        .unwrap()
        .clone()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The fixture model (`model/`) in f32 on the CPU.
pub fn fixture_model() -> SeqClassifier<B> {
    let dir = interop_dir().join("model");
    load_classifier_from::<B>(
        WeightsSource::Dir(&dir),
        3,
        DType::F32,
        0,
        &Default::default(),
    )
    .expect("fixture model loads")
}

/// Model inputs of reference row `i`: its token ids and the pixel rows of the images that
/// qwen-vl-utils resized (`data/resized/<i>_<k>.png`).
pub fn reference_sample(model: &SeqClassifier<B>, row: &Value) -> SampleInputs {
    let i = row["index"].as_u64().unwrap();
    let input_ids = row["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut sample = SampleInputs {
        input_ids,
        ..Default::default()
    };
    for k in 0..row["grid_thw"].as_array().unwrap().len() {
        let path = interop_dir().join(format!("data/resized/{i}_{k}.png"));
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        let (rows, grid) = pixel_rows(&img, &model.config().vision).expect("pixel rows");
        sample.pixel_rows.extend(rows);
        sample.grids.push(grid);
    }
    sample
}

/// Logits of `samples` in one left-padded batch, as f64 rows.
pub fn batch_logits<Bk: Backend>(
    model: &SeqClassifier<Bk>,
    samples: &[SampleInputs],
    device: &Bk::Device,
) -> Vec<Vec<f64>> {
    let refs: Vec<&SampleInputs> = samples.iter().collect();
    let inputs = collate::<Bk>(&refs, 256, PaddingSide::Left, device);
    let logits = model.forward(&inputs).expect("forward");
    let [b, n] = logits.dims();
    let v: Vec<f32> = logits.into_data().convert::<f32>().into_vec().unwrap();
    (0..b)
        .map(|r| v[r * n..(r + 1) * n].iter().map(|&x| x as f64).collect())
        .collect()
}

/// Largest |a − b| over all entries.
pub fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "class counts differ");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

// ------------------------------------------------------------------ running stages

use pipeline::experiment::schema::{Common, ModelSpec};
use pipeline::graph::{Stage, StageContext, StageError, Upstream};
use std::collections::BTreeMap;
use std::path::Path;

/// `[model]` + `[task]` for a model directory (f32 on the CPU).
pub fn common_for(model_dir: &Path, num_labels: usize, problem_type: Option<&str>) -> Common {
    let mut common = Common::for_model(ModelSpec::cpu_f32(None, Some(model_dir)), num_labels);
    common.task.problem_type = problem_type.map(str::to_string);
    common
}

/// Run `stage` into `out_dir` with `inputs` (name → (kind, dir)), like the executor does;
/// writes a manifest holding `params()` afterwards, as a finished cache entry has.
pub fn run_stage(
    stage: &dyn Stage,
    name: &str,
    out_dir: &Path,
    inputs: &[(&str, &str, &Path)],
) -> Result<(), StageError> {
    std::fs::create_dir_all(out_dir).unwrap();
    let inputs: BTreeMap<String, Upstream> = inputs
        .iter()
        .map(|(n, kind, dir)| {
            (
                n.to_string(),
                Upstream {
                    kind: kind.to_string(),
                    key: format!("key-{n}"),
                    dir: dir.to_path_buf(),
                },
            )
        })
        .collect();
    let progress =
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
    let ctx = StageContext {
        name,
        key: "test-key",
        out_dir,
        inputs: &inputs,
        device: None,
        devices: &[],
        progress: &progress,
    };
    stage.run(&ctx)?;
    let manifest = serde_json::json!({"kind": stage.kind(), "params": stage.params()});
    std::fs::write(out_dir.join("manifest.json"), manifest.to_string()).unwrap();
    Ok(())
}

/// Build the fixture dataset (`data/test.jsonl` as the val split, max_pixels 25088) with
/// the dataset stage into `out_dir`.
pub fn build_fixture_dataset(common: &Common, jsonl: &Path, out_dir: &Path) {
    let params: pipeline::experiment::schema::DatasetParams = toml::from_str(&format!(
        "val_dataset = {:?}\nmax_pixels = 25088",
        jsonl.display().to_string()
    ))
    .unwrap();
    let stage = pipeline::stages::dataset::DatasetStage::new(params, common).unwrap();
    run_stage(&stage, "data", out_dir, &[]).unwrap();
}

/// scores.jsonl lines.
pub fn read_scores(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// log_softmax of a row, in f64.
pub fn log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// Check scores.jsonl lines against `logits` (one row per reference row) under
/// log_softmax: the same rows, labels, argmax and top log-probs best first. Returns the
/// largest |Δ log p|.
pub fn check_single_label(scores: &[Value], logits: &[Vec<f64>]) -> f64 {
    let rows = reference_rows();
    assert_eq!(scores.len(), rows.len());
    let mut worst = 0.0f64;
    for ((line, row), z) in scores.iter().zip(&rows).zip(logits) {
        let expect = log_softmax(z);
        let got = floats(&line["class_logprobs"]);
        worst = worst.max(
            got.iter()
                .zip(&expect)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max),
        );
        let pred = (0..3)
            .max_by(|&a, &b| expect[a].total_cmp(&expect[b]))
            .unwrap();
        assert_eq!(line["index"], row["index"]);
        assert_eq!(line["labels"], row["label"]);
        assert_eq!(line["response"], pred);
        let c = &line["logprobs"]["content"][0];
        assert_eq!(c["index"], pred);
        let top: Vec<f64> = c["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert_eq!(top.len(), 3);
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "best first: {top:?}");
    }
    worst
}
