//! `kind = "export"`: a train stage's adapter as a PEFT directory (`peft/`) and merged into
//! the base weights as a Hugging Face checkpoint (`merged/`), optionally copied to
//! `output_dir` (`swift export --merge_lora true`).
//!
//! Outputs (docs/ARCHITECTURE.md "Output contract"): `peft/` adapter_config.json + adapter_model.safetensors
//! (PEFT key names, head under modules_to_save); `merged/` config.json (num_labels,
//! id2label, problem_type, auto_map), `model.safetensors` or shards + index, `score.weight`,
//! no `lm_head`, tokenizer and preprocessor files, `modeling_qwen2_5_vl_seq_cls.py`;
//! `export.json` (what was exported from where).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, backend::Backend};
use serde_json::{Value, json};

use super::device::{CpuDtype, OnBackend, run_on_device};
use super::model_spec::{base_model_name, model_weight_files};
use crate::adapter::apply::apply_adapter;
use crate::adapter::{AdapterConfig, PeftAdapter, read_peft_adapter, write_peft_adapter};
use crate::backend::DeviceKind;
use crate::experiment::schema::{Common, ExportParams};
use crate::export::hf_config::HeadSpec;
use crate::export::merged::{copy_processor_files, preprocessor_config, write_merged};
use crate::export::output_dir::{Marker, check_writable, publish_copy};
use crate::export::shards::DEFAULT_MAX_SHARD_BYTES;
use crate::export::source::{base_config, model_dtype, train_adapter_dir};
use crate::graph::{CacheHit, Stage, StageContext, StageError};
use crate::model::tokenizer::{SpecialTokens, load_tokenizer};
use crate::model::{ModelSource, load_classifier};
use crate::stages::dataset::model_source;
use crate::store::manifest::MANIFEST;
use crate::task::ProblemType;

pub struct ExportStage {
    params: ExportParams,
    common: Common,
    problem: ProblemType,
    max_shard_bytes: u64,
}

fn input(message: impl Into<String>) -> StageError {
    StageError::Input(message.into())
}

impl ExportStage {
    /// Validate the parameters (reads no weights).
    pub fn new(params: ExportParams, common: &Common) -> Result<Self, StageError> {
        if !["last", "best"].contains(&params.checkpoint.as_str()) {
            return Err(input(format!(
                "export: checkpoint {:?} is not one of last, best",
                params.checkpoint
            )));
        }
        if !params.peft && !params.merged {
            return Err(input(
                "export: nothing to export: `peft` and `merged` are both false",
            ));
        }
        if let Some(dir) = &params.output_dir {
            check_writable(Path::new(dir)).map_err(|e| input(e.to_string()))?;
        }
        let problem = super::model_stage_problem(common)?;
        Ok(Self {
            params,
            common: common.clone(),
            problem,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        })
    }

    /// Shard merged weights above this many bytes (transformers' default 5 GB).
    pub fn with_max_shard_bytes(mut self, bytes: u64) -> Self {
        self.max_shard_bytes = bytes.max(1);
        self
    }

    /// The adapter as PEFT writes it, recording the base model and exact target regex.
    fn write_peft(&self, dir: &Path, adapter: &PeftAdapter) -> Result<(), StageError> {
        let c = &adapter.config;
        let names: Vec<String> = adapter.modules.iter().map(|p| p.module.clone()).collect();
        let config = AdapterConfig::for_modules(
            c.r,
            c.lora_alpha,
            c.lora_dropout,
            c.use_rslora,
            &names,
            &base_model_name(&self.common.model),
        );
        write_peft_adapter(dir, &config, &adapter.modules, adapter.score.as_ref())
            .map_err(|e| StageError::Failed(e.into()))
    }

