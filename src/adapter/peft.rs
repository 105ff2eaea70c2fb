//! PEFT LoRA adapter directories: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! What we write matches `PeftModel.save_pretrained` of PEFT 0.17 for a `LoraConfig(
//! task_type="SEQ_CLS", modules_to_save=["score"])` on transformers ≥ 4.52 (checked by
//! `tools/fixtures/gen_interop.py`): sorted config keys, f32 tensors, head saved as
//! `base_model.model.score.weight`. What we read is any such directory, including
//! ms-swift checkpoints (regex `target_modules`, extra `modules_to_save` names) and the
//! pre-4.52 key layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use serde_json::{Map, Value, json};

use super::AdapterError;
use super::keys::{self, AdapterKey, Factor, KeyLayout, KeyProblem};
use super::targets::{TargetModules, exact_regex};
use crate::safetensors_io::{read_tensors, to_f32, write_tensors};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// ms-swift's run settings beside an adapter.
pub const ARGS_FILE: &str = "args.json";

/// The LoRA hyper-parameters of an adapter (the fields of adapter_config.json we use).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: String,
    /// Written beside as `args.json` (the run's settings in ms-swift's layout, which
    /// `swift infer --adapters DIR` reads); not part of adapter_config.json.
    pub args_json: Option<Value>,
}

impl AdapterConfig {
    /// Config for LoRA on exactly `modules` (current-layout names), head in modules_to_save.
    pub fn for_modules(
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        use_rslora: bool,
        modules: &[String],
        base_model_name_or_path: &str,
    ) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout,
            use_rslora,
            target_modules: TargetModules::Regex(exact_regex(modules)),
            modules_to_save: vec![keys::SCORE.to_string()],
            base_model_name_or_path: base_model_name_or_path.to_string(),
            args_json: None,
        }
    }

    /// LoRA scaling applied to `B·A` (PEFT `LoraLayer.update_layer`): alpha/r, or
    /// alpha/√r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// adapter_config.json as PEFT 0.17 writes it for a SEQ_CLS LoRA (keys sorted).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("alpha_pattern".into(), json!({}));
        m.insert("auto_mapping".into(), Value::Null);
        m.insert(
            "base_model_name_or_path".into(),
            json!(self.base_model_name_or_path),
        );
        m.insert("bias".into(), json!("none"));
        m.insert("fan_in_fan_out".into(), json!(false));
        m.insert("inference_mode".into(), json!(true));
        m.insert("init_lora_weights".into(), json!(true));
        m.insert("layers_pattern".into(), Value::Null);
        m.insert("layers_to_transform".into(), Value::Null);
        m.insert("lora_alpha".into(), number(self.lora_alpha));
        m.insert("lora_bias".into(), json!(false));
        m.insert("lora_dropout".into(), number(self.lora_dropout));
        m.insert("modules_to_save".into(), json!(self.modules_to_save));
        m.insert("peft_type".into(), json!("LORA"));
        m.insert("r".into(), json!(self.r));
        m.insert("rank_pattern".into(), json!({}));
        m.insert("revision".into(), Value::Null);
        m.insert("target_modules".into(), self.target_modules.to_json());
        m.insert("task_type".into(), json!("SEQ_CLS"));
        m.insert("use_dora".into(), json!(false));
        m.insert("use_rslora".into(), json!(self.use_rslora));
        Value::Object(m)
    }

    /// Parse adapter_config.json, rejecting LoRA variants we do not implement.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, AdapterError> {
        let err = |field: &'static str, message: String| AdapterError::Config {
            path: path.to_path_buf(),
            field,
            message,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| err("(top level)", "expected a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        if let Some(t) = get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(err(
                "peft_type",
                format!("{t:?} is not supported; only \"LORA\" adapters"),
            ));
        }
        let truthy = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
        for (field, what) in [
            ("use_dora", "DoRA"),
            ("fan_in_fan_out", "fan_in_fan_out"),
            ("lora_bias", "LoRA biases"),
        ] {
            if truthy(field) {
                return Err(err(field, format!("{what} is not supported")));
            }
        }
        if let Some(b) = get("bias").and_then(Value::as_str)
            && b != "none"
        {
            return Err(err(
                "bias",
                format!("{b:?} is not supported; only \"none\""),
            ));
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if get(field)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(err(
                    field,
                    "per-module ranks/alphas are not supported".into(),
                ));
            }
        }
        if get("layers_to_transform").is_some() {
            return Err(err(
                "layers_to_transform",
                "is not supported (select layers with target_modules)".into(),
            ));
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| err("r", "missing or not a positive integer".into()))?
            as usize;
        // PEFT LoraConfig defaults: lora_alpha 8, lora_dropout 0.
        let lora_alpha = match get("lora_alpha") {
            None => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("lora_alpha", format!("{v} is not a number")))?,
        };
        let lora_dropout = match get("lora_dropout") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("lora_dropout", format!("{v} is not a number")))?,
        };
        let target_modules = TargetModules::from_json(
            get("target_modules").ok_or_else(|| err("target_modules", "missing".into()))?,
        )
        .map_err(|m| err("target_modules", m))?;
        target_modules
            .matcher()
            .map_err(|m| err("target_modules", m))?;
        let modules_to_save = match get("modules_to_save") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(v) => return Err(err("modules_to_save", format!("{v} is not a list"))),
        };
        Ok(Self {
            r,
            lora_alpha,
            lora_dropout,
            use_rslora: truthy("use_rslora"),
            target_modules,
            modules_to_save,
            base_model_name_or_path: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            args_json: None,
        })
    }
}

