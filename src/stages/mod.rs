//! Stage kinds: thin glue from validated experiment params to the data/model/train code.
//! One file per kind, each implementing `graph::Stage`; this module only maps a
//! validated stage spec to its implementation, so adding a kind touches no executor code.

use crate::experiment::{Common, StageParams, StageSpec};
use crate::graph::{Stage, StageError};

// The kinds live in `dataset.rs`, `train.rs`, `export.rs` and `score.rs` (other branches):
// pub mod dataset; // wired on merge
// pub mod export; // wired on merge
// pub mod score; // wired on merge
// pub mod train; // wired on merge

/// Build the stage for `spec` (`graph::Plan::build` takes this as its factory).
pub fn build(spec: &StageSpec, common: &Common) -> Result<Box<dyn Stage>, StageError> {
    let _ = common;
    match &spec.params {
        // wired on merge: Ok(Box::new(dataset::DatasetStage::new(p.clone(), common)?))
        StageParams::Dataset(_p) => not_built("dataset"),
        // wired on merge: Ok(Box::new(train::TrainStage::new(p.clone(), common)?))
        StageParams::Train(_p) => not_built("train"),
        // wired on merge: Ok(Box::new(export::ExportStage::new(p.clone(), common)?))
        StageParams::Export(_p) => not_built("export"),
        // wired on merge: Ok(Box::new(score::ScoreStage::new(p.clone(), common)?))
        StageParams::Score(_p) => not_built("score"),
    }
}

fn not_built(kind: &str) -> Result<Box<dyn Stage>, StageError> {
    Err(StageError::Input(format!(
        "stage kind `{kind}` is not built into this binary"
    )))
}
