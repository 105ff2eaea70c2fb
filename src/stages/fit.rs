//! Plan-time checks that a model stage fits its model and its device, before any stage
//! runs: LoRA target modules that exist, a rank no larger than the layers it adapts, and a
//! memory estimate the device can hold. Each failure names the experiment key to change.
//!
//! The memory estimate is a floor, never a forecast, so it cannot reject a run that would
//! fit: it counts only what must be resident at once — the backbone weights in the dtype
//! the stage computes in, every trainable parameter four times in float32 (value,
//! gradient, AdamW's two moments), the score stage's confusion matrix — and leaves out
//! activations, allocator slack, data and the framework. A run it accepts can still run
//! out of memory. The device offers the CPU's `MemAvailable`, or a GPU's total memory.

use burn::tensor::DType;

use crate::backend::device_memory;
use crate::experiment::schema::ModelSpec;
use crate::export::source::model_dtype;
use crate::graph::StageError;
use crate::model::footprint::{LinearShape, backbone_params, linear_shapes};
use crate::model::lora::{TargetSelector, name_patterns, select_targets};
use crate::model::{ModelConfig, WeightsSource, config_of};
use crate::safetensors_io::read_header;
use crate::store::gc::human_bytes;

fn param(key: String, message: String) -> StageError {
    StageError::Param { key, message }
}

/// The model's configuration and its backbone weights as a stage on `device_kind` holds
/// them: in float32 on the CPU when `cpu_f32` (training and scoring compute in it there),
/// else in the model's dtype.
pub(crate) fn model_weights(
    model: &ModelSpec,
    device_kind: &str,
    cpu_f32: bool,
) -> Result<(ModelConfig, Need), StageError> {
    let cfg = model_config(model.preset.as_deref(), model.path.as_deref())?;
    let dtype = model_dtype(&model.torch_dtype)
        .map_err(StageError::Input)?
        .0;
    let dtype = if cpu_f32 && device_kind == "cpu" {
        DType::F32
    } else {
        dtype
    };
    let key = if model.path.is_some() {
        "model.path"
    } else {
        "model.preset"
    };
    let need = Need {
        key: key.into(),
        what: "backbone weights",
        bytes: backbone_params(&cfg) * bytes(dtype),
    };
    Ok((cfg, need))
}

/// A PEFT adapter directory's weights must be a valid safetensors file (checked from its
/// header before anything runs).
pub(crate) fn check_adapter_file(dir: &str) -> Result<(), StageError> {
    let weights = std::path::Path::new(dir).join(crate::adapter::peft::WEIGHTS_FILE);
    read_header(&weights)
        .map(|_| ())
        .map_err(|e| StageError::Input(e.to_string()))
}

/// The model's configuration (a preset, or `[model] path`'s config.json).
pub(crate) fn model_config(
    preset: Option<&str>,
    path: Option<&str>,
) -> Result<ModelConfig, StageError> {
    let source = match (path, preset) {
        (Some(p), _) => WeightsSource::Dir(std::path::Path::new(p)),
        (None, Some(name)) => WeightsSource::Preset(name),
        (None, None) => return Err(StageError::Input("[model] needs `preset` or `path`".into())),
    };
    let key = if path.is_some() {
        "model.path"
    } else {
        "model.preset"
    };
    config_of(source).map_err(|e| param(key.into(), e.to_string()))
}

/// The layers `targets` selects, each at least `rank` wide in both dimensions.
pub(crate) fn check_lora(
    cfg: &ModelConfig,
    targets: &TargetSelector,
    rank: usize,
    table: &str,
) -> Result<Vec<LinearShape>, StageError> {
    let shapes = linear_shapes(cfg);
    let names: Vec<String> = shapes.iter().map(|l| l.name.clone()).collect();
    let picked = select_targets(&names, targets).map_err(|_| {
        let what = match targets {
            TargetSelector::Regex(re) => format!("the regex {re:?} matches no linear layer"),
            TargetSelector::Names(list) => {
                let matches = |n: &str, w: &str| n == w || n.ends_with(&format!(".{w}"));
                let bad: Vec<&str> = list
                    .iter()
                    .filter(|w| !names.iter().any(|n| matches(n, w)))
                    .map(String::as_str)
                    .collect();
                format!("{} match(es) no linear layer", bad.join(", "))
            }
            TargetSelector::AllLinear { .. } => {
                "all-linear selects nothing: freeze_vit, freeze_aligner and freeze_llm freeze every part".into()
            }
        };
        param(
            format!("{table}.target_modules"),
            format!(
                "{what}; the model's linear layers: {}",
                name_patterns(&names).join(", ")
            ),
        )
    })?;
    let picked: Vec<LinearShape> = shapes
        .into_iter()
        .filter(|l| picked.contains(&l.name))
        .collect();
    if let Some(narrow) = picked.iter().min_by_key(|l| l.d_in.min(l.d_out))
        && rank > narrow.d_in.min(narrow.d_out)
    {
        return Err(param(
            format!("{table}.lora_rank"),
            format!(
                "lora_rank {rank} is larger than the smallest targeted layer ({}, {} → {}); use at most {}",
                narrow.name,
                narrow.d_in,
                narrow.d_out,
                narrow.d_in.min(narrow.d_out)
            ),
        ));
    }
    Ok(picked)
}

