//! `pipeline` CLI. Exit status: 0 every stage succeeded, 1 a stage failed, 2 a usage or
//! input error (bad experiment file, bad data). Errors print as one `error:` line with
//! their cause chain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::MultiProgress;

use pipeline::bench::{BenchError, BenchFlags, run_bench};
use pipeline::experiment::{self, ExperimentError, Loaded, Variant};
use pipeline::graph::{
    ExecError, Plan, PlanError, RunOptions, StageError, execute, explain, progress::human_duration,
};
use pipeline::model::ModelError;
use pipeline::report::sweep_summary::{
    HEATMAP_FILE, latest_metrics, sweep_summary, write_sweep_summary,
};
use pipeline::slurm::{self, queue, queue::QueueError, status};
use pipeline::stages;
use pipeline::store::{Store, gc, verify};

const DEFAULT_EXPERIMENT: &str = "experiments/cls11.toml";

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Run LoRA seq_cls experiments on Qwen2.5-VL as a cached stage DAG"
)]
struct Cli {
    /// Directory holding the cache and the per-experiment links.
    #[arg(long, global = true, default_value = "runs", value_name = "DIR")]
    runs_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the experiment's stages; cached stages are skipped.
    Run {
        /// Experiment file.
        #[arg(default_value = DEFAULT_EXPERIMENT)]
        file: PathBuf,
        /// Recompute STAGE and everything downstream (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Recompute every stage.
        #[arg(long)]
        force_all: bool,
        /// Stages to run at the same time.
        #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Run only this sweep variant (index from 0, or name).
        #[arg(long, value_name = "K|NAME")]
        variant: Option<String>,
    },
    /// Show every stage, its key, and whether it is cached (and why not).
    Plan {
        #[arg(default_value = DEFAULT_EXPERIMENT)]
        file: PathBuf,
        #[arg(long, value_name = "K|NAME")]
        variant: Option<String>,
    },
    /// Delete cache entries that no runs/<name>/… link references (an interrupted
    /// training's checkpoints are kept: a rerun continues from them).
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the partial work of interrupted resumable stages (checkpoints).
        #[arg(long)]
        partials: bool,
    },
    /// Check every cache entry's files against the sizes and blake3 digests its manifest
    /// recorded; broken entries are removed, so the next run recomputes them (exit 1 if
    /// any was broken).
    Verify {
        /// Only report broken entries.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the sweep summary, or each stage's latest metrics.
    Show {
        #[arg(default_value = DEFAULT_EXPERIMENT)]
        file: PathBuf,
    },
    /// Run a sweep on a cluster: write the batch script that runs each variant as one
    /// array task, submit it, or report each variant's state.
    #[command(group(clap::ArgGroup::new("action").required(true).args(["emit", "submit", "status"])))]
    Sweep {
        file: PathBuf,
        /// Write the batch script.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Write the script, submit it with sbatch and print the job id.
        #[arg(long)]
        submit: bool,
        /// Per variant: done, running, pending, failed or not run (from runs/ and squeue).
        #[arg(long)]
        status: bool,
        /// Script path (default: runs/<name>/sweep.sbatch).
        #[arg(long, short, conflicts_with = "status")]
        output: Option<PathBuf>,
        /// Extra `#SBATCH` option, e.g. `--partition=gpu` (repeatable); one naming a flag
        /// the script sets replaces it.
        #[arg(
            long = "sbatch",
            value_name = "OPTION",
            allow_hyphen_values = true,
            conflicts_with = "status"
        )]
        sbatch: Vec<String>,
    },
    /// Time training steps and eval forward passes; one JSON line per phase on stdout.
    /// Defaults: the seed's workload (qwen2.5-vl-7b shapes, random weights, one
    /// 1003520-pixel image + 120 text tokens, batch 1, LoRA r 32 everywhere).
    Bench(BenchFlags),
    /// Print the experiment file equivalent to an ms-swift command line:
    /// `pipeline from-swift -- MAX_PIXELS=1003520 swift sft --model ... --num_labels 11 ...`.
    FromSwift {
        /// The command line (ENV=VALUE assignments, then `swift sft` and its flags).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., required = true)]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    Slurm,
}

/// `pipeline verify` found broken entries (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{} did not match {}; see above", entries(*.0), if *.0 == 1 { "its manifest" } else { "their manifests" })]
struct BrokenEntries(usize);

/// `1 cache entry`, `3 cache entries`.
fn entries(n: usize) -> String {
    format!("{n} cache entr{}", if n == 1 { "y" } else { "ies" })
}

