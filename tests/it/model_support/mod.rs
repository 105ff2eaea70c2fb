//! Helpers shared by the `model_*` integration tests: fixture paths, safetensors reading,
//! tolerance checks.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

pub type B = burn::backend::Flex;

/// The fixtures of the checkout the test was built in, or, when that path is gone (a test
/// binary carried to another machine, run from the repository root), `./tests/fixtures/golden`.
/// The golden batch of `inputs.safetensors` (3 samples of different lengths) padded on
/// `side`, on the test backend.
pub fn golden_inputs(side: &str) -> pipeline::model::inputs::ModelInputs<B> {
    golden_batch(
        &Fixture::open("inputs.safetensors"),
        side,
        &Default::default(),
    )
}

/// The golden batch of `inp` padded on `side`, on `dev`.
pub fn golden_batch<Bk: Backend>(
    inp: &Fixture,
    side: &str,
    dev: &Bk::Device,
) -> pipeline::model::inputs::ModelInputs<Bk> {
    pipeline::model::inputs::ModelInputs {
        input_ids: inp.int2(&format!("input_ids_{side}"), dev),
        attention_mask: inp.int2(&format!("attention_mask_{side}"), dev),
        pixel_values: Some(golden_pixels(inp, dev)),
        image_grid_thw: golden_grids(inp),
    }
}

/// The golden pixel values, decoded from the u8 codes as `(code - 128) / 64`.
pub fn golden_pixels<Bk: Backend>(inp: &Fixture, dev: &Bk::Device) -> Tensor<Bk, 2> {
    let s = inp.shape("pixel_codes");
    let v: Vec<f32> = inp
        .values("pixel_codes")
        .into_iter()
        .map(|c| ((c - 128.0) / 64.0) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, [s[0], s[1]]), (dev, DType::F32))
}

/// The golden images' `(t, h, w)` patch grids.
pub fn golden_grids(inp: &Fixture) -> Vec<[usize; 3]> {
    inp.ints("grids")
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect()
}

pub fn golden_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    if built.exists() {
        built
    } else {
        PathBuf::from("tests/fixtures/golden")
    }
}

/// All tensors of a safetensors file as (shape, f64 values).
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let path = golden_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    pub fn keys(&self) -> Vec<String> {
        self.st()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.st()
            .tensor(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .shape()
            .to_vec()
    }

    /// Values converted to f64 (f32, bf16, i64, u8 on disk).
    pub fn values(&self, key: &str) -> Vec<f64> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        let d = t.data();
        match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::U8 => d.iter().map(|&v| v as f64).collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
                .collect(),
            other => panic!("{key}: unexpected dtype {other:?}"),
        }
    }

    pub fn ints(&self, key: &str) -> Vec<i64> {
        self.values(key).into_iter().map(|v| v as i64).collect()
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        self.values(key).into_iter().map(|v| v as f32).collect()
    }

    pub fn tensor2(&self, key: &str) -> Tensor<B, 2> {
        let s = self.shape(key);
        Tensor::from_data(
            TensorData::new(self.f32s(key), [s[0], s[1]]),
            (&Default::default(), DType::F32),
        )
    }

    pub fn int2<Bk: Backend>(&self, key: &str, dev: &Bk::Device) -> Tensor<Bk, 2, Int> {
        let s = self.shape(key);
        Tensor::from_data(TensorData::new(self.ints(key), [s[0], s[1]]), dev)
    }
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(|v| v as f64)
        .collect()
}

/// Largest |a - b|, asserting equal lengths.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The rows of `v` (`[batch·seq, hidden]`, flattened) whose attention `mask` is 1: padded
/// positions of a hidden state are unspecified.
pub fn attended_rows(v: &[f64], mask: &[i64]) -> Vec<f64> {
    let h = v.len() / mask.len();
    v.chunks(h)
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .flat_map(|(r, _)| r.to_vec())
        .collect()
}

/// Relative L2 error `‖got − want‖ / ‖want‖` (an all-zero `want`, e.g. LoRA A's gradient
/// at init, only matches an all-zero `got`).
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum::<f64>().max(1e-30);
    assert!(num.is_finite(), "rel_l2: non-finite values");
    (num / den).sqrt()
}

/// Assert `|a - b| ≤ tol` everywhere and return the max difference.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    let d = max_abs_diff(got, want);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!("{what}: max |diff| = {d:.3e} (max |value| {scale:.3})");
    assert!(d <= tol, "{what}: max |diff| {d:e} > {tol:e}");
    assert!(d.is_finite(), "{what}: non-finite");
    d
}

/// `base` with LoRA adapters of `spec` (`spec.dropout` as given) where A and B are both drawn
/// from normal(0, 0.05) streams keyed by `seed`, in f32, so every LoRA branch and every A/B
/// gradient is non-zero (PEFT's init, B = 0, would hide errors in the branch).
pub fn with_random_adapters<Bk: Backend>(
    base: pipeline::model::SeqClassifier<Bk>,
    spec: &pipeline::model::lora::LoraSpec,
    seed: u64,
    dev: &Bk::Device,
) -> pipeline::model::SeqClassifier<Bk> {
    let shapes: Vec<(String, [usize; 2], [usize; 2])> = base
        .clone()
        .apply_lora(spec, 0)
        .unwrap()
        .lora_weights()
        .into_iter()
        .map(|(n, a, b)| (n, a.dims(), b.dims()))
        .collect();
    let adapters = shapes
        .into_iter()
        .map(|(n, da, db)| {
            let t = |label: &str, d: [usize; 2]| {
                let v = pipeline::model::weights::seeded_normal(
                    seed,
                    &format!("{label}:{n}"),
                    d[0] * d[1],
                    0.05,
                );
                Tensor::<Bk, 2>::from_data(TensorData::new(v, d), (dev, DType::F32))
            };
            let (a, b) = (t("A", da), t("B", db));
            (n, a, b)
        })
        .collect();
    base.load_lora_weights(spec, adapters, None).unwrap()
}

/// `m` with fresh leaves (new autodiff nodes for its trainable tensors), as the trainer
/// gives every shard. A test that runs several backward passes on one module must take
/// each pass on fresh leaves: after a backward a reused leaf's first op starts a one-node
/// graph, and a `backward()` finishing on another thread (tests run in parallel) may sweep
/// that graph before the op registers, silently dropping the leaf's gradient (Burn 0.21,
/// tracel-ai/burn#5573).
pub fn fresh_leaves<Bk, M>(m: &M) -> M
where
    Bk: burn::tensor::backend::AutodiffBackend,
    M: burn::module::AutodiffModule<Bk>,
{
    M::from_inner(m.valid())
}
