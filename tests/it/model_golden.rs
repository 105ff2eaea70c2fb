//! The Burn model against transformers 4.57.1 (fixtures from tools/fixtures/gen_golden.py):
//! every intermediate within 1e-4 absolute in f32 on the CPU backend.

use crate::model_support as support;

use burn::tensor::{DType, Tensor};
use pipeline::model::inputs::ModelInputs;
use pipeline::model::processor::pixel_rows;
use pipeline::model::vision::VisionPlan;
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use support::{
    B, Fixture, assert_close, attended_rows, golden_batch, golden_dir, golden_grids, golden_pixels,
    to_vec,
};

const TOL: f64 = 1e-4;

fn load(dir: &str) -> SeqClassifier<B> {
    load_classifier_from::<B>(
        WeightsSource::Dir(&golden_dir().join(dir)),
        5,
        DType::F32,
        0,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn pixels(inp: &Fixture) -> Tensor<B, 2> {
    golden_pixels(inp, &Default::default())
}

fn batch(inp: &Fixture, side: &str) -> ModelInputs<B> {
    golden_batch(inp, side, &Default::default())
}

fn check_vision(model: &SeqClassifier<B>, gold: &Fixture, inp: &Fixture) {
    let g = golden_grids(inp);
    let plan = VisionPlan::<B>::new(&g, &model.visual.cfg, &Default::default());
    let wi: Vec<i64> = plan.window_index.iter().map(|&i| i as i64).collect();
    assert_eq!(wi, gold.ints("vision.window_index"), "window index");
    let cu: Vec<i64> = plan.cu_window_seqlens.iter().map(|&i| i as i64).collect();
    assert_eq!(
        cu,
        gold.ints("vision.cu_window_seqlens"),
        "cu_window_seqlens"
    );
    assert_close(
        "vision cos",
        &to_vec(plan.cos.clone()),
        &gold.values("vision.cos"),
        1e-6,
    );
    assert_close(
        "vision sin",
        &to_vec(plan.sin.clone()),
        &gold.values("vision.sin"),
        1e-6,
    );
    let trace = model.visual.trace(pixels(inp), &g);
    assert_close(
        "patch embed",
        &to_vec(trace.patch_embed),
        &gold.values("vision.patch_embed"),
        TOL,
    );
    assert_eq!(trace.blocks.len(), model.visual.cfg.depth);
    for (i, b) in trace.blocks.into_iter().enumerate() {
        assert_close(
            &format!("vision block {i}"),
            &to_vec(b),
            &gold.values(&format!("vision.block{i}")),
            TOL,
        );
    }
    assert_close(
        "merger (image features)",
        &to_vec(trace.merger),
        &gold.values("vision.merger"),
        TOL,
    );
}

/// Hidden states compared on attended positions only (padded rows are unspecified).
fn check_text(model: &SeqClassifier<B>, gold: &Fixture, inp: &Fixture, side: &str) {
    let inputs = batch(inp, side);
    let pos = model.position_ids(&inputs).unwrap();
    assert_eq!(
        pos,
        gold.ints(&format!("{side}.position_ids")),
        "{side} position ids"
    );
    let mask = inp.ints(&format!("attention_mask_{side}"));
    let hidden = to_vec(model.last_hidden_state(&inputs).unwrap());
    let want = gold.values(&format!("{side}.last_hidden_state"));
    let keep = |v: &[f64]| attended_rows(v, &mask);
    assert_close(
        &format!("{side} last hidden state"),
        &keep(&hidden),
        &keep(&want),
        TOL,
    );
    let logits = model.forward(&inputs).unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    assert_close(
        &format!("{side} score logits"),
        &to_vec(logits),
        &gold.values(&format!("{side}.logits")),
        TOL,
    );
}

#[test]
fn tiny_a_matches_transformers() {
    let (model, gold, inp) = (
        load("tiny_a"),
        Fixture::open("tiny_a.golden.safetensors"),
        Fixture::open("inputs.safetensors"),
    );
    assert!(!model.config().text.tie_word_embeddings);
    check_vision(&model, &gold, &inp);
    check_text(&model, &gold, &inp, "left");
    check_text(&model, &gold, &inp, "right");
}

#[test]
fn tiny_b_tied_bf16_on_disk_matches_transformers() {
    let (model, gold, inp) = (
        load("tiny_b"),
        Fixture::open("tiny_b.golden.safetensors"),
        Fixture::open("inputs.safetensors"),
    );
    assert!(model.config().text.tie_word_embeddings);
    check_vision(&model, &gold, &inp);
    check_text(&model, &gold, &inp, "left");
    check_text(&model, &gold, &inp, "right");
}

/// 4.52+ key layout, two shards + index, bf16 on disk, flat hub config.
#[test]
fn sharded_452_layout_matches_transformers() {
    let (model, gold, inp) = (
        load("tiny_a_sharded"),
        Fixture::open("tiny_a.golden.safetensors"),
        Fixture::open("inputs.safetensors"),
    );
    check_text(&model, &gold, &inp, "left");
}

/// Left and right padding of the same samples give the same logits.
#[test]
fn padding_side_does_not_change_logits() {
    let (model, inp) = (load("tiny_a"), Fixture::open("inputs.safetensors"));
    let l = to_vec(model.forward(&batch(&inp, "left")).unwrap());
    let r = to_vec(model.forward(&batch(&inp, "right")).unwrap());
    assert_close("left vs right logits", &l, &r, TOL);
}

#[test]
fn image_token_count_mismatch_is_an_error() {
    let (model, inp) = (load("tiny_a"), Fixture::open("inputs.safetensors"));
    let mut inputs = batch(&inp, "left");
    let g = golden_grids(&inp);
    inputs.image_grid_thw = g[..2].to_vec();
    let rows: usize = g[..2].iter().map(|g| g[0] * g[1] * g[2]).sum();
    inputs.pixel_values = Some(pixels(&inp).narrow(0, 0, rows));
    let err = model.forward(&inputs).unwrap_err().to_string();
    assert!(
        err.contains("74 <|image_pad|> tokens") && err.contains("58 feature rows"),
        "{err}"
    );
}

/// Qwen2VLImageProcessor(do_resize=False) pixel rows, within 1e-6.
#[test]
fn processor_matches_transformers() {
    let fx = Fixture::open("processor.safetensors");
    let vision = pipeline::model::presets::preset_config("tiny")
        .unwrap()
        .vision;
    for i in 0..3 {
        let s = fx.shape(&format!("image{i}"));
        let raw: Vec<u8> = fx
            .values(&format!("image{i}"))
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let img = image::RgbImage::from_raw(s[1] as u32, s[0] as u32, raw).unwrap();
        let (rows, grid) = pixel_rows(&img, &vision).unwrap();
        let want_grid: Vec<usize> = fx
            .ints(&format!("grid{i}"))
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(grid.to_vec(), want_grid, "grid {i}");
        let got: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
        assert_close(
            &format!("pixel rows {i}"),
            &got,
            &fx.values(&format!("pixel_values{i}")),
            1e-6,
        );
    }
    let odd = image::RgbImage::new(30, 28);
    let err = pixel_rows(&odd, &vision).unwrap_err().to_string();
    assert!(err.contains("30x28") && err.contains("28"), "{err}");
}