/// A usage mistake that clap cannot see (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    pipeline::host_alloc::keep_large_blocks_on_the_heap();
    quiet_stage_panics();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(x) = e.downcast_ref::<PlanError>() {
        x.exit_code()
    } else if let Some(x) = e.downcast_ref::<ExecError>() {
        x.exit_code()
    } else if let Some(x) = e.downcast_ref::<BenchError>() {
        match x {
            BenchError::Args(_)
            | BenchError::Device(_)
            | BenchError::Model(ModelError::UnknownPreset(_) | ModelError::File(_)) => 2,
            BenchError::Model(_) | BenchError::Execution(_) => 1,
        }
    } else if let Some(x) = e.downcast_ref::<QueueError>() {
        match x {
            QueueError::Missing(_) => 2,
            QueueError::Failed { .. } | QueueError::Io { .. } => 1,
        }
    } else if e.is::<ExperimentError>() || e.is::<UsageError>() {
        2
    } else {
        1
    }
}

/// Stage panics are caught and reported by the executor; any other panic is a bug and
/// gets one line instead of a backtrace.
fn quiet_stage_panics() {
    std::panic::set_hook(Box::new(|info| {
        if std::thread::current().name() == Some(pipeline::graph::executor::STAGE_THREAD) {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}{at}");
    }));
}

