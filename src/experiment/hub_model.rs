//! `[model] model = "Qwen/Qwen2.5-VL-7B-Instruct"`: a hub id resolved to a local copy
//! that the Hugging Face or ModelScope client already downloaded. Nothing is downloaded.
//!
//! Looked up, in order:
//! - Hugging Face: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//!   `models--{org}--{name}/snapshots/{rev}/` with `rev` from `refs/main` when present,
//!   else the one snapshot holding a `config.json` that was modified last.
//! - ModelScope: `$MODELSCOPE_CACHE`, else `~/.cache/modelscope/hub`; `models/{org}/{name}`
//!   (current layout), then `{org}/{name}` (older clients).
//!
//! A bare name (`Qwen2.5-VL-7B-Instruct`, as the seed command writes it) is looked up under
//! the `Qwen` organisation, which is where ms-swift's model registry points it.

use std::path::{Path, PathBuf};

/// Where a hub id was found, or every place looked at.
pub fn resolve_hub_model(id: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let (org, name) = match id.split_once('/') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => (o, n),
        _ => ("Qwen", id),
    };
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME").unwrap_or_else(|| PathBuf::from("/root"));
    let hf_cache = env("HF_HUB_CACHE")
        .or_else(|| env("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| home.join(".cache/huggingface/hub"));
    let ms_cache = env("MODELSCOPE_CACHE").unwrap_or_else(|| home.join(".cache/modelscope/hub"));

    let mut looked = Vec::new();
    let repo = hf_cache.join(format!("models--{org}--{name}"));
    let snapshots = repo.join("snapshots");
    looked.push(snapshots.clone());
    if let Some(dir) = hf_snapshot(&repo) {
        return Ok(dir);
    }
    for dir in [
        ms_cache.join("models").join(org).join(name),
        ms_cache.join(org).join(name),
    ] {
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
        looked.push(dir);
    }
    Err(looked)
}

fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("config.json").is_file())
        .max_by_key(|d| {
            std::fs::metadata(d.join("config.json"))
                .and_then(|m| m.modified())
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test changes the process environment (cache variables) for all cases.
    #[test]
    fn finds_hf_and_modelscope_copies_and_lists_where_it_looked() {
        let tmp = tempfile_dir();
        let hf = tmp.join("hf");
        let ms = tmp.join("ms");
        // SAFETY: the only test reading these variables; the values stay valid.
        unsafe {
            std::env::set_var("HF_HUB_CACHE", &hf);
            std::env::set_var("MODELSCOPE_CACHE", &ms);
        }
        let err = resolve_hub_model("Qwen/Qwen2.5-VL-7B-Instruct").unwrap_err();
        assert_eq!(
            err,
            [
                hf.join("models--Qwen--Qwen2.5-VL-7B-Instruct/snapshots"),
                ms.join("models/Qwen/Qwen2.5-VL-7B-Instruct"),
                ms.join("Qwen/Qwen2.5-VL-7B-Instruct"),
            ]
        );
        let repo = hf.join("models--Qwen--Qwen2.5-VL-7B-Instruct");
        for rev in ["aaa", "bbb"] {
            std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
            std::fs::write(repo.join("snapshots").join(rev).join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        assert_eq!(
            resolve_hub_model("Qwen/Qwen2.5-VL-7B-Instruct"),
            Ok(repo.join("snapshots/aaa"))
        );
        // The seed command's bare name means the Qwen organisation.
        assert_eq!(
            resolve_hub_model("Qwen2.5-VL-7B-Instruct"),
            Ok(repo.join("snapshots/aaa"))
        );
        let msdir = ms.join("models/Qwen/Qwen2.5-VL-3B-Instruct");
        std::fs::create_dir_all(&msdir).unwrap();
        std::fs::write(msdir.join("config.json"), "{}").unwrap();
        assert_eq!(resolve_hub_model("Qwen/Qwen2.5-VL-3B-Instruct"), Ok(msdir));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pipeline-hub-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
