//! The `dataset` stage end to end in temp dirs: records, images, stats, and the one-line
//! error of each kind of bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressDrawTarget};
use pipeline::data::record::{Label, Record, load_split};
use pipeline::data::smart_resize::smart_resize;
use pipeline::data::stats::DatasetStats;
use pipeline::experiment::schema::{Common, DatasetParams, ModelSpec};
use pipeline::graph::{Stage, StageContext, StageError};
use pipeline::model::tokenizer::{
    TINY_IM_START, TINY_IMAGE_PAD, TINY_VISION_END, TINY_VISION_START,
};
use pipeline::stages::dataset::DatasetStage;

fn common(num_labels: usize) -> Common {
    Common::for_model(ModelSpec::cpu_f32(Some("tiny"), None), num_labels)
}

fn params(train: Option<&Path>, val: Option<&Path>) -> DatasetParams {
    let toml = "kind = \"dataset\"";
    let mut p: DatasetParams =
        toml::from_str(&toml.replace("kind = \"dataset\"", "")).expect("defaults parse");
    p.dataset = train.map(|p| p.display().to_string());
    p.val_dataset = val.map(|p| p.display().to_string());
    p
}

fn run(stage: &DatasetStage, out: &Path) -> Result<(), StageError> {
    std::fs::create_dir_all(out).unwrap();
    let inputs = BTreeMap::new();
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
    let ctx = StageContext {
        name: "data",
        key: "test",
        out_dir: out,
        inputs: &inputs,
        device: None,
        devices: &[],
        progress: &progress,
    };
    stage.run(&ctx)
}

