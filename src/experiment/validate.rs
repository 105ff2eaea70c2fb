//! Validation: typed sections → an `Experiment`. Checks every cross-field rule, resolves
//! relative paths against the experiment file's folder and orders the stages.

use std::path::Path;

use regex::Regex;
use toml_edit::Table;

use super::check::{Check, Result};
use super::cluster::check_slurm;
use super::dag::check_graph;
use super::error::list;
use super::parse::{Sections, read_sections};
use super::schema::{Common, DatasetParams, ModelSpec, TaskSpec};
use super::source::Source;
use super::spec::{Experiment, StageParams, StageSpec};
use super::stage_rules::{check_replica_pools, check_stage};

/// Built-in model presets (`model::presets::PRESETS` in the model layer).
pub const MODEL_PRESETS: [&str; 3] = ["qwen2.5-vl-3b", "qwen2.5-vl-7b", "tiny"];
pub const DTYPES: [&str; 2] = ["bfloat16", "float32"];

/// Validate the document `root` of the file at `file` (absolute).
pub(crate) fn validate(src: &Source, root: &Table, file: &Path) -> Result<Experiment> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let c = Check { src, root, dir };
    let Sections {
        name,
        seed,
        model,
        task,
        devices,
        slurm,
        stages,
    } = read_sections(src, root)?;

    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    c.ensure(is_dir_name(&name) && name != "cache", &["name"], || {
        format!("invalid experiment name `{name}`: it names runs/<name>/, so use letters, digits, `_`, `-`, `.` (and not `cache`)")
    })?;
    let model = check_model(&c, model)?;
    let task = check_task(&c, task)?;
    let slurm = check_slurm(&c, slurm.unwrap_or_default())?;
    let devices = devices.unwrap_or_default();
    let device_re = Regex::new(r"^(cpu|cuda|cuda:\d+)$").expect("static regex");
    for (i, d) in devices.iter().enumerate() {
        c.ensure(device_re.is_match(d), &["devices"], || {
            format!("invalid device `{d}` (entry {i}); valid: cpu, cuda, cuda:N")
        })?;
        c.ensure(!devices[..i].contains(d), &["devices"], || {
            format!("device `{d}` is listed twice")
        })?;
    }
    // The device kind is part of every model stage's key (CPU and GPU results differ), so
    // it must be known before the scheduler picks a slot.
    c.ensure(
        devices.iter().all(|d| d == "cpu") || !devices.iter().any(|d| d == "cpu"),
        &["devices"],
        || "devices mixes `cpu` and CUDA devices; list one kind (results, and so cache keys, differ between them)".into(),
    )?;

    for (name, _) in &stages {
        // No `.`: sweep paths are dotted (`stages.<stage>.<key>`).
        c.ensure(
            is_dir_name(name) && !name.contains('.'),
            &["stages", name],
            || format!("invalid stage name `{name}`: use letters, digits, `_` and `-`"),
        )?;
    }
    let order = check_graph(&c, &stages)?;
    let datasets: Vec<(&str, &DatasetParams)> = stages
        .iter()
        .filter_map(|(n, p)| match p {
            StageParams::Dataset(d) => Some((n.as_str(), d)),
            _ => None,
        })
        .collect();
    let mut checked = Vec::new();
    for (name, params) in &stages {
        checked.push((
            name.clone(),
            check_stage(&c, name, params.clone(), &stages, &datasets)?,
        ));
    }
    check_replica_pools(&c, &checked, &devices, &model.device)?;
    let stages = order
        .iter()
        .map(|n| {
            let (_, params) = checked
                .iter()
                .find(|(m, _)| m == n)
                .expect("ordered names come from stages");
            StageSpec {
                name: n.clone(),
                needs: params.needs().to_vec(),
                params: params.clone(),
            }
        })
        .collect();
    Ok(Experiment {
        name,
        file: file.to_path_buf(),
        common: Common { model, task, seed },
        devices,
        slurm,
        stages,
    })
}

/// Parse and validate in one go (the sweep re-validates edited documents through this).
pub(crate) fn validate_text(src: &Source, file: &Path) -> Result<(Table, Experiment)> {
    let root = super::parse::parse_document(src)?;
    let exp = validate(src, &root, file)?;
    Ok((root, exp))
}

fn is_dir_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
}

fn check_model(c: &Check, mut m: ModelSpec) -> Result<ModelSpec> {
    let given: Vec<&str> = [
        ("preset", m.preset.is_some()),
        ("path", m.path.is_some()),
        ("model", m.model.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    if given.len() != 1 {
        let at = given.get(1).copied().unwrap_or("");
        return Err(c.err(
            &if at.is_empty() { vec!["model"] } else { vec!["model", at] },
            format!(
                "set exactly one of `preset` (one of: {}), `path` (a Hugging Face model folder) or `model` (a hub id in the local cache){}",
                list(&MODEL_PRESETS),
                if given.is_empty() { String::new() } else { format!(", not {}", given.join(" and ")) }
            ),
        ));
    }
    if let Some(p) = &m.preset {
        c.choice(&["model", "preset"], p, &MODEL_PRESETS)?;
    }
    if let Some(p) = &m.path {
        m.path = Some(c.existing_dir(&["model", "path"], p)?);
    }
    if let Some(id) = &m.model {
        let dir = super::hub_model::resolve_hub_model(id).map_err(|looked| {
            c.err(
                &["model", "model"],
                format!(
                    "{id} is not in a local cache (nothing is downloaded); looked in: {}",
                    looked
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        m.path = Some(dir.display().to_string());
    }
    c.choice(&["model", "torch_dtype"], &m.torch_dtype, &DTYPES)?;
    let device_re = Regex::new(r"^(auto|cpu|cuda|cuda:\d+)$").expect("static regex");
    c.ensure(device_re.is_match(&m.device), &["model", "device"], || {
        format!(
            "invalid device `{}`; valid values: auto, cpu, cuda, cuda:N",
            m.device
        )
    })?;
    Ok(m)
}

fn check_task(c: &Check, t: TaskSpec) -> Result<TaskSpec> {
    c.choice(&["task", "task_type"], &t.task_type, &["seq_cls"])?;
    c.ensure(t.num_labels >= 1, &["task", "num_labels"], || {
        "num_labels must be ≥ 1".into()
    })?;
    if let Some(p) = &t.problem_type {
        c.choice(&["task", "problem_type"], p, &crate::task::PROBLEM_TYPES)?;
    }
    if let Some(labels) = &t.labels {
        c.ensure(labels.len() == t.num_labels, &["task", "labels"], || {
            format!(
                "{} labels given but num_labels = {}",
                labels.len(),
                t.num_labels
            )
        })?;
        for (i, l) in labels.iter().enumerate() {
            c.ensure(!labels[..i].contains(l), &["task", "labels"], || {
                format!("label `{l}` is listed twice")
            })?;
        }
    }
    Ok(t)
}
