//! PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`), as
//! PEFT 0.17 `save_pretrained` writes them for a `SEQ_CLS` model with `modules_to_save`.
//! Shared by the train stage (checkpoints, final `adapter/`) and the export stage.
//!
//! Key names (transformers ≥ 4.52 module names, `<m>` a Hugging Face module path such as
//! `model.language_model.layers.0.self_attn.q_proj` or `model.visual.blocks.0.attn.qkv`):
//! - `base_model.model.<m>.lora_A.weight` `[r, in]`, `base_model.model.<m>.lora_B.weight`
//!   `[out, r]` (f32; PEFT strips the adapter name `default`);
//! - `base_model.model.score.weight` `[num_labels, hidden]` (the modules_to_save copy).

use crate::train::safetensors_io;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Key of the classification head in the adapter file.
pub const SCORE_KEY: &str = "base_model.model.score.weight";
const PREFIX: &str = "base_model.model.";

/// `base_model.model.<module>.lora_A.weight`.
pub fn lora_a_key(module: &str) -> String {
    format!("{PREFIX}{module}.lora_A.weight")
}

/// `base_model.model.<module>.lora_B.weight`.
pub fn lora_b_key(module: &str) -> String {
    format!("{PREFIX}{module}.lora_B.weight")
}

/// Split an adapter key into (module, `A`|`B`); None for other keys (e.g. the score head).
pub fn parse_lora_key(key: &str) -> Option<(&str, char)> {
    let rest = key.strip_prefix(PREFIX)?;
    if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        Some((m, 'A'))
    } else {
        rest.strip_suffix(".lora_B.weight").map(|m| (m, 'B'))
    }
}

/// `target_modules` as PEFT accepts it: a regex (`re.fullmatch` on module names) or names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Regex(String),
    Names(Vec<String>),
}

/// The fields of `adapter_config.json` we set; the rest are PEFT's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: Option<String>,
}

impl AdapterConfig {
    /// The JSON PEFT writes (all keys of `LoraConfig`, sorted as PEFT sorts them).
    pub fn to_json(&self) -> Value {
        // lora_alpha is an int in PEFT configs when integral.
        let alpha = if self.lora_alpha.fract() == 0.0 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        let v = json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "corda_config": null,
            "eva_config": null,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": self.modules_to_save,
            "peft_type": "LORA",
            "qalora_group_size": 16,
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "target_parameters": null,
            "task_type": "SEQ_CLS",
            "trainable_token_indices": null,
            "use_dora": false,
            "use_qalora": false,
            "use_rslora": self.use_rslora,
        });
        v
    }

    /// Parse the fields we use from an `adapter_config.json` (PEFT or ms-swift written).
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let get = |k: &str| v.get(k).ok_or_else(|| format!("missing `{k}`"));
        if let Some(t) = v.get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(format!(
                "peft_type is {t:?}, only LORA adapters are supported"
            ));
        }
        Ok(Self {
            r: get("r")?.as_u64().ok_or("`r` is not an integer")? as usize,
            lora_alpha: get("lora_alpha")?
                .as_f64()
                .ok_or("`lora_alpha` is not a number")?,
            lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            target_modules: serde_json::from_value(get("target_modules")?.clone())
                .map_err(|e| format!("`target_modules`: {e}"))?,
            modules_to_save: v
                .get("modules_to_save")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }
}

/// A compact regex for the wrapped modules (layer indices generalised to `\d+`) when it
/// selects exactly `wrapped` among `all` linear module names; otherwise the full names.
pub fn target_modules_for(wrapped: &[String], all: &[String]) -> TargetModules {
    let generalise = |name: &str| {
        name.split('.')
            .map(|part| {
                if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    r"\d+".to_string()
                } else {
                    regex::escape(part)
                }
            })
            .collect::<Vec<_>>()
            .join(r"\.")
    };
    let patterns: BTreeSet<String> = wrapped.iter().map(|n| generalise(n)).collect();
    let re = format!("^({})$", patterns.into_iter().collect::<Vec<_>>().join("|"));
    if let Ok(compiled) = regex::Regex::new(&re) {
        let want: BTreeSet<&String> = wrapped.iter().collect();
        let got: BTreeSet<&String> = all.iter().filter(|n| compiled.is_match(n)).collect();
        if want == got {
            return TargetModules::Regex(re);
        }
    }
    TargetModules::Names(wrapped.to_vec())
}

/// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
pub fn write_adapter(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &[(String, TensorData)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&config.to_json()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(CONFIG_FILE), json)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_io::write(&dir.join(WEIGHTS_FILE), tensors, Some(meta))
}

/// Read an adapter directory. Keys in the older layout (`base_model.model.model.layers.*`,
/// `base_model.model.visual.*`) are mapped to the current one, as PEFT ≥ 0.16 does on load.
pub fn read_adapter(dir: &Path) -> Result<(AdapterConfig, Vec<(String, TensorData)>), String> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let config =
        AdapterConfig::from_json(&json).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let tensors = safetensors_io::read(&dir.join(WEIGHTS_FILE)).map_err(|e| e.to_string())?;
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| (modernise_key(&k), v.convert::<f32>()))
        .collect();
    Ok((config, tensors))
}

/// transformers < 4.52 names → current names.
fn modernise_key(key: &str) -> String {
    const OLD_LM: &str = "base_model.model.model.layers.";
    const OLD_VIT: &str = "base_model.model.visual.";
    if let Some(rest) = key.strip_prefix(OLD_LM) {
        format!("base_model.model.model.language_model.layers.{rest}")
    } else if let Some(rest) = key.strip_prefix(OLD_VIT) {
        format!("base_model.model.model.visual.{rest}")
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let m = "model.language_model.layers.3.self_attn.q_proj";
        assert_eq!(
            lora_a_key(m),
            "base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(parse_lora_key(&lora_b_key(m)), Some((m, 'B')));
        assert_eq!(parse_lora_key(SCORE_KEY), None);
        assert_eq!(
            modernise_key("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"),
            "base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight"
        );
        assert_eq!(
            modernise_key("base_model.model.visual.blocks.1.attn.qkv.lora_B.weight"),
            "base_model.model.model.visual.blocks.1.attn.qkv.lora_B.weight"
        );
    }

    #[test]
    fn target_regex_only_when_exact() {
        let all: Vec<String> = (0..2)
            .flat_map(|i| {
                [
                    format!("model.language_model.layers.{i}.self_attn.q_proj"),
                    format!("model.language_model.layers.{i}.mlp.up_proj"),
                ]
            })
            .collect();
        let wrapped: Vec<String> = all
            .iter()
            .filter(|n| n.ends_with("q_proj"))
            .cloned()
            .collect();
        let TargetModules::Regex(re) = target_modules_for(&wrapped, &all) else {
            panic!("expected a regex");
        };
        assert_eq!(
            re,
            r"^(model\.language_model\.layers\.\d+\.self_attn\.q_proj)$"
        );
        // Only layer 0: the generalised regex would also take layer 1 → full names.
        let one = vec![all[0].clone()];
        assert_eq!(
            target_modules_for(&one, &all),
            TargetModules::Names(one.clone())
        );
    }

    #[test]
    fn config_json_round_trip() {
        let c = AdapterConfig {
            r: 8,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            use_rslora: false,
            target_modules: TargetModules::Names(vec!["q_proj".into()]),
            modules_to_save: vec!["score".into()],
            base_model_name_or_path: None,
        };
        let j = c.to_json();
        assert_eq!(j["lora_alpha"], json!(32));
        assert_eq!(j["task_type"], "SEQ_CLS");
        assert_eq!(AdapterConfig::from_json(&j).unwrap(), c);
    }
}
