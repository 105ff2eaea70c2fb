//! `pipeline` CLI. Exit status: 0 every stage succeeded, 1 a stage failed, 2 a usage or
//! input error (bad experiment file, bad data). Errors print as one `error:` line with
//! their cause chain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::MultiProgress;

use pipeline::bench::args::parse_dtype;
use pipeline::bench::{BenchArgs, BenchError, BenchMode, BenchModel, run_bench};
use pipeline::experiment::{self, ExperimentError, Loaded, Variant};
use pipeline::graph::{
    ExecError, Plan, PlanError, RunOptions, execute, explain, progress::human_duration, slurm,
};
use pipeline::model::ModelError;
use pipeline::stages;
use pipeline::store::summary::{HEATMAP_FILE, latest_metrics, sweep_summary};
use pipeline::store::{Store, gc};

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
    /// Delete cache entries that no runs/<name>/… link references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the sweep summary, or each stage's latest metrics.
    Show {
        #[arg(default_value = DEFAULT_EXPERIMENT)]
        file: PathBuf,
    },
    /// Write a batch script that runs each sweep variant as one array task.
    Sweep {
        file: PathBuf,
        #[arg(long, value_enum)]
        emit: Emit,
        /// Script path (default: runs/<name>/sweep.sbatch).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Extra `#SBATCH` option, e.g. `--gres=gpu:1` (repeatable).
        #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
        sbatch: Vec<String>,
    },
    /// Time training steps and eval forward passes; one JSON line per phase on stdout.
    /// Defaults: the seed's workload (qwen2.5-vl-7b shapes, random weights, one
    /// 1003520-pixel image + 120 text tokens, batch 1, LoRA r 32 everywhere).
    Bench(BenchFlags),
}

/// `pipeline bench` flags; defaults from `BenchArgs::default()`.
#[derive(clap::Args)]
struct BenchFlags {
    /// Built-in model shapes with random weights (tiny, qwen2.5-vl-3b, qwen2.5-vl-7b).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// A Hugging Face model directory instead of a preset.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value_t = BenchArgs::default().device)]
    device: String,
    /// Default: bfloat16 on CUDA, float32 on the CPU.
    #[arg(long, value_parser = ["float32", "bfloat16"])]
    dtype: Option<String>,
    /// Image pixels (smart-resized like the dataset stage).
    #[arg(long, default_value_t = BenchArgs::default().pixels)]
    pixels: usize,
    /// Text tokens around the image.
    #[arg(long, default_value_t = BenchArgs::default().text_tokens)]
    text: usize,
    #[arg(long, default_value_t = BenchArgs::default().batch)]
    batch: usize,
    /// LoRA rank on every LLM and ViT linear.
    #[arg(long, default_value_t = BenchArgs::default().lora_rank)]
    rank: usize,
    /// Train the LLM's LoRA only (ViT frozen).
    #[arg(long)]
    freeze_vit: bool,
    /// Timed steps per phase.
    #[arg(long, default_value_t = BenchArgs::default().steps)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = BenchArgs::default().warmup)]
    warmup: usize,
    #[arg(long, value_parser = ["train", "eval", "both"], default_value = "both")]
    mode: String,
    #[arg(long, default_value_t = BenchArgs::default().seed)]
    seed: u64,
}

impl BenchFlags {
    fn into_args(self) -> Result<BenchArgs, BenchError> {
        let model = match (self.preset, self.model) {
            (_, Some(dir)) => BenchModel::Dir(dir),
            (Some(name), None) => BenchModel::Preset(name),
            (None, None) => BenchArgs::default().model,
        };
        let args = BenchArgs {
            model,
            device: self.device,
            dtype: self.dtype.as_deref().map(parse_dtype).transpose()?,
            pixels: self.pixels,
            text_tokens: self.text,
            batch: self.batch,
            lora_rank: self.rank,
            freeze_vit: self.freeze_vit,
            steps: self.steps,
            warmup: self.warmup,
            mode: BenchMode::parse(&self.mode)?,
            seed: self.seed,
        };
        args.validate()?;
        Ok(args)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    Slurm,
}

/// A usage mistake that clap cannot see (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
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
            | BenchError::Model(ModelError::UnknownPreset(_)) => 2,
            BenchError::Model(_) | BenchError::Execution(_) => 1,
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
            let plan = Plan::build(
                loaded.name(),
                &variants,
                &loaded.base.devices,
                &store,
                &stages::build,
            )?;
            let opts = RunOptions {
                force,
                force_all,
                jobs: usize::from(jobs),
            };
            let result = execute(&plan, &store, &opts, &multi);
            if loaded.is_sweep() {
                let summary = sweep_summary(&store, &loaded);
                let files = summary.write(&store)?;
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
            Ok(())
        }
        Command::Plan { file, variant } => {
            let loaded = experiment::load(&file)?;
            let variants = select(&loaded, variant.as_deref())?;
            let plan = Plan::build(
                loaded.name(),
                &variants,
                &loaded.base.devices,
                &store,
                &stages::build,
            )?;
            print!(
                "{}",
                explain::render(&plan, &explain::explain(&plan, &store))
            );
            Ok(())
        }
        Command::Gc { dry_run } => {
            let report = gc::gc(&store, dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for (path, bytes) in &report.removed {
                println!("{verb} {} ({})", path.display(), gc::human_bytes(*bytes));
            }
            for path in &report.busy {
                println!("kept {} (in use by a running process)", path.display());
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
        Command::Show { file } => {
            let loaded = experiment::load(&file)?;
            if loaded.is_sweep() {
                // From the links, not sweep.md: slurm tasks finishing together may have
                // left an older table there.
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
            emit: Emit::Slurm,
            output,
            sbatch,
        } => {
            let loaded = experiment::load(&file)?;
            if !loaded.is_sweep() {
                return Err(UsageError(format!("{} has no [sweep] table", file.display())).into());
            }
            let out =
                output.unwrap_or_else(|| store.experiment_dir(loaded.name()).join("sweep.sbatch"));
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let exe = std::env::current_exe().context("cannot locate the pipeline binary")?;
            let script = slurm::array_script(&loaded, &file, store.root(), &cwd, &exe, &sbatch);
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&out, script)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} ({} array tasks); submit with: sbatch {}",
                out.display(),
                loaded.variants.len(),
                out.display()
            );
            Ok(())
        }
    }
}

/// All variants, or the one `--variant` names.
fn select<'a>(loaded: &'a Loaded, variant: Option<&str>) -> Result<Vec<&'a Variant>> {
    match variant {
        None => Ok(loaded.variants.iter().collect()),
        Some(sel) => Ok(vec![loaded.select(sel).map_err(UsageError)?]),
    }
}
