//! The training loop on a tiny linear probe (frozen base + LoRA + score head, with LoRA
//! dropout): exact resume after an interruption, reproducibility, checkpoint rotation,
//! the log format and the final artifacts.
//!
//! The backend RNG is process-global (the probe is initialised from it), so every test takes `SERIAL`.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use pipeline::adapter::keys::{Factor, lora_key, score_key};
use pipeline::adapter::peft::WEIGHTS_FILE;
use pipeline::adapter::targets::TargetModules;
use pipeline::adapter::{AdapterConfig, read_peft_state};
use pipeline::backend::CpuBackend;
use pipeline::task::ProblemType;
use pipeline::train::checkpoint::BestMetric;
use pipeline::train::loss::Target;
use pipeline::train::metrics_log::without_time;
use pipeline::train::optimizer::AdamWConfig;
use pipeline::train::schedule::ScheduleKind;
use pipeline::train::spread::Spread;
use pipeline::train::{
    Classifier, InMemorySet, PeftState, RunOptions, TrainError, TrainSpec, outputs, train,
    train_replicated,
};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Mutex;

pub(crate) type AD = Autodiff<CpuBackend>;
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

const FEAT: usize = 8;
const HIDDEN: usize = 6;
const RANK: usize = 2;
const LABELS: usize = 3;

/// h = W·x + 2·B(A(dropout(x))); logits = score(h). W frozen; A, B, score trained.
#[derive(Module, Debug)]
pub(crate) struct Probe<B: Backend> {
    base: Linear<B>,
    lora_a: Linear<B>,
    lora_b: Linear<B>,
    score: Linear<B>,
    dropout: Dropout,
}

pub(crate) struct Feat(Vec<f32>);

impl<B: Backend> Probe<B> {
    pub(crate) fn with_dropout(device: &B::Device, p: f64) -> Self {
        B::seed(device, 7);
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false);
        Self {
            base: lin(FEAT, HIDDEN).init(device).no_grad(),
            lora_a: lin(FEAT, RANK).init(device),
            lora_b: lin(RANK, HIDDEN)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
            score: lin(HIDDEN, LABELS).init(device),
            dropout: DropoutConfig::new(p).init(),
        }
    }
}

impl<B: Backend> Classifier<B, Feat> for Probe<B> {
    fn logits(&self, batch: &[&Feat], device: &B::Device) -> anyhow::Result<Tensor<B, 2>> {
        let x: Vec<f32> = batch.iter().flat_map(|f| f.0.iter().copied()).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [batch.len(), FEAT]), device);
        // The LoRA layer's dropout: host masks from the shard's stream when sharded.
        let dropped = pipeline::model::lora::dropout(x.clone(), self.dropout.prob);
        let h = self.base.forward(x)
            + self
                .lora_b
                .forward(self.lora_a.forward(dropped))
                .mul_scalar(2.0);
        Ok(self.score.forward(h))
    }
}

impl<B: Backend> PeftState for Probe<B> {
    fn peft_tensors(&self) -> Vec<(String, TensorData)> {
        // Burn Linear weights are [in, out]; PEFT stores [out, in].
        let t = |l: &Linear<B>| l.weight.val().transpose().into_data();
        vec![
            (lora_key("model.proj", Factor::A), t(&self.lora_a)),
            (lora_key("model.proj", Factor::B), t(&self.lora_b)),
            (score_key(), t(&self.score)),
        ]
    }
}

pub(crate) fn split(n: usize, seed: u64) -> InMemorySet<Feat> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let mut feats = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..n {
        let x: Vec<f32> = (0..FEAT).map(|_| next()).collect();
        let class = if x[0] + x[1] > 0.3 {
            0
        } else if x[2] > 0.0 {
            1
        } else {
            2
        };
        feats.push(Feat(x));
        targets.push(Target::Class(class));
    }
    InMemorySet::new(feats, targets)
}

