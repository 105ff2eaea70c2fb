//! `pipeline from-swift -- [ENV=VALUE ...] swift sft --flag value ...`: the experiment
//! file equivalent to an ms-swift command line (keys are ms-swift's flag names, so most
//! flags map one to one). The result is checked by parsing it as an experiment file.
//!
//! Environment assignments: `MAX_PIXELS` / `MIN_PIXELS` → the dataset stage's pixel
//! bounds; `CUDA_VISIBLE_DEVICES` → `[model] device` (one GPU) or `devices` (several);
//! `NPROC_PER_NODE` → the train stage's `nproc_per_node`; `OMP_NUM_THREADS` and the like
//! change nothing here.

use toml_edit::{Array, DocumentMut, Item, Table, value};

/// How a flag's values become a TOML value.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
    /// One value → a string, several → a list (`--model_name a b`, `--target_modules`).
    StrOrList,
}

/// Where a flag goes: `[model]`, `[task]`, the top level, or a stage table.
#[derive(Clone, Copy, PartialEq)]
enum Section {
    Top,
    Model,
    Task,
    Data,
    Train,
}

fn flag(name: &str) -> Option<(Section, &'static str, Kind)> {
    use Kind::*;
    use Section::*;
    Some(match name {
        "model" => (Model, "model", Str),
        "torch_dtype" => (Model, "torch_dtype", Str),
        "task_type" => (Task, "task_type", Str),
        "num_labels" => (Task, "num_labels", Int),
        "problem_type" => (Task, "problem_type", Str),
        "seed" => (Top, "seed", Int),
        "dataset" => (Data, "dataset", Str),
        "val_dataset" => (Data, "val_dataset", Str),
        "max_pixels" => (Data, "max_pixels", Int),
        "max_length" => (Data, "max_length", Int),
        "truncation_strategy" => (Data, "truncation_strategy", Str),
        "system" => (Data, "system", Str),
        "train_type" | "tuner_type" => (Train, "tuner_type", Str),
        "lora_rank" => (Train, "lora_rank", Int),
        "lora_alpha" => (Train, "lora_alpha", Float),
        "lora_dropout" => (Train, "lora_dropout", Float),
        "use_rslora" => (Train, "use_rslora", Bool),
        "target_modules" => (Train, "target_modules", StrOrList),
        "freeze_vit" => (Train, "freeze_vit", Bool),
        "freeze_aligner" => (Train, "freeze_aligner", Bool),
        "freeze_llm" => (Train, "freeze_llm", Bool),
        "num_train_epochs" => (Train, "num_train_epochs", Float),
        "max_steps" => (Train, "max_steps", Int),
        "per_device_train_batch_size" => (Train, "per_device_train_batch_size", Int),
        "per_device_eval_batch_size" => (Train, "per_device_eval_batch_size", Int),
        "gradient_accumulation_steps" => (Train, "gradient_accumulation_steps", Int),
        "learning_rate" => (Train, "learning_rate", Float),
        "weight_decay" => (Train, "weight_decay", Float),
        "adam_beta1" => (Train, "adam_beta1", Float),
        "adam_beta2" => (Train, "adam_beta2", Float),
        "adam_epsilon" => (Train, "adam_epsilon", Float),
        "max_grad_norm" => (Train, "max_grad_norm", Float),
        "lr_scheduler_type" => (Train, "lr_scheduler_type", Str),
        "warmup_ratio" => (Train, "warmup_ratio", Float),
        "warmup_steps" => (Train, "warmup_steps", Int),
        "eval_steps" => (Train, "eval_steps", Int),
        "save_steps" => (Train, "save_steps", Int),
        "save_total_limit" => (Train, "save_total_limit", Int),
        "logging_steps" => (Train, "logging_steps", Int),
        "metric_for_best_model" => (Train, "metric_for_best_model", Str),
        "data_seed" => (Train, "data_seed", Int),
        "dataset_shuffle" => (Train, "dataset_shuffle", Bool),
        "train_dataloader_shuffle" => (Train, "train_dataloader_shuffle", Bool),
        "attn_impl" => (Train, "attn_impl", Str),
        "dataloader_num_workers" => (Train, "dataloader_num_workers", Int),
        "model_author" => (Train, "model_author", StrOrList),
        "model_name" => (Train, "model_name", StrOrList),
        "output_dir" => (Train, "output_dir", Str),
        _ => return None,
    })
}

/// Environment variables that change nothing in the experiment file.
const NEUTRAL_ENV: &[&str] = &["OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTHONPATH"];

