//! Eval-forward throughput of the classifier on CPU (Flex), one JSON line on stdout.
//!
//! Same workload as `python3 shared/bench/torch_baseline.py --config <cfg> --device cpu
//! --pixels 12544 --text 40`: one 112×112 image (grid [1, 8, 8], 16 image tokens) inside a
//! 57-token prompt, batch 1 (`--batch N` for batched throughput), random tiny weights,
//! LoRA r=32 on all LLM and ViT linear layers like the baseline (`--lora 0` for none).
//! `--backward` times forward + backward (Autodiff) instead of the eval forward.
//!
//!     cargo run --release --example bench_forward -- [--preset tiny] [--batch 1] [--iters 20]
//!         [--lora 32] [--backward] [--config-out /tmp/tiny_config.json]
//!
//! `--config-out` writes the preset as a config.json for the PyTorch baseline.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use pipeline::backend::CpuBackend;
use pipeline::model::inputs::{PaddingSide, SampleInputs, collate};
use pipeline::model::lora::{LoraSpec, TargetSelector};
use pipeline::model::presets::{preset_config, to_hf_json};
use pipeline::model::{ModelConfig, SeqClassifier, WeightsSource, load_classifier_from};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The baseline's sample: `<|im_start|>`-like token, 20 words, one image, the rest words.
fn sample(cfg: &ModelConfig, grid: [usize; 3], text: usize) -> SampleInputs {
    let tok = cfg.tokens;
    let n_img = grid.iter().product::<usize>() / cfg.vision.merge_unit();
    let words = |n: usize, salt: usize| (0..n).map(move |i| ((i * 31 + salt * 7) % 250) as u32);
    let mut ids: Vec<u32> = vec![tok.vision_start_token_id.saturating_sub(2)];
    ids.extend(words(20, 1));
    ids.push(tok.vision_start_token_id);
    ids.extend(std::iter::repeat_n(tok.image_token_id, n_img));
    ids.push(tok.vision_end_token_id);
    ids.extend(words(text.saturating_sub(22), 2));
    let patches = grid.iter().product::<usize>();
    let pixel_rows = (0..patches * cfg.vision.patch_dim())
        .map(|i| ((i % 255) as f32 / 127.0) - 1.0)
        .collect();
    SampleInputs {
        input_ids: ids,
        pixel_rows,
        grids: vec![grid],
    }
}

fn model<Bk: Backend>(preset: &str, rank: usize) -> anyhow::Result<SeqClassifier<Bk>> {
    let device = Default::default();
    let m = load_classifier_from::<Bk>(WeightsSource::Preset(preset), 11, DType::F32, 0, &device)?;
    if rank == 0 {
        return Ok(m);
    }
    // Like the baseline: LoRA r = alpha on every LLM and ViT linear layer (merger frozen).
    let targets = TargetSelector::AllLinear {
        vit: true,
        aligner: false,
        llm: true,
    };
    let spec = LoraSpec {
        r: rank,
        alpha: rank as f64,
        dropout: 0.05,
        use_rslora: false,
        targets,
    };
    Ok(m.apply_lora(&spec, 0)?)
}

/// Seconds per call of `step`, after 3 warm-up calls.
fn time(iters: usize, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let preset = arg(&args, "--preset", "tiny");
    let batch: usize = arg(&args, "--batch", "1").parse()?;
    let iters: usize = arg(&args, "--iters", "20").parse()?;
    let rank: usize = arg(&args, "--lora", "32").parse()?;
    let backward = args.iter().any(|a| a == "--backward");
    let cfg = preset_config(&preset)?;
    if let Some(path) = args
        .iter()
        .position(|a| a == "--config-out")
        .and_then(|i| args.get(i + 1))
    {
        // The PyTorch baseline hard-codes Qwen's token ids (up to 151656): give it the
        // real vocabulary size; the compute is otherwise identical.
        let mut base = cfg.clone();
        base.text.vocab_size = base.text.vocab_size.max(152064);
        std::fs::write(path, serde_json::to_string_pretty(&to_hf_json(&base))?)?;
    }
    let grid = [1usize, 8, 8];
    let s = sample(&cfg, grid, 40);
    let samples: Vec<&SampleInputs> = (0..batch).map(|_| &s).collect();
    let secs = if backward {
        type AB = Autodiff<CpuBackend>;
        let m = model::<AB>(&preset, rank)?;
        time(iters, || {
            let x = collate::<AB>(&samples, 256, PaddingSide::Right, &Default::default());
            let grads = m.forward(&x)?.sum().backward();
            drop(grads);
            Ok(())
        })?
    } else {
        let m = model::<CpuBackend>(&preset, rank)?;
        time(iters, || {
            let x = collate::<CpuBackend>(&samples, 256, PaddingSide::Left, &Default::default());
            let _ = m.forward(&x)?.into_data();
            Ok(())
        })?
    };
    let line = serde_json::json!({
        "bench": if backward { "forward_backward" } else { "eval_forward" },
        "backend": "flex-cpu", "preset": preset, "dtype": "float32", "batch": batch,
        "lora_rank": rank, "seq_tokens": s.input_ids.len(), "vision_patches": grid.iter().product::<usize>(),
        "grid": grid, "threads": rayon::current_num_threads(), "seconds_per_batch": secs,
        "samples_per_s": batch as f64 / secs,
    });
    println!("{line}");
    Ok(())
}