fn save(dir: &Path, name: &str, w: u32, h: u32) {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            90,
            if x < w / 2 { 255 } else { 40 },
        ])
    });
    img.save(dir.join(name)).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn small_dataset_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("img")).unwrap();
    save(&d.join("img"), "a.png", 140, 140);
    save(&d.join("img"), "b.png", 50, 40); // below min_pixels
    save(&d.join("img"), "c.png", 300, 200);
    let train = write(
        d,
        "train.jsonl",
        concat!(
            r#"{"messages":[{"role":"user","content":"<image>Which?"}],"images":["img/a.png"],"label":2}"#,
            "\n\n",
            r#"{"messages":[{"role":"user","content":"no tag"}],"image":"img/b.png","label":0}"#,
            "\n",
            r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"<image> vs <image>"}],"images":["img/c.png","img/a.png"],"label":2}"#,
            "\n"
        ),
    );
    let val = write(
        d,
        "val.json",
        r#"[{"messages":[{"role":"user","content":"x"}],"images":["img/c.png"],"label":1},
            {"messages":[{"role":"user","content":"unlabeled"}],"images":["img/b.png"]}]"#,
    );
    let mut p = params(Some(&train), Some(&val));
    p.max_pixels = 12544;
    let stage = DatasetStage::new(p, &common(3)).unwrap();
    assert_eq!(stage.kind(), "dataset");
    let files = stage.input_files().unwrap();
    assert_eq!(files.len(), 2 + 3, "{files:?}"); // 2 datasets + 3 distinct images
    let keys: Vec<String> = stage
        .params()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "params keys are canonical (sorted)");

    let out = d.join("out");
    run(&stage, &out).unwrap();
    let train_recs = load_split(&out, "train").unwrap().unwrap();
    let val_recs = load_split(&out, "val").unwrap().unwrap();
    assert_eq!(train_recs.len(), 3);
    assert_eq!(val_recs.len(), 2);
    assert_eq!(train_recs[1].index, 1, "blank lines are not rows");
    assert_eq!(val_recs[1].label, None);
    assert_eq!(train_recs[2].label, Some(Label::Class(2)));

    let check = |r: &Record| {
        let pads = r.input_ids.iter().filter(|&&t| t == TINY_IMAGE_PAD).count();
        let want: usize = r
            .images
            .iter()
            .map(|im| im.grid_thw.iter().product::<usize>() / 4)
            .sum();
        assert_eq!(pads, want, "record {}: image pads = t*h*w/4", r.index);
        assert_eq!(
            r.input_ids
                .iter()
                .filter(|&&t| t == TINY_VISION_START)
                .count(),
            r.images.len()
        );
        assert_eq!(
            r.input_ids
                .iter()
                .filter(|&&t| t == TINY_VISION_END)
                .count(),
            r.images.len()
        );
        assert_eq!(r.input_ids[0], TINY_IM_START);
        assert_eq!(*r.input_ids.last().unwrap(), u32::from(b'\n'));
        for im in &r.images {
            let [h, w] = im.orig_hw;
            let (nh, nw) = smart_resize(h, w, 28, 3136, 12544).unwrap();
            assert_eq!(im.grid_thw, [1, nh as usize / 14, nw as usize / 14]);
            let png = image::open(out.join(&im.file)).unwrap();
            assert_eq!((png.height(), png.width()), (nh, nw));
            assert!(
                matches!(png, image::DynamicImage::ImageRgb8(_)),
                "resized images are RGB"
            );
        }
    };
    train_recs.iter().chain(&val_recs).for_each(check);
    assert_eq!(train_recs[0].images[0].grid_thw, [1, 8, 8]); // 140² → 112²
    assert_eq!(train_recs[1].images[0].grid_thw, [1, 4, 6]); // 40×50 → 56×84
    assert_eq!(train_recs[2].images[0].grid_thw, [1, 6, 8]); // 200×300 → 84×112
    assert_eq!(
        train_recs[2].images[1].file, train_recs[0].images[0].file,
        "images deduplicated"
    );
    // The system message of row 2 replaces the default one.
    let text: Vec<u8> = train_recs[2]
        .input_ids
        .iter()
        .filter(|&&t| t < 256)
        .map(|&t| t as u8)
        .collect();
    assert!(
        String::from_utf8_lossy(&text).starts_with("system\nS"),
        "{}",
        String::from_utf8_lossy(&text)
    );

    let stats: DatasetStats =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    let t = &stats.splits["train"];
    assert_eq!(
        (t.rows, t.rows_deleted, t.labels.get(&2), t.labels.get(&0)),
        (3, 0, Some(&2), Some(&1))
    );
    assert_eq!(stats.splits["val"].unlabeled_rows, 1);
    assert_eq!(
        (
            stats.images.distinct,
            stats.images.resized_up,
            stats.images.resized_down
        ),
        (3, 1, 2)
    );
    let lens = t.token_length.as_ref().unwrap();
    assert_eq!(
        lens.max,
        train_recs.iter().map(|r| r.input_ids.len()).max().unwrap()
    );

    // max_length: error lists the rows; delete drops them and counts.
    let longest = lens.max;
    let long_row = train_recs
        .iter()
        .find(|r| r.input_ids.len() == longest)
        .unwrap()
        .index;
    assert_eq!(
        train_recs
            .iter()
            .filter(|r| r.input_ids.len() == longest)
            .count(),
        1
    );
    let mut p = params(Some(&train), None);
    // ms-swift 4's default drops over-long rows; `raise` lists them.
    assert_eq!(p.truncation_strategy, "delete");
    p.truncation_strategy = "raise".into();
    p.max_pixels = 12544;
    p.max_length = longest - 1;
    let e = run(
        &DatasetStage::new(p.clone(), &common(3)).unwrap(),
        &d.join("o2"),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StageError::Input(_)));
    assert!(
        msg.contains("1 rows longer than max_length")
            && msg.contains(&format!("{long_row}: {longest}")),
        "{msg}"
    );
    p.truncation_strategy = "delete".into();
    run(
        &DatasetStage::new(p.clone(), &common(3)).unwrap(),
        &d.join("o3"),
    )
    .unwrap();
    let kept = load_split(&d.join("o3"), "train").unwrap().unwrap();
    let want: Vec<usize> = (0..3).filter(|&i| i != long_row).collect();
    assert_eq!(kept.iter().map(|r| r.index).collect::<Vec<_>>(), want);
    let stats: DatasetStats =
        serde_json::from_str(&std::fs::read_to_string(d.join("o3/stats.json")).unwrap()).unwrap();
    assert_eq!(
        (
            stats.splits["train"].rows_deleted,
            &stats.splits["train"].deleted_rows
        ),
        (1, &vec![long_row])
    );
    // `left` / `right` cut text tokens from that end and keep every image pad.
    let full = &train_recs[long_row].input_ids;
    let pad = 151655;
    for (strategy, o) in [("left", "o4"), ("right", "o5")] {
        p.truncation_strategy = strategy.into();
        run(
            &DatasetStage::new(p.clone(), &common(3)).unwrap(),
            &d.join(o),
        )
        .unwrap();
        let recs = load_split(&d.join(o), "train").unwrap().unwrap();
        assert_eq!(recs.len(), 3, "{strategy} keeps every row");
        let cut = &recs[long_row].input_ids;
        assert_eq!(cut.len(), longest - 1, "{strategy}");
        assert_eq!(
            cut.iter().filter(|&&t| t == pad).count(),
            full.iter().filter(|&&t| t == pad).count(),
            "{strategy} keeps the image pads"
        );
        let dropped = if strategy == "left" {
            full.iter().position(|&t| t != pad).unwrap()
        } else {
            full.iter().rposition(|&t| t != pad).unwrap()
        };
        let mut want = full.clone();
        want.remove(dropped);
        assert_eq!(cut, &want, "{strategy}");
    }
}

