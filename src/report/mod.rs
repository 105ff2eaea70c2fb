//! Reports: metrics of scored splits, scores.jsonl lines, tables, plots (PNG).

pub mod confusion;
pub mod metrics;
pub mod plot;
pub mod scores;
pub mod table;