/// An integral float as a JSON integer (PEFT writes `"lora_alpha": 32`).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The LoRA factors of one module, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// Current-layout module name (`model.language_model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// `[r, in]`.
    pub a: TensorData,
    /// `[out, r]`.
    pub b: TensorData,
}

/// A loaded adapter directory.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// In natural module order (layer indices numerically).
    pub modules: Vec<LoraPair>,
    /// `[num_labels, hidden]` f32, when the head was saved (modules_to_save).
    pub score: Option<TensorData>,
    /// The key layout the file used.
    pub layout: KeyLayout,
}

/// Write an adapter directory (created if missing): config + f32 tensors, ≥ 4.52 keys.
pub fn write_peft_adapter(
    dir: &Path,
    config: &AdapterConfig,
    modules: &[LoraPair],
    score: Option<&TensorData>,
) -> Result<(), AdapterError> {
    let mut tensors = Vec::with_capacity(modules.len() * 2 + 1);
    for p in modules {
        tensors.push((keys::lora_key(&p.module, Factor::A), p.a.clone()));
        tensors.push((keys::lora_key(&p.module, Factor::B), p.b.clone()));
    }
    if let Some(s) = score {
        tensors.push((keys::score_key(), s.clone()));
    }
    write_peft_state(dir, config, &tensors)
}

/// Write an adapter directory from a PEFT state dict (keys already in PEFT form, e.g.
/// from [`keys::lora_key`]); tensors are stored as f32, except bf16 ones, which stay bf16
/// (a bf16 run's head, as ms-swift saves it). The directory is created.
pub fn write_peft_state(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &[(String, TensorData)],
) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tensors: Vec<(String, TensorData)> = tensors
        .iter()
        .map(|(k, t)| match t.dtype {
            DType::BF16 => (k.clone(), t.clone()),
            _ => (k.clone(), to_f32(t)),
        })
        .collect();
    write_tensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    if let Some(args) = &config.args_json {
        let path = dir.join(ARGS_FILE);
        let text = serde_json::to_string_pretty(args).expect("JSON values serialize");
        std::fs::write(&path, text + "\n").map_err(|source| AdapterError::Io { path, source })?;
    }
    let cfg_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_json()).expect("JSON values serialize");
    std::fs::write(&cfg_path, text + "\n").map_err(|source| AdapterError::Io {
        path: cfg_path,
        source,
    })
}

/// Read an adapter directory as its config and raw PEFT state dict (keys as stored,
/// sorted, any dtype). [`read_peft_adapter`] interprets the keys.
pub fn read_peft_state(
    dir: &Path,
) -> Result<(AdapterConfig, Vec<(String, TensorData)>), AdapterError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(AdapterError::NotAnAdapter {
            path: dir.to_path_buf(),
            missing: CONFIG_FILE,
        });
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| AdapterError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: cfg_path.clone(),
        source,
    })?;
    let config = AdapterConfig::from_json(&value, &cfg_path)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        if dir.join("adapter_model.bin").is_file() {
            return Err(AdapterError::Mismatch {
                path: dir.join("adapter_model.bin"),
                message: "PyTorch pickle adapters are not supported; re-save with safe_serialization=True".into(),
            });
        }
        return Err(AdapterError::NotAnAdapter {
            path: dir.to_path_buf(),
            missing: WEIGHTS_FILE,
        });
    }
    Ok((config, read_tensors(&weights)?))
}

