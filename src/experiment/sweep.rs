//! `[sweep]`: a grid (default) or seeded random search over dotted parameter paths.
//! Every path and every value is checked, by re-validating the edited file, before
//! anything runs; a bad one is reported at its line in `[sweep]`.

use std::ops::Range;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value as Json;
use toml_edit::{Item, Table, TableLike, Value};

use super::error::{ExperimentError, closest, list};
use super::fields::sorted_fields_of;
use super::schema::{DatasetParams, ExportParams, ModelSpec, ScoreParams, TaskSpec, TrainParams};
use super::source::Source;
use super::spec::{Experiment, StageParams};
use super::sweep_names::{labels, part, round_sig3};
use super::validate::validate;

/// How variants are drawn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SweepMode {
    /// Every combination, the first path varying slowest.
    Grid,
    /// `trials` draws from a generator seeded with `seed`.
    Random { trials: usize, seed: u64 },
}

/// One swept path.
#[derive(Debug, Clone)]
pub struct SweepParam {
    /// Dotted path (`stages.train.lora_rank`).
    pub path: String,
    /// Short label used in variant names (`r`).
    pub label: String,
    domain: Domain,
    key_span: Option<Range<usize>>,
}

#[derive(Debug, Clone)]
enum Domain {
    Choices(Vec<Value>),
    Range {
        min: f64,
        max: f64,
        log: bool,
        int: bool,
    },
}

/// The parsed `[sweep]` table.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub mode: SweepMode,
    pub params: Vec<SweepParam>,
}

/// A swept value of one variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweptValue {
    pub path: String,
    pub label: String,
    pub value: Json,
}

/// One experiment of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Position in expansion order (`--variant K`, slurm array index).
    pub index: usize,
    /// `r8-lr1e-4`; `None` when the file has no sweep.
    pub name: Option<String>,
    pub values: Vec<SweptValue>,
    pub experiment: Experiment,
}

const RESERVED: [&str; 3] = ["mode", "seed", "trials"];

/// Parse `[sweep]` and expand it into validated variants; `None` without a sweep.
pub(crate) fn expand(
    src: &Source,
    root: &Table,
    file: &Path,
    base: &Experiment,
) -> Result<Option<(SweepSpec, Vec<Variant>)>, ExperimentError> {
    let Some(sweep) = root.get("sweep").and_then(Item::as_table_like) else {
        return Ok(None);
    };
    let spec = parse_spec(src, root, sweep, base)?;
    // Each value alone must give a valid file, so a bad one is named precisely.
    for p in &spec.params {
        if let Domain::Choices(choices) = &p.domain {
            for v in choices {
                let edited = edit(root, &[(p.path.as_str(), v.clone())]);
                validate(src, &edited, file).map_err(|e| value_error(src, p, v, &e))?;
            }
        }
    }
    let assignments = match spec.mode {
        SweepMode::Grid => grid(&spec.params),
        SweepMode::Random { trials, seed } => random(&spec.params, trials, seed),
    };
    let mut variants: Vec<Variant> = Vec::new();
    for values in assignments {
        let swept: Vec<SweptValue> = spec
            .params
            .iter()
            .zip(&values)
            .map(|(p, v)| SweptValue {
                path: p.path.clone(),
                label: p.label.clone(),
                value: to_json(v),
            })
            .collect();
        if variants.iter().any(|o| o.values == swept) {
            continue; // a random draw repeated an earlier one
        }
        let mut name = swept
            .iter()
            .map(|s| part(&s.label, &s.value))
            .collect::<Vec<_>>()
            .join("-");
        if variants
            .iter()
            .any(|o| o.name.as_deref() == Some(name.as_str()))
        {
            name = format!("{name}-{}", variants.len());
        }
        let edits: Vec<(&str, Value)> = spec
            .params
            .iter()
            .map(|p| p.path.as_str())
            .zip(values)
            .collect();
        let edited = edit(root, &edits);
        let experiment =
            validate(src, &edited, file).map_err(|e| variant_error(src, &spec, &name, &e))?;
        variants.push(Variant {
            index: variants.len(),
            name: Some(name),
            values: swept,
            experiment,
        });
    }
    Ok(Some((spec, variants)))
}

