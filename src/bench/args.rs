//! Benchmark parameters, their defaults (the seed's 7B workload) and a flag parser shared by
//! `examples/bench.rs` and the `pipeline bench` subcommand.

use std::path::PathBuf;

use burn::tensor::DType;

use super::BenchError;

/// Which phases to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// Forward + backward + AdamW over the trainable (LoRA + score) parameters.
    Train,
    /// Eval forward (no autodiff), LoRA adapters unmerged like PEFT.
    Eval,
    Both,
}

impl BenchMode {
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        match s {
            "train" => Ok(Self::Train),
            "eval" => Ok(Self::Eval),
            "both" => Ok(Self::Both),
            other => Err(BenchError::Args(format!(
                "--mode {other:?} (valid: train, eval, both)"
            ))),
        }
    }
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

/// Parse `float32`/`f32`/`bfloat16`/`bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, BenchError> {
    match s {
        "float32" | "f32" | "fp32" => Ok(DType::F32),
        "bfloat16" | "bf16" => Ok(DType::BF16),
        other => Err(BenchError::Args(format!(
            "--dtype {other:?} (valid: float32, bfloat16)"
        ))),
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
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            model: BenchModel::Preset("qwen2.5-vl-7b".into()),
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
        }
    }
}

/// Flags accepted by [`BenchArgs::from_flags`], for usage messages.
pub const FLAGS: &str = "[--preset NAME | --model DIR] [--device cpu|cuda|cuda:N|auto] \
[--dtype float32|bfloat16] [--pixels N] [--text N] [--batch N] [--rank N] [--freeze-vit] \
[--steps N] [--warmup N] [--mode train|eval|both] [--seed N]";

impl BenchArgs {
    /// Parse `--flag value` pairs over the defaults; unknown flags are errors.
    pub fn from_flags(flags: &[String]) -> Result<Self, BenchError> {
        let mut a = Self::default();
        let mut it = flags.iter();
        while let Some(flag) = it.next() {
            if flag == "--freeze-vit" {
                a.freeze_vit = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| BenchError::Args(format!("{flag} needs a value")))?;
            let num = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    BenchError::Args(format!("{flag} {v:?}: expected a non-negative integer"))
                })
            };
            match flag.as_str() {
                "--preset" => a.model = BenchModel::Preset(value.clone()),
                "--model" => a.model = BenchModel::Dir(PathBuf::from(value)),
                "--device" => a.device = value.clone(),
                "--dtype" => a.dtype = Some(parse_dtype(value)?),
                "--pixels" => a.pixels = num(value)?,
                "--text" => a.text_tokens = num(value)?,
                "--batch" => a.batch = num(value)?,
                "--rank" => a.lora_rank = num(value)?,
                "--steps" => a.steps = num(value)?,
                "--warmup" => a.warmup = num(value)?,
                "--mode" => a.mode = BenchMode::parse(value)?,
                "--seed" => a.seed = num(value)? as u64,
                other => {
                    return Err(BenchError::Args(format!(
                        "unknown flag {other:?}; usage: {FLAGS}"
                    )));
                }
            }
        }
        a.validate()?;
        Ok(a)
    }

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
        if self.text_tokens < 23 {
            return bad("--text must be at least 23 (the prompt frame around the image)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_are_the_seed_workload() {
        let a = BenchArgs::from_flags(&[]).unwrap();
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
        let a = BenchArgs::from_flags(&flags(
            "--preset tiny --device cpu --dtype bf16 --pixels 12544 --text 40 --batch 2 \
             --rank 16 --freeze-vit --steps 3 --warmup 0 --mode train --seed 7",
        ))
        .unwrap();
        assert_eq!(a.model, BenchModel::Preset("tiny".into()));
        assert_eq!(a.dtype, Some(DType::BF16));
        assert_eq!(
            (a.pixels, a.text_tokens, a.batch, a.lora_rank),
            (12544, 40, 2, 16)
        );
        assert!(a.freeze_vit);
        assert_eq!(
            (a.steps, a.warmup, a.mode, a.seed),
            (3, 0, BenchMode::Train, 7)
        );
        let m = BenchArgs::from_flags(&flags("--model /tmp/m")).unwrap();
        assert_eq!(m.model, BenchModel::Dir("/tmp/m".into()));
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let e = |s: &str| BenchArgs::from_flags(&flags(s)).unwrap_err().to_string();
        assert!(e("--dtype f16").contains("valid: float32, bfloat16"));
        assert!(e("--mode fast").contains("valid: train, eval, both"));
        assert!(e("--steps").contains("needs a value"));
        assert!(e("--steps x").contains("non-negative integer"));
        assert!(e("--steps 0").contains("at least 1"));
        assert!(e("--bogus 1").contains("usage"));
    }
}
