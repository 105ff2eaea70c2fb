//! Throughput benchmark of the classifier on the seed's workload, comparable line for line with
//! `tools/bench/torch_baseline.py` (transformers + PEFT). It times the code users run: train
//! steps are the trainer's own `optimizer_step` (forward, backward, gradient read-out by
//! parameter path, clipping to norm 1.0, AdamW over the LoRA and score parameters, with the
//! train stage's shards and spread for the device); eval passes are `train::evaluate::evaluate_on`
//! (the forward of evaluation and scoring, loss and accuracy read back). Timed after warm-up
//! with a device sync before and after the timed loop.
//!
//! Peak memory: CUDA reports the allocator pool's reserved bytes, sampled after each backward
//! segment of the first step, after each warm-up step and after the timed loop (pool pages
//! are kept, so this bounds the peak in-use memory from above; PyTorch's
//! `max_memory_allocated` is the in-use peak, so the comparison is conservative for us). CPU
//! reports the process' peak resident set (`VmHWM`), reset before each phase. Every phase
//! also reports what was in use when it started (`weights_mem_bytes`: the model, inputs and
//! runtime; CPU `VmRSS`, CUDA in-use bytes) and the difference to the peak
//! (`activation_mem_bytes`: activations, gradients, optimizer state, allocator slack); CUDA
//! adds the in-use peak as sampled (`peak_in_use_bytes`).

pub mod args;
pub mod dp;
pub mod flops;
pub mod memory;
pub mod workload;

use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::backend::{
    CpuBackend, CudaBackend, CudaDevice, DeviceError, DeviceKind, cuda_memory, resolve_device,
};
use crate::model::inputs::SampleInputs;
use crate::model::{ModelError, SeqClassifier};
use crate::task::ProblemType;
use crate::train::checkpoint::BestMetric;
use crate::train::evaluate::evaluate_on;
use crate::train::loss::Target;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::replicas::{Replicas, StepWork, optimizer_step};
use crate::train::schedule::ScheduleKind;
use crate::train::shards::shard_len;
use crate::train::spread::Spread;
use crate::train::{InMemorySet, TrainSpec};

pub use args::{BenchArgs, BenchFlags, BenchMode, BenchModel};
use memory::Peak;
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
    /// LLM layers and ViT blocks of the model run (a preset may be cut, `--layers`).
    pub text_layers: usize,
    pub vision_blocks: usize,
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
    /// ViT blocks with full attention (a cut keeps at least one).
    pub full_attention_blocks: Vec<usize>,
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
    /// Process CPU seconds (all threads) per timed step; ≈ threads × step time when the
    /// cores were ours (CPU only).
    pub cpu_s_per_step: Option<f64>,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub peak_mem_bytes: Option<u64>,
    /// `cuda_pool_reserved` or `vm_hwm` (see the module doc).
    pub peak_mem_source: &'static str,
    /// In use when the phase started, and the peak above it (see the module doc).
    pub weights_mem_bytes: Option<u64>,
    pub activation_mem_bytes: Option<u64>,
    /// CUDA: peak in-use bytes as sampled.
    pub peak_in_use_bytes: Option<u64>,
    /// Train: whether gradient checkpointing was on.
    pub grad_ckpt: Option<bool>,
    /// Model FLOPs of one sample in this mode (`flops` module: train ≈ 2 × forward with the
    /// base frozen).
    pub flops_per_sample: f64,
    pub achieved_tflops: f64,
    pub peak_tflops: Option<f64>,
    pub mfu: Option<f64>,
    /// Cross-entropy of the last timed train step (sanity: finite, ≈ ln 11 at init).
    pub loss: Option<f64>,
    /// Data-parallel replicas of the train phase (`--nproc-per-node`), each `batch` samples
    /// a step; throughput counts them all.
    pub replicas: usize,
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
    let n = args.replicas.max(1);
    let placement = (
        crate::stages::train::shards_for(kind),
        crate::stages::train::spread_for(kind),
    );
    let results = match kind.cuda_device() {
        None => {
            check_host_memory(args, dtype)?;
            let devices = vec![Default::default(); n];
            let cpu = (&devices[..], &MemProbe::Cpu, "cpu");
            run_on::<CpuBackend>(args, dtype, cpu, placement)?
        }
        Some(dev) => {
            let gpus = dp::replica_gpus(n, &args.replica_devices, dev.index)?;
            let devices: Vec<CudaDevice> =
                gpus.into_iter().map(|index| CudaDevice { index }).collect();
            let mem = MemProbe::Cuda(devices[0].clone());
            run_on::<CudaBackend>(args, dtype, (&devices, &mem, ""), placement)?
        }
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
            MemProbe::Cpu => peak_rss_bytes(),
            MemProbe::Cuda(d) => cuda_memory(d).map(|m| m.reserved),
        }
    }
    /// In use now: CPU `VmRSS`, CUDA in-use bytes.
    fn current(&self) -> Option<u64> {
        match self {
            MemProbe::Cpu => proc_status_kb("VmRSS:").map(|kb| kb * 1024),
            MemProbe::Cuda(d) => cuda_memory(d).map(|m| m.in_use),
        }
    }
    fn source(&self) -> &'static str {
        match self {
            MemProbe::Cpu => "vm_hwm",
            MemProbe::Cuda(_) => "cuda_pool_reserved",
        }
    }
}

