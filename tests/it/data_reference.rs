//! The dataset pieces against the Python references, via committed fixtures from
//! `tools/fixtures/gen_data_fixtures.py` (qwen-vl-utils 0.0.14, transformers 4.57.1,
//! Pillow 13):
//! - smart_resize: identical on every case (469, incl. .5 ties, tiny/huge, >200 aspect);
//! - chat template + tokenizer: identical token ids on every sample (29);
//! - resize: Pillow 13 BICUBIC reproduced exactly (tolerance 0), both pass orders; the
//!   JPEG decoder (libjpeg-turbo's, as Pillow's) exactly; `jpeg_decoding` covers the
//!   JPEG layouts one by one.

use std::io::Read;
use std::path::{Path, PathBuf};

use pipeline::data::images::decode_rgb;
use pipeline::data::resample::{resize_bicubic, vertical_first};
use pipeline::data::rows::{Message, Role};
use pipeline::data::smart_resize::{ResizeError, smart_resize};
use pipeline::data::template::{encode_prompt, render_prompt};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

#[test]
fn smart_resize_matches_qwen_vl_utils() {
    let fx = read_json("smart_resize.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 300);
    let (mut ok, mut errors, mut zero) = (0, 0, 0);
    for c in cases {
        let g = |k: &str| c[k].as_u64().unwrap();
        let (h, w, lo, hi) = (
            g("h") as u32,
            g("w") as u32,
            g("min_pixels"),
            g("max_pixels"),
        );
        let got = smart_resize(h, w, 28, lo, hi);
        match (c.get("result"), c.get("error").and_then(Value::as_str)) {
            (Some(r), None) => {
                let want = (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32);
                if want.0 == 0 || want.1 == 0 {
                    // qwen-vl-utils returns a zero side (PIL then fails); we report it.
                    assert!(
                        matches!(got, Err(ResizeError::Degenerate { .. })),
                        "{c}: {got:?}"
                    );
                    zero += 1;
                } else {
                    assert_eq!(got, Ok(want), "case {c}");
                    ok += 1;
                }
            }
            (None, Some("aspect")) => {
                assert!(
                    matches!(got, Err(ResizeError::AspectRatio { .. })),
                    "{c}: {got:?}"
                );
                errors += 1;
            }
            (None, Some("min_gt_max")) => {
                assert!(
                    matches!(got, Err(ResizeError::MinAboveMax { .. })),
                    "{c}: {got:?}"
                );
                errors += 1;
            }
            other => panic!("bad fixture entry {c}: {other:?}"),
        }
    }
    assert!(
        ok >= 300 && errors > 10 && zero > 0,
        "ok {ok} errors {errors} zero {zero}"
    );
}

fn real_tokenizer() -> tokenizers::Tokenizer {
    let mut gz = flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join("tokenizer.json.gz")).unwrap(),
    );
    let mut bytes = Vec::new();
    gz.read_to_end(&mut bytes).unwrap();
    tokenizers::Tokenizer::from_bytes(bytes).unwrap()
}

#[test]
fn template_and_tokenizer_match_transformers() {
    let tok = real_tokenizer();
    let fx = read_json("tokenize.json");
    let samples = fx["samples"].as_array().unwrap();
    assert!(samples.len() >= 25);
    for (i, s) in samples.iter().enumerate() {
        let mut messages: Vec<Message> = s["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                },
                content: m["content"].as_str().unwrap().to_string(),
            })
            .collect();
        let grids: Vec<[usize; 3]> = s["grids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| [0, 1, 2].map(|k| g[k].as_u64().unwrap() as usize))
            .collect();
        // SWIFT's missing-tag rule, as `rows::parse_row` applies it.
        let tags: usize = messages
            .iter()
            .map(|m| m.content.matches("<image>").count())
            .sum();
        let first_user = messages.iter_mut().find(|m| m.role == Role::User).unwrap();
        first_user.content = "<image>".repeat(grids.len() - tags) + &first_user.content;
        let system = s
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or("You are a helpful assistant.");
        let prompt = render_prompt(&messages, system, &grids, 2);
        assert_eq!(
            prompt,
            s["text"].as_str().unwrap(),
            "sample {i}: rendered text differs"
        );
        let ids = encode_prompt(&tok, &prompt).unwrap();
        let want: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "sample {i}: token ids differ");
    }
}

