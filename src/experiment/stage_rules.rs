//! Per-kind rules for stage tables (ranges, choices, paths) and the rules that look
//! across stages (e.g. `eval_steps` needs a dataset stage with `val_dataset`).

use super::check::{Check, Result};
use super::schema::{DatasetParams, ExportParams, ScoreParams, TargetModules, TrainParams};
use super::spec::StageParams;

pub const SCHEDULERS: [&str; 3] = ["constant", "cosine", "linear"];
pub const BEST_METRICS: [&str; 2] = ["acc", "loss"];
pub const CHECKPOINTS: [&str; 2] = ["best", "last"];
pub const SPLITS: [&str; 2] = ["train", "val"];
/// ms-swift 4's choices (`raise` is spelled `error` too, this project's first name for it).
pub const TRUNCATION: [&str; 5] = ["delete", "left", "right", "raise", "error"];
pub const TRAIN_TYPES: [&str; 1] = ["lora"];

type Stages<'a> = &'a [(String, StageParams)];

/// Check one stage and return its params with paths resolved.
pub(crate) fn check_stage(
    c: &Check,
    name: &str,
    params: StageParams,
    stages: Stages,
    datasets: &[(&str, &DatasetParams)],
) -> Result<StageParams> {
    Ok(match params {
        StageParams::Dataset(p) => StageParams::Dataset(dataset(c, name, p)?),
        StageParams::Train(p) => StageParams::Train(train(c, name, p, datasets)?),
        StageParams::Export(p) => StageParams::Export(export(c, name, p, stages, datasets)?),
        StageParams::Score(p) => StageParams::Score(score(c, name, p, stages, datasets)?),
    })
}

/// The dataset stage among `needs`.
fn dataset_of<'a>(
    needs: &[String],
    datasets: &[(&'a str, &'a DatasetParams)],
) -> Option<(&'a str, &'a DatasetParams)> {
    datasets
        .iter()
        .find(|(n, _)| needs.iter().any(|m| m == n))
        .copied()
}

/// The train stage among `needs`.
fn train_of<'a>(needs: &[String], stages: Stages<'a>) -> Option<(&'a str, &'a TrainParams)> {
    stages.iter().find_map(|(n, p)| match p {
        StageParams::Train(t) if needs.contains(n) => Some((n.as_str(), t)),
        _ => None,
    })
}

fn dataset(c: &Check, name: &str, mut p: DatasetParams) -> Result<DatasetParams> {
    let at = |k: &'static str| ["stages", name, k];
    c.ensure(
        p.dataset.is_some() || p.val_dataset.is_some(),
        &["stages", name],
        || format!("dataset stage `{name}` needs `dataset`, `val_dataset`, or both"),
    )?;
    if let Some(d) = &p.dataset {
        p.dataset = Some(c.existing_file(&at("dataset"), d)?);
    }
    // As with ms-swift (qwen-vl-utils reads them), MAX_PIXELS / MIN_PIXELS in the
    // environment apply when the file sets no bound; resolved here, so they are in the key.
    for (key, var) in [("max_pixels", "MAX_PIXELS"), ("min_pixels", "MIN_PIXELS")] {
        let written = c
            .root
            .get("stages")
            .and_then(|s| s.get(name))
            .and_then(|t| t.get(key))
            .is_some();
        let Some(v) = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty() && !written)
        else {
            continue;
        };
        let n: u64 = v.trim().parse().map_err(|_| {
            c.err(
                &["stages", name],
                format!("environment variable {var}={v:?} is not a whole number of pixels"),
            )
        })?;
        eprintln!("notice: [stages.{name}] {key} = {n} from the environment variable {var}");
        match key {
            "max_pixels" => p.max_pixels = n,
            _ => p.min_pixels = n,
        }
    }
    if let Some(d) = &p.val_dataset {
        p.val_dataset = Some(c.existing_file(&at("val_dataset"), d)?);
    }
    c.ensure(p.min_pixels >= 1, &at("min_pixels"), || {
        "min_pixels must be ≥ 1".into()
    })?;
    c.ensure(p.max_pixels >= p.min_pixels, &at("max_pixels"), || {
        format!(
            "max_pixels ({}) must be ≥ min_pixels ({})",
            p.max_pixels, p.min_pixels
        )
    })?;
    c.ensure(p.max_length >= 1, &at("max_length"), || {
        "max_length must be ≥ 1".into()
    })?;
    c.choice(
        &at("truncation_strategy"),
        &p.truncation_strategy,
        &TRUNCATION,
    )?;
    Ok(p)
}

