//! Qwen's `smart_resize`: the target size of an image so that both sides are multiples of
//! `factor` (28 = patch 14 × merge 2) and the area lies in [min_pixels, max_pixels].
//!
//! Reference: qwen-vl-utils 0.0.14 `vision_process.py::smart_resize` (the function SWIFT
//! calls through `fetch_image`). The float operations are done in the same order as the
//! Python so every result is identical (checked against 469 cases in
//! `tests/fixtures/data/smart_resize.json`).

/// Patch side of the Qwen2.5-VL vision tower.
pub const PATCH_SIZE: u32 = 14;
/// Spatial merge (2×2 patches → one LLM token).
pub const MERGE_SIZE: u32 = 2;
/// Resize factor: sides are multiples of this.
pub const IMAGE_FACTOR: u32 = PATCH_SIZE * MERGE_SIZE;
/// qwen-vl-utils' MAX_RATIO: larger aspect ratios are rejected.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResizeError {
    #[error("max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")]
    MinAboveMax { min_pixels: u64, max_pixels: u64 },
    #[error(
        "absolute aspect ratio must be at most {MAX_ASPECT_RATIO}, got {ratio} ({height}x{width})"
    )]
    AspectRatio { height: u32, width: u32, ratio: f64 },
    #[error("image of {height}x{width} has a zero side")]
    Empty { height: u32, width: u32 },
    /// qwen-vl-utils returns a zero side here (PIL then fails); we say why instead.
    #[error(
        "{height}x{width} resizes to {new_height}x{new_width} with max_pixels {max_pixels}: \
         raise max_pixels or use a less elongated image"
    )]
    Degenerate {
        height: u32,
        width: u32,
        new_height: u32,
        new_width: u32,
        max_pixels: u64,
    },
}

/// Python's `round` (half to even) of `number / factor`, times factor.
fn round_by_factor(number: u32, factor: u32) -> u32 {
    ((number as f64 / factor as f64).round_ties_even() as u32) * factor
}

fn floor_by_factor(number: f64, factor: u32) -> u32 {
    ((number / factor as f64).floor() as u32) * factor
}

fn ceil_by_factor(number: f64, factor: u32) -> u32 {
    ((number / factor as f64).ceil() as u32) * factor
}

/// Target (height, width) for an image of `height`×`width`, as qwen-vl-utils computes it.
///
/// Differences from the Python: a zero-sized result (possible in its floor branch when
/// `max_pixels` is tiny for an elongated image) and a zero-sized input are errors here.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), ResizeError> {
    if max_pixels < min_pixels {
        return Err(ResizeError::MinAboveMax {
            min_pixels,
            max_pixels,
        });
    }
    if height == 0 || width == 0 {
        return Err(ResizeError::Empty { height, width });
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > MAX_ASPECT_RATIO {
        return Err(ResizeError::AspectRatio {
            height,
            width,
            ratio,
        });
    }
    let mut h_bar = factor.max(round_by_factor(height, factor));
    let mut w_bar = factor.max(round_by_factor(width, factor));
    let area = h_bar as u64 * w_bar as u64;
    // `height * width` is an exact integer (< 2^53) before the true division, as in Python.
    let pixels = height as u64 * width as u64;
    if area > max_pixels {
        let beta = (pixels as f64 / max_pixels as f64).sqrt();
        h_bar = floor_by_factor(height as f64 / beta, factor);
        w_bar = floor_by_factor(width as f64 / beta, factor);
    } else if area < min_pixels {
        let beta = (min_pixels as f64 / pixels as f64).sqrt();
        h_bar = ceil_by_factor(height as f64 * beta, factor);
        w_bar = ceil_by_factor(width as f64 * beta, factor);
    }
    if h_bar == 0 || w_bar == 0 {
        return Err(ResizeError::Degenerate {
            height,
            width,
            new_height: h_bar,
            new_width: w_bar,
            max_pixels,
        });
    }
    Ok((h_bar, w_bar))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_of_the_shapes_experiment() {
        // 140 rounds to 140 (5 × 28) but exceeds 112²: floor branch, β = 1.25.
        assert_eq!(smart_resize(140, 140, 28, 3136, 12544), Ok((112, 112)));
        // .5 ties round to even: 70/28 = 2.5 → 2, 98/28 = 3.5 → 4.
        assert_eq!(smart_resize(70, 98, 28, 1, 1 << 40), Ok((56, 112)));
        // Tiny images grow to min_pixels.
        assert_eq!(smart_resize(40, 50, 28, 3136, 1_003_520), Ok((56, 84)));
        assert!(matches!(
            smart_resize(1, 201, 28, 3136, 3136),
            Err(ResizeError::AspectRatio { .. })
        ));
        assert!(matches!(
            smart_resize(10, 10, 28, 20, 10),
            Err(ResizeError::MinAboveMax { .. })
        ));
    }
}
