//! SWIFT-format datasets: rows, images + smart_resize, chat template, tokenization.
//!
//! Flow (driven by `build::build_dataset`, used by the `dataset` stage):
//! `rows` (JSON/JSONL → validated rows, labels by `label`) → `images` (resolve, decode,
//! PIL-style RGB; `jpeg`: libjpeg-turbo) → `smart_resize` + `resample` (qwen-vl-utils target size, Pillow bicubic)
//! → `template` (Qwen2.5-VL prompt, image pads expanded) → `record` (cached output) +
//! `stats`.

pub mod build;
pub mod error;
pub mod images;
pub mod jpeg;
pub mod label;
pub mod record;
pub mod resample;
pub mod rows;
pub mod smart_resize;
pub mod stats;
pub mod template;

pub use build::{BuildOptions, SplitSource, Truncation, build_dataset, resolve};
pub use error::{DataError, RowLoc};
pub use label::LabelSpec;
pub use smart_resize::{IMAGE_FACTOR, smart_resize};
