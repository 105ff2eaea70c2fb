//! What the stages read off `[model]` beyond the model code's own types.

use std::path::{Path, PathBuf};

use crate::experiment::schema::ModelSpec;

/// What `base_model_name_or_path` records: the directory, or the preset name.
pub(crate) fn base_model_name(model: &ModelSpec) -> String {
    model
        .path
        .clone()
        .or_else(|| model.preset.clone())
        .unwrap_or_default()
}

/// `config.json` and the safetensors files (+ index) of a model directory.
pub(crate) fn model_weight_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = vec![dir.join("config.json")];
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("[model] path {}: {e}", dir.display()))?;
    let mut weights: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.ends_with(".safetensors") || name == "model.safetensors.index.json"
        })
        .collect();
    weights.sort();
    files.extend(weights);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_model_name_is_the_path_else_the_preset() {
        let spec = |preset: Option<&str>, path: Option<&str>| ModelSpec {
            preset: preset.map(str::to_string),
            path: path.map(str::to_string),
            model: None,
            torch_dtype: "float32".into(),
            device: "cpu".into(),
        };
        assert_eq!(base_model_name(&spec(None, Some("/m"))), "/m");
        assert_eq!(base_model_name(&spec(Some("tiny"), None)), "tiny");
    }
}