    /// Base + adapter folded, config, tokenizer and preprocessor files. Returns file names.
    fn write_merged_dir<B: Backend>(
        &self,
        dir: &Path,
        adapter: &PeftAdapter,
        device: B::Device,
        dtype: DType,
    ) -> Result<Vec<String>, StageError> {
        let source = model_source(&self.common)?;
        let task = &self.common.task;
        let model =
            load_classifier::<B>(&source, task.num_labels, dtype, self.common.seed, &device)
                .map_err(|e| input(e.to_string()))?;
        let model = apply_adapter(model, adapter).map_err(|e| input(e.to_string()))?;
        let tokenizer = load_tokenizer(&source).map_err(|e| input(e.to_string()))?;
        let pad = SpecialTokens::from_tokenizer(&tokenizer)
            .map_err(|e| input(e.to_string()))?
            .pad;
        let dtype_name = if dtype == DType::BF16 {
            "bfloat16"
        } else {
            "float32"
        };
        let head = HeadSpec {
            num_labels: task.num_labels,
            problem_type: self.problem.as_str(),
            labels: task.labels.as_deref(),
            pad_token_id: pad,
            torch_dtype: dtype_name,
        };
        let base = base_config(&source).map_err(input)?;
        let failed = |e: crate::export::ExportError| StageError::Failed(e.into());
        let mut files =
            write_merged(dir, &model, &base, &head, self.max_shard_bytes).map_err(failed)?;
        match &source {
            ModelSource::Path(src) => files.extend(copy_processor_files(src, dir).map_err(failed)?),
            ModelSource::Preset(_) => {
                // A preset ships no files: write its built-in tokenizer and a processor config.
                let path = dir.join("tokenizer.json");
                tokenizer
                    .save(&path, true)
                    .map_err(|e| StageError::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
                let tok_cfg = json!({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<|endoftext|>",
                                     "eos_token": "<|im_end|>", "model_max_length": 32768});
                let pre = preprocessor_config(&model.config().vision, 3136, 12_845_056);
                for (name, value) in [
                    ("tokenizer_config.json", tok_cfg),
                    ("preprocessor_config.json", pre),
                ] {
                    let path = dir.join(name);
                    std::fs::write(
                        &path,
                        serde_json::to_string_pretty(&value).expect("JSON values serialize") + "\n",
                    )
                    .map_err(|e| StageError::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
                }
                files.extend(
                    [
                        "tokenizer.json",
                        "tokenizer_config.json",
                        "preprocessor_config.json",
                    ]
                    .map(String::from),
                );
            }
        }
        Ok(files)
    }
}

impl Stage for ExportStage {
    fn kind(&self) -> &'static str {
        "export"
    }

    fn version(&self) -> u32 {
        1
    }

    fn params(&self) -> serde_json::Value {
        let p = &self.params;
        // Sorted keys; model and task decide the merged weights and config.
        json!({
            "checkpoint": p.checkpoint,
            "max_shard_bytes": self.max_shard_bytes,
            "merged": p.merged,
            "model": {
                "path": self.common.model.path,
                "preset": self.common.model.preset,
                "torch_dtype": self.common.model.torch_dtype,
            },
            "output_dir": p.output_dir,
            "peft": p.peft,
            "task": {
                "labels": self.common.task.labels,
                "num_labels": self.common.task.num_labels,
                "problem_type": self.problem.as_str(),
            },
        })
    }

    /// The base weights, config and the tokenizer/processor files copied into `merged/`.
    fn input_files(&self) -> Result<Vec<PathBuf>, StageError> {
        let Some(dir) = &self.common.model.path else {
            return Ok(Vec::new());
        };
        let dir = Path::new(dir);
        let mut files = model_weight_files(dir).map_err(input)?;
        files.extend(
            crate::export::merged::PROCESSOR_FILES
                .iter()
                .map(|n| dir.join(n))
                .filter(|p| p.is_file()),
        );
        Ok(files)
    }

    fn required_inputs(&self) -> &'static [&'static str] {
        &["train"]
    }
    /// Merges the adapter into the model on a device.
    fn uses_device(&self) -> bool {
        true
    }

    fn device_key(&self, device_kind: &str) -> serde_json::Value {
        super::device::device_key(&self.common, device_kind, CpuDtype::Keep)
    }

    /// The backbone in the model dtype must fit the device.
    fn check_fits(&self, name: &str, device_kind: &str) -> Result<(), StageError> {
        let (_, weights) = super::fit::model_weights(&self.common.model, device_kind, false)?;
        super::fit::check_memory(name, device_kind, &[weights])
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        run_on_device(self, ctx, &self.common, CpuDtype::Keep)
    }

    /// Put the cached export back into `output_dir` when it is missing, incomplete or from
    /// another export; a directory the user changed is left alone, with a warning.
    fn on_cache_hit(&self, hit: &CacheHit) -> Result<(), StageError> {
        let Some(dest) = &self.params.output_dir else {
            return Ok(());
        };
        let dest = Path::new(dest);
        let current = Marker::read(dest)
            .ok()
            .flatten()
            .is_some_and(|m| m.key == hit.key && m.files.keys().all(|f| dest.join(f).is_file()));
        if current {
            return Ok(());
        }
        let say = |m: String| hit.say(m);
        match publish_copy(hit.entry, dest, &origin(hit.name), hit.key, &[MANIFEST]) {
            Ok(()) => say(format!(
                "[{}] restored {} from the cache",
                hit.name,
                dest.display()
            )),
            Err(e) => say(format!("[{}] warning: {e}", hit.name)),
        }
        Ok(())
    }
}

