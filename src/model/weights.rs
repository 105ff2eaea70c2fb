//! Parameter sources: Hugging Face safetensors checkpoints (single file or sharded through
//! `model.safetensors.index.json`) and seeded random initialisation for presets.
//!
//! Modules are built directly from tensors: every constructor asks a [`ParamSource`] for
//! its tensors by *hub* key. Name table (hub key → module field), `N`/`i` = layer index:
//!
//! | hub key (also read as 4.52+ `model.visual.*` / `model.language_model.*`) | field |
//! |---|---|
//! | `visual.patch_embed.proj.weight [C_v, 3, T, p, p]` | `visual.patch_embed` (viewed `[C_v, 3·T·p·p]`) |
//! | `visual.blocks.N.norm{1,2}.weight` | `visual.blocks[N].norm{1,2}` |
//! | `visual.blocks.N.attn.{qkv,proj}.{weight,bias}` | `visual.blocks[N].attn.{qkv,proj}` |
//! | `visual.blocks.N.mlp.{gate,up,down}_proj.{weight,bias}` | `visual.blocks[N].mlp.*` |
//! | `visual.merger.ln_q.weight` | `visual.merger.ln_q` |
//! | `visual.merger.mlp.{0,2}.{weight,bias}` | `visual.merger.{fc1,fc2}` |
//! | `model.embed_tokens.weight` | `language_model.embed_tokens` |
//! | `model.layers.i.self_attn.{q,k,v}_proj.{weight,bias}`, `o_proj.weight` | `language_model.layers[i].self_attn.*` |
//! | `model.layers.i.mlp.{gate,up,down}_proj.weight` | `language_model.layers[i].mlp.*` |
//! | `model.layers.i.{input,post_attention}_layernorm.weight` | `language_model.layers[i].*_layernorm` |
//! | `model.norm.weight` | `language_model.norm` |
//! | `score.weight [num_labels, hidden]` (optional) | `score` |
//! | `lm_head.weight` | ignored |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Distribution, Tensor, TensorData, backend::Backend, bf16, f16};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::Dtype as StDtype;

use super::ModelError;
use super::seed::derive_seed;
use crate::safetensors_io::TensorFile;

/// How a parameter is initialised when it is not read from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// normal(0, initializer_range): linear and embedding weights.
    Normal,
    /// Norm weights.
    Ones,
    /// Biases.
    Zeros,
}

/// Supplies the model's tensors by hub key, in the model dtype, on the model device.
pub trait ParamSource<B: Backend> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError>;
    /// Standard deviation of `Init::Normal` for what follows (text and vision differ).
    fn set_std(&mut self, std: f64);
}

/// Map a checkpoint key in either layout to the hub layout; `None` for keys we ignore.
pub fn hub_key(key: &str) -> Option<String> {
    if key.starts_with("lm_head.") {
        return None;
    }
    if let Some(rest) = key.strip_prefix("model.visual.") {
        return Some(format!("visual.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("model.language_model.") {
        return Some(format!("model.{rest}"));
    }
    Some(key.to_string())
}

/// Seeded random parameters: each tensor draws from its own ChaCha stream keyed by
/// (seed, key), so the init does not depend on construction order or thread count.
pub struct RandomSource<B: Backend> {
    pub seed: u64,
    pub std: f64,
    pub dtype: DType,
    pub device: B::Device,
    /// Draw normals with the backend RNG on the device instead (the caller seeds it with
    /// `B::seed`): seconds instead of minutes for real-size models on a GPU (benchmarks),
    /// but the values depend on the backend.
    pub device_rng: bool,
}

/// Elements per independently seeded chunk (parallel generation of large tensors).
const RANDOM_CHUNK: usize = 1 << 20;

/// `n` samples of normal(0, std) from ChaCha streams keyed by (seed, label, chunk).
pub fn seeded_normal(seed: u64, label: &str, n: usize, std: f64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(RANDOM_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::from_seed(derive_seed(seed, &format!("{label}#{i}")));
            fill_normal(&mut rng, chunk, std);
        });
    out
}

/// Box–Muller pairs.
fn fill_normal(rng: &mut ChaCha8Rng, out: &mut [f32], std: f64) {
    use rand::Rng;
    for pair in out.chunks_mut(2) {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = std::f64::consts::TAU * u2;
        pair[0] = (r * t.cos()) as f32;
        if pair.len() > 1 {
            pair[1] = (r * t.sin()) as f32;
        }
    }
}

impl<B: Backend> ParamSource<B> for RandomSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        let opts = (&self.device, self.dtype);
        Ok(match init {
            Init::Ones => Tensor::ones(shape, opts),
            Init::Zeros => Tensor::zeros(shape, opts),
            Init::Normal if self.device_rng => Tensor::<B, D>::random(
                shape,
                Distribution::Normal(0.0, self.std),
                (&self.device, DType::F32),
            )
            .cast(self.dtype),
            Init::Normal => {
                let n = shape.iter().product();
                let data = TensorData::new(seeded_normal(self.seed, key, n, self.std), shape);
                Tensor::from_data(data, opts)
            }
        })
    }
    fn set_std(&mut self, std: f64) {
        self.std = std;
    }
}

