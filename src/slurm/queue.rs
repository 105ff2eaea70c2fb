//! Talking to Slurm: `sbatch --parsable` to submit, `squeue` for what is queued or
//! running. The job ids a `runs/` directory submitted are kept in
//! `runs/<name>/sweep.jobs`, one per line, so `--status` asks only about ours.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why talking to Slurm failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The command is not on `PATH` (not a Slurm login node).
    #[error("`{0}` not found on PATH (is this a Slurm login node?)")]
    Missing(&'static str),
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file listing the job ids submitted for the experiment at `dir` (`runs/<name>/`).
pub fn jobs_file(dir: &Path) -> PathBuf {
    dir.join("sweep.jobs")
}

/// Submit `script`; returns the job id (the array's, `12345`).
pub fn submit(script: &Path) -> Result<String, QueueError> {
    let out = run("sbatch", &["--parsable".as_ref(), script.as_os_str()])?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(QueueError::Failed {
            command: format!("sbatch --parsable {}", script.display()),
            message: format!("unexpected output {out:?}"),
        });
    }
    Ok(id)
}

/// Append `id` to `runs/<name>/sweep.jobs`.
pub fn record_job(dir: &Path, id: &str) -> Result<(), QueueError> {
    let path = jobs_file(dir);
    let io = |action, source| QueueError::Io {
        action,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io("open", e))?;
    f.write_all(format!("{id}\n").as_bytes())
        .map_err(|e| io("write", e))
}

/// Job ids submitted from `runs/<name>/`, oldest first.
pub fn recorded_jobs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(jobs_file(dir))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// An array task as squeue lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub job: String,
    /// squeue's compact state: `PD`, `R`, `CG`, `S`, ...
    pub state: String,
    /// Why it is pending (`Resources`, `Priority`, `None`).
    pub reason: String,
}

/// This user's queued array tasks of `jobs`, by array index (the newest job wins).
pub fn queued_tasks(jobs: &[String]) -> Result<BTreeMap<usize, Queued>, QueueError> {
    if jobs.is_empty() {
        return Ok(BTreeMap::new());
    }
    // `--me` and a filter rather than `-j`: squeue rejects ids it has forgotten.
    let out = run(
        "squeue",
        &[
            "--noheader".as_ref(),
            "--array".as_ref(),
            "--me".as_ref(),
            "--format=%F|%K|%t|%r".as_ref(),
        ],
    )?;
    Ok(parse_squeue(&out, jobs))
}

fn parse_squeue(out: &str, jobs: &[String]) -> BTreeMap<usize, Queued> {
    let rank = |j: &str| jobs.iter().position(|x| x == j);
    let mut tasks: BTreeMap<usize, Queued> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.trim().split('|').collect();
        let [job, index, state, reason] = f[..] else {
            continue;
        };
        let (Some(r), Ok(index)) = (rank(job), index.parse::<usize>()) else {
            continue;
        };
        let newer = tasks
            .get(&index)
            .is_none_or(|q| rank(&q.job).is_some_and(|old| r >= old));
        if newer {
            tasks.insert(
                index,
                Queued {
                    job: job.to_string(),
                    state: state.to_string(),
                    reason: reason.to_string(),
                },
            );
        }
    }
    tasks
}

/// Run a Slurm client command; its stdout, or its stderr as the error.
fn run(program: &'static str, args: &[&std::ffi::OsStr]) -> Result<String, QueueError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            QueueError::Missing(program)
        } else {
            QueueError::Failed {
                command: program.to_string(),
                message: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(QueueError::Failed {
            command: program.to_string(),
            message: err.trim().replace('\n', "; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_of_our_jobs_by_array_index() {
        let out = "7|0|R|None\n7|1|PD|Resources\n9|1|PD|Priority\n3|2|R|None\nbad line\n";
        let jobs = vec!["7".to_string(), "9".to_string()];
        let t = parse_squeue(out, &jobs);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[&0].state, "R");
        // Index 1 is queued twice: the newer submission (9) is reported.
        assert_eq!(
            (t[&1].job.as_str(), t[&1].reason.as_str()),
            ("9", "Priority")
        );
    }

    #[test]
    fn recorded_jobs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(recorded_jobs(dir.path()).is_empty());
        record_job(dir.path(), "12").unwrap();
        record_job(dir.path(), "15").unwrap();
        assert_eq!(recorded_jobs(dir.path()), ["12", "15"]);
    }
}