/// Read an adapter directory: parse the config, map keys of either layout to current
/// module names, pair A with B, check ranks against `r`. Tensors come back as f32.
pub fn read_peft_adapter(dir: &Path) -> Result<PeftAdapter, AdapterError> {
    let (config, state) = read_peft_state(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    let tensor_err = |key: &str, message: String| AdapterError::Tensor {
        path: weights.clone(),
        key: key.to_string(),
        message,
    };

    let mut halves: BTreeMap<String, (Option<TensorData>, Option<TensorData>)> = BTreeMap::new();
    let mut score = None;
    let mut layout = None;
    for (key, data) in state {
        match keys::parse_adapter_key(&key) {
            Ok(AdapterKey::ScoreWeight) => {
                if data.shape.len() != 2 {
                    return Err(tensor_err(
                        &key,
                        format!("expected [num_labels, hidden], found {:?}", data.shape),
                    ));
                }
                score = Some(to_f32(&data));
            }
            Ok(AdapterKey::Lora {
                module,
                factor,
                layout: l,
            }) => {
                if *layout.get_or_insert(l) != l {
                    return Err(tensor_err(
                        &key,
                        "the file mixes the ≥ 4.52 and the older key layout".into(),
                    ));
                }
                if data.shape.len() != 2 {
                    return Err(tensor_err(
                        &key,
                        format!("expected a matrix, found shape {:?}", data.shape),
                    ));
                }
                let (rank, what) = match factor {
                    Factor::A => (data.shape[0], "lora_A [r, in]"),
                    Factor::B => (data.shape[1], "lora_B [out, r]"),
                };
                if rank != config.r {
                    return Err(tensor_err(
                        &key,
                        format!(
                            "{what} has shape {:?} but adapter_config.json says r = {}",
                            data.shape, config.r
                        ),
                    ));
                }
                let slot = halves.entry(module).or_default();
                let half = match factor {
                    Factor::A => &mut slot.0,
                    Factor::B => &mut slot.1,
                };
                *half = Some(to_f32(&data));
            }
            Err(problem) => {
                let message = match problem {
                    KeyProblem::NotPeft => format!("not a PEFT key (expected the prefix `{}`)", keys::PEFT_PREFIX),
                    KeyProblem::Unsupported(what) => format!("{what} is not supported"),
                    KeyProblem::UnknownModule => {
                        "names no Qwen2.5-VL module (expected model.language_model.*, model.visual.*, or the older model.*, visual.*)".into()
                    }
                };
                return Err(tensor_err(&key, message));
            }
        }
    }
    let mut modules = Vec::with_capacity(halves.len());
    for (module, pair) in halves {
        match pair {
            (Some(a), Some(b)) => modules.push(LoraPair { module, a, b }),
            (a, _) => {
                let missing = if a.is_none() { Factor::A } else { Factor::B };
                return Err(tensor_err(
                    &keys::lora_key(&module, missing),
                    "missing (the other LoRA factor is present)".into(),
                ));
            }
        }
    }
    modules.sort_by_key(|p| natural_key(&p.module));
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        modules,
        score,
        layout: layout.unwrap_or(KeyLayout::Current),
    })
}

