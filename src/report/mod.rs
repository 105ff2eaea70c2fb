//! Reports of scored splits: metrics, scores.jsonl lines, tables, plots.

pub mod confusion;
pub mod font;
pub mod metrics;
pub mod scores;
pub mod table;