/// Run a one-row dataset through the stage and return its error message.
fn error_of(row: &str, num_labels: usize) -> String {
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), "ok.png", 60, 60);
    std::fs::write(tmp.path().join("bad.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let train = write(tmp.path(), "t.jsonl", row);
    let stage = DatasetStage::new(params(Some(&train), None), &common(num_labels)).unwrap();
    let e = run(&stage, &tmp.path().join("out")).unwrap_err();
    assert!(
        matches!(e, StageError::Input(_)),
        "input errors exit 2: {e:?}"
    );
    let msg = e
        .to_string()
        .replace(&tmp.path().display().to_string(), "DIR");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let ok = r#"{"messages":[{"role":"user","content":"<image>q"}],"images":["ok.png"],"label":1}"#;
    assert_eq!(
        error_of(&format!("{ok}\n{{\"messages\": [}}\n"), 3),
        "DIR/t.jsonl:2: malformed JSON: expected value (column 15)"
    );
    assert_eq!(
        error_of(&format!("{ok}\n{{\"images\":[\"ok.png\"],\"label\":0}}"), 3),
        "DIR/t.jsonl:2 (row 1): row has no `messages` (a list of {\"role\", \"content\"} objects)"
    );
    assert_eq!(
        error_of(&ok.replace("\"label\":1", "\"label\":3"), 3),
        "DIR/t.jsonl:1 (row 0): label 3 is outside 0..3 (num_labels = 3)"
    );
    assert_eq!(
        error_of(&ok.replace("<image>q", "<image><image>q"), 3),
        "DIR/t.jsonl:1 (row 0): 2 <image> tags but only 1 images"
    );
    let msg = error_of(&ok.replace("ok.png", "nope.png"), 3);
    assert!(
        msg.starts_with(
            "DIR/t.jsonl:1 (row 0): image \"nope.png\" not found (looked in DIR/nope.png, "
        ),
        "{msg}"
    );
    let msg = error_of(&ok.replace("ok.png", "bad.png"), 3);
    assert!(
        msg.starts_with("DIR/t.jsonl:1 (row 0): cannot decode image DIR/bad.png: "),
        "{msg}"
    );
    let msg = error_of(&ok.replace("\"label\":1", "\"label\":\"cat\""), 3);
    assert!(
        msg.contains("label \"cat\" is not a class index (an integer in 0..3)"),
        "{msg}"
    );
    let msg = error_of(&ok.replace(",\"label\":1", ""), 3);
    assert!(
        msg.contains("row has no `label` (every training row needs one)"),
        "{msg}"
    );
    let msg = error_of(&ok.replace("\"ok.png\"", "\"ok.png\", 3"), 3);
    assert!(
        msg.contains("images[1] must be a path string, got a number"),
        "{msg}"
    );
}

#[test]
fn bad_parameters_fail_before_reading() {
    let missing = Path::new("/nonexistent/train.jsonl");
    let stage = DatasetStage::new(params(Some(missing), None), &common(3)).unwrap();
    let e = stage.input_files().unwrap_err().to_string();
    assert_eq!(e, "dataset file /nonexistent/train.jsonl not found");
    let e = |p: DatasetParams| DatasetStage::new(p, &common(3)).err().unwrap().to_string();
    assert!(e(params(None, None)).contains("needs `dataset`, `val_dataset`, or both"));
    let mut p = params(Some(missing), None);
    p.truncation_strategy = "split".into();
    assert!(
        e(p).contains("truncation_strategy \"split\" is not one of delete, left, right, raise")
    );
    let mut p = params(Some(missing), None);
    (p.min_pixels, p.max_pixels) = (12544, 3136);
    assert!(e(p).contains("max_pixels (3136) must be >= min_pixels (12544)"));
    let mut c = common(3);
    c.model.preset = None;
    let err = DatasetStage::new(params(Some(missing), None), &c)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`preset`"), "{err}");
}

#[test]
fn bundled_shapes11_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/shapes11");
    let mut p = params(
        Some(&root.join("train.jsonl")),
        Some(&root.join("test.jsonl")),
    );
    p.max_pixels = 12544;
    let stage = DatasetStage::new(p, &common(11)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    run(&stage, tmp.path()).unwrap();
    let stats: DatasetStats =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("stats.json")).unwrap())
            .unwrap();
    assert_eq!(
        (stats.splits["train"].rows, stats.splits["val"].rows),
        (660, 220)
    );
    assert!(stats.splits["train"].labels.values().all(|&n| n == 60));
    assert!(stats.splits["val"].labels.values().all(|&n| n == 20));
    assert_eq!(stats.images.distinct, 880);
    assert!(stats.images.resized_up > 0 && stats.images.resized_down > 0);
    let recs = load_split(tmp.path(), "train").unwrap().unwrap();
    let n112 = recs
        .iter()
        .filter(|r| r.images[0].grid_thw == [1, 8, 8])
        .count();
    assert!(
        n112 > 600,
        "most shapes11 images resize to 112x112 ({n112})"
    );
}
