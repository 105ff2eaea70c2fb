//! Benchmark (not a test): images/second of the dataset stage vs qwen-vl-utils + PIL.
//!
//! `cargo run --release --example bench_dataset [-- --max-pixels N --repeat R --out DIR]`
//!
//! Measures, on datasets/shapes11 (880 images):
//! 1. decode + RGB + smart_resize + Pillow bicubic, in parallel on all cores (the work
//!    `tools/bench_dataset.py` times for Python: PIL open/convert + `fetch_image`);
//! 2. the whole `dataset` stage (also PNG encoding of the resized images, templating,
//!    tokenization, JSONL + stats), into a temp dir;
//!
//! then runs `python3 tools/bench_dataset.py` (if it works here) and prints the ratios.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressDrawTarget};
use pipeline::data::build::{BuildOptions, SplitSource, Truncation, load_resized, resolve};
use pipeline::data::label::LabelSpec;
use pipeline::experiment::schema::{Common, DatasetParams, ModelSpec};
use pipeline::graph::{Stage, StageContext};
use pipeline::stages::dataset::DatasetStage;
use pipeline::task::ProblemType;
use rayon::prelude::*;

/// Images/second of the dataset stage against qwen-vl-utils + PIL on shapes11.
#[derive(clap::Parser)]
struct Args {
    /// Qwen's MAX_PIXELS for the smart resize.
    #[arg(long, default_value_t = 1_003_520)]
    max_pixels: u64,
    /// Runs of each measurement (the best counts).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where the stage's entries are written (default: a folder in /dev/shm, else the
    /// system's temp folder).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let Args {
        max_pixels,
        repeat,
        out,
    } = clap::Parser::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("datasets/shapes11");
    let sources = vec![
        SplitSource {
            split: "train".into(),
            path: data.join("train.jsonl"),
        },
        SplitSource {
            split: "val".into(),
            path: data.join("test.jsonl"),
        },
    ];
    let labels = LabelSpec {
        num_labels: 11,
        problem_type: ProblemType::SingleLabelClassification,
    };
    let opts = BuildOptions {
        min_pixels: 3136,
        max_pixels,
        max_length: 1 << 20,
        truncation: Truncation::Error,
        system: "You are a helpful assistant.".into(),
        labels,
    };
    let resolved = resolve(&sources, &labels)?;
    let n = resolved.images.len();
    println!(
        "{n} images, max_pixels {max_pixels}, {} threads",
        rayon::current_num_threads()
    );

    let mut best = f64::INFINITY;
    for _ in 0..repeat {
        let t0 = Instant::now();
        resolved
            .images
            .par_iter()
            .try_for_each(|(path, loc)| load_resized(path, loc, &opts).map(|_| ()))?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let resize_rate = n as f64 / best;
    println!("rust decode+resize: {resize_rate:.1} images/s (best of {repeat}: {best:.3} s)");

    let mut params: DatasetParams = toml::from_str("")?;
    params.dataset = Some(sources[0].path.display().to_string());
    params.val_dataset = Some(sources[1].path.display().to_string());
    params.max_pixels = max_pixels;
    params.max_length = 1 << 20;
    let common = Common::for_model(ModelSpec::cpu_f32(Some("tiny"), None), 11);
    let stage = DatasetStage::new(params, &common)?;
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
    let inputs = BTreeMap::new();
    let mut best = f64::INFINITY;
    // Every repeat's output stays until the end: deleting 880 files just before the next
    // repeat creates them again makes ext4 skip the just-freed inodes one by one
    // (`recently_deleted`), a cost of this loop, not of a pipeline writing a cache entry.
    let mut outputs = Vec::new();
    // Where the entries go: `--out DIR`, else RAM (/dev/shm) when there is one. On a disk
    // file system the time to create 880 files depends on its history more than on us:
    // after many benchmark runs ext4's inode allocator scans past the inodes it freed
    // (`recently_deleted`), which made the same stage 4x slower (0.19 s → 0.76 s here).
    let out_root = out.or_else(|| {
        let shm = std::path::PathBuf::from("/dev/shm");
        shm.is_dir().then_some(shm)
    });
    println!(
        "stage outputs under {}",
        out_root.as_ref().map_or_else(
            || std::env::temp_dir().display().to_string(),
            |p| p.display().to_string()
        )
    );
    for _ in 0..repeat {
        let tmp = out_root
            .as_ref()
            .map_or_else(tempfile::tempdir, tempfile::tempdir_in)?;
        let ctx = StageContext {
            name: "bench",
            key: "bench",
            out_dir: tmp.path(),
            inputs: &inputs,
            device: None,
            devices: &[],
            progress: &progress,
        };
        let t0 = Instant::now();
        stage.run(&ctx)?;
        best = best.min(t0.elapsed().as_secs_f64());
        outputs.push(tmp);
    }
    drop(outputs);
    let stage_rate = n as f64 / best;
    println!(
        "rust dataset stage (incl. PNG write, tokenize): {stage_rate:.1} images/s ({best:.3} s)"
    );

    let py = Command::new("python3")
        .arg(root.join("tools/bench_dataset.py"))
        .args([
            "--max-pixels",
            &max_pixels.to_string(),
            "--repeat",
            &repeat.to_string(),
        ])
        .output();
    match py {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{text}");
            let rate: Option<f64> = text.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            if let Some(py_rate) = rate {
                println!(
                    "ratio vs python: decode+resize {:.2}x, whole stage {:.2}x",
                    resize_rate / py_rate,
                    stage_rate / py_rate
                );
            }
        }
        _ => println!("python baseline unavailable (needs pillow + qwen-vl-utils + torchvision)"),
    }
    Ok(())
}
