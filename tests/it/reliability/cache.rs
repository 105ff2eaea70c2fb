//! The cache verifies itself: entries record every file's size and blake3, a hit checks
//! the sizes, `pipeline verify` the digests; a broken entry is one warning and a rerun.
//! `gc` keeps resumable work. The key holds what changes an output and nothing else.

use std::path::Path;

use serde_json::Value;

use super::{BASE, entry, pipeline, planned_entry, project, set_mtime, train_partial};

fn manifest(entry: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(entry.join("manifest.json")).unwrap()).unwrap()
}

fn run(dir: &Path) -> super::Out {
    pipeline(dir, &["run", "exp.toml"], &[], 0)
}

#[test]
fn manifests_record_every_file_and_a_truncated_one_is_recomputed() {
    let p = project(BASE);
    run(p.path());
    let train = entry(p.path(), "train");
    let m = manifest(&train);
    let files = m["artifacts"].as_array().unwrap();
    let adapter = files
        .iter()
        .find(|a| a["path"] == "adapter/adapter_model.safetensors")
        .expect("the adapter is recorded");
    let bytes = std::fs::read(train.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter["size"], bytes.len());
    assert_eq!(adapter["blake3"], blake3::hash(&bytes).to_hex().as_str());
    assert!(files.iter().all(|a| a["path"] != "manifest.json"));

    // A truncated adapter inside the complete entry: a miss with one warning, recomputed
    // to the same bytes.
    std::fs::write(
        train.join("adapter/adapter_model.safetensors"),
        &bytes[..100],
    )
    .unwrap();
    let out = run(p.path());
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('⚠')).collect();
    assert_eq!(warnings.len(), 1, "{}", out.shown);
    assert!(
        warnings[0].contains("adapter/adapter_model.safetensors has 100 bytes")
            && warnings[0].contains("recomputing"),
        "{}",
        out.shown
    );
    assert_eq!(out.counts(), (1, 1), "train recomputed, data cached");
    let again = std::fs::read(entry(p.path(), "train").join("adapter/adapter_model.safetensors"));
    assert_eq!(again.unwrap(), bytes);
    assert_eq!(run(p.path()).counts(), (0, 2));
}

