//! Raw parse: TOML text → typed sections, with every serde error turned into a one-line
//! message at the offending key's `file:line:column`. No file system access here.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{Item, Table, TableLike, Value};

use super::cluster::SlurmSpec;
use super::error::{ExperimentError, closest, list};
use super::fields::sorted_fields_of;
use super::schema::{
    DatasetParams, ExportParams, ModelSpec, RawExperiment, ScoreParams, TaskSpec, TrainParams,
};
use super::source::{Source, item_span};
use super::spec::{STAGE_KINDS, StageParams};

/// The typed sections of an experiment file, before cross-field validation.
#[derive(Debug, Clone)]
pub(crate) struct Sections {
    pub name: Option<String>,
    pub seed: u64,
    pub model: ModelSpec,
    pub task: TaskSpec,
    pub devices: Option<Vec<String>>,
    pub slurm: Option<SlurmSpec>,
    /// In file order.
    pub stages: Vec<(String, StageParams)>,
}

/// Parse the text into a span-carrying document.
pub(crate) fn parse_document(src: &Source) -> Result<Table, ExperimentError> {
    let doc =
        toml_edit::ImDocument::parse(src.text.clone()).map_err(|e| ExperimentError::Syntax {
            location: src.location(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().replace('\n', " "),
        })?;
    Ok(doc.as_table().clone())
}

/// Read the typed sections of `root`.
pub(crate) fn read_sections(src: &Source, root: &Table) -> Result<Sections, ExperimentError> {
    check_keys(
        src,
        root,
        &[],
        root,
        &sorted_fields_of::<RawExperiment>(&[]),
    )?;
    let name = optional::<String>(src, root, "name")?;
    let seed = optional::<u64>(src, root, "seed")?.unwrap_or_else(super::schema::default_seed);
    let devices = optional::<Vec<String>>(src, root, "devices")?;
    let slurm = optional::<SlurmSpec>(src, root, "slurm")?;
    let model = required_table::<ModelSpec>(
        src,
        root,
        "model",
        "add a [model] table with `preset` or `path`",
    )?;
    let task =
        required_table::<TaskSpec>(src, root, "task", "add a [task] table with `num_labels`")?;
    if let Some(sweep) = root.get("sweep")
        && !sweep.is_table_like()
    {
        return Err(src.invalid(
            root,
            &["sweep"],
            "expected a table of dotted paths to value lists",
        ));
    }
    let Some(stages_item) = root.get("stages") else {
        return Err(src.invalid_key(
            root,
            &["stages"],
            format!(
                "no stages; add a [stages.NAME] table with kind = one of: {}",
                list(&STAGE_KINDS)
            ),
        ));
    };
    let Some(stages) = stages_item.as_table_like() else {
        return Err(src.invalid(
            root,
            &["stages"],
            "expected a table of stage tables ([stages.NAME])",
        ));
    };
    let mut out = Vec::new();
    for (name, item) in stages.iter() {
        out.push((name.to_string(), read_stage(src, root, name, item)?));
    }
    if out.is_empty() {
        return Err(src.invalid_key(root, &["stages"], "no stages; add a [stages.NAME] table"));
    }
    Ok(Sections {
        name,
        seed,
        model,
        task,
        devices,
        slurm,
        stages: out,
    })
}

fn read_stage(
    src: &Source,
    root: &Table,
    name: &str,
    item: &Item,
) -> Result<StageParams, ExperimentError> {
    let path = ["stages", name];
    let Some(table) = item.as_table_like() else {
        return Err(src.invalid(root, &path, "expected a stage table with a `kind`"));
    };
    let kind = match table.get("kind") {
        None => {
            return Err(src.invalid_key(
                root,
                &path,
                format!(
                    "missing `kind` in [stages.{name}]; valid kinds: {}",
                    list(&STAGE_KINDS)
                ),
            ));
        }
        Some(k) => k.as_str().map(str::to_string).ok_or_else(|| {
            src.invalid(
                root,
                &["stages", name, "kind"],
                format!("expected a string; valid kinds: {}", list(&STAGE_KINDS)),
            )
        })?,
    };
    let kind_path = ["stages", name, "kind"];
    Ok(match kind.as_str() {
        "dataset" => StageParams::Dataset(stage_table::<DatasetParams>(src, root, &path, item)?),
        "train" => StageParams::Train(stage_table::<TrainParams>(src, root, &path, item)?),
        "export" => StageParams::Export(stage_table::<ExportParams>(src, root, &path, item)?),
        "score" => StageParams::Score(stage_table::<ScoreParams>(src, root, &path, item)?),
        other => {
            let hint = closest(other, &STAGE_KINDS)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(src.invalid(
                root,
                &kind_path,
                format!(
                    "unknown stage kind `{other}`{hint}; valid kinds: {}",
                    list(&STAGE_KINDS)
                ),
            ));
        }
    })
}

fn stage_table<T: DeserializeOwned>(
    src: &Source,
    root: &Table,
    path: &[&str],
    item: &Item,
) -> Result<T, ExperimentError> {
    deserialize(src, root, path, item, &["kind"])
}

fn optional<T: DeserializeOwned>(
    src: &Source,
    root: &Table,
    key: &str,
) -> Result<Option<T>, ExperimentError> {
    root.get(key)
        .map(|item| deserialize(src, root, &[key], item, &[]))
        .transpose()
}

fn required_table<T: DeserializeOwned>(
    src: &Source,
    root: &Table,
    key: &str,
    fix: &str,
) -> Result<T, ExperimentError> {
    match root.get(key) {
        Some(item) if item.is_table_like() => deserialize(src, root, &[key], item, &[]),
        Some(_) => Err(src.invalid(root, &[key], format!("expected a table; {fix}"))),
        None => Err(src.invalid_key(root, &[key], format!("missing table [{key}]; {fix}"))),
    }
}

/// A child key of a table: its name, key span and value span.
type ChildSpans = (String, Option<Range<usize>>, Option<Range<usize>>);

/// Deserialize `item` (at dotted `path`) into `T`, ignoring the `skip` keys of a table.
pub(crate) fn deserialize<T: DeserializeOwned>(
    src: &Source,
    root: &Table,
    path: &[&str],
    item: &Item,
    skip: &[&'static str],
) -> Result<T, ExperimentError> {
    let value = match item {
        Item::Value(v) => v.clone(),
        Item::Table(t) => Value::InlineTable(t.clone().into_inline_table()),
        Item::ArrayOfTables(a) => Value::Array(a.clone().into_array()),
        Item::None => return Err(src.invalid_key(root, path, "missing value")),
    };
    let value = match value {
        Value::InlineTable(mut t) => {
            let valid = sorted_fields_of::<T>(skip);
            if valid.len() > skip.len() {
                check_keys(src, root, path, &t, &valid)?;
            }
            for k in skip {
                t.remove(k);
            }
            Value::InlineTable(t)
        }
        v => v,
    };
    let table_span = item_span(item);
    let children: Vec<ChildSpans> = item
        .as_table_like()
        .map(|t| {
            t.iter()
                .filter_map(|(k, _)| t.get_key_value(k))
                .map(|(k, v)| (k.get().to_string(), k.span(), item_span(v)))
                .collect()
        })
        .unwrap_or_default();
    T::deserialize(value.into_deserializer()).map_err(|e| {
        let (missing, message) = humanize(e.message());
        let dotted = path.join(".");
        if let Some(field) = missing {
            return src.invalid_at(table_span.clone(), &format!("{dotted}.{field}"), message);
        }
        // Name the child key whose value contains the error position.
        let span = e.span();
        let child = span.as_ref().and_then(|s| {
            children.iter().find(|(_, ks, vs)| {
                [ks, vs].iter().any(|r| {
                    r.as_ref()
                        .is_some_and(|r| r.start <= s.start && s.start < r.end.max(r.start + 1))
                })
            })
        });
        match child {
            Some((k, _, _)) => src.invalid_at(span, &format!("{dotted}.{k}"), message),
            None => src.invalid_at(span.or(table_span.clone()), &dotted, message),
        }
    })
}

/// Reject keys of `table` that are not in `valid`, at the key's position.
fn check_keys(
    src: &Source,
    root: &Table,
    path: &[&str],
    table: &dyn TableLike,
    valid: &[&'static str],
) -> Result<(), ExperimentError> {
    for (key, _) in table.iter() {
        if valid.contains(&key) {
            continue;
        }
        let span = table.get_key_value(key).and_then(|(k, _)| k.span());
        let mut full: Vec<&str> = path.to_vec();
        full.push(key);
        let hint = closest(key, valid)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        let within = if path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in [{}]", path.join("."))
        };
        let message = format!(
            "unknown key `{key}` {within}{hint}; valid keys: {}",
            list(valid)
        );
        return Err(match span {
            Some(s) => src.invalid_at(Some(s), &full.join("."), message),
            None => src.invalid_key(root, &full, message),
        });
    }
    Ok(())
}

/// Rewrite serde's messages into ours: (`Some(field)` when a required key is missing,
/// message).
fn humanize(msg: &str) -> (Option<String>, String) {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`').to_string();
        return (
            Some(field.clone()),
            format!("missing required key `{field}`"),
        );
    }
    if msg.contains("untagged enum TargetModules") {
        return (
            None,
            "expected `all-linear`, a regex string, or an array of module names".into(),
        );
    }
    for (prefix, unsigned_hint) in [("invalid type: ", false), ("invalid value: ", true)] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let expected = describe_expected(expected, unsigned_hint);
            return (
                None,
                format!("expected {expected}, found {}", found.replace('`', "")),
            );
        }
    }
    (None, msg.to_string())
}

fn describe_expected(expected: &str, value_error: bool) -> String {
    match expected.trim() {
        "usize" | "u64" | "u32" | "u16" | "u8" if value_error => "an integer ≥ 0".into(),
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" | "isize" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        s if s.starts_with("struct ") => "a table".into(),
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizes_serde_messages() {
        assert_eq!(
            humanize("invalid type: string \"x\", expected usize").1,
            "expected an integer, found string \"x\""
        );
        assert_eq!(
            humanize("invalid value: integer `-1`, expected usize").1,
            "expected an integer ≥ 0, found integer -1"
        );
        assert_eq!(
            humanize("missing field `num_labels`").0.as_deref(),
            Some("num_labels")
        );
    }
}
