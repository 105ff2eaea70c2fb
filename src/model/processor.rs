//! Pixel rows exactly as transformers `Qwen2VLImageProcessor._preprocess` with
//! `do_resize=False` (images already smart-resized): rescale by 1/255 (in f64, then f32),
//! normalise with the CLIP mean/std in f32, repeat the frame to `temporal_patch_size`, and
//! emit one row of `C·T·p·p` values per patch, patches ordered by `merge×merge` blocks in
//! raster order and raster inside each block.

use image::RgbImage;

use super::ModelError;
use super::config::VisionConfig;

/// OpenAI CLIP normalisation (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), as written in
/// transformers; numpy rounds them to f32 like `as f32` does.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Pixel rows `[t·h·w, C·T·p·p]` (row-major) and the grid `[1, h, w]` in patches.
pub fn pixel_rows(
    img: &RgbImage,
    vision: &VisionConfig,
) -> Result<(Vec<f32>, [usize; 3]), ModelError> {
    let p = vision.patch_size;
    let m = vision.spatial_merge_size;
    let tp = vision.temporal_patch_size;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if h == 0 || w == 0 || h % (p * m) != 0 || w % (p * m) != 0 {
        return Err(ModelError::Inputs(format!(
            "image of {w}x{h} pixels: both sides must be positive multiples of {} (smart_resize first)",
            p * m
        )));
    }
    if vision.in_channels != 3 {
        return Err(ModelError::Inputs(format!(
            "in_channels {} is not 3 (RGB)",
            vision.in_channels
        )));
    }
    // Normalised planes [3][h][w].
    let scale = 1.0f64 / 255.0;
    let mut planes = vec![0f32; 3 * h * w];
    for (x, y, px) in img.enumerate_pixels() {
        for c in 0..3 {
            let v = (px.0[c] as f64 * scale) as f32;
            planes[(c * h + y as usize) * w + x as usize] =
                (v - CLIP_MEAN[c] as f32) / CLIP_STD[c] as f32;
        }
    }
    let (gh, gw) = (h / p, w / p);
    let row_len = 3 * tp * p * p;
    let mut out = Vec::with_capacity(gh * gw * row_len);
    for br in 0..gh / m {
        for bc in 0..gw / m {
            for ir in 0..m {
                for ic in 0..m {
                    let (py, px) = ((br * m + ir) * p, (bc * m + ic) * p);
                    for c in 0..3 {
                        for _t in 0..tp {
                            for dy in 0..p {
                                let start = (c * h + py + dy) * w + px;
                                out.extend_from_slice(&planes[start..start + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, [1, gh, gw]))
}
