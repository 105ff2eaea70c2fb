//! `kind = "dataset"`: SWIFT-format JSON/JSONL → cached, tokenized records (glue over
//! `data::build`). Output layout: see `data::record`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::data::{
    BuildOptions, DataError, LabelSpec, SplitSource, Truncation, build_dataset, resolve,
};
use crate::experiment::schema::{Common, DatasetParams};
use crate::graph::{Stage, StageContext, StageError};
use crate::model::tokenizer::{ModelSource, SpecialTokens, load_tokenizer, tokenizer_file};
use crate::task::ProblemType;

/// Bump when the records, images or stats this stage writes change.
/// 2: records carry the row's messages; JPEGs decoded as Pillow does.
const VERSION: u32 = 2;

pub struct DatasetStage {
    sources: Vec<SplitSource>,
    opts: BuildOptions,
    model: ModelSource,
}

fn input_error(e: DataError) -> StageError {
    if e.is_input() {
        StageError::Input(e.to_string())
    } else {
        StageError::Failed(e.into())
    }
}

/// The model source named by `[model]`: exactly one of `preset` and `path`.
pub fn model_source(common: &Common) -> Result<ModelSource, StageError> {
    match (&common.model.preset, &common.model.path) {
        (Some(p), None) => Ok(ModelSource::Preset(p.clone())),
        (None, Some(p)) => Ok(ModelSource::Path(PathBuf::from(p))),
        (Some(_), Some(_)) => Err(StageError::Input(
            "[model] has both `preset` and `path`; keep one".into(),
        )),
        (None, None) => Err(StageError::Input(
            "[model] needs `preset` (tiny, qwen2.5-vl-3b, qwen2.5-vl-7b) or `path`".into(),
        )),
    }
}

impl DatasetStage {
    /// Validate the parameters (no file is read). Dataset paths are used as given: the
    /// experiment loader resolves them against the experiment file's folder.
    pub fn new(params: DatasetParams, common: &Common) -> Result<Self, StageError> {
        let mut sources = Vec::new();
        if let Some(p) = &params.dataset {
            sources.push(SplitSource {
                split: "train".into(),
                path: PathBuf::from(p),
            });
        }
        if let Some(p) = &params.val_dataset {
            sources.push(SplitSource {
                split: "val".into(),
                path: PathBuf::from(p),
            });
        }
        if sources.is_empty() {
            return Err(StageError::Input(
                "dataset stage needs `dataset`, `val_dataset`, or both".into(),
            ));
        }
        let num_labels = common.task.num_labels;
        let problem_type = ProblemType::resolve(common.task.problem_type.as_deref(), num_labels)
            .map_err(|e| StageError::Input(e.to_string()))?;
        let opts = BuildOptions {
            min_pixels: params.min_pixels,
            max_pixels: params.max_pixels,
            max_length: params.max_length,
            truncation: Truncation::parse(&params.truncation_strategy).map_err(input_error)?,
            system: params.system.clone(),
            labels: LabelSpec {
                num_labels,
                problem_type,
            },
        };
        opts.validate().map_err(input_error)?;
        Ok(Self {
            sources,
            opts,
            model: model_source(common)?,
        })
    }

    /// What identifies the tokenizer besides its file's bytes (see `input_files`).
    fn tokenizer_identity(&self) -> String {
        match (&self.model, tokenizer_file(&self.model)) {
            (_, Some(_)) => "tokenizer.json".into(),
            (ModelSource::Preset(name), None) => format!("builtin:{name}"),
            (ModelSource::Path(_), None) => unreachable!("a path source has a tokenizer file"),
        }
    }
}

impl Stage for DatasetStage {
    fn kind(&self) -> &'static str {
        "dataset"
    }

    fn version(&self) -> u32 {
        VERSION
    }

    /// Rows keep their file order and nothing is drawn at random.
    fn seeded(&self) -> bool {
        false
    }

    fn params(&self) -> Value {
        let o = &self.opts;
        let truncation = o.truncation.as_str();
        // BTreeMap: sorted keys (serde_json keeps insertion order here).
        let params: BTreeMap<&str, Value> = BTreeMap::from([
            ("max_length", json!(o.max_length)),
            ("max_pixels", json!(o.max_pixels)),
            ("min_pixels", json!(o.min_pixels)),
            ("num_labels", json!(o.labels.num_labels)),
            ("problem_type", json!(o.labels.problem_type.as_str())),
            (
                "splits",
                json!(self.sources.iter().map(|s| &s.split).collect::<Vec<_>>()),
            ),
            ("system", json!(o.system)),
            ("tokenizer", json!(self.tokenizer_identity())),
            ("truncation_strategy", json!(truncation)),
        ]);
        serde_json::to_value(params).expect("params serialize")
    }

    /// The dataset files (train first), every image they reference (first-use order),
    /// then the tokenizer file if there is one.
    fn input_files(&self) -> Result<Vec<PathBuf>, StageError> {
        let resolved = resolve(&self.sources, &self.opts.labels).map_err(input_error)?;
        let mut files: Vec<PathBuf> = self.sources.iter().map(|s| s.path.clone()).collect();
        files.extend(resolved.images.into_iter().map(|(p, _)| p));
        files.extend(tokenizer_file(&self.model));
        Ok(files)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let tokenizer =
            load_tokenizer(&self.model).map_err(|e| StageError::Input(e.to_string()))?;
        SpecialTokens::from_tokenizer(&tokenizer).map_err(|e| StageError::Input(e.to_string()))?;
        let resolved = resolve(&self.sources, &self.opts.labels).map_err(input_error)?;
        let bar = ctx.bar(
            resolved.images.len() as u64,
            format!("{}: decode+resize", ctx.name),
            "images ({per_sec}, eta {eta})",
        );
        let stats = build_dataset(&resolved, &self.opts, &tokenizer, ctx.out_dir, &bar);
        bar.finish_and_clear();
        let stats = stats.map_err(input_error)?;
        ctx.say(format!("dataset `{}`\n{}", ctx.name, stats.table()));
        Ok(())
    }
}
