//! Reports: metrics, scores.jsonl lines, tables and plots (PNG) shared by the stages, and
//! the sweep summary of an experiment's finished runs.

pub mod confusion;
pub mod heatmap;
pub mod metrics;
pub mod plot;
pub mod scores;
pub mod sweep_summary;
pub mod table;
