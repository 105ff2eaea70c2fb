//! Stage kinds: thin glue from validated experiment params to the data/model/train code.
//! One file per kind, each implementing `graph::Stage`; this module only maps a
//! validated stage spec to its implementation, so adding a kind touches no executor code.

use crate::experiment::{Common, StageParams, StageSpec};
use crate::graph::{Stage, StageError};

pub mod dataset;
mod device;
pub mod export;
pub mod score;
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
