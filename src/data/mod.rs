//! SWIFT-format datasets: rows, images + smart_resize, chat template, tokenization.

pub mod record;
