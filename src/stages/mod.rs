//! placeholder
pub mod dataset;
