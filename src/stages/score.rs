//! `kind = "score"`: forward a split through the classifier and write per-class
//! log-probabilities (`swift infer --logprobs true` for seq_cls).
//!
//! Model: the base (`[model]`), plus the adapter of the train stage in `needs`
//! (`checkpoint = "last" | "best"`), or the PEFT directory `adapter = "path"`, or nothing
//! (the model as loaded, e.g. a merged checkpoint that carries `score.weight`).
//! Data: split `val` or `train` of the dataset stage, or `dataset = "file"` preprocessed
//! here exactly as the dataset stage would (labels optional).
//! Batches of `batch_size`, padded on the left as ms-swift does at inference, no autodiff.
//!
//! Outputs: `scores.jsonl` (docs/ARCHITECTURE.md "Output contract", dataset order), `metrics.json`,
//! `confusion.png` (single-label with gold labels), and a table on the console.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, backend::Backend};
use serde_json::{Value, json};

use super::device::{CpuDtype, OnBackend, check_replica_pool, run_on_device};
use super::model_spec::model_weight_files;
use crate::adapter::apply::apply_adapter;
use crate::adapter::read_peft_adapter;
use crate::backend::DeviceKind;
use crate::data::record::{Record, load_split};
use crate::experiment::schema::{Common, ScoreParams};
use crate::export::source::train_adapter_dir;
use crate::graph::{Stage, StageContext, StageError};
use crate::model::inputs::{PaddingSide, SampleInputs, collate};
use crate::model::processor::pixel_rows;
use crate::model::tokenizer::{SpecialTokens, load_tokenizer};
use crate::model::weights::checkpoint_score_rows;
use crate::model::{ModelSource, SeqClassifier, load_classifier};
use crate::report::confusion::render_confusion;
use crate::report::metrics::Metrics;
use crate::report::scores::{SampleRow, ScoreLine, score_line, split_metrics, write_scores};
use crate::report::table::metrics_table;
use crate::stages::dataset::model_source;
use crate::task::ProblemType;
use crate::train::spread::{Spread, map_batches};

mod file_data;

pub struct ScoreStage {
    params: ScoreParams,
    common: Common,
    problem: ProblemType,
}

fn input(message: impl Into<String>) -> StageError {
    StageError::Input(message.into())
}

fn failed(e: impl std::fmt::Display) -> StageError {
    StageError::Failed(anyhow::anyhow!("{e}"))
}

/// Records to score and the directory their image files are relative to.
struct Split {
    name: String,
    records: Vec<Record>,
    root: PathBuf,
}

impl ScoreStage {
    /// Validate the parameters; named files must exist.
    pub fn new(params: ScoreParams, common: &Common) -> Result<Self, StageError> {
        if params.dataset.is_none() && !["val", "train"].contains(&params.split.as_str()) {
            return Err(input(format!(
                "score: split {:?} is not one of val, train",
                params.split
            )));
        }
        if !["last", "best"].contains(&params.checkpoint.as_str()) {
            return Err(input(format!(
                "score: checkpoint {:?} is not one of last, best",
                params.checkpoint
            )));
        }
        if params.batch_size == 0 {
            return Err(input("score: batch_size must be ≥ 1"));
        }
        if params.nproc_per_node == 0 {
            return Err(input("score: nproc_per_node must be ≥ 1"));
        }
        if let Some(a) = &params.adapter
            && !Path::new(a)
                .join(crate::adapter::peft::CONFIG_FILE)
                .is_file()
        {
            return Err(input(format!(
                "score: adapter {a} is not a PEFT adapter directory (no {})",
                crate::adapter::peft::CONFIG_FILE
            )));
        }
        if let Some(d) = &params.dataset
            && !Path::new(d).is_file()
        {
            return Err(input(format!("score: dataset {d} does not exist")));
        }
        let problem = super::model_stage_problem(common)?;
        Ok(Self {
            params,
            common: common.clone(),
            problem,
        })
    }

