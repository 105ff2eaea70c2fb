//! Benchmark parameters, their defaults (the seed's 7B workload) and the one flag parser
//! ([`BenchFlags`], clap) shared by the `pipeline bench` subcommand and `examples/bench.rs`.

use std::path::PathBuf;

use burn::tensor::DType;

use super::BenchError;
use crate::model::config::Depth;

/// Which phases to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Forward + backward + AdamW over the trainable (LoRA + score) parameters.
    Train,
    /// Eval forward (no autodiff), LoRA adapters unmerged like PEFT.
    Eval,
    Both,
}

impl BenchMode {
    pub fn train(self) -> bool {
        matches!(self, Self::Train | Self::Both)
    }
    pub fn eval(self) -> bool {
        matches!(self, Self::Eval | Self::Both)
    }
}

/// The model under test: a built-in preset with random weights, or a Hugging Face directory.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchModel {
    Preset(String),
    Dir(PathBuf),
}

impl std::fmt::Display for BenchModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchModel::Preset(p) => f.write_str(p),
            BenchModel::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// `--grad-ckpt on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Parse `float32`/`f32`/`bfloat16`/`bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "float32" | "f32" | "fp32" => Ok(DType::F32),
        "bfloat16" | "bf16" => Ok(DType::BF16),
        other => Err(format!("{other:?} (valid: float32, bfloat16)")),
    }
}

/// Name of a dtype as PyTorch prints it.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// One benchmark run. `Default` is the seed's workload: `qwen2.5-vl-7b` shapes with random
/// weights, one 1120×896 image (1003520 pixels → 5120 patches → 1280 image tokens) plus 120
/// text tokens, batch 1, LoRA r 32 (alpha 32, dropout 0.05) on all LLM and ViT linears, ViT
/// not frozen, score head trained; 1 warm-up + 5 timed steps of each mode.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchArgs {
    pub model: BenchModel,
    pub depth: Depth,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `None`: bfloat16 on CUDA, float32 on the CPU (like the PyTorch baseline).
    pub dtype: Option<DType>,
    pub pixels: usize,
    pub text_tokens: usize,
    pub batch: usize,
    pub lora_rank: usize,
    pub freeze_vit: bool,
    pub steps: usize,
    pub warmup: usize,
    pub mode: BenchMode,
    pub seed: u64,
    /// Data-parallel replicas of the train phase (`--nproc-per-node`).
    pub replicas: usize,
    /// Their CUDA devices (`--replica-devices cuda:0,cuda:1`); empty: `cuda:0..N-1` when
    /// visible, else all on the bench device.
    pub replica_devices: Vec<String>,
    /// Train with gradient checkpointing (`--grad-ckpt on|off`).
    pub grad_ckpt: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            model: BenchModel::Preset("qwen2.5-vl-7b".into()),
            depth: Depth::default(),
            device: "auto".into(),
            dtype: None,
            pixels: 1_003_520,
            text_tokens: 120,
            batch: 1,
            lora_rank: 32,
            freeze_vit: false,
            steps: 5,
            warmup: 1,
            mode: BenchMode::Both,
            seed: 0,
            replicas: 1,
            replica_devices: Vec::new(),
            grad_ckpt: true,
        }
    }
}

impl BenchArgs {
    /// The smallest workload: the tiny preset on the CPU, one 112×112 image and 40 text
    /// tokens at rank 4, one warm-up step (tests and smoke runs).
    pub fn tiny_cpu() -> Self {
        BenchArgs {
            model: BenchModel::Preset("tiny".into()),
            device: "cpu".into(),
            pixels: 12_544,
            text_tokens: 40,
            lora_rank: 4,
            warmup: 1,
            ..Default::default()
        }
    }
}

/// The benchmark's flags; defaults from [`BenchArgs::default`].
#[derive(Debug, clap::Args)]
pub struct BenchFlags {
    /// Built-in model shapes with random weights (tiny, qwen2.5-vl-3b, qwen2.5-vl-7b).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// A Hugging Face model directory instead of a preset.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Keep the first N LLM layers of the model or preset (its widths unchanged).
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Keep the first M ViT blocks; the last kept one gets full attention if none of them has.
    #[arg(long, value_name = "M")]
    pub vision_blocks: Option<usize>,
    /// Gradient checkpointing in the train phase (ms-swift's default: on).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub grad_ckpt: OnOff,
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value_t = BenchArgs::default().device)]
    pub device: String,
    /// float32 | bfloat16 (default: bfloat16 on CUDA, float32 on the CPU).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// Image pixels (the baseline's grid for this budget, 4:5 aspect).
    #[arg(long, default_value_t = BenchArgs::default().pixels)]
    pub pixels: usize,
    /// Text tokens around the image.
    #[arg(long, default_value_t = BenchArgs::default().text_tokens)]
    pub text: usize,
    #[arg(long, default_value_t = BenchArgs::default().batch)]
    pub batch: usize,
    /// LoRA rank on every LLM and ViT linear.
    #[arg(long, default_value_t = BenchArgs::default().lora_rank)]
    pub rank: usize,
    /// Train the LLM's LoRA only (ViT frozen).
    #[arg(long)]
    pub freeze_vit: bool,
    /// Timed steps per phase.
    #[arg(long, default_value_t = BenchArgs::default().steps)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = BenchArgs::default().warmup)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = BenchMode::Both)]
    pub mode: BenchMode,
    #[arg(long, default_value_t = BenchArgs::default().seed)]
    pub seed: u64,
    /// Data-parallel replicas of the train phase (each `--batch` samples a step).
    #[arg(long, default_value_t = BenchArgs::default().replicas)]
    pub nproc_per_node: usize,
    /// The replicas' CUDA devices, e.g. `cuda:0,cuda:0` (default: cuda:0..N-1 when visible,
    /// else all on the bench device).
    #[arg(long, value_delimiter = ',', value_name = "cuda:N,…")]
    pub replica_devices: Vec<String>,
}