/// The experiment file for `args` (what follows `--`), or one line per problem.
pub fn experiment_from_swift(args: &[String]) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    let mut env: Vec<(&str, &str)> = Vec::new();
    let mut i = 0;
    while let Some((k, v)) = args.get(i).and_then(|a| a.split_once('=')) {
        if k.is_empty() || k.starts_with('-') {
            break;
        }
        env.push((k, v));
        i += 1;
    }
    match (
        args.get(i).map(String::as_str),
        args.get(i + 1).map(String::as_str),
    ) {
        (Some("swift"), Some("sft")) => i += 2,
        (Some("swift"), other) => {
            return Err(vec![format!(
                "only `swift sft` maps to an experiment file, not `swift {}`",
                other.unwrap_or("")
            )]);
        }
        _ => {
            return Err(vec![
                "expected `swift sft ...` (optionally after ENV=VALUE assignments)".into(),
            ]);
        }
    }
    // --flag v1 v2 ... (values run until the next --flag); --flag=value too.
    let mut flags: Vec<(String, Vec<String>)> = Vec::new();
    for a in &args[i..] {
        if let Some(name) = a.strip_prefix("--") {
            match name.split_once('=') {
                Some((n, v)) => flags.push((n.to_string(), vec![v.to_string()])),
                None => flags.push((name.to_string(), Vec::new())),
            }
        } else if let Some((_, vals)) = flags.last_mut() {
            vals.push(a.clone());
        } else {
            problems.push(format!("unexpected argument {a:?} before the first --flag"));
        }
    }

    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(format!(
        "# Made by `pipeline from-swift` from:\n#   {}\n",
        args.join(" ")
    ));
    let mut model = Table::new();
    let mut task = Table::new();
    let mut data = Table::new();
    let mut train = Table::new();
    data.insert("kind", value("dataset"));
    train.insert("kind", value("train"));
    train.insert("needs", value(Array::from_iter(["data"])));
    let mut top: Vec<(&str, Item)> = Vec::new();

    for (k, v) in &env {
        match *k {
            "MAX_PIXELS" | "MIN_PIXELS" => match v.parse::<i64>() {
                Ok(n) => {
                    data.insert(&k.to_ascii_lowercase(), value(n));
                }
                Err(_) => problems.push(format!("{k}={v}: expected a whole number of pixels")),
            },
            "CUDA_VISIBLE_DEVICES" => {
                let ids: Vec<&str> = v.split(',').filter(|s| !s.is_empty()).collect();
                if ids.iter().any(|d| d.parse::<u32>().is_err()) {
                    problems.push(format!("CUDA_VISIBLE_DEVICES={v}: expected GPU numbers"));
                } else if ids.len() == 1 {
                    model.insert("device", value(format!("cuda:{}", ids[0])));
                } else if ids.len() > 1 {
                    let list = Array::from_iter(ids.iter().map(|d| format!("cuda:{d}")));
                    top.push(("devices", value(list)));
                }
            }
            "NPROC_PER_NODE" => match v.parse::<i64>() {
                Ok(n) => {
                    train.insert("nproc_per_node", value(n));
                }
                Err(_) => problems.push(format!("NPROC_PER_NODE={v}: expected a whole number")),
            },
            k if NEUTRAL_ENV.contains(&k) => {}
            _ => problems.push(format!(
                "unknown environment variable {k} (no equivalent key)"
            )),
        }
    }

    for (name, vals) in &flags {
        let Some((section, key, kind)) = flag(name) else {
            problems.push(format!("unknown flag --{name} (no equivalent key)"));
            continue;
        };
        let item = match to_value(kind, vals) {
            Ok(v) => v,
            Err(why) => {
                problems.push(format!("--{name}: {why}"));
                continue;
            }
        };
        let item = if key == "model" {
            // An existing folder is a path; anything else a hub id (resolved from the cache).
            let s = vals[0].as_str();
            if std::path::Path::new(s).is_dir() {
                model.insert("path", item);
                continue;
            }
            item
        } else {
            item
        };
        let table = match section {
            Section::Top => {
                top.push((key, item));
                continue;
            }
            Section::Model => &mut model,
            Section::Task => &mut task,
            Section::Data => &mut data,
            Section::Train => &mut train,
        };
        table.insert(key, item);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for (k, v) in top {
        doc.insert(k, v);
    }
    doc.insert("model", Item::Table(model));
    doc.insert("task", Item::Table(task));
    let mut stages = Table::new();
    stages.set_implicit(true);
    stages.insert("data", Item::Table(data));
    stages.insert("train", Item::Table(train));
    // `swift infer --logprobs true` on the val set, which the seed workflow runs next.
    let mut score = Table::new();
    score.insert("kind", value("score"));
    score.insert("needs", value(Array::from_iter(["data", "train"])));
    stages.insert("score", Item::Table(score));
    doc.insert("stages", Item::Table(stages));
    Ok(doc.to_string())
}

