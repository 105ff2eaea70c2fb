//! `[slurm]`: what each array task of `pipeline sweep --emit slurm` asks the scheduler
//! for. None of it changes a result, so none of it is part of a stage's key.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::check::{Check, Result};

/// The `[slurm]` table as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--cpus-per-task`; each task runs that many threads. Default [`DEFAULT_CPUS`].
    pub cpus_per_task: Option<u32>,
    /// `--mem` per task (`<n>[K|M|G|T]`, Slurm's unit default MiB); default: an
    /// estimate from the model and the stages.
    pub mem: Option<String>,
    /// `--time` per task in Slurm's formats (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`,
    /// `D-HH:MM`, `D-HH:MM:SS`); default: none (the partition's limit).
    pub time: Option<String>,
}

/// CPUs per task when `[slurm] cpus_per_task` is not given: the CPU trainer cuts each
/// micro-batch into 4 shards that run concurrently.
pub const DEFAULT_CPUS: u32 = 4;

/// Slurm's `--time` formats.
pub const TIME_FORMATS: &str = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS";

/// Check the formats sbatch would otherwise reject only at submission.
pub(crate) fn check_slurm(c: &Check, s: SlurmSpec) -> Result<SlurmSpec> {
    if let Some(n) = s.cpus_per_task {
        c.ensure(n >= 1, &["slurm", "cpus_per_task"], || {
            "cpus_per_task must be ≥ 1".into()
        })?;
    }
    if let Some(m) = &s.mem {
        let re = Regex::new(r"^[1-9][0-9]*[KMGT]?$").expect("static regex");
        c.ensure(re.is_match(m), &["slurm", "mem"], || {
            format!("invalid mem `{m}`; use a whole number with an optional unit K, M, G or T (MiB when none), e.g. \"16G\"")
        })?;
    }
    if let Some(t) = &s.time {
        c.ensure(is_slurm_time(t), &["slurm", "time"], || {
            format!("invalid time `{t}`; Slurm's formats: {TIME_FORMATS}, e.g. \"02:00:00\"")
        })?;
    }
    Ok(s)
}

fn is_slurm_time(t: &str) -> bool {
    let re =
        Regex::new(r"^([0-9]+-[0-9]+(:[0-9]+){0,2}|[0-9]+(:[0-9]+){0,2})$").expect("static regex");
    re.is_match(t) && t.chars().any(|c| c != '0' && c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        for ok in [
            "30",
            "30:00",
            "2:00:00",
            "1-0",
            "1-12:00",
            "1-12:00:00",
            "0:30",
        ] {
            assert!(is_slurm_time(ok), "{ok}");
        }
        for bad in ["", "0", "0:00", "2h", "1:2:3:4", "1-", "-1", "1-2-3", " 10"] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }
}