/// This process' peak resident set so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// CPU seconds (user + system, all threads) this process has used: `/proc/self/stat` fields
/// 14 and 15, in USER_HZ ticks (100 per second on Linux). Next to wall time it tells whether
/// a run on a shared machine got its cores.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
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
    let cfg = crate::model::presets::preset_config(name)?.with_depth(args.depth)?;
    let bytes = crate::model::footprint::param_count(&cfg) as f64
        * if dtype == DType::F32 { 4.0 } else { 2.0 };
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

/// Wall and process CPU time of a timed loop, per step.
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
    steps: usize,
}

impl Clock {
    fn start(steps: usize) -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_s(),
            steps,
        }
    }
    /// (wall s, CPU s) per step; CPU only for the CPU backend.
    fn stop(self, backend: &str) -> (f64, Option<f64>) {
        let n = self.steps as f64;
        let wall = self.wall.elapsed().as_secs_f64() / n;
        let cpu = match (backend, self.cpu, process_cpu_s()) {
            ("flex", Some(a), Some(b)) => Some((b - a) / n),
            _ => None,
        };
        (wall, cpu)
    }
}

/// Context shared by the phases of one run.
struct Run<'a, B: Backend> {
    args: &'a BenchArgs,
    dtype: DType,
    device: &'a B::Device,
    mem: &'a MemProbe,
    backend: &'static str,
    device_name: String,
    sample: SampleInputs,
    /// `TrainSpec::shards` and the spread of the work the train stage would use here.
    shards: usize,
    spread: Spread,
}

fn run_on<B: Backend>(
    args: &BenchArgs,
    dtype: DType,
    (devices, mem, device_name): (&[B::Device], &MemProbe, &str),
    (shards, spread): (usize, Spread),
) -> Result<Vec<BenchResult>, BenchError> {
    let device = &devices[0];
    let spec = lora_spec(args.lora_rank, args.freeze_vit);
    let name = match mem {
        MemProbe::Cpu => device_name.to_string(),
        MemProbe::Cuda(d) => format!("cuda:{}", d.index),
    };
    let backend = match mem {
        MemProbe::Cpu => "flex",
        MemProbe::Cuda(_) => "cuda",
    };
    // The same sample for both phases (it depends on the model's config only).
    let run = |cfg: &crate::model::config::ModelConfig| Run::<B> {
        args,
        dtype,
        device,
        mem,
        backend,
        device_name: name.clone(),
        sample: bench_sample(cfg, args.pixels, args.text_tokens, args.seed),
        shards,
        spread,
    };
    let mut out = Vec::new();
    let mut eval_model: Option<SeqClassifier<B>> = None;
    if args.mode.train() {
        type AB<B> = Autodiff<B>;
        let model = bench_model::<AB<B>>(&args.model, args.depth, dtype, &spec, args.seed, device)?;
        let (model, result) = run(model.config()).train(model, devices)?;
        out.push(result);
        if args.mode.eval() {
            eval_model = Some(model.valid());
        }
        B::memory_cleanup(device);
    }
    if args.mode.eval() {
        let model = match eval_model {
            Some(m) => m,
            None => bench_model::<B>(&args.model, args.depth, dtype, &spec, args.seed, device)?,
        };
        let run = run(model.config());
        out.push(run.eval(model)?);
    }
    Ok(out)
}