fn train(
    c: &Check,
    name: &str,
    mut p: TrainParams,
    datasets: &[(&str, &DatasetParams)],
) -> Result<TrainParams> {
    let at = |k: &'static str| ["stages", name, k];
    // Point at the spelling the file used (`train_type` is ms-swift 3's name).
    let tuner_key = if c
        .root
        .get("stages")
        .and_then(|s| s.get(name))
        .and_then(|t| t.get("train_type"))
        .is_some()
    {
        "train_type"
    } else {
        "tuner_type"
    };
    c.choice(&at(tuner_key), &p.tuner_type, &TRAIN_TYPES)?;
    if let Some((key, msg)) = train_value_problem(&p) {
        return Err(c.err(&at(key), msg));
    }
    c.choice(&at("lr_scheduler_type"), &p.lr_scheduler_type, &SCHEDULERS)?;
    c.choice(
        &at("metric_for_best_model"),
        &p.metric_for_best_model,
        &BEST_METRICS,
    )?;
    if let Some(a) = &p.adapter {
        p.adapter = Some(c.existing_dir(&at("adapter"), a)?);
    }
    let (dname, data) =
        dataset_of(&p.needs, datasets).expect("check_graph guarantees a dataset need");
    c.ensure(data.dataset.is_some(), &at("needs"), || {
        format!("train stage `{name}` needs a training set, but dataset stage `{dname}` has only `val_dataset`")
    })?;
    if p.eval_steps.is_some() {
        c.ensure(data.val_dataset.is_some(), &at("eval_steps"), || {
            format!("eval_steps is set but dataset stage `{dname}` has no `val_dataset`; add one or remove eval_steps")
        })?;
    }
    if let Some(o) = &p.output_dir {
        p.output_dir = Some(c.resolve(o).to_string_lossy().into_owned());
    }
    Ok(p)
}

