//! Bad files and sizes: one `error:` line naming the file (or `file:line:column` and the
//! key), exit 2, before anything runs — never an abort or a panic.

use std::path::Path;

use super::{BASE, line_of, pipeline, project};

fn interop() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop")
}

/// A project training the interop fixture model (a `[model] path`), copied so its
/// weights can be damaged.
fn path_model_project(extra_train: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(interop().join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let data = interop().join("data/test.jsonl").display().to_string();
    let text = format!(
        "name = \"pm\"\n[model]\npath = \"model\"\ntorch_dtype = \"float32\"\ndevice = \"cpu\"\n\
         [task]\nnum_labels = 3\n[stages.data]\nkind = \"dataset\"\ndataset = {data:?}\n\
         max_pixels = 25088\n[stages.train]\nkind = \"train\"\nneeds = [\"data\"]\nlora_rank = 4\n\
         max_steps = 1\n{extra_train}"
    );
    std::fs::write(dir.path().join("exp.toml"), text).unwrap();
    dir
}

/// `plan` and `run` both refuse with one line naming `file` and containing `parts`.
#[track_caller]
fn refused(dir: &Path, file: &str, parts: &[&str]) {
    for cmd in ["plan", "run"] {
        let out = pipeline(dir, &[cmd, "exp.toml"], &[], 2);
        let line = out.one_error_line();
        assert!(line.contains(file), "{}", out.shown);
        for p in parts {
            assert!(line.contains(p), "`{p}` missing:\n{}", out.shown);
        }
    }
    assert!(!dir.join("runs/cache/.partial").exists(), "nothing ran");
}

#[test]
fn damaged_weights_are_one_line_naming_the_file() {
    let p = path_model_project("");
    let weights = p.path().join("model/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    pipeline(p.path(), &["plan", "exp.toml"], &[], 0);
    let with_len = |n: u64| {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(&good[8..]);
        b
    };
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, bytes) in [
        ("2^60 header", with_len(1 << 60)),
        ("2^63 header", with_len(1 << 63)),
        ("random bytes", random),
        ("truncated", good[..good.len() - 100].to_vec()),
        ("empty", vec![]),
    ] {
        std::fs::write(&weights, &bytes).unwrap();
        let out = pipeline(p.path(), &["run", "exp.toml"], &[], 2);
        let line = out.one_error_line();
        assert!(
            line.contains("model/model.safetensors")
                && line.contains("not a valid safetensors file"),
            "{what}:\n{}",
            out.shown
        );
    }
}

#[test]
fn a_damaged_adapter_is_one_line_naming_the_file() {
    let p = path_model_project("adapter = \"adapter\"\n");
    let adapter = p.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let src = interop().join("peft_new");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), adapter.join(f)).unwrap();
    }
    let w = adapter.join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        p.path(),
        "adapter/adapter_model.safetensors",
        &["not a valid safetensors file"],
    );
}

#[test]
fn a_rank_above_the_smallest_targeted_layer_is_refused_at_plan_time() {
    let text = BASE.replace("lora_rank = 4", "lora_rank = 100000");
    let p = project(&text);
    let out = pipeline(p.path(), &["plan", "exp.toml"], &[], 2);
    let line = out.one_error_line();
    let at = format!(
        "error: exp.toml:{}:13: stages.train.lora_rank: ",
        line_of(&text, "lora_rank")
    );
    assert!(line.starts_with(&at), "{}", out.shown);
    assert!(
        line.contains("lora_rank 100000 is larger than the smallest targeted layer"),
        "{line}"
    );
    assert!(line.contains("use at most 64"), "{line}");

    // Swept: the error points at the sweep entry and names the variant.
    let text = format!("{BASE}\n[sweep]\n\"stages.train.lora_rank\" = [4, 100000]\n");
    let p = project(&text);
    let out = pipeline(p.path(), &["run", "exp.toml"], &[], 2);
    let line = out.one_error_line();
    let at = format!(
        "error: exp.toml:{}:",
        line_of(&text, "\"stages.train.lora_rank\"")
    );
    assert!(line.starts_with(&at), "{}", out.shown);
    assert!(line.contains("(in train [r100000])"), "{line}");
    assert!(
        !p.path().join("runs/cache/.partial").exists(),
        "nothing ran"
    );
}