/// Sort key that orders `layers.10` after `layers.9`.
pub fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|part| {
            part.parse::<u64>()
                .map_or((u64::MAX, part.to_string()), |n| (n, String::new()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(module: &str, r: usize, inp: usize, out: usize, seed: f32) -> LoraPair {
        let a: Vec<f32> = (0..r * inp).map(|i| seed + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..out * r).map(|i| seed - i as f32 * 0.02).collect();
        LoraPair {
            module: module.into(),
            a: TensorData::new(a, [r, inp]),
            b: TensorData::new(b, [out, r]),
        }
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let modules = vec![
            pair(
                "model.language_model.layers.0.self_attn.q_proj",
                2,
                8,
                8,
                0.1,
            ),
            pair(
                "model.language_model.layers.10.mlp.down_proj",
                2,
                16,
                8,
                0.2,
            ),
            pair("model.language_model.layers.2.mlp.down_proj", 2, 16, 8, 0.3),
            pair("model.visual.blocks.0.attn.qkv", 2, 4, 12, 0.4),
        ];
        let names: Vec<String> = modules.iter().map(|p| p.module.clone()).collect();
        let cfg = AdapterConfig::for_modules(2, 16.0, 0.05, false, &names, "/models/x");
        let score = TensorData::new(vec![0.5f32; 3 * 8], [3, 8]);
        write_peft_adapter(dir.path(), &cfg, &modules, Some(&score)).unwrap();

        let back = read_peft_adapter(dir.path()).unwrap();
        assert_eq!(back.config, cfg);
        assert_eq!(back.layout, KeyLayout::Current);
        assert_eq!(back.score, Some(score));
        let order: Vec<&str> = back.modules.iter().map(|p| p.module.as_str()).collect();
        assert_eq!(
            order,
            [
                "model.language_model.layers.0.self_attn.q_proj",
                "model.language_model.layers.2.mlp.down_proj",
                "model.language_model.layers.10.mlp.down_proj",
                "model.visual.blocks.0.attn.qkv"
            ]
        );
        let q = back
            .modules
            .iter()
            .find(|p| p.module.ends_with("q_proj"))
            .unwrap();
        assert_eq!(*q, modules[0]);

        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(json["lora_alpha"], json!(16));
        assert_eq!(json["task_type"], "SEQ_CLS");
        assert_eq!(json["modules_to_save"], json!(["score"]));
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "PEFT writes sorted keys");
    }

    #[test]
    fn reads_the_older_layout_and_maps_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = TensorData::new(vec![1.0f32; 2 * 4], [2, 4]);
        let b = TensorData::new(vec![2.0f32; 4 * 2], [4, 2]);
        write_tensors(
            &dir.path().join(WEIGHTS_FILE),
            &[
                (
                    "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight".into(),
                    a.clone(),
                ),
                (
                    "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight".into(),
                    b.clone(),
                ),
                (
                    "base_model.model.visual.blocks.0.attn.proj.lora_A.weight".into(),
                    a.clone(),
                ),
                (
                    "base_model.model.visual.blocks.0.attn.proj.lora_B.weight".into(),
                    b.clone(),
                ),
            ],
        )
        .unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["k_proj", "attn.proj"], "modules_to_save": ["score", "v_head", "classifier"]}"#,
        )
        .unwrap();
        let ad = read_peft_adapter(dir.path()).unwrap();
        assert_eq!(ad.layout, KeyLayout::Legacy);
        assert_eq!(
            ad.modules[0].module,
            "model.language_model.layers.1.self_attn.k_proj"
        );
        assert_eq!(ad.modules[1].module, "model.visual.blocks.0.attn.proj");
        assert_eq!(ad.score, None);
        assert_eq!(ad.config.scaling(), 2.0);
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type": "LORA", "r": 4, "target_modules": "q_proj"}"#,
        )
        .unwrap();
        // A with rank 2 where the config says 4.
        write_tensors(
            &dir.path().join(WEIGHTS_FILE),
            &[(
                "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
                    .into(),
                TensorData::new(vec![0f32; 8], [2, 4]),
            )],
        )
        .unwrap();
        let e = read_peft_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("adapter_model.safetensors")
                && e.contains("q_proj.lora_A")
                && e.contains("r = 4"),
            "{e}"
        );

        // Unpaired factor.
        write_tensors(
            &dir.path().join(WEIGHTS_FILE),
            &[(
                "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
                    .into(),
                TensorData::new(vec![0f32; 16], [4, 4]),
            )],
        )
        .unwrap();
        let e = read_peft_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("q_proj.lora_B.weight") && e.contains("missing"),
            "{e}"
        );

        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type": "LORA", "r": 4, "target_modules": "q_proj", "use_dora": true}"#,
        )
        .unwrap();
        let e = read_peft_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("use_dora") && e.contains("adapter_config.json"),
            "{e}"
        );

        let empty = tempfile::tempdir().unwrap();
        let e = read_peft_adapter(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not a PEFT adapter directory"), "{e}");
    }
}
