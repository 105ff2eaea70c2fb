//! `args.json`: the run's settings in ms-swift 4's own file, written next to every adapter
//! (checkpoints, the final adapter, `export/peft`, `export/merged`).
//!
//! `swift infer --adapters DIR` reads it to find everything but the weights
//! (`BaseArguments.load_args_from_ckpt`): the base `model`, `model_type`, `template`,
//! `task_type`, `num_labels`, `problem_type`, `torch_dtype`, `attn_impl`, `system`,
//! `truncation_strategy` (and `tuner_type`, which it always takes). `model_type` is only
//! taken when `swift_version` is ≥ 4, so the file says which ms-swift layout it follows.
//! The training flags are recorded under ms-swift's names, as `swift sft` does.

use serde_json::{Map, Value, json};

use crate::experiment::schema::{Common, NameList, TargetModules, TrainParams};

pub const ARGS_FILE: &str = "args.json";
/// The ms-swift release whose args.json layout this follows.
pub const SWIFT_LAYOUT_VERSION: &str = "4.6.0";

/// The args.json of a train stage. `dataset` holds the dataset stage's params (its cache
/// manifest's `params`: max_pixels, max_length, truncation_strategy, system), if known.
pub fn train_args(common: &Common, p: &TrainParams, dataset: Option<&Value>) -> Value {
    let mut o = Map::new();
    let m = &common.model;
    let model = m
        .path
        .clone()
        .or_else(|| m.model.clone())
        .or_else(|| m.preset.clone());
    o.insert("model".into(), json!(model));
    o.insert("model_type".into(), json!("qwen2_5_vl"));
    o.insert("template".into(), json!("qwen2_5_vl"));
    o.insert("task_type".into(), json!(common.task.task_type));
    o.insert("num_labels".into(), json!(common.task.num_labels));
    let problem = crate::task::ProblemType::resolve(
        common.task.problem_type.as_deref(),
        common.task.num_labels,
    )
    .map(|p| p.as_str());
    o.insert("problem_type".into(), json!(problem.ok()));
    o.insert("torch_dtype".into(), json!(m.torch_dtype));
    o.insert("attn_impl".into(), json!(p.attn_impl));
    o.insert("tuner_type".into(), json!(p.tuner_type));
    o.insert("swift_version".into(), json!(SWIFT_LAYOUT_VERSION));
    if let Some(d) = dataset {
        for k in ["max_pixels", "max_length", "truncation_strategy", "system"] {
            if let Some(v) = d.get(k) {
                o.insert(k.into(), v.clone());
            }
        }
    }
    let targets = match &p.target_modules {
        TargetModules::One(s) => vec![s.clone()],
        TargetModules::List(v) => v.clone(),
    };
    let names = |n: &Option<NameList>| n.as_ref().map(|n| n.to_vec());
    for (k, v) in [
        ("lora_rank", json!(p.lora_rank)),
        ("lora_alpha", json!(p.lora_alpha)),
        ("lora_dropout", json!(p.lora_dropout)),
        ("use_rslora", json!(p.use_rslora)),
        ("target_modules", json!(targets)),
        ("freeze_vit", json!(p.freeze_vit)),
        ("freeze_aligner", json!(p.freeze_aligner)),
        ("freeze_llm", json!(p.freeze_llm)),
        ("num_train_epochs", json!(p.num_train_epochs)),
        ("max_steps", json!(p.max_steps)),
        (
            "per_device_train_batch_size",
            json!(p.per_device_train_batch_size),
        ),
        (
            "per_device_eval_batch_size",
            json!(p.per_device_eval_batch_size),
        ),
        (
            "gradient_accumulation_steps",
            json!(p.gradient_accumulation_steps),
        ),
        ("learning_rate", json!(p.learning_rate)),
        ("weight_decay", json!(p.weight_decay)),
        ("adam_beta1", json!(p.adam_beta1)),
        ("adam_beta2", json!(p.adam_beta2)),
        ("adam_epsilon", json!(p.adam_epsilon)),
        ("max_grad_norm", json!(p.max_grad_norm)),
        ("lr_scheduler_type", json!(p.lr_scheduler_type)),
        ("warmup_ratio", json!(p.warmup_ratio)),
        ("warmup_steps", json!(p.warmup_steps)),
        (
            "eval_steps",
            json!(p.eval_steps.unwrap_or(p.save_steps) as f64),
        ),
        ("save_steps", json!(p.save_steps as f64)),
        ("save_total_limit", json!(p.save_total_limit)),
        ("logging_steps", json!(p.logging_steps as f64)),
        ("metric_for_best_model", json!(p.metric_for_best_model)),
        ("seed", json!(common.seed)),
        ("data_seed", json!(p.data_seed)),
        ("dataset_shuffle", json!(p.dataset_shuffle)),
        (
            "train_dataloader_shuffle",
            json!(p.train_dataloader_shuffle),
        ),
        ("dataloader_num_workers", json!(p.dataloader_num_workers)),
        ("model_author", json!(names(&p.model_author))),
        ("model_name", json!(names(&p.model_name))),
        ("output_dir", json!(p.output_dir)),
    ] {
        o.insert(k.into(), v);
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::schema::{ModelSpec, TaskSpec};

    #[test]
    fn has_what_swift_infer_loads() {
        let common = Common {
            model: ModelSpec {
                preset: None,
                path: Some("/models/qwen".into()),
                model: None,
                torch_dtype: "bfloat16".into(),
                device: "auto".into(),
            },
            task: TaskSpec {
                task_type: "seq_cls".into(),
                num_labels: 3,
                problem_type: None,
                labels: None,
            },
            seed: 7,
        };
        let p: TrainParams = toml::from_str("train_type = \"lora\"\nmodel_name = \"m\"").unwrap();
        let data = json!({"max_pixels": 1003520, "system": "S", "splits": ["train"]});
        let a = train_args(&common, &p, Some(&data));
        assert_eq!(a["model"], "/models/qwen");
        assert_eq!(a["model_type"], "qwen2_5_vl");
        assert_eq!(a["template"], "qwen2_5_vl");
        assert_eq!(a["problem_type"], "single_label_classification");
        assert_eq!(a["tuner_type"], "lora");
        assert_eq!(a["max_pixels"], 1003520);
        assert_eq!(a["system"], "S");
        assert!(a.get("splits").is_none());
        assert_eq!(a["model_name"], json!(["m"]));
        assert_eq!(a["target_modules"], json!(["all-linear"]));
        // eval_steps falls back to save_steps, as ms-swift resolves it.
        assert_eq!(a["eval_steps"], json!(500.0));
        assert_eq!(a["seed"], 7);
    }
}