pub(crate) fn spec() -> TrainSpec {
    TrainSpec {
        problem: ProblemType::SingleLabelClassification,
        num_labels: LABELS,
        train_batch_size: 4,
        eval_batch_size: 5,
        grad_accum: 2,
        num_train_epochs: 3.0,
        max_steps: -1,
        schedule: ScheduleKind::Cosine,
        learning_rate: 5e-2,
        warmup_steps: 0,
        warmup_ratio: 0.1,
        adamw: AdamWConfig::SWIFT,
        max_grad_norm: 1.0,
        eval_steps: Some(2),
        save_steps: 5,
        save_total_limit: Some(2),
        logging_steps: 3,
        best_metric: BestMetric::Loss,
        data_seed: 42,
        shuffle: pipeline::train::data_order::Shuffle::EachEpoch,
        seed: 42,
        shards: 1,
        replicas: 1,
        gradient_checkpointing: true,
    }
}

pub(crate) fn adapter_config() -> AdapterConfig {
    AdapterConfig {
        r: RANK,
        lora_alpha: 4.0,
        lora_dropout: 0.1,
        use_rslora: false,
        target_modules: TargetModules::List(vec!["model.proj".into()]),
        modules_to_save: vec!["score".into()],
        base_model_name_or_path: String::new(),
        args_json: None,
    }
}

/// Run (or continue) training into `dir`; Err when the stop hook fired.
pub(crate) fn run(dir: &Path, spec: &TrainSpec, stop: Option<usize>) -> Result<(), TrainError> {
    run_probe(dir, spec, stop, 0.1)
}

fn run_probe(dir: &Path, spec: &TrainSpec, stop: Option<usize>, p: f64) -> Result<(), TrainError> {
    run_probe_spread(dir, spec, stop, p, None)
}

/// [`run_probe`] through `train_replicated` with `spread` (every replica on the CPU), or
/// through `train` when None.
pub(crate) fn run_probe_spread(
    dir: &Path,
    spec: &TrainSpec,
    stop: Option<usize>,
    p: f64,
    spread: Option<Spread>,
) -> Result<(), TrainError> {
    let device = Default::default();
    match spread {
        None => run_probe_with::<AD>(dir, spec, (stop, p), None),
        Some(s) => {
            let devices = vec![device; spec.replicas];
            run_probe_with::<AD>(dir, spec, (stop, p), Some((&devices, s)))
        }
    }
}

/// The probe trained on backend `Bk` (dropout `p`, stop hook `stop`): replicas on `on`'s
/// devices spread as it says, or `train` on the default device when None.
pub(crate) fn run_probe_with<Bk: AutodiffBackend>(
    dir: &Path,
    spec: &TrainSpec,
    (stop, p): (Option<usize>, f64),
    on: Option<(&[Bk::Device], Spread)>,
) -> Result<(), TrainError> {
    let device = on.map_or_else(Default::default, |(d, _)| d[0].clone());
    let model = Probe::<Bk>::with_dropout(&device, p);
    // 38 samples, batch 4 → 10 micro-batches, accum 2 → 5 steps per epoch, 15 in all.
    let (tr, val) = (split(38, 1), split(12, 2));
    let opts = RunOptions {
        out_dir: dir,
        adapter_config: adapter_config(),
        progress: indicatif::ProgressBar::hidden(),
        stop_after_steps: stop,
        model_info: "probe".into(),
        head_dtype: burn::tensor::DType::F32,
    };
    let (model, outcome) = match on {
        None => train::<Bk, _, _>(model, &tr, Some(&val), spec, &opts, &device)?,
        Some(on) => train_replicated::<Bk, _, _>(model, &tr, Some(&val), spec, &opts, on)?,
    };
    outputs::finish(dir, &outcome, &opts.adapter_config, &model.peft_tensors())
}

pub(crate) fn log_lines(dir: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(dir.join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Map<String, Value>>(l).unwrap())
        .map(|l| without_time(&l))
        .collect()
}