    fn load_split(&self, ctx: &StageContext) -> Result<Split, StageError> {
        let data = ctx
            .upstream_of_kind("dataset")
            .ok_or_else(|| input(format!("score stage `{}` needs a dataset stage", ctx.name)))?;
        if let Some(file) = &self.params.dataset {
            let root = ctx.out_dir.join("data");
            let records = file_data::build(Path::new(file), &data.dir, &root, &self.common, ctx)?;
            return Ok(Split {
                name: file.clone(),
                records,
                root,
            });
        }
        let split = &self.params.split;
        match load_split(&data.dir, split).map_err(|e| input(e.to_string()))? {
            Some(records) => Ok(Split {
                name: split.clone(),
                records,
                root: data.dir.clone(),
            }),
            None => {
                let have: Vec<&str> = ["train", "val"]
                    .into_iter()
                    .filter(|s| data.dir.join(format!("{s}.jsonl")).is_file())
                    .collect();
                Err(input(format!(
                    "score stage `{}`: the dataset stage has no `{split}` split; it has: {}",
                    ctx.name,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                )))
            }
        }
    }

    /// The base model plus the adapter this stage scores with; returns a description.
    fn load_model<B: Backend>(
        &self,
        ctx: &StageContext,
        device: &B::Device,
        dtype: DType,
    ) -> Result<(SeqClassifier<B>, String), StageError> {
        let source = model_source(&self.common)?;
        let num_labels = self.common.task.num_labels;
        let model = load_classifier::<B>(&source, num_labels, dtype, self.common.seed, device)
            .map_err(|e| input(e.to_string()))?;
        let adapter_dir = match (ctx.upstream_of_kind("train"), &self.params.adapter) {
            (Some(_), Some(_)) => {
                return Err(input(format!(
                    "score stage `{}`: set `adapter` or need a train stage, not both",
                    ctx.name
                )));
            }
            (Some(train), None) => {
                Some(train_adapter_dir(&train.dir, &self.params.checkpoint).map_err(input)?)
            }
            (None, Some(dir)) => Some(PathBuf::from(dir)),
            (None, None) => None,
        };
        match adapter_dir {
            Some(dir) => {
                let adapter = read_peft_adapter(&dir).map_err(|e| input(e.to_string()))?;
                if adapter.score.is_none() {
                    ctx.say(format!(
                        "[{}] warning: adapter {} saved no score head; using the base model's",
                        ctx.name,
                        dir.display()
                    ));
                }
                let model = apply_adapter(model, &adapter).map_err(|e| input(e.to_string()))?;
                Ok((model, dir.display().to_string()))
            }
            None => {
                if let ModelSource::Path(d) = &source
                    && !matches!(checkpoint_score_rows(d), Ok(Some(_)))
                {
                    ctx.say(format!(
                            "[{}] warning: {} has no score.weight and no adapter is given: the head is random (seed {})",
                            ctx.name,
                            d.display(),
                            self.common.seed
                        ));
                }
                Ok((model, "none (the model as loaded)".into()))
            }
        }
    }
}

/// Token ids and pixel rows of one record; its images are the resized PNGs of the
/// dataset entry, so the patch grid must match the recorded one.
fn sample_inputs<B: Backend>(
    record: &Record,
    root: &Path,
    model: &SeqClassifier<B>,
) -> Result<SampleInputs, StageError> {
    let mut sample = SampleInputs {
        input_ids: record.input_ids.clone(),
        ..Default::default()
    };
    for im in &record.images {
        let path = root.join(&im.file);
        let img = image::open(&path)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?
            .to_rgb8();
        let (rows, grid) = pixel_rows(&img, &model.config().vision)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        if grid != im.grid_thw {
            return Err(failed(format!(
                "{}: patch grid {grid:?} differs from the dataset record's {:?} (row {})",
                path.display(),
                im.grid_thw,
                record.index
            )));
        }
        sample.pixel_rows.extend(rows);
        sample.grids.push(grid);
    }
    Ok(sample)
}

/// Logit rows of one batch of records, left-padded as ms-swift pads at inference.
fn score_batch<B: Backend>(
    model: &SeqClassifier<B>,
    records: &[Record],
    root: &Path,
    pad_id: u32,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>, StageError> {
    let samples = records
        .iter()
        .map(|r| sample_inputs(r, root, model))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&SampleInputs> = samples.iter().collect();
    let batch = collate::<B>(&refs, pad_id, PaddingSide::Left, device);
    let out = model.forward(&batch).map_err(|e| input(e.to_string()))?;
    let [b, n] = out.dims();
    let host: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| failed(format!("{e:?}")))?;
    Ok((0..b).map(|r| host[r * n..(r + 1) * n].to_vec()).collect())
}