impl<B: Backend> Run<'_, B> {
    fn workload<Bk: Backend>(&self, model: &SeqClassifier<Bk>) -> Workload {
        let grid = self.sample.grids[0];
        let patches: usize = grid.iter().product();
        Workload {
            model: self.args.model.to_string(),
            text_layers: model.config().text.num_hidden_layers,
            vision_blocks: model.config().vision.depth,
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
            full_attention_blocks: model.config().vision.fullatt_block_indexes.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        mode: &'static str,
        workload: Workload,
        timing: (f64, Option<f64>),
        peak: &Peak,
        flops_per_sample: f64,
        loss: Option<f64>,
    ) -> BenchResult {
        let samples = self.args.batch as f64;
        let secs = timing.0;
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
            cpu_s_per_step: timing.1,
            samples_per_s: samples / secs,
            tokens_per_s: (workload.seq_tokens * self.args.batch) as f64 / secs,
            peak_mem_bytes: peak.peak,
            peak_mem_source: self.mem.source(),
            weights_mem_bytes: peak.start,
            activation_mem_bytes: peak.activations(),
            peak_in_use_bytes: peak.in_use,
            grad_ckpt: (mode == "train").then_some(self.args.grad_ckpt),
            flops_per_sample,
            achieved_tflops: achieved,
            peak_tflops,
            mfu: peak_tflops.map(|p| achieved / p),
            loss,
            replicas: 1,
            workload,
        }
    }

    fn step_flops<Bk: Backend>(&self, model: &SeqClassifier<Bk>) -> flops::StepFlops {
        flops::step_flops(
            model.config(),
            self.sample.grids[0],
            self.sample.input_ids.len(),
            self.args.lora_rank,
            !self.args.freeze_vit,
            NUM_LABELS,
        )
    }

    /// The trainer's own optimizer step (`train::replicas::optimizer_step`: forward, backward,
    /// gradient read-out, the gather in slot order, clipping to norm 1.0, AdamW, the copy to
    /// the other replicas), one replica per entry of `devices`, each on `batch` copies of
    /// the sample.
    fn train(
        &self,
        mut model: SeqClassifier<Autodiff<B>>,
        devices: &[B::Device],
    ) -> Result<(SeqClassifier<Autodiff<B>>, BenchResult), BenchError> {
        let n = devices.len();
        let spec = self.train_spec(n);
        let set = self.sample_set(spec.global_batch_size());
        let micro = vec![(0..spec.global_batch_size()).collect::<Vec<_>>()];
        let mut opt = AdamW::<B>::new(spec.adamw);
        let mut replicas = Replicas::new(&model, devices.to_vec(), self.spread);
        let workload = self.workload(&model);
        let flops = self.step_flops(&model).train();
        let sync_all = || devices.iter().try_for_each(sync::<B>);
        // CUDA frees activations as the backward goes, so the in-use peak is sampled after
        // each segment's backward of the first step (the CPU's VmHWM needs no sampling).
        let peak = std::sync::Mutex::new(Peak::start(self.mem));
        let probe = || {
            if B::sync(self.device).is_ok()
                && let Ok(mut p) = peak.lock()
            {
                p.note(self.mem);
            }
        };
        let mut step = |model, i: usize| {
            let work = StepWork {
                set: &set,
                micro: &micro,
                per_device: spec.train_batch_size,
                shard_len: shard_len(spec.global_batch_size(), spec.shards),
                problem: spec.problem,
                seed: spec.seed,
                step: i,
                gradient_checkpointing: spec.gradient_checkpointing,
                after_segment: (i == 0).then_some(&probe as &(dyn Fn() + Sync)),
            };
            optimizer_step(
                &mut replicas,
                model,
                &mut opt,
                &work,
                (spec.max_grad_norm, LR),
            )
            .map_err(|e| BenchError::Execution(e.to_string()))
        };
        let note = || -> Result<(), BenchError> {
            sync::<B>(self.device)?;
            peak.lock()
                .map_err(|_| BenchError::Execution("memory probe poisoned".into()))?
                .note(self.mem);
            Ok(())
        };
        for i in 0..self.args.warmup {
            model = step(model, i)?.0;
            note()?;
        }
        sync_all()?;
        let clock = Clock::start(self.args.steps);
        let mut last = None;
        for i in 0..self.args.steps {
            let (m, done) = step(model, self.args.warmup + i)?;
            model = m;
            last = Some(done.loss);
        }
        sync_all()?;
        let timing = clock.stop(self.backend);
        note()?;
        let peak = peak
            .into_inner()
            .map_err(|_| BenchError::Execution("memory probe poisoned".into()))?;
        let mut result = self.result("train", workload, timing, &peak, flops, last);
        dp::count_replicas(&mut result, devices);
        Ok((model, result))
    }

    /// The evaluation pass of training and scoring (`train::evaluate::evaluate_on`: inner
    /// backend, dropout off, loss and accuracy read back) over one batch, `steps` times.
    fn eval(&self, model: SeqClassifier<B>) -> Result<BenchResult, BenchError> {
        let set = self.sample_set(self.args.batch);
        let spec = self.train_spec(1);
        let workload = self.workload(&model);
        let flops = self.step_flops(&model).forward;
        let copies = [(model, self.device.clone())];
        let pass = || {
            evaluate_on::<B, _, SampleInputs>(
                &copies,
                &set,
                self.args.batch,
                spec.problem,
                self.spread,
            )
            .map_err(|e| BenchError::Execution(format!("{e:#}")))
        };
        let mut peak = Peak::start(self.mem);
        for _ in 0..self.args.warmup {
            pass()?;
        }
        sync::<B>(self.device)?;
        peak.note(self.mem);
        let clock = Clock::start(self.args.steps);
        for _ in 0..self.args.steps {
            let r = pass()?;
            if !r.loss.is_finite() {
                return Err(BenchError::Execution("non-finite eval loss".into()));
            }
        }
        sync::<B>(self.device)?;
        let timing = clock.stop(self.backend);
        peak.note(self.mem);
        Ok(self.result("eval", workload, timing, &peak, flops, None))
    }

    /// `n` copies of the benchmark sample, all labelled [`LABEL`].
    fn sample_set(&self, n: usize) -> InMemorySet<SampleInputs> {
        InMemorySet::new(vec![self.sample.clone(); n], vec![Target::Class(LABEL); n])
    }

    /// What the train stage would run with: the baseline's AdamW (0.9/0.95, eps 1e-8,
    /// weight decay 0.1, lr 1e-4), ms-swift's clipping to norm 1.0, the train stage's shard
    /// count for this device; `replicas` replicas of `batch` samples each.
    fn train_spec(&self, replicas: usize) -> TrainSpec {
        TrainSpec {
            train_batch_size: self.args.batch,
            replicas,
            gradient_checkpointing: self.args.grad_ckpt,
            ..bench_train_spec(self.args.seed, self.shards)
        }
    }
}

