//! Reports: plots (PNG) shared by the stages.

pub mod plot;