/// Who wrote an `output_dir`, for its marker.
fn origin(stage: &str) -> String {
    format!("pipeline export stage `{stage}`")
}

impl OnBackend for ExportStage {
    /// One device: the first the stage was given.
    fn run_on_all<B: Backend>(
        &self,
        ctx: &StageContext,
        (_, devices): (DeviceKind, Vec<B::Device>),
        dtype: DType,
    ) -> Result<(), StageError> {
        let device = devices.into_iter().next().expect("at least one device");
        let train = ctx
            .upstream_of_kind("train")
            .ok_or_else(|| input(format!("export stage `{}` needs a train stage", ctx.name)))?;
        let adapter_dir = train_adapter_dir(&train.dir, &self.params.checkpoint).map_err(input)?;
        let adapter = read_peft_adapter(&adapter_dir).map_err(|e| input(e.to_string()))?;
        let say = |m: String| ctx.say(m);
        let mut written: Vec<String> = Vec::new();
        if self.params.peft {
            self.write_peft(&ctx.out_dir.join("peft"), &adapter)?;
            written.push("peft/".into());
        }
        if self.params.merged {
            let files =
                self.write_merged_dir::<B>(&ctx.out_dir.join("merged"), &adapter, device, dtype)?;
            written.extend(files.into_iter().map(|f| format!("merged/{f}")));
        }
        copy_swift_args(&adapter_dir, ctx.out_dir, &written).map_err(failed_io)?;
        let summary = json!({
            "adapter": adapter_dir.display().to_string(),
            "checkpoint": self.params.checkpoint,
            "base_model": base_model_name(&self.common.model),
            "lora_modules": adapter.modules.len(),
            "r": adapter.config.r,
            "lora_alpha": adapter.config.lora_alpha,
            "torch_dtype": model_dtype(&self.common.model.torch_dtype).map_err(input)?.1,
            "files": written,
        });
        let path = ctx.out_dir.join("export.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&summary).expect("JSON values serialize") + "\n",
        )
        .map_err(|e| StageError::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
        if let Some(dest) = &self.params.output_dir {
            publish_copy(
                ctx.out_dir,
                Path::new(dest),
                &origin(ctx.name),
                ctx.key,
                &[],
            )
            .map_err(|e| input(e.to_string()))?;
            say(format!("[{}] copied to {dest}", ctx.name));
        }
        say(format!(
            "[{}] exported {} LoRA modules from {}",
            ctx.name,
            adapter.modules.len(),
            adapter_dir.display()
        ));
        Ok(())
    }
}

fn failed_io(e: std::io::Error) -> StageError {
    StageError::Failed(e.into())
}

/// The training run's `args.json` (ms-swift's layout) into `peft/` and `merged/`, so
/// `swift infer --adapters peft` (or `--model merged`) finds the settings; the merged
/// README names the model as `model_name` / `model_author` say.
fn copy_swift_args(adapter_dir: &Path, out: &Path, written: &[String]) -> std::io::Result<()> {
    use crate::adapter::peft::ARGS_FILE;
    let src = adapter_dir.join(ARGS_FILE);
    let Ok(text) = std::fs::read_to_string(&src) else {
        return Ok(());
    };
    for sub in ["peft", "merged"] {
        if written.iter().any(|w| w.starts_with(&format!("{sub}/"))) {
            std::fs::write(out.join(sub).join(ARGS_FILE), &text)?;
        }
    }
    let args: Value = serde_json::from_str(&text).unwrap_or_default();
    let names = |k: &str| {
        args.get(k)
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .filter(|s| !s.is_empty())
    };
    let readme = out.join("merged").join("README.md");
    if readme.is_file()
        && let (Some(name), author) = (names("model_name"), names("model_author"))
    {
        let mut text = std::fs::read_to_string(&readme)?;
        text.push_str(&format!(
            "\nModel name: {name}{}\n",
            author
                .map(|a| format!(" (author: {a})"))
                .unwrap_or_default()
        ));
        std::fs::write(&readme, text)?;
    }
    Ok(())
}