fn load_png(name: &str) -> image::RgbImage {
    decode_rgb(&std::fs::read(fixtures().join("resize").join(name)).unwrap()).unwrap()
}

fn max_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

/// Pillow 13's BICUBIC resize is reproduced exactly: tolerance 0 (max abs difference).

#[test]
fn resize_matches_pillow_bicubic() {
    let fx = read_json("resize/manifest.json");
    let resizes = fx["resizes"].as_array().unwrap();
    assert!(resizes.len() >= 10);
    let mut vh = 0;
    for r in resizes {
        let src = load_png(r["source"].as_str().unwrap());
        let want = load_png(r["output"].as_str().unwrap());
        let (w, h) = (
            r["width"].as_u64().unwrap() as u32,
            r["height"].as_u64().unwrap() as u32,
        );
        let got = resize_bicubic(&src, w, h);
        let d = max_abs_diff(&got, &want);
        assert_eq!(d, 0, "{r}: max abs diff {d}");
        // The fixture records which pass Pillow ran first; ours must be the same.
        let ours = if vertical_first(src.width(), src.height(), w, h) {
            "VH"
        } else {
            "HV"
        };
        let pillow = r["pillow_order"].as_str().unwrap();
        assert!(
            pillow == ours || pillow == "either",
            "{r}: our order {ours}"
        );
        vh += usize::from(pillow == "VH");
    }
    assert!(
        vh >= 3,
        "the fixture must exercise the vertical-first order"
    );
    // For scale: the `image` crate's CatmullRom (same kernel, float, no 8-bit intermediate)
    // is *not* exact, which is why resample.rs exists.
    let src = load_png("noise.png");
    let cr = image::imageops::resize(&src, 112, 84, image::imageops::FilterType::CatmullRom);
    let d = max_abs_diff(&cr, &load_png("noise_112x84.png"));
    eprintln!("image crate CatmullRom vs Pillow: max abs diff {d}");
    assert!(d > 0);
}

#[test]
fn decoding_matches_pil_convert_rgb() {
    let fx = read_json("resize/manifest.json");
    for c in fx["convert"].as_array().unwrap() {
        let got = load_png(c["source"].as_str().unwrap());
        let want = load_png(c["rgb"].as_str().unwrap());
        assert_eq!(max_abs_diff(&got, &want), 0, "{c}");
    }
    let got = load_png(fx["jpeg"]["source"].as_str().unwrap());
    let want = load_png(fx["jpeg"]["pil_decoded"].as_str().unwrap());
    assert_eq!(max_abs_diff(&got, &want), 0, "JPEG decode differs from PIL");
}

#[test]
fn model_dir_tokenizer_loads_with_qwen_special_ids() {
    use pipeline::model::tokenizer::{ModelSource, SpecialTokens, load_tokenizer};
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join("tokenizer.json.gz")).unwrap(),
    );
    let mut bytes = Vec::new();
    gz.read_to_end(&mut bytes).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), bytes).unwrap();
    let tok = load_tokenizer(&ModelSource::Path(dir.path().to_path_buf())).unwrap();
    let sp = SpecialTokens::from_tokenizer(&tok).unwrap();
    assert_eq!(
        [
            sp.pad,
            sp.im_start,
            sp.im_end,
            sp.vision_start,
            sp.vision_end,
            sp.image_pad,
            sp.video_pad
        ],
        [
            151_643, 151_644, 151_645, 151_652, 151_653, 151_655, 151_656
        ]
    );
    // The split regex's lookahead `\s+(?!\S)`: "a  b" → "a", " ", " b" (as transformers).
    let ids = tok.encode("a  b", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, [64, 220, 293]);
}
