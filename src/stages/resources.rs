//! What one sweep variant needs from a batch scheduler: host memory (an estimate from the
//! model's shapes and the stages' settings) and GPUs. `pipeline sweep --emit slurm` asks
//! for the largest variant's needs in every array task.
//!
//! The memory estimate is an upper bound for the worst stage of a variant, which run one
//! after another in a task:
//! - every stage: [`RUNTIME_BYTES`] (binary, tokenizer, allocator slack);
//! - a stage that loads the model: its weights on the host (f32 when it computes on the
//!   CPU, the file's dtype when the host only stages them for a GPU; export holds the
//!   base and the merged copy);
//! - CPU training, on top: the LoRA parameters with their gradients and AdamW moments,
//!   the cached pixel rows of the dataset (bounded by the trainer's cache cap), and the
//!   activations autodiff keeps for one micro-batch of the longest row (bounded by its
//!   bytes and images, and by `max_length`).
//!
//! GPU training keeps activations in device memory, so they do not count here.

use std::path::Path;

use serde_json::Value;

use crate::experiment::cluster::DEFAULT_CPUS;
use crate::experiment::schema::{DatasetParams, TrainParams};
use crate::experiment::{Experiment, Loaded, StageParams};
use crate::graph::StageError;
use crate::model::config::ModelConfig;
use crate::model::footprint::param_count;
use crate::slurm::Request;
use crate::train::seq_cls::PIXEL_CACHE_BYTES;

/// Process baseline of a stage: the binary, tokenizer, records and allocator slack (a
/// whole tiny-preset sweep task peaks at about 70 MiB).
pub const RUNTIME_BYTES: u64 = 256 << 20;
/// f32 values autodiff keeps per token of one decoder layer, per unit of: the hidden size,
/// the MLP's intermediate size, and attention heads × sequence length (scores and
/// probabilities, their dropout-free softmax backward copy).
const SAVED_PER_HIDDEN: u64 = 12;
const SAVED_PER_INTERMEDIATE: u64 = 4;
const SAVED_PER_HEAD_TOKEN: u64 = 3;

/// A variant's needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Needs {
    /// Host memory, bytes.
    pub mem_bytes: u64,
    /// GPUs the training asks for (0: CPU).
    pub gpus: u32,
    /// How the estimate was formed (one line per stage that drives it), for the script.
    pub why: String,
}

/// The needs of the experiment `exp` (one sweep variant).
pub fn variant_needs(exp: &Experiment) -> Result<Needs, StageError> {
    let model = &exp.common.model;
    let cfg = super::fit::model_config(model.preset.as_deref(), model.path.as_deref())?;
    let gpu = uses_gpu(exp);
    let datasets: Vec<&DatasetParams> = exp
        .stages
        .iter()
        .filter_map(|s| match &s.params {
            StageParams::Dataset(d) => Some(d),
            _ => None,
        })
        .collect();
    let weights = param_count(&cfg) as u64;
    let file_bytes = if exp.common.model.torch_dtype == "float32" {
        4
    } else {
        2
    };
    let mut worst = (RUNTIME_BYTES, "dataset: runtime only".to_string());
    let mut gpus = 0u32;
    for s in &exp.stages {
        let (bytes, why) = match &s.params {
            StageParams::Dataset(_) => continue,
            StageParams::Train(t) => {
                if gpu {
                    gpus = gpus.max(nproc_per_node(t));
                    (weights * file_bytes, "weights staged for the GPU".into())
                } else {
                    let train = cpu_train_bytes(&cfg, t, &datasets);
                    (
                        weights * 4 + train.total(),
                        format!(
                            "f32 weights {} + LoRA state {} + pixel cache {} + activations {}",
                            gib(weights * 4),
                            gib(train.lora),
                            gib(train.pixels),
                            gib(train.activations)
                        ),
                    )
                }
            }
            StageParams::Score(_) => {
                let b = if gpu { file_bytes } else { 4 };
                (weights * b, format!("weights ({b} bytes each)"))
            }
            StageParams::Export(_) => (
                2 * weights * file_bytes,
                "base and merged weights".to_string(),
            ),
        };
        let bytes = RUNTIME_BYTES + bytes;
        if bytes > worst.0 {
            worst = (bytes, format!("{}: {why}", s.name));
        }
    }
    if gpu {
        gpus = gpus.max(1);
    }
    Ok(Needs {
        mem_bytes: worst.0,
        gpus,
        why: format!("{} ({})", gib(worst.0), worst.1),
    })
}

/// What every array task of `loaded`'s sweep asks for: the largest variant's needs,
/// `[slurm]` settings winning over estimates. Also notes worth telling the user.
pub fn slurm_request(loaded: &Loaded) -> Result<(Request, Vec<String>), StageError> {
    let mut worst: Option<Needs> = None;
    let mut gpus = 0;
    for v in &loaded.variants {
        let n = variant_needs(&v.experiment)?;
        gpus = gpus.max(n.gpus);
        if worst.as_ref().is_none_or(|w| n.mem_bytes > w.mem_bytes) {
            worst = Some(n);
        }
    }
    let worst = worst.expect("an experiment has at least one variant");
    let spec = &loaded.base.slurm;
    let (mem, mem_note) = match &spec.mem {
        Some(m) => (
            m.clone(),
            format!("{m} from [slurm] mem; estimate {}", worst.why),
        ),
        None => (
            format!("{}M", worst.mem_bytes.div_ceil(1 << 20)),
            format!("estimated {}", worst.why),
        ),
    };
    let mut notes = Vec::new();
    if loaded.base.common.model.device == "auto" && !uses_gpu(&loaded.base) {
        notes.push(
            "[model] device = \"auto\" asks for no GPU; set device = \"cuda\" to request --gres=gpu:N"
                .to_string(),
        );
    }
    Ok((
        Request {
            cpus: spec.cpus_per_task.unwrap_or(DEFAULT_CPUS),
            mem,
            gpus,
            time: spec.time.clone(),
            mem_note,
        },
        notes,
    ))
}