/// The [`TrainSpec`] of the benchmark's step (only the fields a step reads matter; the rest
/// are ms-swift's defaults).
pub fn bench_train_spec(seed: u64, shards: usize) -> TrainSpec {
    TrainSpec {
        problem: ProblemType::SingleLabelClassification,
        num_labels: NUM_LABELS,
        train_batch_size: 1,
        eval_batch_size: 1,
        grad_accum: 1,
        num_train_epochs: 1.0,
        max_steps: -1,
        schedule: ScheduleKind::Constant,
        learning_rate: LR,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        adamw: AdamWConfig::SWIFT,
        max_grad_norm: 1.0,
        eval_steps: None,
        save_steps: 500,
        save_total_limit: None,
        logging_steps: 5,
        best_metric: BestMetric::Loss,
        data_seed: seed,
        shuffle: crate::train::data_order::Shuffle::EachEpoch,
        seed,
        shards,
        replicas: 1,
        gradient_checkpointing: true,
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
        assert!(process_cpu_s().unwrap() >= 0.0);
    }

    /// End to end on the tiny preset: both phases report sane numbers and training moves the
    /// loss down from ln(11) on the repeated sample.
    #[test]
    fn tiny_train_and_eval_on_cpu() {
        let args = BenchArgs {
            steps: 4,
            ..BenchArgs::tiny_cpu()
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
        let ratio = train.flops_per_sample / eval.flops_per_sample;
        assert!((2.0..2.5).contains(&ratio), "{ratio}");
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
