//! Metrics read back from finished stages, generically as JSON (no model code): the
//! sweep summary (`runs/<name>/sweep.{csv,md}`) and `pipeline show`.
//!
//! Sources, per stage directory: `metrics.json` (top-level numbers, e.g. a score
//! stage's `acc`, `macro_f1`, `nll`) and `logging.jsonl` (the last line with `eval_*`
//! keys, and a `best_metric` summary line, as a train stage writes them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{Result, Store, io};
use crate::experiment::{Loaded, StageParams, SweptValue, format_value};

/// Throughput fields of an eval line: not worth a column.
const NOISE: [&str; 3] = [
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
];

/// Numbers a finished stage reported, by metric name.
pub fn stage_metrics(dir: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(Json::Object(m)) = std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        for (k, v) in m {
            if let Some(x) = v.as_f64() {
                out.insert(k, x);
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("logging.jsonl")) {
        let lines: Vec<serde_json::Map<String, Json>> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter_map(|v| v.as_object().cloned())
            .collect();
        if let Some(eval) = lines
            .iter()
            .rev()
            .find(|l| l.keys().any(|k| k.starts_with("eval_")))
        {
            for (k, v) in eval {
                if k.starts_with("eval_")
                    && !NOISE.contains(&k.as_str())
                    && let Some(x) = v.as_f64()
                {
                    out.insert(k.clone(), x);
                }
            }
        }
        if let Some(best) = lines
            .iter()
            .rev()
            .find_map(|l| l.get("best_metric").and_then(Json::as_f64))
        {
            out.insert("best_metric".into(), best);
        }
    }
    out
}

/// One row of a sweep summary.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    pub index: usize,
    pub variant: String,
    pub values: Vec<SweptValue>,
    /// `<stage>.<metric>` → value.
    pub metrics: BTreeMap<String, f64>,
}

/// A sweep's table: one row per variant, best first. (`report::` can plot it, e.g. a
/// rank × learning-rate heatmap, from these rows.)
#[derive(Debug, Clone)]
pub struct Summary {
    pub experiment: String,
    /// Metric columns in display order.
    pub columns: Vec<String>,
    /// The column rows are sorted by, and whether lower is better.
    pub sort_by: Option<(String, bool)>,
    pub rows: Vec<SummaryRow>,
}

