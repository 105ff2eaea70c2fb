//! Throughput benchmark of the classifier on the seed's workload, comparable line for line with
//! `tools/bench/torch_baseline.py` (transformers + PEFT): train steps (forward + backward +
//! AdamW over the LoRA and score parameters) and eval forwards, timed after warm-up with a
//! device sync before and after the timed loop.
//!
//! Peak memory: CUDA reports the allocator pool's reserved bytes, sampled after the forward,
//! the backward and the optimizer step of the first warm-up step and after the timed loop
//! (pool pages are kept, so this bounds the peak in-use memory from above; PyTorch's
//! `max_memory_allocated` is the in-use peak, so the comparison is conservative for us).
//! CPU reports the process' peak resident set (`VmHWM`), reset before each phase.

pub mod args;
pub mod flops;
pub mod workload;

use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor, TensorData, activation::log_softmax};
use serde::Serialize;

use crate::backend::{
    CpuBackend, CudaBackend, CudaDevice, DeviceError, DeviceKind, cuda_memory, resolve_device,
};
use crate::model::inputs::{ModelInputs, PaddingSide, collate};
use crate::model::{ModelError, SeqClassifier};

pub use args::{BenchArgs, BenchMode, BenchModel};
use workload::{LABEL, NUM_LABELS, bench_model, bench_sample, lora_spec};

/// Dense bf16 matrix rate of one H200 measured on this project's machines (8192³ products
/// through PyTorch: 769–798 TFLOP/s); the MFU denominator on CUDA for every dtype.
pub const CUDA_PEAK_TFLOPS: f64 = 790.0;
/// Learning rate of the benchmark's AdamW (the baseline's).
const LR: f64 = 1e-4;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: {0}")]
    Args(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("bench: device execution failed: {0}")]
    Execution(String),
}

/// What was measured, identical for both modes.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub model: String,
    pub grid: [usize; 3],
    pub pixels: usize,
    pub vision_patches: usize,
    pub image_tokens: usize,
    pub text_tokens: usize,
    pub seq_tokens: usize,
    pub batch: usize,
    pub lora_rank: usize,
    pub freeze_vit: bool,
    pub trainable_params: usize,
    pub total_params: usize,
}

/// One phase's numbers: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub bench: &'static str,
    /// `train` or `eval`.
    pub mode: &'static str,
    pub workload: Workload,
    /// `flex` (CPU) or `cuda`.
    pub backend: &'static str,
    pub device: String,
    pub dtype: &'static str,
    pub threads: usize,
    pub steps: usize,
    pub warmup: usize,
    pub step_ms: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub peak_mem_bytes: Option<u64>,
    /// `cuda_pool_reserved` or `vm_hwm` (see the module doc).
    pub peak_mem_source: &'static str,
    /// Model FLOPs of one sample in this mode (`flops` module: train = 3 × forward).
    pub flops_per_sample: f64,
    pub achieved_tflops: f64,
    pub peak_tflops: Option<f64>,
    pub mfu: Option<f64>,
    /// Cross-entropy of the last timed train step (sanity: finite, ≈ ln 11 at init).
    pub loss: Option<f64>,
}

/// Every phase run, plus how the device was chosen.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub device_note: String,
    pub results: Vec<BenchResult>,
}

impl BenchReport {
    /// One compact JSON object per phase.
    pub fn json_lines(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
            .collect()
    }
}

/// Run the benchmark described by `args` on the device it names.
pub fn run_bench(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    args.validate()?;
    let (kind, note) = resolve_device(&args.device)?;
    let dtype = args.dtype.unwrap_or(match kind {
        DeviceKind::Cpu => DType::F32,
        DeviceKind::Cuda(_) => DType::BF16,
    });
    let results = match kind.cuda_device() {
        None => {
            check_host_memory(args, dtype)?;
            run_on::<CpuBackend>(args, dtype, &Default::default(), &MemProbe::Cpu, "cpu")?
        }
        Some(dev) => run_on::<CudaBackend>(args, dtype, &dev, &MemProbe::Cuda(dev.clone()), "")?,
    };
    Ok(BenchReport {
        device_note: note,
        results,
    })
}

/// How peak memory is read on this device.
enum MemProbe {
    Cpu,
    Cuda(CudaDevice),
}

