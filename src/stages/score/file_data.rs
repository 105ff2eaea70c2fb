//! `dataset = "file"` on a score stage: preprocess the file with the dataset stage's own
//! code and settings (pixel bounds, max_length, system prompt, truncation), which the
//! stage's cache manifest records, so scored samples see exactly what training saw.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde_json::Value;

use crate::data::build::{BuildOptions, SplitSource, Truncation, build_dataset, resolve};
use crate::data::label::LabelSpec;
use crate::data::record::{Record, load_split};
use crate::experiment::schema::{Common, default_max_pixels, default_min_pixels, default_system};
use crate::graph::{StageContext, StageError};
use crate::task::ProblemType;

/// Split name of a scored file inside the score stage's `data/` directory.
const SPLIT: &str = "score";

fn input(message: impl Into<String>) -> StageError {
    StageError::Input(message.into())
}

fn labels(common: &Common) -> Result<LabelSpec, StageError> {
    let problem_type =
        ProblemType::resolve(common.task.problem_type.as_deref(), common.task.num_labels)
            .map_err(|e| input(e.to_string()))?;
    Ok(LabelSpec {
        num_labels: common.task.num_labels,
        problem_type,
    })
}

/// The dataset stage's settings, from the `params` of its cache manifest.
fn options(dataset_dir: &Path, common: &Common) -> Result<BuildOptions, StageError> {
    let path = dataset_dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        input(format!(
            "cannot read the dataset stage's settings from {}: {e}",
            path.display()
        ))
    })?;
    let manifest: Value = serde_json::from_str(&text)
        .map_err(|e| input(format!("{}: invalid JSON: {e}", path.display())))?;
    let p = &manifest["params"];
    let int = |k: &str, default: u64| p[k].as_u64().unwrap_or(default);
    let truncation = Truncation::parse(p["truncation_strategy"].as_str().unwrap_or("raise"))
        .map_err(|e| input(e.to_string()))?;
    let opts = BuildOptions {
        min_pixels: int("min_pixels", default_min_pixels()),
        max_pixels: int("max_pixels", default_max_pixels()),
        max_length: int("max_length", 2048) as usize,
        truncation,
        system: p["system"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(default_system),
        labels: labels(common)?,
    };
    opts.validate().map_err(|e| input(e.to_string()))?;
    Ok(opts)
}

/// Preprocess `file` into `out_dir` (records + resized images) and return its records.
pub fn build(
    file: &Path,
    dataset_dir: &Path,
    out_dir: &Path,
    common: &Common,
    ctx: &StageContext,
) -> Result<Vec<Record>, StageError> {
    let opts = options(dataset_dir, common)?;
    let source = crate::stages::dataset::model_source(common)?;
    let tokenizer =
        crate::model::tokenizer::load_tokenizer(&source).map_err(|e| input(e.to_string()))?;
    let sources = [SplitSource {
        split: SPLIT.into(),
        path: file.to_path_buf(),
    }];
    let resolved = resolve(&sources, &opts.labels).map_err(|e| input(e.to_string()))?;
    std::fs::create_dir_all(out_dir).map_err(|e| input(format!("{}: {e}", out_dir.display())))?;
    let bar = ctx
        .progress
        .add(ProgressBar::new(resolved.images.len() as u64));
    bar.set_prefix(format!("{}: decode+resize", ctx.name));
    let built = build_dataset(&resolved, &opts, &tokenizer, out_dir, &bar);
    bar.finish_and_clear();
    built.map_err(|e| input(e.to_string()))?;
    load_split(out_dir, SPLIT)
        .map_err(|e| input(e.to_string()))?
        .ok_or_else(|| input(format!("{}: no records were built", file.display())))
}

/// The file and every image it references (for the cache key).
pub fn input_files(file: &Path, common: &Common) -> Result<Vec<PathBuf>, StageError> {
    let sources = [SplitSource {
        split: SPLIT.into(),
        path: file.to_path_buf(),
    }];
    let resolved = resolve(&sources, &labels(common)?).map_err(|e| input(e.to_string()))?;
    let mut files = vec![file.to_path_buf()];
    files.extend(resolved.images.into_iter().map(|(p, _)| p));
    Ok(files)
}
