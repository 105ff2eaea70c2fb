//! Errors of planning and execution, each naming the stage (and sweep variant).

use crate::graph::StageError;
use crate::store::StoreError;

/// Why a plan could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A stage refused its params or could not read an input: exit 2.
    #[error("stage `{stage}`")]
    Stage {
        stage: String,
        #[source]
        source: StageError,
    },
    /// An input file named by a stage could not be read: exit 2.
    #[error("stage `{stage}`: cannot read input {path}: {message}")]
    Input {
        stage: String,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PlanError {
    /// Exit status: 2 for bad input, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            PlanError::Stage {
                source: StageError::Failed(_),
                ..
            }
            | PlanError::Store(_) => 1,
            _ => 2,
        }
    }
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("--force {stage}: no such stage; stages: {stages}")]
    UnknownForce { stage: String, stages: String },
    /// One or more stages failed (the first is shown; all were printed as they failed).
    #[error("stage `{stage}` failed{}", more_suffix(*more))]
    StageFailed {
        stage: String,
        #[source]
        source: StageError,
        /// How many other stages failed too.
        more: usize,
        /// Whether every failure was an input error.
        all_input: bool,
    },
    /// A stage cannot run on this run's device pool (checked before anything runs): exit 2.
    #[error("stage `{stage}`: {message}")]
    Devices { stage: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn more_suffix(more: usize) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" (and {more} more stage(s) failed)")
    }
}

impl ExecError {
    /// Exit status: 2 for bad input (unknown stage, `StageError::Input`), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::UnknownForce { .. } | ExecError::Devices { .. } => 2,
            ExecError::StageFailed { all_input, .. } => {
                if *all_input {
                    2
                } else {
                    1
                }
            }
            ExecError::Store(_) => 1,
        }
    }
}
