//! Pillow's antialiased bicubic resize of 8-bit RGB images, reproduced bit for bit.
//!
//! qwen-vl-utils' `fetch_image` ends with `image.resize((w, h))`, i.e. Pillow's BICUBIC
//! through `ImagingResample` (Pillow `src/libImaging/Resample.c`). Its semantics:
//! - separable: two passes through an 8-bit intermediate image; a pass whose size does
//!   not change is skipped. Pillow 13 (our reference environment) runs the vertical pass
//!   first when the height shrinks by more than twice as many pixels as the width
//!   (`horizontal_first` in Pillow 13.0.0 `ImagingResampleInner`); Pillow ≤ 12 always
//!   runs the horizontal pass first. The order changes the 8-bit intermediate and so a
//!   few output pixels (up to ~20 levels at hard edges); we follow Pillow 13;
//! - per output pixel, the filter is centred at `(i + 0.5) · scale` in input coordinates,
//!   stretched by `max(scale, 1)` (antialiasing when downscaling), support 2 × that,
//!   taps at `(j + 0.5)`, weights normalised to sum 1;
//! - cubic kernel with a = -0.5 (Keys);
//! - weights converted to fixed point with 22 fractional bits (rounded half away from
//!   zero), sums start at 0.5 in that scale, results shifted back and clipped to 0..=255.
//!
//! `image::imageops::resize` with CatmullRom is the same kernel but float arithmetic and
//! no 8-bit intermediate; it differs from Pillow by up to a few levels. This version
//! matches Pillow 13 exactly (`tests/it/data_reference.rs`: max abs difference 0).

use image::RgbImage;
use rayon::prelude::*;

/// Fractional bits of the fixed-point weights (Pillow: 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic filter at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with a = -0.5 (Pillow `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter taps of one output position: input `start`, then fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box.
fn coefficients(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inv = 1.0 / filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero before the clamp.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = (1u32 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Pillow `clip8`: drop the fraction bits (arithmetic shift) and clamp to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Whether Pillow 13 runs the vertical pass first: the height shrinks, and by more than
/// twice the number of pixels the width shrinks (a growing width counts as negative).
pub fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

/// Resize to `width`×`height` as Pillow's `Image.resize(size, BICUBIC)` on an RGB image
/// (pass order: see the module docs). Same size ⇒ a copy. Both sizes must be non-zero.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize target must be non-empty");
    let (in_w, in_h) = src.dimensions();
    match (width != in_w, height != in_h) {
        (false, false) => src.clone(),
        (true, false) => horizontal(src, width as usize),
        (false, true) => vertical(src, height as usize),
        (true, true) if vertical_first(in_w, in_h, width, height) => {
            horizontal(&vertical(src, height as usize), width as usize)
        }
        (true, true) => vertical(&horizontal(src, width as usize), height as usize),
    }
}

/// Rows per parallel work item: large images are split across cores (the dataset's
/// images are processed in parallel too; rayon balances both levels).
const ROWS_PER_TASK: usize = 64;

/// The horizontal pass as the vertical one on the transposed image: the same integer sums
/// (so the same bytes), but the inner loop runs along whole rows, which vectorises; a
/// per-pixel loop over the taps does not (it was ~¾ of the resize time).
fn horizontal(src: &RgbImage, out_w: usize) -> RgbImage {
    let (in_w, h) = (src.width() as usize, src.height() as usize);
    let t = transpose(src.as_raw(), in_w, h);
    let resized = vertical_rows(&t, h, in_w, out_w);
    let out = transpose(&resized, h, out_w);
    RgbImage::from_raw(out_w as u32, h as u32, out).expect("buffer sized for the image")
}

fn vertical(src: &RgbImage, out_h: usize) -> RgbImage {
    let (w, in_h) = (src.width() as usize, src.height() as usize);
    let out = vertical_rows(src.as_raw(), w, in_h, out_h);
    RgbImage::from_raw(w as u32, out_h as u32, out).expect("buffer sized for the image")
}

/// RGB pixels `[h][w]` → `[w][h]`, in tiles that stay in L1. Output rows are written in
/// order, one tile-wide run at a time, gathered from the tile's input rows (writing
/// whole output runs is what keeps large images out of cache and TLB misses).
fn transpose(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    const TILE: usize = 16;
    let mut out = vec![0u8; src.len()];
    if src.is_empty() {
        return out;
    }
    let rows: Vec<&[u8]> = src.chunks_exact(w * 3).collect();
    for (x, out_row) in out.chunks_exact_mut(h * 3).enumerate() {
        let px = x * 3..x * 3 + 3;
        for (tile_rows, out_run) in rows.chunks(TILE).zip(out_row.chunks_mut(TILE * 3)) {
            for (row, o) in tile_rows.iter().zip(out_run.chunks_exact_mut(3)) {
                o.copy_from_slice(&row[px.clone()]);
            }
        }
    }
    out
}

/// Resample the rows of an RGB image `w` pixels wide from `in_h` to `out_h` rows.
fn vertical_rows(input: &[u8], w: usize, in_h: usize, out_h: usize) -> Vec<u8> {
    let taps = coefficients(in_h, out_h);
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    let blocks = out
        .par_chunks_mut(stride * ROWS_PER_TASK)
        .zip(taps.par_chunks(ROWS_PER_TASK));
    blocks.for_each(|(block_out, block_taps)| {
        let mut acc = vec![0i32; stride];
        for (t, row_out) in block_taps.iter().zip(block_out.chunks_exact_mut(stride)) {
            acc.fill(HALF);
            for (dy, &k) in t.weights.iter().enumerate() {
                let row_in = &input[(t.start + dy) * stride..(t.start + dy + 1) * stride];
                for (a, &p) in acc.iter_mut().zip(row_in) {
                    *a += p as i32 * k;
                }
            }
            for (o, &a) in row_out.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_weights() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
        // Every output position's fixed-point weights sum to ~1.0.
        for (n, m) in [(10, 3), (3, 10), (140, 112), (7, 7)] {
            for t in coefficients(n, m) {
                let s: i32 = t.weights.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i32,
                    "{s}"
                );
                assert!(t.start + t.weights.len() <= n);
            }
        }
    }

    #[test]
    fn transpose_round_trips() {
        let px: Vec<u8> = (0..5 * 3 * 3).map(|i| i as u8).collect();
        let t = transpose(&px, 5, 3);
        // Pixel (x=4, y=1) of the 5×3 image is pixel (x=1, y=4) of the 3×5 one.
        assert_eq!(
            t[(4 * 3 + 1) * 3..(4 * 3 + 1) * 3 + 3],
            px[(5 + 4) * 3..(5 + 4) * 3 + 3]
        );
        assert_eq!(transpose(&t, 3, 5), px);
        let big: Vec<u8> = (0..70 * 45 * 3).map(|i| (i * 7) as u8).collect();
        assert_eq!(transpose(&transpose(&big, 70, 45), 45, 70), big);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 255]));
        for (w, h) in [(112, 84), (5, 3), (37, 60), (80, 23)] {
            let out = resize_bicubic(&src, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [200, 13, 255]));
        }
    }
}