pub(crate) fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter").join(WEIGHTS_FILE)).unwrap()
}

#[test]
fn resume_after_interruptions_is_bit_exact() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let full = tempfile::tempdir().unwrap();
    run(full.path(), &spec(), None).unwrap();

    let cut = tempfile::tempdir().unwrap();
    // Stop mid-epoch 2 (after step 7; checkpoint-5 is the newest, at an epoch boundary),
    // then after step 12 (checkpoint-10, mid-epoch), then finish.
    for stop in [7, 12] {
        match run(cut.path(), &spec(), Some(stop)) {
            Err(TrainError::Interrupted(s)) => assert_eq!(s, stop),
            other => panic!("expected an interruption, got {other:?}"),
        }
    }
    // Lines logged after the last checkpoint exist now and must be dropped on resume.
    assert!(log_lines(cut.path()).len() > 1);
    run(cut.path(), &spec(), None).unwrap();

    assert_eq!(adapter_bytes(full.path()), adapter_bytes(cut.path()));
    assert_eq!(log_lines(full.path()), log_lines(cut.path()));
    for f in ["metrics.json", "best"] {
        assert_eq!(
            std::fs::read(full.path().join(f)).unwrap(),
            std::fs::read(cut.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn same_seed_same_run_and_training_learns() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    run(a.path(), &spec(), None).unwrap();
    run(b.path(), &spec(), None).unwrap();
    assert_eq!(log_lines(a.path()), log_lines(b.path()));
    assert_eq!(adapter_bytes(a.path()), adapter_bytes(b.path()));

    // Another data seed changes the run.
    let c = tempfile::tempdir().unwrap();
    run(
        c.path(),
        &TrainSpec {
            data_seed: 7,
            ..spec()
        },
        None,
    )
    .unwrap();
    assert_ne!(log_lines(a.path()), log_lines(c.path()));

    // The loss went down from the first logged step to the final eval.
    let lines = log_lines(a.path());
    let first = lines[0]["loss"].as_f64().unwrap();
    let evals: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.get("eval_loss")?.as_f64())
        .collect();
    assert!(
        *evals.last().unwrap() < first,
        "loss {first} → eval {evals:?}"
    );
}

#[test]
fn log_format_checkpoints_and_outputs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &spec(), None).unwrap();
    let raw: Vec<Map<String, Value>> = std::fs::read_to_string(dir.path().join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Train lines at steps 1, 3, 6, 9, 12, 15; eval lines at 2, 4, ..., 14 and 15.
    let train_steps: Vec<&str> = raw
        .iter()
        .filter(|l| l.contains_key("loss"))
        .map(|l| l["global_step/max_steps"].as_str().unwrap())
        .collect();
    assert_eq!(
        train_steps,
        ["1/15", "3/15", "6/15", "9/15", "12/15", "15/15"]
    );
    let eval_steps = raw.iter().filter(|l| l.contains_key("eval_loss")).count();
    assert_eq!(eval_steps, 8);
    let keys: Vec<&str> = raw[0].keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "loss",
            "grad_norm",
            "learning_rate",
            "acc",
            "epoch",
            "global_step/max_steps",
            "percentage",
            "elapsed_time",
            "remaining_time",
            "train_speed(s/it)"
        ]
    );
    // Step 1 uses lr(0) = 0 (warmup of ceil(0.1·15) = 2 steps) and logs the rate after its
    // scheduler update, as transformers does: lr(1) = 5e-2 · 1/2.
    assert_eq!(raw[0]["learning_rate"].as_f64(), Some(0.025));
    assert_eq!(raw[0]["epoch"].as_f64(), Some(0.2));
    let eval_keys: Vec<&str> = raw[1].keys().map(|k| k.as_str()).collect();
    assert_eq!(
        &eval_keys[..5],
        [
            "eval_loss",
            "eval_runtime",
            "eval_samples_per_second",
            "eval_steps_per_second",
            "eval_acc"
        ]
    );
    let summary = raw.last().unwrap();
    assert_eq!(summary["last_model_checkpoint"], "checkpoint-15");
    assert_eq!(summary["global_step"], 15);

    // save_total_limit 2 keeps the newest and the best.
    let mut ckpts: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    ckpts.sort();
    let best = summary["best_model_checkpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ckpts.contains(&"checkpoint-15".to_string()) && ckpts.contains(&best),
        "{ckpts:?}"
    );
    assert!(ckpts.len() <= 2);
    let best_file = std::fs::read_to_string(dir.path().join("best")).unwrap();
    assert_eq!(best_file.trim(), best);

    // The final adapter is a PEFT adapter with the checkpoint's tensors.
    let (cfg, tensors) = read_peft_state(&dir.path().join("adapter")).unwrap();
    assert_eq!(cfg, adapter_config());
    let (_, last) = read_peft_state(&dir.path().join("checkpoint-15")).unwrap();
    assert_eq!(tensors, last);
    assert_eq!(tensors.len(), 3);
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("metrics.json")).unwrap())
            .unwrap();
    assert!(metrics["eval_acc"].as_f64().unwrap() > 0.0);
    assert!(dir.path().join("train_curves.png").is_file());
}