/// The first value of a train stage's params out of its range, as `(key, message)`: the
/// one copy of these rules, for the experiment file (with `file:line:col`) and for
/// `stages::train::TrainStage::new` (params built in code).
pub fn train_value_problem(p: &TrainParams) -> Option<(&'static str, String)> {
    let positive = |k: &'static str, v: f64| {
        (!(v.is_finite() && v > 0.0)).then(|| (k, format!("{k} must be > 0, got {v}")))
    };
    let at_least_one = |k: &'static str, v: usize, why: &str| {
        (v < 1).then(|| (k, format!("{k} must be ≥ 1{why}")))
    };
    let in_unit = |k: &'static str, v: f64| {
        (!(0.0..1.0).contains(&v)).then(|| (k, format!("{k} must be in [0, 1), got {v}")))
    };
    let target_modules = || match &p.target_modules {
        TargetModules::One(s) if s.is_empty() => {
            Some(("target_modules", "target_modules is empty".to_string()))
        }
        // fancy-regex, as the adapter code: ms-swift's regexes use look-aheads.
        TargetModules::One(s) if s != "all-linear" => fancy_regex::Regex::new(s).err().map(|e| {
            (
                "target_modules",
                format!("target_modules is not `all-linear` and not a valid regex: {e}"),
            )
        }),
        TargetModules::List(l) if l.is_empty() => Some((
            "target_modules",
            "target_modules is an empty list".to_string(),
        )),
        _ => None,
    };
    at_least_one("lora_rank", p.lora_rank, "")
        .or_else(|| positive("lora_alpha", p.lora_alpha))
        .or_else(|| in_unit("lora_dropout", p.lora_dropout))
        .or_else(|| positive("learning_rate", p.learning_rate))
        .or_else(|| {
            at_least_one(
                "per_device_train_batch_size",
                p.per_device_train_batch_size,
                "",
            )
        })
        .or_else(|| {
            at_least_one(
                "per_device_eval_batch_size",
                p.per_device_eval_batch_size,
                "",
            )
        })
        .or_else(|| {
            at_least_one(
                "gradient_accumulation_steps",
                p.gradient_accumulation_steps,
                "",
            )
        })
        .or_else(|| nproc_problem(p.nproc_per_node))
        .or_else(|| {
            (p.max_steps != -1 && p.max_steps < 1).then(|| {
                (
                    "max_steps",
                    "max_steps must be ≥ 1, or -1 to train for num_train_epochs".to_string(),
                )
            })
        })
        .or_else(|| {
            (p.max_steps < 1)
                .then(|| positive("num_train_epochs", p.num_train_epochs))
                .flatten()
        })
        .or_else(|| {
            (p.weight_decay.is_nan() || p.weight_decay < 0.0)
                .then(|| ("weight_decay", "weight_decay must be ≥ 0".to_string()))
        })
        .or_else(|| in_unit("adam_beta1", p.adam_beta1))
        .or_else(|| in_unit("adam_beta2", p.adam_beta2))
        .or_else(|| positive("adam_epsilon", p.adam_epsilon))
        .or_else(|| {
            (p.max_grad_norm.is_nan() || p.max_grad_norm < 0.0).then(|| {
                (
                    "max_grad_norm",
                    "max_grad_norm must be ≥ 0 (0 disables clipping)".to_string(),
                )
            })
        })
        .or_else(|| {
            (!(0.0..=1.0).contains(&p.warmup_ratio)).then(|| {
                (
                    "warmup_ratio",
                    format!("warmup_ratio must be in [0, 1], got {}", p.warmup_ratio),
                )
            })
        })
        .or_else(|| at_least_one("save_steps", p.save_steps, ""))
        .or_else(|| at_least_one("logging_steps", p.logging_steps, ""))
        .or_else(|| {
            (p.save_total_limit == Some(0)).then(|| {
                (
                    "save_total_limit",
                    "save_total_limit must be ≥ 1".to_string(),
                )
            })
        })
        .or_else(|| {
            p.eval_steps.and_then(|e| {
                at_least_one(
                    "eval_steps",
                    e,
                    " (leave it out to evaluate only at the end)",
                )
            })
        })
        .or_else(target_modules)
}

/// Why `n` replicas cannot run on `pool` (a run's device slots), to follow `key = n`; None
/// when they can. The pool must hold them, be of one kind, and on GPUs split into groups of
/// `n` with none left idle. (A CPU pool the scheduler makes always fits: it offers as
/// many slots as the largest group needs.)
pub fn replica_pool_problem(n: usize, pool: &[String]) -> Option<String> {
    let shown = format!("the device pool has {} ({})", pool.len(), pool.join(", "));
    let cpu = pool.iter().filter(|d| d.as_str() == "cpu").count();
    if n == 0 {
        Some(format!("must be ≥ 1; {shown}"))
    } else if n == 1 {
        None
    } else if n > pool.len() {
        Some(format!("but {shown}"))
    } else if cpu != 0 && cpu != pool.len() {
        Some(format!(
            "needs one kind of device, but {shown} mixing the CPU and GPUs"
        ))
    } else if cpu == 0 && !pool.len().is_multiple_of(n) {
        Some(format!(
            "does not divide {shown}: {} would stay idle; use a divisor of {} or list the devices to use in `devices`",
            pool.len() % n,
            pool.len()
        ))
    } else {
        None
    }
}

/// `nproc_per_node` of the stages against the pool the file fixes: `devices`, else a
/// `[model] device` naming one GPU (an `auto` or CPU pool is checked when a run starts).
pub(crate) fn check_replica_pools(
    c: &Check,
    stages: &[(String, StageParams)],
    devices: &[String],
    model_device: &str,
) -> Result<()> {
    let pool: Vec<String> = match (devices, model_device) {
        ([], "cuda" | "gpu") => vec!["cuda:0".into()],
        ([], d) if d.starts_with("cuda:") => vec![d.to_string()],
        ([], _) => return Ok(()),
        (listed, _) => listed.to_vec(),
    };
    for (name, p) in stages {
        let n = match p {
            StageParams::Train(t) => t.nproc_per_node,
            StageParams::Score(s) => s.nproc_per_node,
            _ => continue,
        };
        if let Some(why) = replica_pool_problem(n, &pool) {
            return Err(c.err(
                &["stages", name, "nproc_per_node"],
                format!("nproc_per_node = {n} {why}"),
            ));
        }
    }
    Ok(())
}

