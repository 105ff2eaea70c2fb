//! Helpers shared by the `model_*` integration tests: fixture paths, safetensors reading,
//! tolerance checks.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

pub type B = burn::backend::Flex;

/// The fixtures of the checkout the test was built in, or, when that path is gone (a test
/// binary carried to another machine, run from the repository root), `./tests/fixtures/golden`.
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

    pub fn int2(&self, key: &str) -> Tensor<B, 2, Int> {
        let s = self.shape(key);
        Tensor::from_data(
            TensorData::new(self.ints(key), [s[0], s[1]]),
            &Default::default(),
        )
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
