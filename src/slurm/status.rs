//! `pipeline sweep FILE --status`: per variant, done (every stage of it is a complete
//! cache entry), running or pending (its array task in squeue), failed (it was
//! submitted and left the queue unfinished, or a stopped run left a partial), or not
//! run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::queue::Queued;
use crate::graph::Plan;
use crate::store::{Lookup, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Done,
    Running,
    Pending,
    Failed,
    NotRun,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Done => "done",
            State::Running => "running",
            State::Pending => "pending",
            State::Failed => "failed",
            State::NotRun => "not run",
        })
    }
}

/// One variant's line.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStatus {
    pub index: usize,
    pub variant: String,
    pub state: State,
    /// The job, why it waits, or what went wrong and where the log is.
    pub detail: String,
}

/// The status of every variant of `plan`. `jobs`: ids submitted for it, oldest first;
/// `queued`: their tasks squeue lists, by array index.
pub fn variant_status(
    plan: &Plan,
    store: &Store,
    jobs: &[String],
    queued: &BTreeMap<usize, Queued>,
) -> Vec<VariantStatus> {
    let dir = store.experiment_dir(&plan.experiment);
    plan.variants
        .iter()
        .enumerate()
        .map(|(index, variant)| {
            let nodes: Vec<_> = plan
                .listing
                .iter()
                .filter(|(u, _)| &u.variant == variant)
                .map(|(u, i)| (u, &plan.graph[*i]))
                .collect();
            let missing: Vec<_> = nodes
                .iter()
                .filter(|(_, n)| !matches!(store.lookup(&n.kind, &n.key), Lookup::Hit(_)))
                .collect();
            let partial: Vec<String> = missing
                .iter()
                .filter(|(_, n)| store.partial_dir(&n.kind, &n.key).is_dir())
                .map(|(u, n)| {
                    let resumes = if n.stage.resumable() {
                        "; a rerun resumes it"
                    } else {
                        ""
                    };
                    format!("{} partial{resumes}", u.stage)
                })
                .collect();
            let name = variant.clone().unwrap_or_else(|| plan.experiment.clone());
            let (state, detail) = if missing.is_empty() {
                (State::Done, String::new())
            } else if let Some(q) = queued.get(&index) {
                let job = format!("job {}_{index}", q.job);
                if q.state == "PD" {
                    (State::Pending, format!("{job} ({})", q.reason))
                } else {
                    (State::Running, format!("{job} ({})", q.state))
                }
            } else if let Some(log) = latest_log(&dir, jobs, index) {
                let mut why = last_error(&log).unwrap_or_else(|| "stopped".into());
                for p in &partial {
                    why.push_str(&format!("; {p}"));
                }
                (State::Failed, format!("{why}; log {}", log.display()))
            } else if !partial.is_empty() {
                (State::Failed, partial.join("; "))
            } else {
                let stages: Vec<&str> = missing.iter().map(|(u, _)| u.stage.as_str()).collect();
                (State::NotRun, format!("missing: {}", stages.join(", ")))
            };
            VariantStatus {
                index,
                variant: name,
                state,
                detail,
            }
        })
        .collect()
}

/// The table `--status` prints, and a count per state.
pub fn render(rows: &[VariantStatus]) -> String {
    let width = rows
        .iter()
        .map(|r| r.variant.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = format!("{:>3}  {:<width$}  {:<8} detail\n", "#", "variant", "state");
    for r in rows {
        let line = format!(
            "{:>3}  {:<width$}  {:<8} {}",
            r.index,
            r.variant,
            r.state.to_string(),
            r.detail
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let mut counts: BTreeMap<State, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.state).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    out.push_str(&format!("{} variants: {}\n", rows.len(), parts.join(", ")));
    out
}

/// The log of the newest submission whose task `index` started (`slurm-<job>_<index>.out`).
fn latest_log(dir: &Path, jobs: &[String], index: usize) -> Option<PathBuf> {
    jobs.iter()
        .rev()
        .map(|j| dir.join(format!("slurm-{j}_{index}.out")))
        .find(|p| p.is_file())
}

/// The last line of a task's log that says why it stopped (ours or slurmstepd's).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| {
        l.starts_with("error:")
            || l.contains("✗")
            || l.contains("CANCELLED")
            || l.contains("DUE TO TIME LIMIT")
            || l.contains("slurmstepd: error")
    })?;
    let line = line.trim();
    const MAX: usize = 160;
    Some(if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX).collect::<String>())
    } else {
        line.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stop_reason_in_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("slurm-5_1.out");
        std::fs::write(
            &log,
            "▶ train running\nslurmstepd: error: *** JOB 6 ON localhost CANCELLED AT 2026-12-01T10:00:00 ***\n",
        )
        .unwrap();
        assert!(last_error(&log).unwrap().contains("CANCELLED"));
        let jobs = ["4".to_string(), "5".to_string()];
        assert_eq!(latest_log(dir.path(), &jobs, 1), Some(log));
        assert_eq!(latest_log(dir.path(), &jobs, 0), None);
    }

    #[test]
    fn renders_one_line_per_variant_and_counts() {
        let row = |index, state, detail: &str| VariantStatus {
            index,
            variant: format!("v{index}"),
            state,
            detail: detail.into(),
        };
        let text = render(&[
            row(0, State::Done, ""),
            row(1, State::Pending, "job 3_1 (Resources)"),
            row(2, State::Done, ""),
        ]);
        assert!(
            text.contains("  1  v1       pending  job 3_1 (Resources)\n"),
            "{text}"
        );
        assert!(text.ends_with("3 variants: 2 done, 1 pending\n"), "{text}");
    }
}