fn parse_spec(
    src: &Source,
    root: &Table,
    sweep: &dyn TableLike,
    base: &Experiment,
) -> Result<SweepSpec, ExperimentError> {
    let at = |k: &str| ["sweep".to_string(), k.to_string()];
    let err = |k: &str, msg: String| {
        let p = at(k);
        src.invalid(root, &[p[0].as_str(), p[1].as_str()], msg)
    };
    let mode = match sweep.get("mode") {
        None => "grid".to_string(),
        Some(m) => m
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| err("mode", "expected a string: grid or random".into()))?,
    };
    let int_of = |k: &str| -> Result<Option<i64>, ExperimentError> {
        sweep
            .get(k)
            .map(|v| {
                v.as_integer()
                    .ok_or_else(|| err(k, "expected an integer".into()))
            })
            .transpose()
    };
    // `seed = [1, 2]` sweeps the experiment's seed; `seed = 7` seeds a random search.
    let rng_seed_given = sweep.get("seed").is_some_and(|s| !s.is_array());
    let trials = int_of("trials")?;
    let seed = if rng_seed_given {
        int_of("seed")?
    } else {
        None
    };
    let mode = match mode.as_str() {
        "grid" => {
            for (k, given) in [("trials", trials.is_some()), ("seed", rng_seed_given)] {
                if given {
                    return Err(err(k, format!("`{k}` applies to mode = \"random\" only")));
                }
            }
            SweepMode::Grid
        }
        "random" => {
            let trials = trials.ok_or_else(|| {
                err(
                    "mode",
                    "mode = \"random\" needs `trials` (how many variants to draw)".into(),
                )
            })?;
            if trials < 1 {
                return Err(err("trials", "trials must be ≥ 1".into()));
            }
            if seed.is_some_and(|s| s < 0) {
                return Err(err("seed", "seed must be ≥ 0".into()));
            }
            SweepMode::Random {
                trials: trials as usize,
                seed: seed.map_or(base.common.seed, |s| s as u64),
            }
        }
        other => {
            return Err(err(
                "mode",
                format!("invalid mode `{other}`; valid values: grid, random"),
            ));
        }
    };
    let mut leaves = Vec::new();
    collect_leaves(sweep, "", &mut leaves);
    let mut params = Vec::new();
    for (path, key_span, item) in leaves {
        let swept_seed = path == "seed" && item.is_array();
        if path.is_empty() || (RESERVED.contains(&path.as_str()) && !swept_seed) {
            continue;
        }
        let loc_err = |msg: String| src.invalid_at(key_span.clone(), &format!("sweep.{path}"), msg);
        check_path(&path, base).map_err(&loc_err)?;
        let domain = parse_domain(item, &mode).map_err(|m| loc_err(format!("{path}: {m}")))?;
        params.push(SweepParam {
            path,
            label: String::new(),
            domain,
            key_span,
        });
    }
    if params.is_empty() {
        return Err(src.invalid_key(
            root,
            &["sweep"],
            "no parameters to sweep; add e.g. \"stages.train.lora_rank\" = [8, 16]",
        ));
    }
    let names: Vec<String> = params.iter().map(|p| p.path.clone()).collect();
    for (p, l) in params.iter_mut().zip(labels(&names)) {
        p.label = l;
    }
    Ok(SweepSpec { mode, params })
}

/// Flatten nested tables into dotted paths; a table with `min`/`max` is a range leaf.
fn collect_leaves<'a>(
    t: &'a dyn TableLike,
    prefix: &str,
    out: &mut Vec<(String, Option<Range<usize>>, &'a Item)>,
) {
    for (k, item) in t.iter() {
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        let span = t.get_key_value(k).and_then(|(key, _)| key.span());
        match item.as_table_like() {
            Some(sub) if !(sub.contains_key("min") || sub.contains_key("max")) => {
                collect_leaves(sub, &path, out)
            }
            _ => out.push((path, span, item)),
        }
    }
}

/// The path must name a field of the schema (and of its stage's kind).
fn check_path(path: &str, base: &Experiment) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let fields = |valid: Vec<&'static str>, key: &str, what: &str| -> Result<(), String> {
        if valid.contains(&key) {
            return Ok(());
        }
        let hint = closest(key, &valid)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        Err(format!(
            "unknown key `{key}` for {what} in sweep path `{path}`{hint}; valid keys: {}",
            list(&valid)
        ))
    };
    match parts.as_slice() {
        ["seed"] => Ok(()),
        ["model", k] => fields(sorted_fields_of::<ModelSpec>(&[]), k, "[model]"),
        ["task", k] => fields(sorted_fields_of::<TaskSpec>(&[]), k, "[task]"),
        ["stages", stage, k] => {
            let Some(spec) = base.stage(stage) else {
                let names = base.stage_names();
                let hint = closest(stage, &names)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown stage `{stage}` in sweep path `{path}`{hint}; stages: {}",
                    list(&names)
                ));
            };
            let mut valid = match &spec.params {
                StageParams::Dataset(_) => sorted_fields_of::<DatasetParams>(&[]),
                StageParams::Train(_) => sorted_fields_of::<TrainParams>(&[]),
                StageParams::Export(_) => sorted_fields_of::<ExportParams>(&[]),
                StageParams::Score(_) => sorted_fields_of::<ScoreParams>(&[]),
            };
            valid.retain(|f| *f != "needs"); // the graph's shape is not swept
            fields(valid, k, &format!("a {} stage", spec.kind()))
        }
        _ => Err(format!(
            "invalid sweep path `{path}`; use `stages.<stage>.<key>`, `model.<key>`, `task.<key>` or `seed`"
        )),
    }
}