impl BenchFlags {
    /// The run these flags describe, checked.
    pub fn into_args(self) -> Result<BenchArgs, BenchError> {
        let model = match (self.preset, self.model) {
            (_, Some(dir)) => BenchModel::Dir(dir),
            (Some(name), None) => BenchModel::Preset(name),
            (None, None) => BenchArgs::default().model,
        };
        let args = BenchArgs {
            model,
            depth: Depth {
                layers: self.layers,
                vision_blocks: self.vision_blocks,
            },
            device: self.device,
            dtype: self.dtype,
            pixels: self.pixels,
            text_tokens: self.text,
            batch: self.batch,
            lora_rank: self.rank,
            freeze_vit: self.freeze_vit,
            steps: self.steps,
            warmup: self.warmup,
            mode: self.mode,
            seed: self.seed,
            replicas: self.nproc_per_node,
            replica_devices: self.replica_devices,
            grad_ckpt: self.grad_ckpt == OnOff::On,
        };
        args.validate()?;
        Ok(args)
    }
}

impl BenchArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Args(m.to_string()));
        if self.batch == 0 {
            return bad("--batch must be at least 1");
        }
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        if self.lora_rank == 0 {
            return bad("--rank must be at least 1 (the benchmark trains LoRA adapters)");
        }
        if self.replicas == 0 {
            return bad("--nproc-per-node must be at least 1");
        }
        if self.depth.layers == Some(0) || self.depth.vision_blocks == Some(0) {
            return bad("--layers and --vision-blocks must be at least 1");
        }
        if self.text_tokens < 23 {
            return bad("--text must be at least 23 (the prompt frame around the image)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: BenchFlags,
    }

    fn parse(s: &str) -> Result<BenchArgs, String> {
        let argv = std::iter::once("bench").chain(s.split_whitespace());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.flags.into_args().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_seed_workload() {
        let a = parse("").unwrap();
        assert_eq!(a, BenchArgs::default());
        assert_eq!(a.model, BenchModel::Preset("qwen2.5-vl-7b".into()));
        assert_eq!((a.pixels, a.text_tokens, a.batch), (1_003_520, 120, 1));
        assert_eq!(
            (a.lora_rank, a.freeze_vit, a.mode),
            (32, false, BenchMode::Both)
        );
    }

    #[test]
    fn parses_every_flag() {
        let a = parse(
            "--preset tiny --device cpu --dtype bf16 --pixels 12544 --text 40 --batch 2 \
             --rank 16 --freeze-vit --steps 3 --warmup 0 --mode train --seed 7 --layers 2 \
             --vision-blocks 4 --nproc-per-node 2 --replica-devices cuda:0,cuda:0",
        )
        .unwrap();
        assert_eq!(a.model, BenchModel::Preset("tiny".into()));
        assert_eq!(a.dtype, Some(DType::BF16));
        assert_eq!(
            (a.pixels, a.text_tokens, a.batch, a.lora_rank),
            (12544, 40, 2, 16)
        );
        assert!(a.freeze_vit);
        assert_eq!((a.depth.layers, a.depth.vision_blocks), (Some(2), Some(4)));
        assert_eq!(
            (a.steps, a.warmup, a.mode, a.seed),
            (3, 0, BenchMode::Train, 7)
        );
        assert_eq!(a.replicas, 2);
        assert_eq!(a.replica_devices, ["cuda:0", "cuda:0"]);
        assert!(a.grad_ckpt);
        let c = parse("--model /tmp/m --layers 2 --vision-blocks 4 --grad-ckpt off").unwrap();
        assert_eq!(c.model, BenchModel::Dir("/tmp/m".into()));
        assert_eq!((c.depth.layers, c.depth.vision_blocks), (Some(2), Some(4)));
        assert!(!c.grad_ckpt);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let e = |s: &str| parse(s).unwrap_err();
        assert!(e("--dtype f16").contains("valid: float32, bfloat16"));
        assert!(e("--mode fast").contains("[possible values: train, eval, both]"));
        assert!(e("--steps").contains("a value is required"));
        assert!(e("--steps x").contains("invalid digit"));
        assert!(e("--steps 0").contains("at least 1"));
        assert!(e("--nproc-per-node 0").contains("at least 1"));
        assert!(e("--bogus 1").contains("unexpected argument"));
        assert!(e("--preset tiny --model /m").contains("cannot be used with"));
        assert!(e("--grad-ckpt yes").contains("[possible values: on, off]"));
        assert!(e("--layers 0").contains("at least 1"));
    }
}