#[test]
fn a_memory_estimate_above_the_device_is_refused_at_plan_time() {
    // 10^6 labels: a 10^12-cell confusion matrix for the score stage (8 TB).
    let text = format!(
        "{}\n[stages.score]\nkind = \"score\"\nneeds = [\"data\", \"train\"]\n",
        BASE.replace("num_labels = 11", "num_labels = 1000000")
    );
    let p = project(&text);
    let out = pipeline(p.path(), &["run", "exp.toml"], &[], 2);
    let line = out.one_error_line();
    let at = format!("error: exp.toml:{}:", line_of(&text, "num_labels"));
    assert!(line.starts_with(&at), "{}", out.shown);
    // The score stage's confusion matrix (8 TB) exceeds any machine; on a small one the
    // train stage's 2 GB score head (×4) may be refused first.
    assert!(
        line.contains("task.num_labels: stage `")
            && line.contains("needs at least")
            && line.contains("MemAvailable"),
        "{line}"
    );
    assert!(
        line.contains("stage `train`") || line.contains("confusion matrix 8.0 TB"),
        "{line}"
    );
}

#[test]
fn target_modules_that_match_nothing_are_refused_at_plan_time() {
    for (value, says) in [
        (
            "\"nothing_here.*\"",
            "the regex \"nothing_here.*\" matches no linear layer",
        ),
        (
            "[\"q_proj\", \"nope_proj\"]",
            "nope_proj match(es) no linear layer",
        ),
    ] {
        let text = BASE.replace(
            "lora_rank = 4",
            &format!("lora_rank = 4\ntarget_modules = {value}"),
        );
        let p = project(&text);
        let out = pipeline(p.path(), &["run", "exp.toml"], &[], 2);
        let line = out.one_error_line();
        let at = format!(
            "error: exp.toml:{}:18: stages.train.target_modules: {says}",
            line_of(&text, "target_modules")
        );
        assert!(line.starts_with(&at), "{}", out.shown);
        assert!(
            line.contains("model.language_model.layers.*.self_attn.q_proj"),
            "{line}"
        );
        assert!(
            !line.contains("Regex(") && !line.contains("Names("),
            "{line}"
        );
        assert!(
            !p.path().join("runs/cache/.partial").exists(),
            "the dataset stage did not run"
        );
    }
}

#[test]
fn dataset_mistakes_are_one_accurate_line() {
    // `dataset` naming a directory.
    let p = project(BASE);
    std::fs::create_dir_all(p.path().join("data/dir.jsonl")).unwrap();
    let text = BASE.replace("data/train.jsonl", "data/dir.jsonl");
    std::fs::write(p.path().join("exp.toml"), &text).unwrap();
    let out = pipeline(p.path(), &["plan", "exp.toml"], &[], 2);
    let line = out.one_error_line();
    assert!(
        line.starts_with(&format!("error: exp.toml:{}:", line_of(&text, "dir.jsonl"))),
        "{line}"
    );
    assert!(
        line.contains("data/dir.jsonl is a directory; expected a file"),
        "{line}"
    );

    let bad_rows = |rows: &[u8], says: &str| {
        let p = project(BASE);
        std::fs::write(p.path().join("data/train.jsonl"), rows).unwrap();
        let out = pipeline(p.path(), &["plan", "exp.toml"], &[], 2);
        let line = out.one_error_line();
        assert!(line.contains(says), "`{says}` missing:\n{}", out.shown);
        assert!(line.contains("data/train.jsonl:"), "{line}");
    };
    let img_dir = tempfile::tempdir().unwrap();
    let row = |image: &str| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"<image>x\"}}], \"images\": [{image:?}], \"label\": 1}}\n"
        )
    };
    let dir_row = row(&img_dir.path().display().to_string());
    bad_rows(dir_row.as_bytes(), "is a directory");
    bad_rows(
        row("").as_bytes(),
        "images[0] is an empty string; expected an image path",
    );
    // Non-UTF-8 bytes on the second line: named with its line.
    let mut bytes = row(&img_dir.path().join("a.png").display().to_string()).into_bytes();
    bytes.extend_from_slice(b"{\"label\": \"\xff\xfe\"}\n");
    bad_rows(
        &bytes,
        "data/train.jsonl:2: not valid UTF-8 (byte 12 of the line)",
    );
}
