//! What the export and score stages need to know about the model and a train stage's
//! outputs: the dtype, the base config, which adapter directory a `checkpoint` setting
//! names. Nothing here reads the experiment's types (that glue is in `stages/`).

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use serde_json::Value;

use crate::model::ModelSource;
use crate::model::presets::{preset_config, to_hf_json};

/// The train stage's final adapter directory and its "best checkpoint" pointer file
/// (`train::outputs`).
pub const TRAIN_ADAPTER_DIR: &str = "adapter";
pub const TRAIN_BEST_FILE: &str = "best";

/// `torch_dtype` → Burn dtype and its config.json spelling.
pub fn model_dtype(torch_dtype: &str) -> Result<(DType, &'static str), String> {
    match torch_dtype {
        "float32" | "fp32" => Ok((DType::F32, "float32")),
        "bfloat16" | "bf16" => Ok((DType::BF16, "bfloat16")),
        other => Err(format!(
            "[model] torch_dtype {other:?} is not supported (valid: float32, bfloat16)"
        )),
    }
}

/// The base model's config.json: the file of a `path` model, or the preset rendered in the
/// hub layout.
pub fn base_config(source: &ModelSource) -> Result<Value, String> {
    match source {
        ModelSource::Preset(name) => {
            Ok(to_hf_json(&preset_config(name).map_err(|e| e.to_string())?))
        }
        ModelSource::Path(dir) => {
            let path = dir.join("config.json");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
        }
    }
}

/// The adapter directory of a train stage's output for `checkpoint`: `last` → the final
/// `adapter/`, `best` → the checkpoint the `best` file names.
pub fn train_adapter_dir(train_dir: &Path, checkpoint: &str) -> Result<PathBuf, String> {
    match checkpoint {
        "last" => {
            let dir = train_dir.join(TRAIN_ADAPTER_DIR);
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(format!(
                    "train output {} has no final adapter ({TRAIN_ADAPTER_DIR}/)",
                    train_dir.display()
                ))
            }
        }
        "best" => {
            let file = train_dir.join(TRAIN_BEST_FILE);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e} (did the train stage evaluate?)", file.display()))?;
            // The file names a checkpoint directory; only its last component is used, so a
            // path recorded before the entry was moved into the cache still resolves.
            let name = Path::new(text.trim()).file_name().ok_or_else(|| {
                format!(
                    "{}: names no checkpoint ({:?})",
                    file.display(),
                    text.trim()
                )
            })?;
            let dir = train_dir.join(name);
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(format!(
                    "{} names {}, which is not in the train output (removed by save_total_limit?)",
                    file.display(),
                    dir.display()
                ))
            }
        }
        other => Err(format!("checkpoint {other:?} is not one of last, best")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_resolve_inside_the_train_output() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        assert!(
            train_adapter_dir(t, "last")
                .unwrap_err()
                .contains("no final adapter")
        );
        std::fs::create_dir_all(t.join("adapter")).unwrap();
        std::fs::create_dir_all(t.join("checkpoint-4")).unwrap();
        assert_eq!(train_adapter_dir(t, "last").unwrap(), t.join("adapter"));
        assert!(
            train_adapter_dir(t, "best")
                .unwrap_err()
                .contains("did the train stage evaluate")
        );
        std::fs::write(t.join("best"), "/old/place/runs/tmp/checkpoint-4\n").unwrap();
        assert_eq!(
            train_adapter_dir(t, "best").unwrap(),
            t.join("checkpoint-4")
        );
        std::fs::write(t.join("best"), "checkpoint-9\n").unwrap();
        assert!(
            train_adapter_dir(t, "best")
                .unwrap_err()
                .contains("save_total_limit")
        );
        assert!(train_adapter_dir(t, "first").is_err());
    }

    #[test]
    fn model_source_resolution() {
        let cfg = base_config(&ModelSource::Preset("tiny".into())).unwrap();
        assert_eq!(cfg["model_type"], "qwen2_5_vl");
        assert_eq!(model_dtype("bfloat16").unwrap().1, "bfloat16");
        assert!(model_dtype("float16").is_err());
    }
}
