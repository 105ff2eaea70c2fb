//! JPEG decoding against Pillow 13 (libjpeg-turbo 3.2), pixel for pixel: committed JPEGs of
//! each layout and what ms-swift's `load_image` (`Image.open(f).convert('RGB')`) made of
//! them, from `tools/fixtures/gen_jpeg.py`. Tolerance 0.

use std::path::{Path, PathBuf};

use pipeline::data::images::decode_rgb;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

#[test]
fn every_layout_decodes_as_pillow_does() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_object().unwrap();
    // The layouts the fixtures must cover, so a regenerated set cannot silently lose one.
    let has = |f: &dyn Fn(&Value) -> bool| files.values().any(f);
    assert!(has(
        &|v| v["sampling"] == "2x2,1x1,1x1" && v["progressive"] == false
    ));
    assert!(has(&|v| v["sampling"] == "2x1,1x1,1x1"));
    assert!(has(&|v| v["sampling"] == "1x1,1x1,1x1"));
    assert!(has(&|v| v["progressive"] == true && v["mode"] == "RGB"));
    assert!(has(&|v| v["mode"] == "L"));
    assert!(has(&|v| v["mode"] == "CMYK" && v["adobe_transform"] == 0));
    assert!(has(&|v| v["mode"] == "CMYK" && v["adobe_transform"] == 2));
    assert!(has(&|v| v["exif_orientation"] == 6));
    for (name, info) in files {
        let jpg = std::fs::read(dir().join(format!("{name}.jpg"))).unwrap();
        let got = decode_rgb(&jpg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = image::open(dir().join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let size = [
            info["size"][0].as_u64().unwrap(),
            info["size"][1].as_u64().unwrap(),
        ];
        // EXIF orientation is not applied: the stored size, as ms-swift sees it.
        assert_eq!(
            [u64::from(got.width()), u64::from(got.height())],
            size,
            "{name}"
        );
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diff = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert_eq!(diff, 0, "{name} ({info}): max abs diff {diff} vs Pillow");
    }
}