/// One tensor entry of a checkpoint: which file, under which original key.
struct Entry {
    file: usize,
    key: String,
}

/// Tensors of a safetensors checkpoint (one file or an index of shards), memory-mapped.
/// Every tensor is converted on its own, so loading never holds two copies of the model.
pub struct CheckpointSource<B: Backend> {
    files: Vec<TensorFile>,
    entries: BTreeMap<String, Entry>,
    used: BTreeSet<String>,
    pub dtype: DType,
    pub device: B::Device,
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn werr(file: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Weights {
        file: file.display().to_string(),
        msg: msg.into(),
    }
}

/// `dir/model.safetensors`, or every shard `dir/model.safetensors.index.json` names.
pub fn checkpoint_paths(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    Ok(if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| werr(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| werr(&index, "missing object \"weight_map\""))?;
        let mut shards: Vec<String> = Vec::new();
        for (k, v) in map {
            let f = v
                .as_str()
                .ok_or_else(|| werr(&index, format!("weight_map[{k:?}] must be a file name")))?;
            if !shards.iter().any(|s| s == f) {
                shards.push(f.to_string());
            }
        }
        shards.iter().map(|s| dir.join(s)).collect()
    } else if single.exists() {
        vec![single]
    } else {
        return Err(werr(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    })
}

/// Rows of `score.weight` in a model directory's checkpoint (`None`: it has no head),
/// from the safetensors headers alone.
pub fn checkpoint_score_rows(dir: &Path) -> Result<Option<usize>, ModelError> {
    for path in checkpoint_paths(dir)? {
        let header = crate::safetensors_io::read_header(&path)?;
        if let Some((_, shape)) = header.get("score.weight") {
            return Ok(shape.first().copied());
        }
    }
    Ok(None)
}

impl<B: Backend> CheckpointSource<B> {
    /// Open `dir/model.safetensors` or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self, ModelError> {
        let paths = checkpoint_paths(dir)?;
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let file = TensorFile::open(&path)?;
            for key in file.names() {
                let Some(hub) = hub_key(&key) else { continue };
                if let Some(prev) = entries.insert(
                    hub.clone(),
                    Entry {
                        file: i,
                        key: key.clone(),
                    },
                ) {
                    return Err(werr(
                        &path,
                        format!("tensor {hub} appears twice (as {:?} and {key:?})", prev.key),
                    ));
                }
            }
            files.push(file);
        }
        Ok(Self {
            files,
            entries,
            used: BTreeSet::new(),
            dtype,
            device: device.clone(),
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Fail when the checkpoint holds tensors the model did not ask for.
    pub fn finish(&self) -> Result<(), ModelError> {
        self.finish_except(&|_| false)
    }

    /// [`Self::finish`], not counting the (hub) keys `ignored` accepts.
    pub fn finish_except(&self, ignored: &dyn Fn(&str) -> bool) -> Result<(), ModelError> {
        let unused: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| !self.used.contains(*k) && !ignored(k))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(10).map(|s| s.as_str()).collect();
        Err(werr(
            self.files[0].path(),
            format!(
                "{} unexpected tensor(s) for this config: {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 10 { ", ..." } else { "" }
            ),
        ))
    }

    /// The raw tensor data of `key` converted to `dtype`, checked against `shape`.
    pub fn data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, ModelError> {
        let entry = self.entries.get(key).ok_or_else(|| {
            werr(
                self.files[0].path(),
                format!("missing tensor {key} (shape {shape:?})"),
            )
        })?;
        let file = &self.files[entry.file];
        let path = file.path();
        let (st_dtype, st_shape, bytes) = file.raw(&entry.key)?;
        if st_shape != shape {
            return Err(werr(
                path,
                format!(
                    "tensor {} has shape {st_shape:?}, the config needs {shape:?}",
                    entry.key,
                ),
            ));
        }
        let data = convert(bytes, st_dtype, shape, dtype)
            .map_err(|m| werr(path, format!("tensor {}: {m}", entry.key)))?;
        self.used.insert(key.to_string());
        Ok(data)
    }
}

/// Little-endian bytes of one dtype → `TensorData` of another (f32 or bf16 targets).
fn convert(bytes: &[u8], from: StDtype, shape: &[usize], to: DType) -> Result<TensorData, String> {
    let shape = shape.to_vec();
    let as_u16 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    match (from, to) {
        (StDtype::BF16, DType::BF16) | (StDtype::F32, DType::F32) | (StDtype::F16, DType::F16) => {
            Ok(TensorData::from_bytes_vec(bytes.to_vec(), shape, to))
        }
        (StDtype::F32, DType::BF16) => {
            let v: Vec<bf16> = bytes
                .par_chunks_exact(4)
                .map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            Ok(TensorData::new(v, shape))
        }
        (StDtype::F16, DType::BF16) => {
            let v: Vec<bf16> = bytes
                .par_chunks_exact(2)
                .map(|c| bf16::from_f32(f16::from_bits(as_u16(c)).to_f32()))
                .collect();
            Ok(TensorData::new(v, shape))
        }
        (StDtype::BF16, DType::F32) => {
            let v: Vec<f32> = bytes
                .par_chunks_exact(2)
                .map(|c| bf16::from_bits(as_u16(c)).to_f32())
                .collect();
            Ok(TensorData::new(v, shape))
        }
        (StDtype::F16, DType::F32) => {
            let v: Vec<f32> = bytes
                .par_chunks_exact(2)
                .map(|c| f16::from_bits(as_u16(c)).to_f32())
                .collect();
            Ok(TensorData::new(v, shape))
        }
        (from, to) => Err(format!(
            "cannot load dtype {from:?} as {to:?} (supported: f32, bf16, f16 on disk)"
        )),
    }
}

impl<B: Backend> ParamSource<B> for CheckpointSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        let data = self.data(key, &shape, self.dtype)?;
        Ok(Tensor::from_data(data, (&self.device, self.dtype)))
    }
    fn set_std(&mut self, _std: f64) {}
}

/// A source that reads the patch-embedding convolution `[C_v, 3, T, p, p]` and returns it
/// viewed as the matmul weight `[C_v, 3·T·p·p]`.
pub fn patch_embed_weight<B: Backend>(
    src: &mut impl ParamSource<B>,
    key: &str,
    conv_shape: [usize; 5],
) -> Result<Tensor<B, 2>, ModelError> {
    let t = src.tensor::<5>(key, conv_shape, Init::Normal)?;
    let [o, c, tt, p, q] = conv_shape;
    Ok(t.reshape([o, c * tt * p * q]))
}
