//! Experiment files: raw TOML schema, validation with file:line errors, sweep expansion.

pub mod schema;
