//! The train stage end to end on the tiny fixture model (tests/fixtures/train/model) and a
//! generated 6-image dataset entry, and its one-line input errors.

use crate::score_support as support;

use pipeline::adapter::peft::WEIGHTS_FILE;
use pipeline::adapter::read_peft_state;
use pipeline::adapter::targets::TargetModules;
use pipeline::data::record::{Label, Record, RecordImage};
use pipeline::experiment::schema::{Common, TrainParams};
use pipeline::graph::{Stage, StageError};
use pipeline::safetensors_io;
use pipeline::stages::train::TrainStage;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train")
}

fn common(num_labels: usize, model_dir: &Path) -> Common {
    support::common_for(model_dir, num_labels, None)
}

/// Train params from TOML lines (on top of ms-swift defaults).
fn params(extra: &str) -> TrainParams {
    let rank = if extra.contains("lora_rank") {
        ""
    } else {
        "lora_rank = 4\n"
    };
    toml::from_str(&format!("needs = [\"data\"]\n{rank}{extra}")).unwrap()
}

/// A dataset entry: `train.jsonl` (6 rows) and, with `val`, `val.jsonl` (3 rows); 56×56 PNGs.
fn dataset(dir: &Path, val: bool) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let write = |split: &str, n: usize| {
        let mut lines = String::new();
        for i in 0..n {
            let file = format!("images/{split}_{i}.png");
            let img = image::RgbImage::from_fn(56, 56, |x, y| {
                image::Rgb([(x * 4 + i as u32 * 30) as u8, (y * 4) as u8, (i * 40) as u8])
            });
            img.save(dir.join(&file)).unwrap();
            // <|im_start|> t <|vision_start|> <|image_pad|>×4 <|vision_end|> t… <|im_end|> \n
            let mut ids = vec![257, 65 + i as u32, 259, 261, 261, 261, 261, 260];
            ids.extend(std::iter::repeat_n(97, i % 3));
            ids.extend([258, 10]);
            let rec = Record {
                index: i,
                input_ids: ids,
                label: Some(Label::Class(i % 3)),
                images: vec![RecordImage {
                    file,
                    source: format!("{split}_{i}.png"),
                    orig_hw: [56, 56],
                    grid_thw: [1, 4, 4],
                }],
                messages: Vec::new(),
            };
            lines.push_str(&serde_json::to_string(&rec).unwrap());
            lines.push('\n');
        }
        std::fs::write(dir.join(format!("{split}.jsonl")), lines).unwrap();
    };
    write("train", 6);
    if val {
        write("val", 3);
    }
}

/// Run `stage` with `data_dir` as its dataset upstream, output in `out`.
fn run(stage: &TrainStage, data_dir: &Path, out: &Path) -> Result<(), StageError> {
    support::run_stage(stage, "train", out, &[("data", "dataset", data_dir)])
}