fn run(cli: Cli) -> Result<()> {
    use_allocated_cpus();
    let store = Store::new(&cli.runs_dir);
    match cli.command {
        Command::Run {
            file,
            force,
            force_all,
            jobs,
            variant,
        } => {
            let loaded = experiment::load(&file)?;
            let variants = select(&loaded, variant.as_deref())?;
            let multi = MultiProgress::new();
            let plan = plan(&store, &loaded, &variants)?;
            let opts = RunOptions {
                force,
                force_all,
                jobs: usize::from(jobs),
            };
            let result = execute(&plan, &store, &opts, &multi);
            if loaded.is_sweep() {
                let (summary, files) = write_sweep_summary(&store, &loaded)?;
                println!("{}", summary.to_markdown());
                eprintln!("summary: {}, {}", files.md.display(), files.csv.display());
                match files.heatmap {
                    Ok(png) => eprintln!("heatmap: {}", png.display()),
                    Err(why) => eprintln!("heatmap: none ({why})"),
                }
            }
            let report = result?;
            eprintln!(
                "{} computed, {} cached in {}",
                report.computed.len(),
                report.cached,
                human_duration(report.elapsed)
            );
            // What to ask a batch scheduler for (`[slurm] mem`).
            if let Some(b) = pipeline::bench::peak_rss_bytes() {
                eprintln!("peak memory: {} MiB resident", b.div_ceil(1 << 20));
            }
            Ok(())
        }
        Command::Plan { file, variant } => {
            let loaded = experiment::load(&file)?;
            let variants = select(&loaded, variant.as_deref())?;
            let plan = plan(&store, &loaded, &variants)?;
            print!(
                "{}",
                explain::render(&plan, &explain::explain(&plan, &store))
            );
            Ok(())
        }
        Command::Gc { dry_run, partials } => {
            let report = gc::gc(&store, gc::GcOptions { dry_run, partials })?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for (path, bytes) in &report.removed {
                println!("{verb} {} ({})", path.display(), gc::human_bytes(*bytes));
            }
            for path in &report.busy {
                println!("kept {} (in use by a running process)", path.display());
            }
            for path in &report.resumable {
                println!(
                    "kept {} (an interrupted stage resumes from it; --partials removes it)",
                    path.display()
                );
            }
            println!(
                "{verb} {} item(s), {}; kept {} linked entr{}",
                report.removed.len(),
                gc::human_bytes(report.bytes()),
                report.kept,
                if report.kept == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        Command::Verify { dry_run } => {
            let report = verify::verify(&store, dry_run)?;
            for (path, why) in &report.broken {
                println!("broken {}: {why}", path.display());
            }
            for path in &report.evicted {
                println!("removed {} (the next run recomputes it)", path.display());
            }
            for path in &report.busy {
                println!("kept {} (in use by a running process)", path.display());
            }
            println!(
                "verified {} ({}); {} broken",
                entries(report.ok + report.broken.len()),
                gc::human_bytes(report.bytes),
                report.broken.len()
            );
            if report.broken.is_empty() {
                Ok(())
            } else {
                Err(BrokenEntries(report.broken.len()).into())
            }
        }
        Command::FromSwift { command } => {
            match experiment::from_swift::experiment_from_swift(&command) {
                Ok(text) => print!("{text}"),
                Err(problems) => {
                    let n = problems.len();
                    for p in &problems[..n - 1] {
                        eprintln!("error: {p}");
                    }
                    return Err(UsageError(problems[n - 1].clone()).into());
                }
            }
            Ok(())
        }
        Command::Show { file } => {
            let loaded = experiment::load(&file)?;
            if loaded.is_sweep() {
                // From the links, not sweep.md: a run that failed before writing it (or
                // one still going) leaves an older table there.
                print!("{}", sweep_summary(&store, &loaded).to_markdown());
                let png = store.experiment_dir(loaded.name()).join(HEATMAP_FILE);
                if png.is_file() {
                    println!("\nheatmap: {}", png.display());
                }
            } else {
                print!("{}", latest_metrics(&store, &loaded));
            }
            Ok(())
        }
        Command::Bench(flags) => {
            let args = flags.into_args()?;
            let report = run_bench(&args)?;
            eprintln!("{}", report.device_note);
            for line in report.json_lines() {
                println!("{line}");
            }
            Ok(())
        }
        Command::Sweep {
            file,
            emit: _,
            submit,
            status,
            output,
            sbatch,
        } => {
            let loaded = experiment::load(&file)?;
            if !loaded.is_sweep() {
                return Err(UsageError(format!("{} has no [sweep] table", file.display())).into());
            }
            if status {
                return sweep_status(&store, &loaded);
            }
            let script = write_script(&store, &loaded, &file, output, &sbatch)?;
            let tasks = loaded.variants.len();
            if submit {
                let id = queue::submit(&script)?;
                queue::record_job(&store.experiment_dir(loaded.name()), &id)?;
                eprintln!(
                    "submitted {} ({tasks} array tasks) as job {id}; follow with: pipeline sweep {} --status",
                    script.display(),
                    file.display()
                );
                println!("{id}");
            } else {
                println!(
                    "wrote {} ({tasks} array tasks); submit with: sbatch {}",
                    script.display(),
                    script.display()
                );
            }
            Ok(())
        }
    }
}

/// The plan of `variants` of `loaded`, its parameter errors located in the experiment file.
fn plan(store: &Store, loaded: &Loaded, variants: &[&Variant]) -> Result<Plan> {
    Plan::build(
        loaded.name(),
        variants,
        &loaded.base.devices,
        pipeline::backend::visible_gpus,
        store,
        &stages::build,
    )
    .map_err(|e| located(loaded, e))
}

/// A plan-time parameter error as `file:line:column: key: message`, like the experiment
/// file's own errors (the sweep variant named when there is one).
fn located(loaded: &Loaded, e: PlanError) -> anyhow::Error {
    match e {
        PlanError::Stage {
            stage,
            source: StageError::Param { key, message },
        } => {
            let message = if stage.contains('[') {
                format!("{message} (in {stage})")
            } else {
                message
            };
            ExperimentError::Invalid {
                location: loaded.locate(&key),
                key,
                message,
            }
            .into()
        }
        other => other.into(),
    }
}

/// Write the sweep's sbatch script (default `runs/<name>/sweep.sbatch`); returns its path.
fn write_script(
    store: &Store,
    loaded: &Loaded,
    file: &Path,
    output: Option<PathBuf>,
    sbatch: &[String],
) -> Result<PathBuf> {
    let out = output.unwrap_or_else(|| store.experiment_dir(loaded.name()).join("sweep.sbatch"));
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let exe = std::env::current_exe().context("cannot locate the pipeline binary")?;
    let (request, notes) =
        stages::resources::slurm_request(loaded).map_err(|e| UsageError(e.to_string()))?;
    for n in notes {
        eprintln!("note: {n}");
    }
    let script = slurm::array_script(loaded, file, store.root(), &cwd, &exe, &request, sbatch);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, script).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

/// `pipeline sweep FILE --status`.
fn sweep_status(store: &Store, loaded: &Loaded) -> Result<()> {
    let variants: Vec<&Variant> = loaded.variants.iter().collect();
    let plan = plan(store, loaded, &variants)?;
    let jobs = queue::recorded_jobs(&store.experiment_dir(loaded.name()));
    let queued = queue::queued_tasks(&jobs).unwrap_or_else(|e| {
        eprintln!("note: {e}; states come from runs/ only");
        Default::default()
    });
    print!(
        "{}",
        status::render(&status::variant_status(&plan, store, &jobs, &queued))
    );
    Ok(())
}

/// Inside a Slurm allocation, run as many threads as it grants (see
/// `slurm::allocated_cpus`). Before anything starts the global pool.
fn use_allocated_cpus() {
    let var = |k| std::env::var(k).ok();
    if let Some(n) = slurm::allocated_cpus(
        var("RAYON_NUM_THREADS").as_deref(),
        var("SLURM_CPUS_PER_TASK").as_deref(),
    ) {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// All variants, or the one `--variant` names.
fn select<'a>(loaded: &'a Loaded, variant: Option<&str>) -> Result<Vec<&'a Variant>> {
    match variant {
        None => Ok(loaded.variants.iter().collect()),
        Some(sel) => Ok(vec![loaded.select(sel).map_err(UsageError)?]),
    }
}