/// Gather the summary of every variant of `loaded` from the links under `store`.
pub fn sweep_summary(store: &Store, loaded: &Loaded) -> Summary {
    let mut rows = Vec::new();
    for v in &loaded.variants {
        let mut metrics = BTreeMap::new();
        for s in &v.experiment.stages {
            if let Some(dir) = store.read_pointer(loaded.name(), v.name.as_deref(), &s.name) {
                for (k, x) in stage_metrics(&dir) {
                    metrics.insert(format!("{}.{k}", s.name), x);
                }
            }
        }
        rows.push(SummaryRow {
            index: v.index,
            variant: v.name.clone().unwrap_or_else(|| loaded.name().to_string()),
            values: v.values.clone(),
            metrics,
        });
    }
    // The train stage's metric_for_best_model decides the order.
    let sort_by = loaded.base.stages.iter().find_map(|s| match &s.params {
        StageParams::Train(t) => Some((
            format!("{}.eval_{}", s.name, t.metric_for_best_model),
            t.metric_for_best_model == "loss",
        )),
        _ => None,
    });
    if let Some((col, lower_better)) = &sort_by {
        rows.sort_by(|a, b| {
            let (x, y) = (a.metrics.get(col), b.metrics.get(col));
            match (x, y) {
                (Some(x), Some(y)) => {
                    let o = x.total_cmp(y);
                    if *lower_better { o } else { o.reverse() }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
            .then(a.index.cmp(&b.index))
        });
    }
    // Columns by stage (file order), the sort column first within its stage.
    let mut columns: Vec<String> = Vec::new();
    for r in &rows {
        for k in r.metrics.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let stage_pos = |c: &str| {
        let stage = c.split('.').next().unwrap_or_default();
        loaded
            .base
            .stages
            .iter()
            .position(|s| s.name == stage)
            .unwrap_or(usize::MAX)
    };
    let is_sort = |c: &str| sort_by.as_ref().is_some_and(|(s, _)| s == c);
    columns.sort_by(|a, b| {
        (stage_pos(a), !is_sort(a), a.as_str()).cmp(&(stage_pos(b), !is_sort(b), b.as_str()))
    });
    Summary {
        experiment: loaded.name().to_string(),
        columns,
        sort_by,
        rows,
    }
}

impl Summary {
    fn params(&self) -> Vec<(String, String)> {
        self.rows
            .first()
            .map(|r| {
                r.values
                    .iter()
                    .map(|v| (v.label.clone(), v.path.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn to_csv(&self) -> String {
        let mut head = vec!["variant".to_string()];
        head.extend(self.params().into_iter().map(|(_, p)| p));
        head.extend(self.columns.iter().cloned());
        let mut out = csv_line(&head);
        for r in &self.rows {
            let mut cells = vec![r.variant.clone()];
            cells.extend(r.values.iter().map(|v| format_value(&v.value)));
            cells.extend(
                self.columns
                    .iter()
                    .map(|c| r.metrics.get(c).map(|x| x.to_string()).unwrap_or_default()),
            );
            out.push_str(&csv_line(&cells));
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut head = vec!["variant".to_string()];
        head.extend(self.params().into_iter().map(|(l, _)| l));
        head.extend(self.columns.iter().cloned());
        let mut out = format!("# Sweep `{}`\n\n", self.experiment);
        if let Some((c, lower)) = &self.sort_by {
            out.push_str(&format!(
                "Sorted by `{c}` ({} is better).\n\n",
                if *lower { "lower" } else { "higher" }
            ));
        }
        out.push_str(&format!("| {} |\n", head.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
        for r in &self.rows {
            let mut cells = vec![r.variant.clone()];
            cells.extend(r.values.iter().map(|v| format_value(&v.value)));
            cells.extend(self.columns.iter().map(|c| {
                r.metrics
                    .get(c)
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_else(|| "–".into())
            }));
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }

    /// Write `runs/<name>/sweep.csv` and `sweep.md` (each via a temp file and a rename:
    /// slurm array tasks may finish at the same time).
    pub fn write(&self, store: &Store) -> Result<(PathBuf, PathBuf)> {
        let dir = store.experiment_dir(&self.experiment);
        io(std::fs::create_dir_all(&dir), "create", &dir)?;
        let csv = dir.join("sweep.csv");
        let md = dir.join("sweep.md");
        for (path, text) in [(&csv, self.to_csv()), (&md, self.to_markdown())] {
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            io(std::fs::write(&tmp, text), "write", &tmp)?;
            io(std::fs::rename(&tmp, path), "rename", &tmp)?;
        }
        // Hook: a rank × learning-rate heatmap (`sweep.png`) belongs in `report::`, fed
        // with `self.rows`; call it here once that module lands.
        Ok((csv, md))
    }
}

fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

/// `pipeline show` for an experiment without a sweep: each stage's latest metrics.
pub fn latest_metrics(store: &Store, loaded: &Loaded) -> String {
    let v = &loaded.variants[0];
    let mut out = String::new();
    for s in &v.experiment.stages {
        let line = match store.read_pointer(loaded.name(), None, &s.name) {
            None => "not run yet".to_string(),
            Some(dir) => {
                let m = stage_metrics(&dir);
                if m.is_empty() {
                    format!("no metrics ({})", dir.display())
                } else {
                    m.iter()
                        .map(|(k, x)| format!("{k}={x:.4}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                }
            }
        };
        out.push_str(&format!("{:<12} {:<8} {line}\n", s.name, s.kind()));
    }
    out
}
