//! Stage kinds: thin glue from validated experiment params to the data/model/train code.
//! One file per kind, each implementing `graph::Stage`; this module only maps a
//! validated stage spec to its implementation, so adding a kind touches no executor code.

use crate::experiment::{Common, StageParams, StageSpec};
use crate::graph::{Stage, StageError};
use crate::task::ProblemType;

pub mod dataset;
mod device;
pub mod export;
mod fit;
mod model_spec;
mod plan_source;
pub mod resources;
pub mod score;
pub mod swift_args;
pub mod train;

/// Build the stage for `spec` (`graph::Plan::build` takes this as its factory).
pub fn build(spec: &StageSpec, common: &Common) -> Result<Box<dyn Stage>, StageError> {
    Ok(match &spec.params {
        StageParams::Dataset(p) => Box::new(dataset::DatasetStage::new(p.clone(), common)?),
        StageParams::Train(p) => Box::new(train::TrainStage::new(p.clone(), common)?),
        StageParams::Export(p) => Box::new(export::ExportStage::new(p.clone(), common)?),
        StageParams::Score(p) => Box::new(score::ScoreStage::new(p.clone(), common)?),
    })
}

/// Plan-time checks of a stage that loads the model (export, score): the `[model]` source
/// and dtype are valid. Returns the task's resolved problem type.
fn model_stage_problem(common: &Common) -> Result<ProblemType, StageError> {
    dataset::model_source(common)?;
    device::model_dtype_of(common)?;
    ProblemType::resolve(common.task.problem_type.as_deref(), common.task.num_labels)
        .map_err(|e| StageError::Input(e.to_string()))
}
