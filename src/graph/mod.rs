//! Planning (one petgraph DAG over all sweep variants, content keys), explanation of
//! cache misses, and execution of stages.
//!
//! From the binary:
//! ```ignore
//! let loaded = experiment::load(path)?;
//! let variants: Vec<&Variant> = loaded.variants.iter().collect();
//! let store = Store::new("runs");
//! let gpus = backend::visible_gpus; // the caller counts the GPUs; the executor probes nothing
//! let plan = Plan::build(loaded.name(), &variants, &loaded.base.devices, gpus, &store, &stages::build)?;
//! print!("{}", explain::render(&plan, &explain::explain(&plan, &store)));   // `plan`
//! let report = execute(&plan, &store, &RunOptions::default(), &MultiProgress::new())?; // `run`
//! ```

pub mod devices;
pub mod error;
pub mod executor;
pub mod explain;
pub mod key;
pub mod plan;
pub mod progress;
mod schedule;
pub mod stage;

pub use error::{ExecError, PlanError};
pub use executor::{RunOptions, RunReport, execute};
pub use plan::{Plan, PlanNode, PlanStage, PlanVariant, StageFactory, StageUse};
pub use stage::{CacheHit, Stage, StageContext, StageError, Upstream};

#[cfg(test)]
mod tests;
