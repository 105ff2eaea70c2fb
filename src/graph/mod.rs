//! Planning (petgraph DAG, content keys) and execution of stages.

pub mod stage;

pub use stage::{Stage, StageContext, StageError, Upstream};
