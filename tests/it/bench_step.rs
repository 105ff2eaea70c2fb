//! `pipeline bench` times the trainer's own step: its train loss is the loss the training
//! loop logs for the same model, sample, spec and seed, bit for bit.

use burn::backend::Autodiff;
use burn::tensor::DType;
use pipeline::adapter::AdapterConfig;
use pipeline::adapter::targets::TargetModules;
use pipeline::backend::{CpuBackend, DeviceKind};
use pipeline::bench::workload::{LABEL, bench_model, bench_sample, lora_spec};
use pipeline::bench::{BenchArgs, BenchMode, bench_train_spec, run_bench};
use pipeline::stages::train::shards_for;
use pipeline::train::loss::Target;
use pipeline::train::metrics_log::round_to;
use pipeline::train::{InMemorySet, RunOptions, TrainSpec, train};

type AD = Autodiff<CpuBackend>;

#[test]
fn bench_train_loss_is_the_training_loops_loss() {
    let args = BenchArgs {
        steps: 1,
        mode: BenchMode::Train,
        seed: 3,
        ..BenchArgs::tiny_cpu()
    };
    let bench = run_bench(&args).unwrap();
    let bench_loss = bench.results[0].loss.unwrap();

    let device = Default::default();
    let model = bench_model::<AD>(
        &args.model,
        args.depth,
        DType::F32,
        &lora_spec(4, false),
        3,
        &device,
    )
    .unwrap();
    let sample = bench_sample(model.config(), 12_544, 40, 3);
    let set = InMemorySet::new(vec![sample], vec![Target::Class(LABEL)]);
    let spec = TrainSpec {
        max_steps: 2,
        logging_steps: 1,
        ..bench_train_spec(3, shards_for(DeviceKind::Cpu))
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: dir.path(),
        adapter_config: AdapterConfig {
            r: 4,
            lora_alpha: 4.0,
            lora_dropout: 0.05,
            use_rslora: false,
            target_modules: TargetModules::List(vec![]),
            modules_to_save: vec!["score".into()],
            base_model_name_or_path: String::new(),
            args_json: None,
        },
        progress: indicatif::ProgressBar::hidden(),
        stop_after_steps: None,
        model_info: String::new(),
        head_dtype: burn::tensor::DType::F32,
    };
    let (_, outcome) = train::<AD, _, _>(model, &set, None, &spec, &opts, &device).unwrap();
    // The bench's timed step is the loop's second step (after one warm-up step).
    let logged: Vec<f64> = outcome
        .log_history
        .iter()
        .filter_map(|l| l.get("loss").and_then(|v| v.as_f64()))
        .collect();
    assert_eq!(logged.len(), 2, "{:?}", outcome.log_history);
    // The log keeps ms-swift's 8 decimals.
    assert_eq!(round_to(bench_loss, 8), logged[1]);
    assert!(logged[1] < logged[0], "{logged:?}");
}