/// `n` copies of `model`, replica `r` on `devices[r]` (all on `devices[0]` when the stage
/// was given one device); a copy on the model's own device shares its weights.
fn replica_copies<B: Backend>(
    model: SeqClassifier<B>,
    devices: &[B::Device],
    n: usize,
) -> Vec<(SeqClassifier<B>, B::Device)> {
    let home = devices[0].clone();
    (0..n)
        .map(|r| {
            let d = devices.get(r).unwrap_or(&home).clone();
            let m = if d == home {
                model.clone()
            } else {
                model.clone().to_device(&d)
            };
            (m, d)
        })
        .collect()
}

fn merge_into(target: &mut Value, extra: Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

impl Stage for ScoreStage {
    fn kind(&self) -> &'static str {
        "score"
    }

    /// 2: scores.jsonl lines carry `messages` and `images` objects, as ms-swift 4 writes.
    fn version(&self) -> u32 {
        2
    }

    /// batch_size is left out: it changes nothing but float rounding.
    fn params(&self) -> Value {
        let p = &self.params;
        json!({
            "adapter": p.adapter,
            "checkpoint": p.checkpoint,
            "dataset": p.dataset,
            "model": {
                "path": self.common.model.path,
                "preset": self.common.model.preset,
                "torch_dtype": self.common.model.torch_dtype,
            },
            "split": if p.dataset.is_some() { Value::Null } else { json!(p.split) },
            "task": {
                "labels": self.common.task.labels,
                "num_labels": self.common.task.num_labels,
                "problem_type": self.problem.as_str(),
            },
        })
    }

    /// The base weights, the adapter files, and a `dataset` file with its images.
    fn input_files(&self) -> Result<Vec<PathBuf>, StageError> {
        let mut files = Vec::new();
        if let Some(dir) = &self.common.model.path {
            files.extend(model_weight_files(Path::new(dir)).map_err(input)?);
        }
        if let Some(a) = &self.params.adapter {
            let dir = Path::new(a);
            files.extend(
                [
                    crate::adapter::peft::CONFIG_FILE,
                    crate::adapter::peft::WEIGHTS_FILE,
                ]
                .iter()
                .map(|n| dir.join(n)),
            );
        }
        if let Some(d) = &self.params.dataset {
            files.extend(file_data::input_files(Path::new(d), &self.common)?);
        }
        Ok(files)
    }

    fn required_inputs(&self) -> &'static [&'static str] {
        &["dataset"]
    }
    /// Runs the model on the device the scheduler pins.
    fn uses_device(&self) -> bool {
        true
    }

    fn device_slots(&self) -> usize {
        self.params.nproc_per_node.max(1)
    }

    fn check_pool(&self, pool: &[String]) -> Result<(), StageError> {
        check_replica_pool("nproc_per_node", self.params.nproc_per_node, pool)
    }

    fn device_key(&self, device_kind: &str) -> Value {
        super::device::device_key(&self.common, device_kind, CpuDtype::F32For("scoring"))
    }

    /// The backbone, the head and the metrics' confusion matrix must fit the device.
    fn check_fits(&self, name: &str, device_kind: &str) -> Result<(), StageError> {
        if let Some(dir) = &self.params.adapter {
            super::fit::check_adapter_file(dir)?;
        }
        let (cfg, weights) = super::fit::model_weights(&self.common.model, device_kind, true)?;
        let n = self.common.task.num_labels as u64;
        let confusion = match self.problem {
            ProblemType::SingleLabelClassification => n.saturating_mul(n).saturating_mul(8),
            ProblemType::MultiLabelClassification => n * 32,
            ProblemType::Regression => 0,
        };
        let labels = |what, bytes| super::fit::Need {
            key: "task.num_labels".into(),
            what,
            bytes,
        };
        let needs = [
            weights,
            labels("score head", n * cfg.text.hidden_size as u64 * 4),
            labels("confusion matrix", confusion),
        ];
        super::fit::check_memory(name, device_kind, &needs)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        run_on_device(self, ctx, &self.common, CpuDtype::F32For("scoring"))
    }
}