/// Bytes per element of a compute dtype.
fn bytes(dtype: DType) -> u64 {
    match dtype {
        DType::BF16 | DType::F16 => 2,
        _ => 4,
    }
}

/// One part of a memory estimate: the experiment key that drives it, what it is, bytes.
pub(crate) struct Need {
    pub key: String,
    pub what: &'static str,
    pub bytes: u64,
}

/// Trainable float32 parameters, each held four times (value, gradient, two moments).
pub(crate) fn trainable_need(params: u64, key: String, what: &'static str) -> Need {
    Need {
        key,
        what,
        bytes: params * 16,
    }
}

/// LoRA A and B of every picked layer.
pub(crate) fn lora_params(picked: &[LinearShape], rank: usize) -> u64 {
    picked
        .iter()
        .map(|l| (rank * (l.d_in + l.d_out)) as u64)
        .sum()
}

/// Fail when the estimate exceeds what a device of `device_kind` offers (skipped when
/// that is unknown).
pub(crate) fn check_memory(
    stage: &str,
    device_kind: &str,
    needs: &[Need],
) -> Result<(), StageError> {
    let Some((have, source)) = device_memory(device_kind) else {
        return Ok(());
    };
    let total: u64 = needs.iter().map(|n| n.bytes).sum();
    if total <= have {
        return Ok(());
    }
    let biggest = needs.iter().max_by_key(|n| n.bytes).expect("a need");
    let parts: Vec<String> = needs
        .iter()
        .filter(|n| n.bytes > 0)
        .map(|n| format!("{} {}", n.what, human_bytes(n.bytes)))
        .collect();
    Err(param(
        biggest.key.clone(),
        format!(
            "stage `{stage}` needs at least {} on the {device_kind} ({}) but it has {} ({source}); \
             reduce what `{}` sets or run on a larger device",
            human_bytes(total),
            parts.join(", "),
            human_bytes(have),
            biggest.key
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset_config;

    #[test]
    fn ranks_and_targets_are_checked_against_the_model() {
        let cfg = preset_config("tiny").unwrap();
        let all = TargetSelector::AllLinear {
            vit: true,
            aligner: true,
            llm: true,
        };
        let picked = check_lora(&cfg, &all, 64, "stages.train").unwrap();
        assert_eq!(picked.len(), 4 * 5 + 2 + 4 * 7);
        let e = check_lora(&cfg, &all, 100_000, "stages.train").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("stages.train.lora_rank: lora_rank 100000 is larger"),
            "{e}"
        );
        assert!(e.contains("use at most 64"), "{e}");
        let none = TargetSelector::Regex("nothing.*".into());
        let e = check_lora(&cfg, &none, 8, "stages.t")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "stages.t.target_modules: the regex \"nothing.*\" matches no linear layer"
            ),
            "{e}"
        );
        assert!(!e.contains("Regex("), "{e}");
        let names = TargetSelector::Names(vec!["q_proj".into(), "qq_proj".into()]);
        let e = check_lora(&cfg, &names, 8, "stages.t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("qq_proj match(es) no linear layer"), "{e}");
    }

    #[test]
    fn an_estimate_above_the_device_names_the_biggest_part() {
        let needs = [
            Need {
                key: "model".into(),
                what: "backbone weights",
                bytes: 1 << 20,
            },
            Need {
                key: "task.num_labels".into(),
                what: "confusion matrix",
                bytes: u64::MAX / 4,
            },
        ];
        let e = check_memory("score", "cpu", &needs)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("task.num_labels: stage `score` needs at least"),
            "{e}"
        );
        assert!(e.contains("MemAvailable"), "{e}");
        assert!(check_memory("score", "cpu", &needs[..1]).is_ok());
    }
}