fn to_value(kind: Kind, vals: &[String]) -> Result<Item, String> {
    let one = || match vals {
        [v] => Ok(v.as_str()),
        [] => Err("needs a value".to_string()),
        _ => Err(format!("takes one value, got {}", vals.len())),
    };
    Ok(match kind {
        Kind::Int => value(
            one()?
                .parse::<i64>()
                .map_err(|_| format!("expected a whole number, got {:?}", vals[0]))?,
        ),
        Kind::Float => value(
            one()?
                .parse::<f64>()
                .map_err(|_| format!("expected a number, got {:?}", vals[0]))?,
        ),
        Kind::Bool => match one()?.to_ascii_lowercase().as_str() {
            "true" | "1" => value(true),
            "false" | "0" => value(false),
            other => return Err(format!("expected true or false, got {other:?}")),
        },
        Kind::Str => value(one()?),
        Kind::StrOrList => match vals {
            [] => return Err("needs a value".into()),
            [v] => value(v.as_str()),
            vs => value(Array::from_iter(vs.iter().map(String::as_str))),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_seed_command_maps_key_for_key() {
        let cmd = "MAX_PIXELS=1003520 CUDA_VISIBLE_DEVICES=0 swift sft --model Qwen2.5-VL-7B-Instruct \
            --task_type seq_cls --num_labels 11 --train_type lora --dataset data/train.json \
            --val_dataset data/test.json --torch_dtype bfloat16 --num_train_epochs 1 \
            --per_device_train_batch_size 1 --learning_rate 1e-4 --lora_rank 32 --lora_alpha 32 \
            --target_modules all-linear --freeze_vit false --gradient_accumulation_steps 16 \
            --eval_steps 1 --save_steps 50 --save_total_limit 5 --logging_steps 5 \
            --max_length 2048 --warmup_ratio 0.05 --attn_impl flash_attn \
            --dataloader_num_workers 4 --model_author swift --model_name my-classifier \
            --output_dir output";
        let text = experiment_from_swift(&args(cmd)).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["model"]["model"].as_str(), Some("Qwen2.5-VL-7B-Instruct"));
        assert_eq!(t["model"]["device"].as_str(), Some("cuda:0"));
        assert_eq!(t["task"]["num_labels"].as_integer(), Some(11));
        let data = &t["stages"]["data"];
        assert_eq!(data["max_pixels"].as_integer(), Some(1003520));
        assert_eq!(data["dataset"].as_str(), Some("data/train.json"));
        let train = &t["stages"]["train"];
        assert_eq!(train["tuner_type"].as_str(), Some("lora"));
        assert_eq!(train["learning_rate"].as_float(), Some(1e-4));
        assert_eq!(train["lora_alpha"].as_float(), Some(32.0));
        assert_eq!(train["freeze_vit"].as_bool(), Some(false));
        assert_eq!(train["attn_impl"].as_str(), Some("flash_attn"));
        assert_eq!(train["dataloader_num_workers"].as_integer(), Some(4));
        assert_eq!(train["output_dir"].as_str(), Some("output"));
        assert_eq!(t["stages"]["score"]["kind"].as_str(), Some("score"));
        // Every table parses with the schema (unknown keys would be rejected).
        let _: super::super::schema::TrainParams = toml::from_str(
            &toml::to_string(train)
                .unwrap()
                .replace("kind = \"train\"\n", ""),
        )
        .unwrap();
    }

    #[test]
    fn unknown_flags_and_bad_values_are_named_one_per_line() {
        let e = experiment_from_swift(&args(
            "FOO=1 swift sft --num_labels x --deepspeed zero2 --lora_rank 8 --freeze_vit maybe",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            [
                "unknown environment variable FOO (no equivalent key)",
                "--num_labels: expected a whole number, got \"x\"",
                "unknown flag --deepspeed (no equivalent key)",
                "--freeze_vit: expected true or false, got \"maybe\"",
            ]
        );
        assert!(experiment_from_swift(&args("swift infer --model m")).is_err());
        let t: toml::Table = toml::from_str(
            &experiment_from_swift(&args("CUDA_VISIBLE_DEVICES=0,1 swift sft --model_name a b"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(t["devices"].as_array().unwrap().len(), 2);
        assert_eq!(
            t["stages"]["train"]["model_name"].as_array().unwrap().len(),
            2
        );
    }
}