fn input_error(r: Result<impl std::fmt::Debug, StageError>) -> String {
    match r {
        Err(StageError::Input(m)) => {
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn trains_and_writes_every_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, true);
    let p = params(
        "max_steps = 3\nper_device_train_batch_size = 2\nlearning_rate = 1e-3\neval_steps = 1\nsave_steps = 2\nlogging_steps = 1",
    );
    let stage = TrainStage::new(p, &common(3, &fixtures().join("model"))).unwrap();
    assert_eq!(stage.kind(), "train");
    assert!(stage.resumable());
    assert_eq!(stage.required_inputs(), ["dataset"]);
    let files = stage.input_files().unwrap();
    assert!(
        files.iter().any(|f| f.ends_with("model.safetensors"))
            && files.iter().any(|f| f.ends_with("config.json"))
    );
    let params = stage.params();
    assert!(params["train"].get("needs").is_none());
    assert_eq!(params["train"]["lora_rank"], 4);

    let out = tmp.path().join("out");
    run(&stage, &data, &out).unwrap();
    for f in [
        "logging.jsonl",
        "best",
        "metrics.json",
        "train_curves.png",
        "adapter/adapter_config.json",
        "checkpoint-2",
        "checkpoint-3",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let (cfg, tensors) = read_peft_state(&out.join("adapter")).unwrap();
    // all-linear with the default freeze_vit = true: LLM layers only, as a regex.
    let TargetModules::Regex(re) = &cfg.target_modules else {
        panic!("{:?}", cfg.target_modules)
    };
    assert!(
        re.contains("language_model") && !re.contains("visual"),
        "{re}"
    );
    // 2 layers × 7 projections × (A, B) + score.
    assert_eq!(tensors.len(), 2 * 7 * 2 + 1);
    let log = std::fs::read_to_string(out.join("logging.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"eval_loss\"")).count(),
        3
    );
    // A second run with the same output directory resumes from checkpoint-3: nothing to do.
    let before = std::fs::read(out.join("adapter").join(WEIGHTS_FILE)).unwrap();
    run(&stage, &data, &out).unwrap();
    assert_eq!(
        before,
        std::fs::read(out.join("adapter").join(WEIGHTS_FILE)).unwrap()
    );
}

#[test]
fn bad_params_are_one_line_input_errors() {
    let c = common(3, &fixtures().join("model"));
    let cases = [
        ("lora_rank = 0", "lora_rank must be ≥ 1"),
        ("learning_rate = 0.0", "learning_rate must be > 0"),
        ("learning_rate = -1e-4", "learning_rate must be > 0"),
        (
            "gradient_accumulation_steps = 0",
            "gradient_accumulation_steps must be ≥ 1",
        ),
        (
            "lr_scheduler_type = \"polynomial\"",
            "valid: cosine, linear, constant",
        ),
        ("metric_for_best_model = \"f1\"", "valid: loss, acc"),
        ("eval_steps = 0", "eval_steps must be ≥ 1"),
        ("target_modules = \"(unclosed\"", "not a valid regex"),
    ];
    for (line, want) in cases {
        let m = input_error(TrainStage::new(params(line), &c));
        assert!(m.contains(want), "{line}: {m}");
        assert!(
            m.contains(line.split(' ').next().unwrap()),
            "{line}: names the field: {m}"
        );
    }
    let mut regression = common(1, &fixtures().join("model"));
    regression.task.num_labels = 1;
    let m = input_error(TrainStage::new(
        params("metric_for_best_model = \"acc\""),
        &regression,
    ));
    assert!(m.contains("regression"), "{m}");
}

#[test]
fn data_and_model_mismatches_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let train_only = tmp.path().join("train_only");
    dataset(&data, true);
    dataset(&train_only, false);
    let model = fixtures().join("model");
    let out = |n: &str| tmp.path().join(n);

    // Unknown target module: the message lists what exists.
    let s = TrainStage::new(params("target_modules = [\"qq_proj\"]"), &common(3, &model)).unwrap();
    let m = input_error(run(&s, &data, &out("a")));
    assert!(
        m.contains("qq_proj") && m.contains("self_attn.q_proj"),
        "{m}"
    );

    // eval_steps without a val split.
    let s = TrainStage::new(params("eval_steps = 2"), &common(3, &model)).unwrap();
    let m = input_error(run(&s, &train_only, &out("b")));
    assert!(m.contains("eval_steps") && m.contains("val"), "{m}");

    // An adapter whose score head has 3 labels, for a 5-label task.
    let adapter = fixtures().join("initial_adapter");
    let s = TrainStage::new(
        params(&format!("adapter = {:?}", adapter.display().to_string())),
        &common(5, &model),
    )
    .unwrap();
    let m = input_error(run(&s, &data, &out("c")));
    assert!(
        m.contains("3 labels") && m.contains("num_labels = 5"),
        "{m}"
    );

    // A model directory whose checkpoint has a 3-row score head, for a 5-label task.
    let m3 = tmp.path().join("model3");
    std::fs::create_dir_all(&m3).unwrap();
    std::fs::copy(model.join("config.json"), m3.join("config.json")).unwrap();
    let mut w = safetensors_io::read_tensors(&model.join("model.safetensors")).unwrap();
    w.push((
        "score.weight".into(),
        burn::tensor::TensorData::new(vec![0.01f32; 3 * 32], [3, 32]),
    ));
    safetensors_io::write_tensors(&m3.join("model.safetensors"), &w).unwrap();
    let s = TrainStage::new(params(""), &common(5, &m3)).unwrap();
    let m = input_error(run(&s, &data, &out("d")));
    assert!(
        m.contains("score.weight has 3 labels") && m.contains("num_labels = 5"),
        "{m}"
    );
}
