//! Metrics read back from finished stages, generically as JSON (no model code): the
//! sweep summary (`runs/<name>/sweep.{csv,md}`) and `pipeline show`.
//!
//! Sources, per stage directory: `metrics.json` (top-level numbers, e.g. a score
//! stage's `acc`, `macro_f1`, `nll`) and `logging.jsonl` (the last line with `eval_*`
//! keys, and a `best_metric` summary line, as a train stage writes them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::heatmap::{Heatmap, render_heatmap};
use crate::experiment::{Loaded, StageParams, SweptValue, format_value};
use crate::store::{KeyLock, Result, Store, io};

/// Throughput fields of an eval line: not worth a column.
const NOISE: [&str; 3] = [
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
];
/// Counts rather than results (the same for every variant of a sweep): kept out of the
/// summary table.
const COUNTS: [&str; 5] = [
    "global_step",
    "max_steps",
    "eval_samples",
    "num_samples",
    "num_labelled",
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

/// Gather the summary and write it under the experiment's summary lock, so that tasks
/// finishing together never overwrite a newer table with an older one: each gathers
/// only once it holds the lock, and so sees every variant finished before it.
pub fn write_sweep_summary(store: &Store, loaded: &Loaded) -> Result<(Summary, SummaryFiles)> {
    let _lock = KeyLock::exclusive(&summary_lock_path(store, loaded.name()))?;
    let summary = sweep_summary(store, loaded);
    let files = summary.write(store)?;
    Ok((summary, files))
}

/// The lock `write_sweep_summary` holds (beside the cache's per-key locks).
pub fn summary_lock_path(store: &Store, experiment: &str) -> PathBuf {
    store.locks_dir().join(format!("sweep-{experiment}.lock"))
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

/// A sweep's table: one row per variant, best first (and, from it, a heatmap).
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
            let metric = k.split_once('.').map_or(k.as_str(), |(_, m)| m);
            if !COUNTS.contains(&metric) && !columns.contains(k) {
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

    /// The metric as a grid over the swept values: columns are the last swept key, rows
    /// the first (one row when a single key is swept); numeric values ascend. `Err` says
    /// why there is no heatmap (more than two swept keys, no metric to colour by).
    pub fn heatmap(&self) -> std::result::Result<Heatmap, String> {
        let Some((metric, lower)) = &self.sort_by else {
            return Err("no train stage, so no metric_for_best_model to colour by".into());
        };
        let keys = self.params();
        if keys.is_empty() || keys.len() > 2 {
            return Err(format!(
                "{} swept keys; the heatmap shows one or two",
                keys.len()
            ));
        }
        let mut by_index: Vec<&SummaryRow> = self.rows.iter().collect();
        by_index.sort_by_key(|r| r.index);
        let axis = |k: usize| -> Vec<&Json> {
            let mut seen: Vec<&Json> = Vec::new();
            for r in &by_index {
                if let Some(v) = r.values.get(k)
                    && !seen.contains(&&v.value)
                {
                    seen.push(&v.value);
                }
            }
            if seen.iter().all(|v| v.is_number()) {
                seen.sort_by(|a, b| {
                    a.as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&b.as_f64().unwrap_or(0.0))
                });
            }
            seen
        };
        let (xk, yk) = (keys.len() - 1, (keys.len() == 2).then_some(0));
        let xs = axis(xk);
        let ys = yk.map(axis).unwrap_or_default();
        const MAX_TICKS: usize = 16;
        if xs.len() > MAX_TICKS || ys.len() > MAX_TICKS {
            return Err(format!(
                "{} × {} distinct values; the heatmap shows at most {MAX_TICKS} per axis",
                ys.len().max(1),
                xs.len()
            ));
        }
        let mut values = vec![vec![None; xs.len()]; ys.len().max(1)];
        for r in &by_index {
            let Some(&m) = r.metrics.get(metric) else {
                continue;
            };
            let col = xs.iter().position(|v| **v == r.values[xk].value);
            let row = match yk {
                Some(k) => ys.iter().position(|v| **v == r.values[k].value),
                None => Some(0),
            };
            if let (Some(row), Some(col)) = (row, col) {
                // Random search may draw one combination twice: show the better run.
                let cell: &mut Option<f64> = &mut values[row][col];
                let better = |old: f64| if *lower { m < old } else { m > old };
                if cell.is_none_or(better) {
                    *cell = Some(m);
                }
            }
        }
        let axis_label = |k: usize| format!("{} ({})", keys[k].0, keys[k].1);
        let ticks = |vs: &[&Json]| vs.iter().map(|v| format_value(v)).collect::<Vec<_>>();
        Ok(Heatmap {
            title: format!(
                "{}: {metric} ({} is better)",
                self.experiment,
                if *lower { "lower" } else { "higher" }
            ),
            x_label: axis_label(xk),
            y_label: yk.map(axis_label).unwrap_or_default(),
            x_ticks: ticks(&xs),
            y_ticks: if yk.is_some() {
                ticks(&ys)
            } else {
                vec![String::new()]
            },
            values,
            lower_is_better: *lower,
        })
    }

    /// Write `runs/<name>/sweep.csv`, `sweep.md` (each via a temp file and a rename, so a
    /// reader never sees half a table) and `sweep_heatmap.png` when the sweep has one or
    /// two keys. A heatmap that cannot be drawn is a note, not an error. Concurrent
    /// writers go through [`write_sweep_summary`].
    pub fn write(&self, store: &Store) -> Result<SummaryFiles> {
        let dir = store.experiment_dir(&self.experiment);
        io(std::fs::create_dir_all(&dir), "create", &dir)?;
        let csv = dir.join("sweep.csv");
        let md = dir.join("sweep.md");
        let tmp_of = |name: &str| dir.join(format!(".{name}.{}.tmp", std::process::id()));
        for (path, text) in [(&csv, self.to_csv()), (&md, self.to_markdown())] {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let tmp = tmp_of(&name);
            io(std::fs::write(&tmp, text), "write", &tmp)?;
            io(std::fs::rename(&tmp, path), "rename", &tmp)?;
        }
        let png = dir.join(HEATMAP_FILE);
        let heatmap = self.heatmap().and_then(|map| {
            // plotters picks the image format from the extension.
            let tmp = tmp_of("sweep_heatmap").with_extension("tmp.png");
            render_heatmap(&tmp, &map)
                .map_err(|e| e.to_string())
                .and_then(|_| std::fs::rename(&tmp, &png).map_err(|e| e.to_string()))
                .map(|()| png.clone())
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
        });
        Ok(SummaryFiles { csv, md, heatmap })
    }
}

/// The heatmap's file name in `runs/<name>/`.
pub const HEATMAP_FILE: &str = "sweep_heatmap.png";

/// What `Summary::write` wrote.
#[derive(Debug)]
pub struct SummaryFiles {
    pub csv: PathBuf,
    pub md: PathBuf,
    /// The heatmap, or why there is none.
    pub heatmap: std::result::Result<PathBuf, String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A project with a sweep over `ranks` and a store under it.
    fn sweep_of(ranks: &[usize]) -> (tempfile::TempDir, Loaded, Store) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.jsonl"), "{}\n").unwrap();
        let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
        let text = format!(
            "name = \"s\"\n[model]\npreset = \"tiny\"\n[task]\nnum_labels = 2\n\
             [stages.data]\nkind = \"dataset\"\ndataset = \"train.jsonl\"\n\
             [stages.train]\nkind = \"train\"\nneeds = [\"data\"]\n\
             [sweep]\n\"stages.train.lora_rank\" = [{}]\n",
            list.join(", ")
        );
        let file = dir.path().join("exp.toml");
        std::fs::write(&file, &text).unwrap();
        let loaded = crate::experiment::load(&file).unwrap();
        let store = Store::new(dir.path().join("runs"));
        (dir, loaded, store)
    }

    /// Variant `k` finished: its train entry (with an eval line) and its link.
    fn finish(store: &Store, loaded: &Loaded, k: usize) {
        let key = format!("{k:016x}{}", "0".repeat(48));
        let entry = store.entry_dir("train", &key);
        std::fs::create_dir_all(&entry).unwrap();
        let line = serde_json::json!({"eval_loss": 1.0 + k as f64});
        std::fs::write(entry.join("logging.jsonl"), format!("{line}\n")).unwrap();
        let v = loaded.variants[k].name.as_deref();
        store
            .set_pointer(loaded.name(), v, "train", "train", &key)
            .unwrap();
    }

    /// Rows of sweep.csv that carry an eval_loss.
    fn rows_with_loss(store: &Store) -> usize {
        let text = std::fs::read_to_string(store.experiment_dir("s").join("sweep.csv")).unwrap();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = head.iter().position(|h| *h == "train.eval_loss").unwrap();
        lines
            .filter(|l| !l.split(',').nth(col).unwrap_or_default().is_empty())
            .count()
    }

    #[test]
    fn the_summary_is_gathered_only_once_the_lock_is_held() {
        let (_dir, loaded, store) = sweep_of(&[4, 8]);
        finish(&store, &loaded, 0);
        let held = KeyLock::exclusive(&summary_lock_path(&store, "s")).unwrap();
        std::thread::scope(|s| {
            let writer = s.spawn(|| write_sweep_summary(&store, &loaded).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !store.experiment_dir("s").join("sweep.csv").exists(),
                "the writer waits for the lock"
            );
            // A variant finishing while the writer waits is in the table it writes.
            finish(&store, &loaded, 1);
            drop(held);
            let (summary, _) = writer.join().unwrap();
            assert_eq!(summary.rows.len(), 2);
        });
        assert_eq!(rows_with_loss(&store), 2);
    }

    #[test]
    fn concurrent_writers_finishing_together_keep_every_row() {
        let ranks: Vec<usize> = (1..=8).collect();
        for _ in 0..5 {
            let (_dir, loaded, store) = sweep_of(&ranks);
            let start = std::sync::Barrier::new(ranks.len());
            std::thread::scope(|s| {
                for k in 0..ranks.len() {
                    let (store, loaded, start) = (&store, &loaded, &start);
                    s.spawn(move || {
                        start.wait();
                        finish(store, loaded, k);
                        write_sweep_summary(store, loaded).unwrap();
                    });
                }
            });
            assert_eq!(rows_with_loss(&store), ranks.len());
            let md = std::fs::read_to_string(store.experiment_dir("s").join("sweep.md")).unwrap();
            let rows = md
                .lines()
                .filter(|l| l.starts_with("| r") && !l.starts_with("| r |"));
            assert_eq!(rows.count(), ranks.len(), "{md}");
            let leftovers: Vec<_> = std::fs::read_dir(store.experiment_dir("s"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }
}
