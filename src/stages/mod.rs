//! placeholder
pub mod dataset;
pub mod export;
pub mod score;
