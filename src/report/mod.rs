//! Reports of scored splits: metrics, tables, plots.

pub mod metrics;