fn parse_domain(item: &Item, mode: &SweepMode) -> Result<Domain, String> {
    if let Some(a) = item.as_array() {
        if a.is_empty() {
            return Err("empty list of values".into());
        }
        return Ok(Domain::Choices(
            a.iter().map(|v| despanned(v.clone())).collect(),
        ));
    }
    let Some(t) = item.as_table_like() else {
        return Err("expected a list of values, e.g. [8, 16]".into());
    };
    if *mode == SweepMode::Grid {
        return Err(
            "a { min, max } range needs mode = \"random\" (a grid takes a list of values)".into(),
        );
    }
    for (k, _) in t.iter() {
        if !["min", "max", "log"].contains(&k) {
            return Err(format!(
                "unknown key `{k}` in a range; valid keys: log, max, min"
            ));
        }
    }
    let bound = |k: &str| -> Result<(f64, bool), String> {
        match t.get(k).and_then(Item::as_value) {
            Some(Value::Integer(i)) => Ok((*i.value() as f64, true)),
            Some(Value::Float(f)) => Ok((*f.value(), false)),
            _ => Err(format!("a range needs a numeric `{k}`")),
        }
    };
    let ((min, imin), (max, imax)) = (bound("min")?, bound("max")?);
    let log = match t.get("log") {
        None => false,
        Some(v) => v.as_bool().ok_or("`log` must be true or false")?,
    };
    if min.partial_cmp(&max) != Some(std::cmp::Ordering::Less) {
        return Err(format!("range min ({min}) must be < max ({max})"));
    }
    if log && min <= 0.0 {
        return Err("a log range needs min > 0".into());
    }
    Ok(Domain::Range {
        min,
        max,
        log,
        int: imin && imax,
    })
}

fn grid(params: &[SweepParam]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = vec![vec![]];
    for p in params {
        let Domain::Choices(choices) = &p.domain else {
            unreachable!("grid domains are lists")
        };
        out = out
            .into_iter()
            .flat_map(|prefix| {
                choices.iter().map(move |c| {
                    let mut v = prefix.clone();
                    v.push(c.clone());
                    v
                })
            })
            .collect();
    }
    out
}

fn random(params: &[SweepParam], trials: usize, seed: u64) -> Vec<Vec<Value>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..trials)
        .map(|_| params.iter().map(|p| sample(&p.domain, &mut rng)).collect())
        .collect()
}

fn sample(domain: &Domain, rng: &mut ChaCha8Rng) -> Value {
    match domain {
        Domain::Choices(c) => c[rng.random_range(0..c.len())].clone(),
        Domain::Range { min, max, log, int } => {
            let u: f64 = rng.random();
            let x = if *log {
                (min.ln() + u * (max.ln() - min.ln())).exp()
            } else {
                min + u * (max - min)
            };
            if *int {
                let i = if *log {
                    x.round() as i64
                } else {
                    rng.random_range(*min as i64..=*max as i64)
                };
                Value::from(i.clamp(*min as i64, *max as i64))
            } else {
                Value::from(round_sig3(x))
            }
        }
    }
}

/// A copy of `root` with `edits` (dotted path, value) applied.
fn edit(root: &Table, edits: &[(&str, Value)]) -> Table {
    let mut root = root.clone();
    for (path, value) in edits {
        let parts: Vec<&str> = path.split('.').collect();
        let mut table: &mut dyn TableLike = &mut root;
        for p in &parts[..parts.len() - 1] {
            table = table
                .get_mut(p)
                .and_then(Item::as_table_like_mut)
                .expect("sweep paths are checked to exist");
        }
        table.insert(parts[parts.len() - 1], Item::Value(value.clone()));
    }
    root
}

fn despanned(mut v: Value) -> Value {
    v.decor_mut().clear();
    v
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::from(s.value().as_str()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f.value()).map_or(Json::Null, Json::Number)
        }
        Value::Boolean(b) => Json::from(*b.value()),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        other => Json::from(other.to_string().trim()),
    }
}

/// A value that breaks the file, reported at its sweep key.
fn value_error(src: &Source, p: &SweepParam, v: &Value, e: &ExperimentError) -> ExperimentError {
    let inner = inner_message(e, &p.path);
    src.invalid_at(
        p.key_span.clone(),
        &format!("sweep.{}", p.path),
        format!("value {}: {inner}", v.to_string().trim()),
    )
}

/// A combination that breaks a cross-field rule, reported at the path it names.
fn variant_error(
    src: &Source,
    spec: &SweepSpec,
    name: &str,
    e: &ExperimentError,
) -> ExperimentError {
    let key = e.key().unwrap_or_default();
    let p = spec
        .params
        .iter()
        .find(|p| p.path == key)
        .unwrap_or(&spec.params[0]);
    src.invalid_at(
        p.key_span.clone(),
        &format!("sweep.{}", p.path),
        format!("variant `{name}`: {}", inner_message(e, &p.path)),
    )
}

fn inner_message(e: &ExperimentError, path: &str) -> String {
    match e {
        ExperimentError::Invalid { key, message, .. } if key == path => message.clone(),
        ExperimentError::Invalid { key, message, .. } => format!("{key}: {message}"),
        other => other.to_string(),
    }
}
