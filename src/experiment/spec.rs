//! The validated experiment: what planning and the stages see. Every path is absolute,
//! every cross-field rule holds, and the stage DAG is known to be acyclic.

use std::path::PathBuf;

use serde::Serialize;

use super::cluster::SlurmSpec;
use super::schema::{Common, DatasetParams, ExportParams, ScoreParams, TrainParams};

/// The stage kinds this binary knows, sorted (as listed in error messages).
pub const STAGE_KINDS: [&str; 4] = ["dataset", "export", "score", "train"];

/// A validated experiment (one sweep variant, or the whole file when there is no sweep).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    /// Names `runs/<name>/`.
    pub name: String,
    /// Absolute path of the experiment file.
    pub file: PathBuf,
    /// Model, task and seed, shared by every stage.
    pub common: Common,
    /// Devices the scheduler may pin device-bound stages to (empty: one default slot).
    pub devices: Vec<String>,
    /// What each Slurm array task asks for; not part of any stage's key.
    pub slurm: SlurmSpec,
    /// Stages in a topological order (every stage after the stages it needs).
    pub stages: Vec<StageSpec>,
}

impl Experiment {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names
    }
}

/// One `[stages.X]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpec {
    pub name: String,
    /// Names of the stages whose artifacts this stage reads.
    pub needs: Vec<String>,
    pub params: StageParams,
}

impl StageSpec {
    pub fn kind(&self) -> &'static str {
        self.params.kind()
    }
}

/// Typed parameters by kind (paths resolved to absolute).
// One per stage, built once at load: the size of the train variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StageParams {
    Dataset(DatasetParams),
    Train(TrainParams),
    Export(ExportParams),
    Score(ScoreParams),
}

impl StageParams {
    pub fn kind(&self) -> &'static str {
        match self {
            StageParams::Dataset(_) => "dataset",
            StageParams::Train(_) => "train",
            StageParams::Export(_) => "export",
            StageParams::Score(_) => "score",
        }
    }

    pub fn needs(&self) -> &[String] {
        match self {
            StageParams::Dataset(p) => &p.needs,
            StageParams::Train(p) => &p.needs,
            StageParams::Export(p) => &p.needs,
            StageParams::Score(p) => &p.needs,
        }
    }
}
