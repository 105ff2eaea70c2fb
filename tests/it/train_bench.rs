//! Train-step throughput of the real loop on the `tiny` preset, the workload of
//! `python3 tools/bench/torch_baseline.py --config <tiny config.json> --device cpu
//! --pixels 12544 --text 40 --rank 16`: batch 1, one 112×112 image (64 patches, 16 image
//! tokens) in a 57-token prompt, LoRA r16 on every LLM and ViT block linear + score, an
//! AdamW step per sample. Ignored by default (timing, not correctness):
//!
//!     cargo test --release --test it train_bench -- --ignored --nocapture

use burn::backend::Autodiff;
use burn::tensor::DType;
use pipeline::adapter::AdapterConfig;
use pipeline::adapter::targets::TargetModules;
use pipeline::backend::CpuBackend;
use pipeline::model::inputs::SampleInputs;
use pipeline::model::lora::{LoraSpec, TargetSelector};
use pipeline::model::{SeqClassifier, WeightsSource, load_classifier_from};
use pipeline::task::ProblemType;
use pipeline::train::checkpoint::BestMetric;
use pipeline::train::loss::Target;
use pipeline::train::optimizer::AdamWConfig;
use pipeline::train::schedule::ScheduleKind;
use pipeline::train::{InMemorySet, RunOptions, TrainSpec, train};

type AD = Autodiff<CpuBackend>;

#[test]
#[ignore = "a timing benchmark, not a check: run with --ignored --nocapture"]
fn train_step_throughput_tiny() {
    let device = Default::default();
    let model: SeqClassifier<AD> =
        load_classifier_from(WeightsSource::Preset("tiny"), 11, DType::F32, 0, &device)
            .unwrap()
            .apply_lora(
                &LoraSpec {
                    r: 16,
                    alpha: 16.0,
                    dropout: 0.05,
                    use_rslora: false,
                    targets: TargetSelector::AllLinear {
                        vit: true,
                        aligner: false,
                        llm: true,
                    },
                },
                0,
            )
            .unwrap();
    // <|im_start|> 20 text <|vision_start|> 16×<|image_pad|> <|vision_end|> 18 text
    let mut ids = vec![257u32];
    ids.extend((0..20).map(|i| 97 + i % 26));
    ids.push(259);
    ids.extend(std::iter::repeat_n(261, 16));
    ids.push(260);
    ids.extend((0..18).map(|i| 97 + i % 26));
    let n = 12;
    let samples: Vec<SampleInputs> = (0..n)
        .map(|i| SampleInputs {
            input_ids: ids.clone(),
            pixel_rows: (0..64 * 1176)
                .map(|k| ((k * 7 + i * 13) % 255) as f32 / 128.0 - 1.0)
                .collect(),
            grids: vec![[1, 8, 8]],
        })
        .collect();
    let set = InMemorySet::new(samples, (0..n).map(|i| Target::Class(i % 11)).collect());
    let spec = TrainSpec {
        problem: ProblemType::SingleLabelClassification,
        num_labels: 11,
        train_batch_size: 1,
        eval_batch_size: 1,
        grad_accum: 1,
        num_train_epochs: 1.0,
        max_steps: -1,
        schedule: ScheduleKind::Constant,
        learning_rate: 1e-4,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        adamw: AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        max_grad_norm: 1.0,
        eval_steps: None,
        save_steps: 1000,
        save_total_limit: None,
        logging_steps: 10,
        best_metric: BestMetric::Loss,
        data_seed: 0,
        seed: 0,
        shards: 1,
        replicas: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: dir.path(),
        adapter_config: AdapterConfig {
            r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            use_rslora: false,
            target_modules: TargetModules::List(vec![]),
            modules_to_save: vec!["score".into()],
            base_model_name_or_path: String::new(),
        },
        progress: indicatif::ProgressBar::hidden(),
        stop_after_steps: None,
        model_info: String::new(),
    };
    train::<AD, _, _>(model, &set, None, &spec, &opts, &device).unwrap();
    // train_speed(s/it) = elapsed / steps at steps 1 and 10: steps 2..10 took 10·s10 − s1.
    let speeds: Vec<f64> = std::fs::read_to_string(dir.path().join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["train_speed(s/it)"].as_f64().unwrap())
        .collect();
    let per_step = (10.0 * speeds[1] - speeds[0]) / 9.0;
    println!(
        "{{\"train_step_s\": {per_step:.4}, \"train_samples_per_s\": {:.2}, \"threads\": {}}}",
        1.0 / per_step,
        rayon::current_num_threads()
    );
}