#[test]
fn checkpoint_of_other_settings_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        run(dir.path(), &spec(), Some(6)),
        Err(TrainError::Interrupted(6))
    ));
    let other = TrainSpec {
        learning_rate: 1e-3,
        ..spec()
    };
    match run(dir.path(), &other, None) {
        Err(TrainError::Checkpoint(msg)) => assert!(msg.contains("other settings"), "{msg}"),
        r => panic!("expected a refusal, got {r:?}"),
    }
}

/// `f` on a rayon pool of `threads` threads (the sharded loop runs on the current pool).
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

pub(crate) fn adapter_values(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, tensors) = read_peft_state(&dir.join("adapter")).unwrap();
    tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn sharded_micro_batches_train_like_one_graph() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Without dropout, cutting each micro-batch of 4 into shards of 2, 2 (and 3 of 2, 1, 1)
    // only changes float summation order: the adapters agree to 1e-5 after 15 steps.
    let one = tempfile::tempdir().unwrap();
    run_probe(one.path(), &spec(), None, 0.0).unwrap();
    for shards in [2, 3] {
        let cut = tempfile::tempdir().unwrap();
        let spec = TrainSpec { shards, ..spec() };
        on_threads(2, || run_probe(cut.path(), &spec, None, 0.0)).unwrap();
        for ((k, a), (_, b)) in adapter_values(one.path())
            .iter()
            .zip(adapter_values(cut.path()))
        {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5 * scale, "{shards} shards, {k}: {diff}");
        }
    }
}

#[test]
fn sharded_runs_resume_exactly_and_ignore_the_thread_count() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = TrainSpec {
        shards: 3,
        gradient_checkpointing: true,
        ..spec()
    };
    let full = tempfile::tempdir().unwrap();
    on_threads(1, || run(full.path(), &spec, None)).unwrap();

    // Two threads, interrupted after step 7, resumed on three threads.
    let cut = tempfile::tempdir().unwrap();
    match on_threads(2, || run(cut.path(), &spec, Some(7))) {
        Err(TrainError::Interrupted(7)) => {}
        other => panic!("expected an interruption, got {other:?}"),
    }
    on_threads(3, || run(cut.path(), &spec, None)).unwrap();
    assert_eq!(adapter_bytes(full.path()), adapter_bytes(cut.path()));
    assert_eq!(log_lines(full.path()), log_lines(cut.path()));

    // Dropout is live: another seed draws other masks.
    let other = tempfile::tempdir().unwrap();
    on_threads(2, || {
        run(
            other.path(),
            &TrainSpec {
                seed: 5,
                ..spec.clone()
            },
            None,
        )
    })
    .unwrap();
    assert_ne!(adapter_bytes(full.path()), adapter_bytes(other.path()));
}
