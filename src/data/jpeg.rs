//! JPEG decoding that reproduces Pillow's pixels exactly.
//!
//! Pillow decodes JPEGs with libjpeg-turbo at its defaults (ISLOW integer IDCT, fancy
//! chroma upsampling, block smoothing for progressive scans). `mozjpeg-sys` builds that
//! decoder (mozjpeg's decompressor is libjpeg-turbo's) from bundled C with the `cc` crate
//! only (no nasm, no cmake), so its output is libjpeg-turbo's bit for bit; we call it
//! through its C API with those defaults.
//!
//! Then what `Image.open(f).convert('RGB')` does per colour layout:
//! - 1 component: Pillow mode `L`; `.convert('RGB')` replicates gray.
//! - 3 components: libjpeg converts YCbCr (or an Adobe RGB file) to RGB.
//! - 4 components (CMYK, or YCCK: Adobe transform 2): libjpeg outputs CMYK; Pillow reads
//!   it as `CMYK;I` (the Adobe inverted convention, assumed for every 4-component file)
//!   and `.convert('RGB')` applies its own `cmyk2rgb`.
//!
//! EXIF orientation is not applied: neither ms-swift's `load_image` nor qwen-vl-utils
//! calls `ImageOps.exif_transpose`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use image::RgbImage;
use mozjpeg_sys::{
    J_COLOR_SPACE, JWRN_JPEG_EOF, jpeg_common_struct, jpeg_create_decompress,
    jpeg_decompress_struct, jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress,
    jpeg_mem_src, jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress, jpeg_std_error,
};

/// Whether the bytes start like a JPEG file (SOI followed by a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decode a JPEG into the RGB pixels Pillow's `Image.open(f).convert('RGB')` gives.
pub fn decode_jpeg_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    // libjpeg reports fatal errors by unwinding out of its error handler (see
    // `error_mgr`; resume_unwind skips the panic hook); catch that here so a corrupt
    // file is an error, not a crash. The decompressor is destroyed while unwinding.
    match catch_unwind(AssertUnwindSafe(|| decode_unchecked(bytes))) {
        Ok(r) => r,
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "libjpeg could not decode the file".to_string())),
    }
}

/// A decompressor and the error manager it points to; destroyed on drop (unwinding too).
struct Decompressor {
    cinfo: Box<jpeg_decompress_struct>,
    _err: Box<jpeg_error_mgr>,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress; destroy is valid in any state.
        unsafe { jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

fn decode_unchecked(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut err = Box::new(error_mgr());
    // SAFETY: a zeroed struct is what jpeg_create_decompress expects to initialise; the
    // error manager is boxed so its address outlives the decompressor.
    let mut d = unsafe {
        let mut cinfo: Box<jpeg_decompress_struct> = Box::new(std::mem::zeroed());
        cinfo.common.err = &mut *err;
        jpeg_create_decompress(&mut *cinfo);
        Decompressor { cinfo, _err: err }
    };
    let c = &mut *d.cinfo;
    // SAFETY: `bytes` outlives `d`, which is destroyed before returning; every libjpeg
    // call follows the documented sequence, and errors unwind out of them.
    unsafe {
        jpeg_mem_src(c, bytes.as_ptr(), bytes.len() as _);
        jpeg_read_header(c, 1);
        c.out_color_space = match c.num_components {
            1 => J_COLOR_SPACE::JCS_GRAYSCALE,
            4 => J_COLOR_SPACE::JCS_CMYK,
            _ => J_COLOR_SPACE::JCS_RGB,
        };
        jpeg_start_decompress(c);
    }
    let (w, h) = (c.output_width as usize, c.output_height as usize);
    let comps = c.output_components as usize;
    let stride = w * comps;
    let mut px = vec![0u8; stride * h];
    while (c.output_scanline as usize) < h {
        let row = c.output_scanline as usize;
        let mut ptr = px[row * stride..].as_mut_ptr();
        // SAFETY: `ptr` points at a full row of `stride` bytes inside `px`.
        if unsafe { jpeg_read_scanlines(c, &mut ptr, 1) } == 0 {
            return Err("libjpeg returned no scanline".into());
        }
    }
    // SAFETY: all scanlines were read.
    unsafe { jpeg_finish_decompress(c) };
    let rgb: Vec<u8> = match comps {
        1 => px.iter().flat_map(|&g| [g, g, g]).collect(),
        4 => px
            .chunks_exact(4)
            .flat_map(|p| pil_cmyk_to_rgb([p[0], p[1], p[2], p[3]].map(|v| 255 - v)))
            .collect(),
        _ => px,
    };
    RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| format!("decoded size does not match {w}x{h}"))
}

/// libjpeg's standard messages, with fatal errors unwinding (caught above) and a
/// premature end of data fatal too: Pillow refuses truncated files ("image file is
/// truncated") where libjpeg alone would pad them with gray. Other warnings (e.g. extra
/// bytes before a marker) are ignored, as Pillow ignores them.
fn error_mgr() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills every field of a zeroed struct.
    let mut e: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut e) };
    e.error_exit = Some(unwind_with_message);
    e.emit_message = Some(fail_on_truncation);
    e
}

fn formatted_message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: `err` is the manager installed above; format_message writes at most
    // JMSG_LENGTH_MAX (200) bytes, NUL-terminated.
    unsafe {
        let Some(fmt) = cinfo.err.as_ref().and_then(|e| e.format_message) else {
            return "libjpeg error".to_string();
        };
        let mut buf = [0u8; 200];
        let f: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
            std::mem::transmute(fmt);
        f(cinfo, buf.as_mut_ptr());
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

extern "C-unwind" fn unwind_with_message(cinfo: &mut jpeg_common_struct) {
    let msg = formatted_message(cinfo);
    std::panic::resume_unwind(Box::new(msg));
}

extern "C-unwind" fn fail_on_truncation(cinfo: &mut jpeg_common_struct, level: std::ffi::c_int) {
    // SAFETY: `err` is the manager installed above.
    let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code) };
    if level < 0 && code == Some(JWRN_JPEG_EOF as std::ffi::c_int) {
        std::panic::resume_unwind(Box::new("image file is truncated".to_string()));
    }
}

/// Pillow's `cmyk2rgb` (Convert.c): each channel is `(255 - k) - c·(255 - k)/255`, with
/// Pillow's rounded integer division by 255.
fn pil_cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - i32::from(k);
    let muldiv255 = |a: u8| {
        let t = i32::from(a) * nk + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v)).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_matches_pillow_corners() {
        // Pillow 13: Image.new('CMYK', (1,1), v).convert('RGB')
        assert_eq!(pil_cmyk_to_rgb([0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(pil_cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(pil_cmyk_to_rgb([0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(pil_cmyk_to_rgb([128, 64, 0, 100]), [77, 116, 155]);
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        assert!(decode_jpeg_rgb(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 2]).is_err());
        assert!(decode_jpeg_rgb(b"\xFF\xD8\xFFgarbage").is_err());
        let whole = include_bytes!("../../tests/fixtures/jpeg/baseline_420.jpg");
        assert!(decode_jpeg_rgb(whole).is_ok());
        let e = decode_jpeg_rgb(&whole[..whole.len() - 2]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = decode_jpeg_rgb(&whole[..whole.len() / 2]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        assert!(is_jpeg(&[0xFF, 0xD8, 0xFF, 0xDB]));
        assert!(!is_jpeg(b"\x89PNG"));
    }
}