impl MemProbe {
    fn reset(&self) {
        if let MemProbe::Cpu = self {
            // Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
    }
    fn sample(&self) -> Option<u64> {
        match self {
            MemProbe::Cpu => proc_status_kb("VmHWM:").map(|kb| kb * 1024),
            MemProbe::Cuda(d) => cuda_memory(d).map(|m| m.reserved),
        }
    }
    fn source(&self) -> &'static str {
        match self {
            MemProbe::Cpu => "vm_hwm",
            MemProbe::Cuda(_) => "cuda_pool_reserved",
        }
    }
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    kb_field(&s, field)
}

fn kb_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Refuse a CPU run that cannot fit in RAM (the default 7B preset needs ~31 GiB in f32).
fn check_host_memory(args: &BenchArgs, dtype: DType) -> Result<(), BenchError> {
    let BenchModel::Preset(name) = &args.model else {
        return Ok(());
    };
    let cfg = crate::model::presets::preset_config(name)?;
    let bytes = flops::param_count(&cfg) as f64 * if dtype == DType::F32 { 4.0 } else { 2.0 };
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kb_field(&m, "MemAvailable:"))
        .map(|kb| kb as f64 * 1024.0);
    match avail {
        Some(a) if bytes * 1.2 > a => Err(BenchError::Args(format!(
            "preset {name:?} needs about {:.1} GiB for its weights alone, only {:.1} GiB of RAM \
             is available; use --preset tiny on the CPU, or --device cuda",
            bytes / 1073741824.0,
            a / 1073741824.0
        ))),
        _ => Ok(()),
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), BenchError> {
    B::sync(device).map_err(|e| BenchError::Execution(format!("{e:?}")))
}

/// Mean cross-entropy of f32 logits `[b, n]` against one-hot targets `[b, n]` → `[1]`.
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, onehot: Tensor<B, 2>) -> Tensor<B, 1> {
    let b = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * onehot).sum().neg().div_scalar(b)
}

/// Context shared by the phases of one run.
struct Run<'a, B: Backend> {
    args: &'a BenchArgs,
    dtype: DType,
    device: &'a B::Device,
    mem: &'a MemProbe,
    backend: &'static str,
    device_name: String,
    sample: crate::model::inputs::SampleInputs,
}

fn run_on<B: Backend>(
    args: &BenchArgs,
    dtype: DType,
    device: &B::Device,
    mem: &MemProbe,
    device_name: &str,
) -> Result<Vec<BenchResult>, BenchError> {
    let spec = lora_spec(args.lora_rank, args.freeze_vit);
    let name = match mem {
        MemProbe::Cpu => device_name.to_string(),
        MemProbe::Cuda(d) => format!("cuda:{}", d.index),
    };
    let backend = match mem {
        MemProbe::Cpu => "flex",
        MemProbe::Cuda(_) => "cuda",
    };
    let mut out = Vec::new();
    let mut eval_model: Option<SeqClassifier<B>> = None;
    if args.mode.train() {
        type AB<B> = Autodiff<B>;
        let model = bench_model::<AB<B>>(&args.model, dtype, &spec, args.seed, device)?;
        let run = Run::<B> {
            args,
            dtype,
            device,
            mem,
            backend,
            device_name: name.clone(),
            sample: bench_sample(model.config(), args.pixels, args.text_tokens, args.seed),
        };
        let (model, result) = run.train(model)?;
        out.push(result);
        if args.mode.eval() {
            eval_model = Some(model.valid());
        }
        B::memory_cleanup(device);
    }
    if args.mode.eval() {
        let model = match eval_model {
            Some(m) => m,
            None => bench_model::<B>(&args.model, dtype, &spec, args.seed, device)?,
        };
        let run = Run::<B> {
            args,
            dtype,
            device,
            mem,
            backend,
            device_name: name,
            sample: bench_sample(model.config(), args.pixels, args.text_tokens, args.seed),
        };
        out.push(run.eval(model)?);
    }
    Ok(out)
}