/// Whether the model stages run on a GPU: `device = "cuda[:N]"` or a `devices` list
/// naming one. `auto` decides only on the node, so it asks for none.
pub fn uses_gpu(exp: &Experiment) -> bool {
    exp.common.model.device.starts_with("cuda") || exp.devices.iter().any(|d| d != "cpu")
}

/// `nproc_per_node` of a train stage (data-parallel replicas, one GPU each); 1 when the
/// stage has no such setting.
fn nproc_per_node(t: &TrainParams) -> u32 {
    nproc_of(&serde_json::to_value(t).unwrap_or(Value::Null))
}

fn nproc_of(params: &Value) -> u32 {
    params
        .get("nproc_per_node")
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32)
}

struct TrainBytes {
    lora: u64,
    pixels: u64,
    activations: u64,
}

impl TrainBytes {
    fn total(&self) -> u64 {
        self.lora + self.pixels + self.activations
    }
}

fn cpu_train_bytes(cfg: &ModelConfig, t: &TrainParams, datasets: &[&DatasetParams]) -> TrainBytes {
    let tx = &cfg.text;
    let (h, i) = (tx.hidden_size as u64, tx.intermediate_size as u64);
    let hd = tx.head_dim() as u64;
    let (q, kv) = (
        tx.num_attention_heads as u64 * hd,
        tx.num_key_value_heads as u64 * hd,
    );
    // (in + out) of each LLM linear LoRA may adapt: q, k, v, o, gate, up, down.
    let llm_io = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h);
    let v = &cfg.vision;
    let (c, vi) = (v.hidden_size as u64, v.intermediate_size as u64);
    let vit_io = if t.freeze_vit {
        0
    } else {
        (c + 3 * c) + 2 * c + 2 * (c + vi) + (vi + c)
    };
    let r = t.lora_rank as u64;
    let lora_params = r * (tx.num_hidden_layers as u64 * llm_io + v.depth as u64 * vit_io);
    // Parameter, gradient and two AdamW moments, f32.
    let lora = lora_params * 4 * 4;

    let v_patch = (v.patch_size * v.patch_size) as u64;
    let row_floats = (v.in_channels * v.temporal_patch_size) as u64 * v_patch;
    let merge = (v.spatial_merge_size * v.spatial_merge_size) as u64;
    let (mut images, mut seq) = (0u64, 0u64);
    for d in datasets {
        let scan = scan_dataset(d, v_patch * merge);
        images += scan.images;
        seq = seq.max(scan.longest.min(d.max_length as u64));
    }
    let max_pixels = datasets.iter().map(|d| d.max_pixels).max().unwrap_or(0);
    let pixels = (images * (max_pixels / v_patch) * row_floats * 4).min(PIXEL_CACHE_BYTES as u64);

    let heads = tx.num_attention_heads as u64;
    let per_token =
        SAVED_PER_HIDDEN * h + SAVED_PER_INTERMEDIATE * i + SAVED_PER_HEAD_TOKEN * heads * seq;
    let activations =
        t.per_device_train_batch_size as u64 * tx.num_hidden_layers as u64 * seq * per_token * 4;
    TrainBytes {
        lora,
        pixels,
        activations,
    }
}

/// What the trainer can hold of a dataset stage's rows.
struct DatasetScan {
    /// Images listed (each cached as at most `max_pixels` of pixel rows).
    images: u64,
    /// Tokens of the longest row, bounded from above: byte-level BPE spends at least one
    /// byte per text token, so the line's bytes (plus the system prompt and the template's
    /// special tokens) bound its text, and each image adds at most `max_pixels` ÷
    /// `pixels_per_token` tokens.
    longest: u64,
}

/// Special tokens the chat template adds around a row.
const TEMPLATE_TOKENS: u64 = 32;

/// Scan the dataset stage's files; unreadable files count nothing (the dataset stage
/// reports them).
fn scan_dataset(d: &DatasetParams, pixels_per_token: u64) -> DatasetScan {
    let mut scan = DatasetScan {
        images: 0,
        longest: 0,
    };
    let per_image = d.max_pixels / pixels_per_token.max(1) + 2;
    for path in [&d.dataset, &d.val_dataset].into_iter().flatten() {
        let Ok(text) = std::fs::read_to_string(Path::new(path)) else {
            continue;
        };
        for line in text.lines() {
            let images = match serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|r| r.get("images").cloned())
            {
                Some(Value::Array(a)) => a.len() as u64,
                Some(Value::String(_)) => 1,
                _ => 0,
            };
            scan.images += images;
            let tokens =
                line.len() as u64 + d.system.len() as u64 + TEMPLATE_TOKENS + images * per_image;
            scan.longest = scan.longest.max(tokens);
        }
    }
    scan
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nproc_per_node_defaults_to_one() {
        assert_eq!(nproc_of(&json!({"lora_rank": 8})), 1);
        assert_eq!(nproc_of(&json!({"nproc_per_node": 4})), 4);
        assert_eq!(nproc_of(&json!({"nproc_per_node": 0})), 1);
    }
}
