//! `pipeline`: a declarative runner that turns a TOML experiment into a DAG of stages
//! (dataset → LoRA training → export → scoring) for Qwen2.5-VL sequence classifiers,
//! caching every stage's artifacts under `runs/` by content key.
//!
//! Layering (each layer knows only the ones below it):
//! - `experiment`: TOML schema, validation, sweep expansion (knows no model code)
//! - `graph` + `store`: planning, content keys, execution, cache entries (know stages only
//!   through the `graph::Stage` trait)
//! - `data`, `model`, `train`, `report`: the machine-learning pieces (know no TOML)
//! - `stages`: thin glue from validated experiment params to the pieces above

pub mod adapter;
pub mod backend;
pub mod bench;
pub mod checksums;
pub mod data;
pub mod experiment;
pub mod export;
pub mod graph;
pub mod host_alloc;
pub mod model;
pub mod paths;
pub mod report;
pub mod safetensors_io;
pub mod slurm;
pub mod stages;
pub mod store;
pub mod task;
#[doc(hidden)]
pub mod testkit;
pub mod train;