#[test]
fn a_dataset_entry_that_lost_rows_is_not_trained_on() {
    let p = project(BASE);
    run(p.path());
    let data = entry(p.path(), "dataset");
    let rows = std::fs::read_to_string(data.join("train.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 8);
    let first: String = rows.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(data.join("train.jsonl"), first).unwrap();
    let out = pipeline(p.path(), &["run", "exp.toml", "--force", "train"], &[], 0);
    assert!(
        out.stderr.contains("train.jsonl has") && out.stderr.contains("recomputing"),
        "{}",
        out.shown
    );
    assert_eq!(out.counts(), (2, 0));
    let rows = std::fs::read_to_string(entry(p.path(), "dataset").join("train.jsonl")).unwrap();
    assert_eq!(
        rows.lines().count(),
        8,
        "recomputed before training used it"
    );
    let log = std::fs::read_to_string(entry(p.path(), "train").join("logging.jsonl")).unwrap();
    assert!(log.contains("\"global_step/max_steps\":\"2/2\""), "{log}");
}

#[test]
fn verify_finds_damage_a_size_check_cannot_and_evicts_it() {
    let p = project(BASE);
    run(p.path());
    let out = pipeline(p.path(), &["verify"], &[], 0);
    assert!(
        out.stdout.contains("verified 2 cache entries") && out.stdout.contains("0 broken"),
        "{}",
        out.shown
    );

    // Same size, one byte flipped: hits still pass the size check ...
    let data = entry(p.path(), "dataset");
    let f = data.join("val.jsonl");
    let mut bytes = std::fs::read(&f).unwrap();
    let i = bytes.iter().position(|&b| b == b'1').unwrap();
    bytes[i] = b'2';
    std::fs::write(&f, &bytes).unwrap();
    assert_eq!(run(p.path()).counts(), (0, 2));
    // ... `verify` does not.
    let out = pipeline(p.path(), &["verify", "--dry-run"], &[], 1);
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.stdout.contains(&format!("broken runs/cache/{name}: "))
            && out
                .stdout
                .contains("val.jsonl does not match its recorded digest"),
        "{}",
        out.shown
    );
    assert!(data.exists(), "--dry-run keeps it");
    let out = pipeline(p.path(), &["verify"], &[], 1);
    assert!(
        out.stdout.contains("removed") && out.stderr.contains("error: 1 cache entry"),
        "{}",
        out.shown
    );
    assert!(!data.exists());
    // The next run recomputes it (the train entry, same key upstream, stays cached).
    assert_eq!(run(p.path()).counts(), (1, 1));
    pipeline(p.path(), &["verify"], &[], 0);
}

#[test]
fn gc_keeps_an_interrupted_trainings_checkpoints_unless_asked() {
    let p = project(BASE);
    let stop = [("PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS", "1")];
    pipeline(p.path(), &["run", "exp.toml"], &stop, 1);
    let partial = train_partial(p.path());
    assert!(partial.join("checkpoint-1").is_dir());
    let out = pipeline(p.path(), &["gc"], &[], 0);
    let name = partial.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.stdout.contains(&format!(
            "kept runs/cache/.partial/{name} (an interrupted stage resumes from it"
        )),
        "{}",
        out.shown
    );
    assert!(partial.join("checkpoint-1").is_dir(), "kept");
    let out = run(p.path());
    assert!(
        out.stderr.contains("resumed from checkpoint-1"),
        "{}",
        out.shown
    );

    let p = project(BASE);
    pipeline(p.path(), &["run", "exp.toml"], &stop, 1);
    let out = pipeline(p.path(), &["gc", "--partials"], &[], 0);
    assert!(
        out.stdout.contains("removed") && out.stdout.contains(".partial/train-"),
        "{}",
        out.shown
    );
    let left: Vec<_> = std::fs::read_dir(p.path().join("runs/cache/.partial"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = run(p.path());
    assert!(!out.stderr.contains("resumed"), "{}", out.shown);
}

#[test]
fn the_seed_keys_only_stages_it_changes() {
    let p = project(BASE);
    run(p.path());
    let text = BASE.replace("seed = 3", "seed = 4");
    std::fs::write(p.path().join("exp.toml"), &text).unwrap();
    let plan = pipeline(p.path(), &["plan", "exp.toml"], &[], 0).stdout;
    assert!(
        plan.lines()
            .any(|l| l.starts_with("  data ") && l.ends_with("cached")),
        "{plan}"
    );
    assert!(plan.contains("seed 3 → 4"), "{plan}");
    assert_eq!(run(p.path()).counts(), (1, 1), "only the training reruns");
    let m = manifest(&entry(p.path(), "dataset"));
    assert_eq!(m["seed"], Value::Null);
}

#[test]
fn the_device_kind_and_compute_dtype_enter_the_key() {
    // bfloat16 computed on the CPU (in float32) and on a GPU (in bfloat16) must not share
    // an entry; the dataset stage runs on neither and keeps its key. Planning needs no GPU.
    let bf16 = BASE.replace("torch_dtype = \"float32\"", "torch_dtype = \"bfloat16\"");
    let p = project(&bf16);
    let plan = |text: &str| {
        std::fs::write(p.path().join("exp.toml"), text).unwrap();
        pipeline(p.path(), &["plan", "exp.toml"], &[], 0).stdout
    };
    let gpu = plan(&bf16.replace("device = \"cpu\"", "device = \"cuda\""));
    // Last, so the run below trains on the CPU.
    let cpu = plan(&bf16);
    assert_eq!(planned_entry(&cpu, "data"), planned_entry(&gpu, "data"));
    assert_ne!(planned_entry(&cpu, "train"), planned_entry(&gpu, "train"));
    run(p.path());
    let m = manifest(&entry(p.path(), "train"));
    assert_eq!(m["device"]["device"], "cpu");
    assert_eq!(m["device"]["compute_dtype"], "float32");
}

#[test]
fn an_in_place_edit_with_its_mtime_put_back_is_seen() {
    let p = project(BASE);
    let f = p.path().join("data/train.jsonl");
    // Settled (older than the stat cache's racy window), so its digest is cached by stat.
    let mtime = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    set_mtime(&f, mtime);
    run(p.path());
    let text = std::fs::read_to_string(&f).unwrap();
    // Same size: one label digit changed.
    let i = text.find("\"label\":2").unwrap() + "\"label\":".len();
    let mut edited = text.clone().into_bytes();
    edited[i] = b'3';
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::write(&f, &edited).unwrap();
    set_mtime(&f, mtime);
    assert_eq!(std::fs::metadata(&f).unwrap().len() as usize, text.len());
    let plan = pipeline(p.path(), &["plan", "exp.toml"], &[], 0).stdout;
    assert!(
        plan.contains(&format!("input file changed: {}", f.display())),
        "{plan}"
    );
}
