//! The embedded font of every PNG we draw: DejaVu Sans Mono (Bitstream Vera license,
//! `assets/fonts/DejaVu-LICENSE.txt`), registered once with plotters.

use std::sync::OnceLock;

use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
/// The family name the font is registered under.
pub const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot register the embedded font")]
    Font,
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
}

/// Register the font (idempotent).
pub fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(PlotError::Font) }
}
