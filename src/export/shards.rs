//! Weights of a merged checkpoint: one `model.safetensors`, or shards plus
//! `model.safetensors.index.json` when the total exceeds the shard size — the layout of
//! transformers' `save_pretrained(max_shard_size=...)` (`model-00001-of-00003.safetensors`,
//! index `{"metadata": {"total_size": bytes}, "weight_map": {key: file}}`).

use std::path::Path;

use burn::tensor::TensorData;
use serde_json::json;

use super::ExportError;
use crate::safetensors_io::write_tensors;

/// transformers' default `max_shard_size` ("5GB" = 5·10⁹ bytes).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Write `tensors` (in the given order) into `dir`; returns the file names written.
/// Shards are filled greedily in order; a tensor larger than the limit gets a shard alone.
pub fn write_sharded(
    dir: &Path,
    tensors: Vec<(String, TensorData)>,
    max_shard_bytes: u64,
) -> Result<Vec<String>, ExportError> {
    let size = |t: &TensorData| t.as_bytes().len() as u64;
    let total: u64 = tensors.iter().map(|(_, t)| size(t)).sum();
    if total <= max_shard_bytes {
        write_tensors(&dir.join(SINGLE_FILE), &tensors)?;
        return Ok(vec![SINGLE_FILE.to_string()]);
    }
    let mut shards: Vec<Vec<(String, TensorData)>> = vec![Vec::new()];
    let mut current = 0u64;
    for (key, t) in tensors {
        let s = size(&t);
        if current > 0 && current + s > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += s;
        shards
            .last_mut()
            .expect("at least one shard")
            .push((key, t));
    }
    let n = shards.len();
    let mut files = Vec::with_capacity(n + 1);
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        for (key, _) in &shard {
            weight_map.insert(key.clone(), json!(name));
        }
        write_tensors(&dir.join(&name), &shard)?;
        files.push(name);
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join(INDEX_FILE);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&index).expect("JSON values serialize") + "\n",
    )
    .map_err(|source| ExportError::Io { path, source })?;
    files.push(INDEX_FILE.to_string());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors_io::read_tensors;

    fn tensors() -> Vec<(String, TensorData)> {
        // 40, 40, 100, 8 bytes.
        vec![
            ("a".into(), TensorData::new(vec![1.0f32; 10], [10])),
            ("b".into(), TensorData::new(vec![2.0f32; 10], [2, 5])),
            ("c".into(), TensorData::new(vec![3.0f32; 25], [25])),
            ("d".into(), TensorData::new(vec![4.0f32; 2], [2])),
        ]
    }

    #[test]
    fn small_models_get_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_sharded(dir.path(), tensors(), 1000).unwrap();
        assert_eq!(files, [SINGLE_FILE]);
        assert_eq!(
            read_tensors(&dir.path().join(SINGLE_FILE)).unwrap().len(),
            4
        );
        assert!(!dir.path().join(INDEX_FILE).exists());
    }

    #[test]
    fn large_models_get_shards_and_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_sharded(dir.path(), tensors(), 90).unwrap();
        // a+b = 80 fit; c (100) exceeds the limit alone; d starts a new shard after c.
        assert_eq!(
            files,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors",
                INDEX_FILE
            ]
        );
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], 188);
        assert_eq!(index["weight_map"]["b"], "model-00001-of-00003.safetensors");
        assert_eq!(index["weight_map"]["c"], "model-00002-of-00003.safetensors");
        assert_eq!(index["weight_map"]["d"], "model-00003-of-00003.safetensors");
        let back = read_tensors(&dir.path().join("model-00002-of-00003.safetensors")).unwrap();
        assert_eq!(
            back,
            vec![("c".to_string(), TensorData::new(vec![3.0f32; 25], [25]))]
        );
    }
}
