//! The Qwen2.5-VL classifier (`model::SeqClassifier`) and dataset records seen through the
//! loop's traits: batching with right padding (ms-swift pads right in training; eval uses
//! the same collator), PEFT names for the trainable tensors, and splits whose pixel rows
//! are computed once per run and kept in memory when they fit a budget.

use crate::adapter::keys::{Factor, lora_key, score_key};
use crate::data::record::{Label, Record};
use crate::model::SeqClassifier;
use crate::model::config::ModelConfig;
use crate::model::inputs::{PaddingSide, SampleInputs, collate};
use crate::model::processor::pixel_rows;
use crate::task::ProblemType;
use crate::train::classifier::{Classifier, PeftState, SampleSet};
use crate::train::loss::Target;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Pixel rows of all splits are cached in memory up to this many bytes.
pub const PIXEL_CACHE_BYTES: usize = 4 << 30;

/// `<|endoftext|>`: 151643 in Qwen's vocabulary, 256 in the tiny preset's byte tokenizer.
/// With right padding and causal attention the pad id never reaches a real token; it only
/// has to be a valid embedding row.
pub fn pad_token_id(cfg: &ModelConfig) -> u32 {
    if cfg.text.vocab_size > 151_643 {
        151_643
    } else {
        256
    }
}

impl<B: Backend> Classifier<B, SampleInputs> for SeqClassifier<B> {
    fn logits(&self, batch: &[&SampleInputs], device: &B::Device) -> anyhow::Result<Tensor<B, 2>> {
        let inputs = collate::<B>(
            batch,
            pad_token_id(self.config()),
            PaddingSide::Right,
            device,
        );
        Ok(self.forward(&inputs)?.cast(DType::F32))
    }

    fn backward_pass(
        &self,
        batch: &[&SampleInputs],
        device: &B::Device,
        gradient_checkpointing: bool,
        loss_of: &mut dyn FnMut(Tensor<B, 2>) -> Tensor<B, 1>,
        sink: &mut dyn FnMut(B::Gradients),
    ) -> anyhow::Result<()>
    where
        B: AutodiffBackend,
    {
        let pad = pad_token_id(self.config());
        let inputs = collate::<B::InnerBackend>(batch, pad, PaddingSide::Right, device);
        Ok(self.train_pass(&inputs, gradient_checkpointing, loss_of, sink)?)
    }
}

impl<B: Backend> PeftState for SeqClassifier<B> {
    fn peft_tensors(&self) -> Vec<(String, TensorData)> {
        let f32 = |t: Tensor<B, 2>| t.cast(DType::F32).into_data();
        let mut out = Vec::new();
        for (name, a, b) in self.lora_weights() {
            out.push((lora_key(&name, Factor::A), f32(a)));
            out.push((lora_key(&name, Factor::B), f32(b)));
        }
        out.push((score_key(), f32(self.score_weight())));
        out
    }
}

/// Why a record cannot be used for training.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{split} row {index}: no label (training needs one per row)")]
    NoLabel { split: String, index: usize },
    #[error(
        "{split} row {index}: label {label} does not fit {problem:?} with num_labels {num_labels}"
    )]
    BadLabel {
        split: String,
        index: usize,
        label: String,
        problem: ProblemType,
        num_labels: usize,
    },
    #[error("{path}: {msg}")]
    Image { path: String, msg: String },
}

/// Target of a record for `problem` with `num_labels` labels.
pub fn target_of(
    rec: &Record,
    split: &str,
    problem: ProblemType,
    num_labels: usize,
) -> Result<Target, SampleError> {
    let bad = || SampleError::BadLabel {
        split: split.into(),
        index: rec.index,
        label: format!("{:?}", rec.label),
        problem,
        num_labels,
    };
    let label = rec.label.as_ref().ok_or_else(|| SampleError::NoLabel {
        split: split.into(),
        index: rec.index,
    })?;
    match (problem, label) {
        (ProblemType::SingleLabelClassification, Label::Class(c)) if *c < num_labels => {
            Ok(Target::Class(*c))
        }
        (ProblemType::MultiLabelClassification, Label::Classes(cs))
            if cs.iter().all(|&c| c < num_labels) =>
        {
            Ok(Target::Classes(cs.clone()))
        }
        (ProblemType::Regression, Label::Values(v)) if v.len() == num_labels => {
            Ok(Target::Values(v.clone()))
        }
        // A single float label of a 1-label regression may come as a class-like int.
        (ProblemType::Regression, Label::Class(c)) if num_labels == 1 => {
            Ok(Target::Values(vec![*c as f32]))
        }
        _ => Err(bad()),
    }
}

/// A split of dataset records: pixel rows cached in memory, or computed per batch.
pub struct RecordSet {
    records: Vec<Record>,
    targets: Vec<Target>,
    dir: PathBuf,
    cfg: ModelConfig,
    cache: Option<Vec<Arc<SampleInputs>>>,
}

/// Bytes of pixel rows of `records` (f32, one row of C·T·P² per patch).
pub fn pixel_bytes(records: &[Record], cfg: &ModelConfig) -> usize {
    let v = &cfg.vision;
    let row = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
    records
        .iter()
        .flat_map(|r| r.images.iter())
        .map(|i| i.grid_thw.iter().product::<usize>() * row * 4)
        .sum()
}

impl RecordSet {
    /// Records of the dataset entry `dir`; with `cache`, every sample's pixel rows are
    /// computed now (in parallel) and kept.
    pub fn new(
        records: Vec<Record>,
        targets: Vec<Target>,
        dir: &Path,
        cfg: &ModelConfig,
        cache: bool,
    ) -> Result<Self, SampleError> {
        let mut set = Self {
            records,
            targets,
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            cache: None,
        };
        if cache {
            let all: Vec<usize> = (0..set.records.len()).collect();
            set.cache = Some(set.build(&all)?);
        }
        Ok(set)
    }

    fn build(&self, indices: &[usize]) -> Result<Vec<Arc<SampleInputs>>, SampleError> {
        indices
            .par_iter()
            .map(|&i| self.build_one(&self.records[i]).map(Arc::new))
            .collect()
    }

    fn build_one(&self, rec: &Record) -> Result<SampleInputs, SampleError> {
        let mut rows = Vec::new();
        let mut grids = Vec::new();
        for img in &rec.images {
            let path = self.dir.join(&img.file);
            let err = |msg: String| SampleError::Image {
                path: path.display().to_string(),
                msg,
            };
            let rgb = image::open(&path)
                .map_err(|e| err(e.to_string()))?
                .to_rgb8();
            let (r, grid) = pixel_rows(&rgb, &self.cfg.vision).map_err(|e| err(e.to_string()))?;
            if grid != img.grid_thw {
                return Err(err(format!("grid {grid:?} != recorded {:?}", img.grid_thw)));
            }
            rows.extend_from_slice(&r);
            grids.push(grid);
        }
        Ok(SampleInputs {
            input_ids: rec.input_ids.clone(),
            pixel_rows: rows,
            grids,
        })
    }
}

impl SampleSet<SampleInputs> for RecordSet {
    fn len(&self) -> usize {
        self.records.len()
    }
    fn target(&self, i: usize) -> &Target {
        &self.targets[i]
    }
    fn samples(&self, indices: &[usize]) -> anyhow::Result<Vec<Arc<SampleInputs>>> {
        match &self.cache {
            Some(c) => Ok(indices.iter().map(|&i| c[i].clone()).collect()),
            None => Ok(self.build(indices)?),
        }
    }
}
