//! Image files of a dataset: path resolution, decoding, PIL-compatible RGB conversion.
//!
//! ms-swift loads images with `PIL.Image.open(path).convert('RGB')` and no EXIF transpose,
//! before qwen-vl-utils sees them (so qwen-vl-utils' own RGBA→white compositing never
//! applies). `.convert('RGB')` drops alpha without compositing and replicates gray.
//! 16-bit files follow PIL too: 16-bit RGB(A) keeps the high byte; 16-bit gray opens as
//! `I;16`, which `.convert('RGB')` clips to 255. The `image` crate never applies EXIF
//! orientation on its own. JPEGs go through libjpeg-turbo's decoder (`jpeg`), so their
//! pixels equal Pillow's exactly.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};

/// Where an image path written in a row points: absolute paths as they are; relative
/// ones against the dataset file's folder first, then the current directory. A
/// `file://` prefix is accepted (qwen-vl-utils does). Err lists the paths tried (a
/// directory among them is reported as such by the caller).
pub fn resolve_image(written: &str, dataset_dir: &Path) -> Result<PathBuf, Vec<PathBuf>> {
    let written = written.strip_prefix("file://").unwrap_or(written);
    let p = Path::new(written);
    let candidates = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        let cwd = std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf());
        vec![dataset_dir.join(p), cwd]
    };
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or(candidates)
}

/// Decode image bytes (format sniffed from the content) and convert to 8-bit RGB as
/// PIL's `.convert('RGB')` does.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    if super::jpeg::is_jpeg(bytes) {
        return super::jpeg::decode_jpeg_rgb(bytes);
    }
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    Ok(to_rgb_like_pil(img))
}

fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(im) => {
            from_fn(&|x, y| im.get_pixel(x, y).0.map(|v| (v >> 8) as u8))
        }
        DynamicImage::ImageRgba16(im) => from_fn(&|x, y| {
            let p = im.get_pixel(x, y).0;
            [p[0], p[1], p[2]].map(|v| (v >> 8) as u8)
        }),
        DynamicImage::ImageLuma16(im) => {
            from_fn(&|x, y| [im.get_pixel(x, y).0[0].min(255) as u8; 3])
        }
        DynamicImage::ImageLumaA16(im) => {
            from_fn(&|x, y| [(im.get_pixel(x, y).0[0] >> 8) as u8; 3])
        }
        // 8-bit gray, gray+alpha, RGBA: the `image` conversions replicate gray and drop
        // alpha without compositing, as PIL does.
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_follow_pil() {
        let rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([10, 20, 30, 0]));
        let rgb = to_rgb_like_pil(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        let la = image::GrayAlphaImage::from_pixel(1, 1, image::LumaA([77, 5]));
        assert_eq!(
            to_rgb_like_pil(DynamicImage::ImageLumaA8(la))
                .get_pixel(0, 0)
                .0,
            [77; 3]
        );
        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(1, 1, image::Luma([300]));
        assert_eq!(
            to_rgb_like_pil(DynamicImage::ImageLuma16(g16))
                .get_pixel(0, 0)
                .0,
            [255; 3]
        );
        let c16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
            1,
            1,
            image::Rgb([0x1234, 0xff00, 0x00ff]),
        );
        assert_eq!(
            to_rgb_like_pil(DynamicImage::ImageRgb16(c16))
                .get_pixel(0, 0)
                .0,
            [0x12, 0xff, 0]
        );
        assert!(decode_rgb(b"not an image").is_err());
    }

    #[test]
    fn resolution_prefers_the_dataset_folder() {
        let dir = std::env::temp_dir().join(format!("pipeline-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"x").unwrap();
        assert_eq!(resolve_image("a.png", &dir), Ok(dir.join("a.png")));
        let abs = dir.join("a.png").display().to_string();
        assert_eq!(
            resolve_image(&format!("file://{abs}"), Path::new("/")),
            Ok(dir.join("a.png"))
        );
        let tried = resolve_image("missing.png", &dir).unwrap_err();
        assert_eq!(tried.len(), 2);
        assert_eq!(tried[0], dir.join("missing.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