impl OnBackend for ScoreStage {
    /// The batches (those of one device, so the same scores) spread over one model copy per
    /// device: side by side on the rayon pool on the CPU, a thread per GPU.
    fn run_on_all<B: Backend>(
        &self,
        ctx: &StageContext,
        (kind, devices): (DeviceKind, Vec<B::Device>),
        dtype: DType,
    ) -> Result<(), StageError> {
        let split = self.load_split(ctx)?;
        let device = devices[0].clone();
        let (model, adapter_desc) = self.load_model::<B>(ctx, &device, dtype)?;
        let tokenizer =
            load_tokenizer(&model_source(&self.common)?).map_err(|e| input(e.to_string()))?;
        let pad_id = SpecialTokens::from_tokenizer(&tokenizer)
            .map_err(|e| input(e.to_string()))?
            .pad;

        let bar = ctx.bar(
            split.records.len() as u64,
            format!("{}: score", ctx.name),
            "samples ({per_sec}, eta {eta})",
        );
        let start = Instant::now();
        let n_replicas = self.params.nproc_per_node.max(1);
        let workers = replica_copies(model, &devices, n_replicas);
        let spread = match (kind, workers.len()) {
            (_, 1) => Spread::Serial,
            (DeviceKind::Cpu, _) => Spread::Pool,
            (DeviceKind::Cuda(_), _) => Spread::Threads,
        };
        let chunks: Vec<&[Record]> = split.records.chunks(self.params.batch_size).collect();
        let per_batch = map_batches(&workers, chunks.len(), spread, |model, device, i| {
            let rows = score_batch(model, chunks[i], &split.root, pad_id, device);
            if let Ok(r) = &rows {
                bar.inc(r.len() as u64);
            }
            Ok(rows)
        })
        .map_err(failed)?;
        let mut logits: Vec<Vec<f32>> = Vec::with_capacity(split.records.len());
        for rows in per_batch {
            logits.extend(rows?);
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();

        let lines: Vec<ScoreLine> = split
            .records
            .iter()
            .zip(&logits)
            .map(|(r, z)| {
                let images: Vec<String> = r.images.iter().map(|i| i.source.clone()).collect();
                let row = SampleRow {
                    index: r.index,
                    label: r.label.as_ref(),
                    messages: &r.messages,
                    images: &images,
                };
                score_line(&row, self.problem, z)
            })
            .collect();
        write_scores(&ctx.out_dir.join("scores.jsonl"), &lines).map_err(failed)?;

        let rows: Vec<_> = split
            .records
            .iter()
            .zip(&logits)
            .map(|(r, z)| (r.index, z.as_slice(), r.label.as_ref()))
            .collect();
        let metrics =
            split_metrics(self.problem, self.common.task.num_labels, &rows).map_err(input)?;
        let n = split.records.len();
        let mut summary = json!({
            "split": split.name,
            "adapter": adapter_desc,
            "num_samples": n,
            "num_labelled": rows.iter().filter(|r| r.2.is_some()).count(),
            "runtime": {"seconds": seconds, "samples_per_s": if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
                        "batch_size": self.params.batch_size, "nproc_per_node": self.params.nproc_per_node},
        });
        if let Some(m) = &metrics {
            merge_into(
                &mut summary,
                serde_json::to_value(m).expect("metrics serialize"),
            );
        }
        let path = ctx.out_dir.join("metrics.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&summary).expect("JSON values serialize") + "\n",
        )
        .map_err(failed)?;

        let names = self.common.task.labels.as_deref();
        let mut report = format!(
            "score `{}`: {} samples of {} ({:.1} samples/s)\n",
            ctx.name,
            n,
            split.name,
            n as f64 / seconds.max(1e-9)
        );
        match &metrics {
            Some(m) => {
                report.push_str(&metrics_table(m, names));
                if let Metrics::SingleLabel(s) = m {
                    let title = format!("{}: acc {:.3}, n = {}", split.name, s.acc, s.num_samples);
                    render_confusion(
                        &ctx.out_dir.join("confusion.png"),
                        &s.confusion,
                        names,
                        &title,
                    )
                    .map_err(failed)?;
                }
            }
            None => report.push_str("no gold labels: scores only\n"),
        }
        ctx.say(report.trim_end());
        Ok(())
    }
}
