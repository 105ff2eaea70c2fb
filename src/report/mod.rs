//! Reports: metrics, scores.jsonl lines, tables and plots (PNG) shared by the stages.

pub mod confusion;
pub mod heatmap;
pub mod metrics;
pub mod plot;
pub mod scores;
pub mod table;