impl<B: Backend> Run<'_, B> {
    fn inputs<Bk: Backend<Device = B::Device>>(&self) -> ModelInputs<Bk> {
        let samples: Vec<_> = (0..self.args.batch).map(|_| &self.sample).collect();
        collate::<Bk>(&samples, 0, PaddingSide::Right, self.device)
    }

    fn workload<Bk: Backend>(&self, model: &SeqClassifier<Bk>) -> Workload {
        let grid = self.sample.grids[0];
        let patches: usize = grid.iter().product();
        Workload {
            model: self.args.model.to_string(),
            grid,
            pixels: self.args.pixels,
            vision_patches: patches,
            image_tokens: patches / model.config().vision.merge_unit(),
            text_tokens: self.args.text_tokens,
            seq_tokens: self.sample.input_ids.len(),
            batch: self.args.batch,
            lora_rank: self.args.lora_rank,
            freeze_vit: self.args.freeze_vit,
            trainable_params: model.trainable_params(),
            total_params: model.total_params(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        mode: &'static str,
        workload: Workload,
        secs: f64,
        peak: Option<u64>,
        flops_per_sample: f64,
        loss: Option<f64>,
    ) -> BenchResult {
        let samples = self.args.batch as f64;
        let achieved = flops_per_sample * samples / secs / 1e12;
        let peak_tflops = (self.backend == "cuda").then_some(CUDA_PEAK_TFLOPS);
        BenchResult {
            bench: "pipeline",
            mode,
            backend: self.backend,
            device: self.device_name.clone(),
            dtype: args::dtype_name(self.dtype),
            threads: rayon::current_num_threads(),
            steps: self.args.steps,
            warmup: self.args.warmup,
            step_ms: secs * 1e3,
            samples_per_s: samples / secs,
            tokens_per_s: (workload.seq_tokens * self.args.batch) as f64 / secs,
            peak_mem_bytes: peak,
            peak_mem_source: self.mem.source(),
            flops_per_sample,
            achieved_tflops: achieved,
            peak_tflops,
            mfu: peak_tflops.map(|p| achieved / p),
            loss,
            workload,
        }
    }

    fn forward_flops<Bk: Backend>(&self, model: &SeqClassifier<Bk>) -> f64 {
        flops::forward_flops(
            model.config(),
            self.sample.grids[0],
            self.sample.input_ids.len(),
            self.args.lora_rank,
            !self.args.freeze_vit,
            NUM_LABELS,
        )
    }

    /// Forward + cross-entropy + backward + AdamW (the baseline's betas 0.9/0.95, eps 1e-8,
    /// weight decay 0.1) on the trainable parameters only.
    fn train(
        &self,
        mut model: SeqClassifier<Autodiff<B>>,
    ) -> Result<(SeqClassifier<Autodiff<B>>, BenchResult), BenchError> {
        let inputs = self.inputs::<Autodiff<B>>();
        let mut target = vec![0f32; self.args.batch * NUM_LABELS];
        for r in 0..self.args.batch {
            target[r * NUM_LABELS + LABEL] = 1.0;
        }
        let onehot = Tensor::<Autodiff<B>, 2>::from_data(
            TensorData::new(target, [self.args.batch, NUM_LABELS]),
            (self.device, DType::F32),
        );
        let mut optim = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .init::<Autodiff<B>, SeqClassifier<Autodiff<B>>>();
        let workload = self.workload(&model);
        let flops = flops::train_flops(self.forward_flops(&model));
        self.mem.reset();
        let mut peak: Option<u64> = None;
        type Step<B> = (SeqClassifier<Autodiff<B>>, Tensor<B, 1>);
        let mut step = |model: SeqClassifier<Autodiff<B>>,
                        probe: bool,
                        peak: &mut Option<u64>|
         -> Result<Step<B>, BenchError> {
            let loss = cross_entropy(model.forward(&inputs)?, onehot.clone());
            if probe {
                self.note_peak(peak)?;
            }
            let grads = loss.backward();
            if probe {
                self.note_peak(peak)?;
            }
            let grads = GradientsParams::from_grads(grads, &model);
            let model = optim.step(LR, model, grads);
            if probe {
                self.note_peak(peak)?;
            }
            Ok((model, loss.inner()))
        };
        for i in 0..self.args.warmup {
            model = step(model, i == 0, &mut peak)?.0;
        }
        sync::<B>(self.device)?;
        let t = Instant::now();
        let mut last = None;
        for _ in 0..self.args.steps {
            let (m, loss) = step(model, false, &mut peak)?;
            model = m;
            last = Some(loss);
        }
        sync::<B>(self.device)?;
        let secs = t.elapsed().as_secs_f64() / self.args.steps as f64;
        self.note_peak(&mut peak)?;
        let loss = last.map(|l| l.into_scalar().elem::<f64>());
        if loss.is_some_and(|l| !l.is_finite()) {
            return Err(BenchError::Execution(format!(
                "non-finite train loss {loss:?}"
            )));
        }
        let result = self.result("train", workload, secs, peak, flops, loss);
        Ok((model, result))
    }

    /// Sync, then raise `peak` to the current memory reading.
    fn note_peak(&self, peak: &mut Option<u64>) -> Result<(), BenchError> {
        sync::<B>(self.device)?;
        *peak = (*peak).max(self.mem.sample());
        Ok(())
    }

    /// Eval forwards (inner backend, no autodiff; dropout off), logits kept until the sync.
    fn eval(&self, model: SeqClassifier<B>) -> Result<BenchResult, BenchError> {
        let inputs = self.inputs::<B>();
        let workload = self.workload(&model);
        let flops = self.forward_flops(&model);
        self.mem.reset();
        let mut peak: Option<u64> = None;
        for _ in 0..self.args.warmup {
            let _ = model.forward(&inputs)?;
        }
        sync::<B>(self.device)?;
        peak = peak.max(self.mem.sample());
        let t = Instant::now();
        let mut outs = Vec::with_capacity(self.args.steps);
        for _ in 0..self.args.steps {
            outs.push(model.forward(&inputs)?);
        }
        sync::<B>(self.device)?;
        let secs = t.elapsed().as_secs_f64() / self.args.steps as f64;
        peak = peak.max(self.mem.sample());
        for o in outs {
            let v: Vec<f32> = o
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap_or_default();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(BenchError::Execution("non-finite eval logits".into()));
            }
        }
        Ok(self.result("eval", workload, secs, peak, flops, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kb_fields() {
        let s = "Name:\tx\nVmHWM:\t  123456 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(kb_field(s, "VmHWM:"), Some(123456));
        assert_eq!(kb_field(s, "VmPeak:"), None);
        assert!(proc_status_kb("VmHWM:").unwrap() > 0);
    }

    /// End to end on the tiny preset: both phases report sane numbers and training moves the
    /// loss down from ln(11) on the repeated sample.
    #[test]
    fn tiny_train_and_eval_on_cpu() {
        let args = BenchArgs {
            model: BenchModel::Preset("tiny".into()),
            device: "cpu".into(),
            pixels: 12_544,
            text_tokens: 40,
            lora_rank: 4,
            steps: 4,
            warmup: 1,
            ..Default::default()
        };
        let r = run_bench(&args).unwrap();
        assert!(r.device_note.contains("cpu"), "{}", r.device_note);
        let [train, eval] = &r.results[..] else {
            panic!("two phases expected")
        };
        assert_eq!((train.mode, eval.mode), ("train", "eval"));
        for p in [train, eval] {
            assert_eq!(p.workload.seq_tokens, 57);
            assert_eq!(p.workload.grid, [1, 8, 8]);
            assert_eq!(p.dtype, "float32");
            assert!(p.samples_per_s > 0.0 && p.step_ms > 0.0);
            assert!(p.peak_mem_bytes.unwrap() > 1 << 20);
            assert!(p.mfu.is_none());
        }
        assert!((train.flops_per_sample / eval.flops_per_sample - 3.0).abs() < 1e-9);
        let loss = train.loss.unwrap();
        assert!(loss.is_finite() && loss < (11f64).ln(), "{loss}");
        let line: serde_json::Value = serde_json::from_str(&r.json_lines()[0]).unwrap();
        for key in [
            "samples_per_s",
            "tokens_per_s",
            "peak_mem_bytes",
            "step_ms",
            "mfu",
        ] {
            assert!(line.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn seven_b_on_a_small_host_is_refused_before_allocating() {
        let args = BenchArgs {
            device: "cpu".into(),
            ..Default::default()
        };
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| kb_field(&m, "MemAvailable:"))
            .unwrap();
        if total < 40 << 20 {
            let e = run_bench(&args).unwrap_err().to_string();
            assert!(
                e.contains("qwen2.5-vl-7b") && e.contains("--preset tiny"),
                "{e}"
            );
        }
    }
}