/// `nproc_per_node` (the train and score stages' replicas) below 1, as `(key, message)`.
fn nproc_problem(n: usize) -> Option<(&'static str, String)> {
    (n < 1).then(|| {
        (
            "nproc_per_node",
            "nproc_per_node must be ≥ 1 (replicas, one per device)".to_string(),
        )
    })
}

/// `checkpoint = "best"` picks by eval metric, so the train stage must evaluate.
fn check_best(
    c: &Check,
    path: &[&str],
    checkpoint: &str,
    train: Option<(&str, &TrainParams)>,
    datasets: &[(&str, &DatasetParams)],
) -> Result<()> {
    c.choice(path, checkpoint, &CHECKPOINTS)?;
    if checkpoint != "best" {
        return Ok(());
    }
    let Some((tname, t)) = train else {
        return Err(c.err(path, "checkpoint = \"best\" needs a train stage in `needs`"));
    };
    let evaluates = dataset_of(&t.needs, datasets).is_some_and(|(_, d)| d.val_dataset.is_some());
    c.ensure(evaluates, path, || {
        format!("checkpoint = \"best\" needs evaluation, but train stage `{tname}` has no val_dataset to evaluate on")
    })
}

fn export(
    c: &Check,
    name: &str,
    mut p: ExportParams,
    stages: Stages,
    datasets: &[(&str, &DatasetParams)],
) -> Result<ExportParams> {
    let at = |k: &'static str| ["stages", name, k];
    check_best(
        c,
        &at("checkpoint"),
        &p.checkpoint,
        train_of(&p.needs, stages),
        datasets,
    )?;
    c.ensure(p.peft || p.merged, &at("merged"), || {
        "nothing to export: `peft` and `merged` are both false".into()
    })?;
    if let Some(o) = &p.output_dir {
        p.output_dir = Some(c.resolve(o).to_string_lossy().into_owned());
    }
    Ok(p)
}

fn score(
    c: &Check,
    name: &str,
    mut p: ScoreParams,
    stages: Stages,
    datasets: &[(&str, &DatasetParams)],
) -> Result<ScoreParams> {
    let at = |k: &'static str| ["stages", name, k];
    c.choice(&at("split"), &p.split, &SPLITS)?;
    c.ensure(p.batch_size >= 1, &at("batch_size"), || {
        "batch_size must be ≥ 1".into()
    })?;
    if let Some((key, msg)) = nproc_problem(p.nproc_per_node) {
        return Err(c.err(&at(key), msg));
    }
    let train = train_of(&p.needs, stages);
    if p.checkpoint != "last" || train.is_some() {
        check_best(c, &at("checkpoint"), &p.checkpoint, train, datasets)?;
    }
    if let Some(a) = &p.adapter {
        c.ensure(train.is_none(), &at("adapter"), || {
            "set `adapter` or need a train stage, not both (both name the weights to score)".into()
        })?;
        p.adapter = Some(c.existing_dir(&at("adapter"), a)?);
    }
    match &p.dataset {
        Some(d) => p.dataset = Some(c.existing_file(&at("dataset"), d)?),
        None => {
            let (dname, data) =
                dataset_of(&p.needs, datasets).expect("check_graph guarantees a dataset need");
            let (has, key) = match p.split.as_str() {
                "val" => (data.val_dataset.is_some(), "val_dataset"),
                _ => (data.dataset.is_some(), "dataset"),
            };
            c.ensure(has, &at("split"), || {
                format!(
                    "split = \"{}\" but dataset stage `{dname}` has no `{key}`",
                    p.split
                )
            })?;
        }
    }
    Ok(p)
}
