//! `pipeline bench` as an example binary (the GPU scripts build it alone): train-step and
//! eval-pass throughput of the classifier, one JSON line per phase on stdout, the device
//! choice on stderr. Same flags (`--help`) and code path as the subcommand.
//!
//!     cargo run --release --example bench -- --preset tiny --device cpu --pixels 12544 --text 40 --rank 16

use std::process::ExitCode;

use clap::Parser;
use pipeline::bench::{BenchFlags, run_bench};

/// Time train steps and eval passes; one JSON line per phase on stdout.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    flags: BenchFlags,
}

fn main() -> ExitCode {
    let args = match Cli::parse().flags.into_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run_bench(&args) {
        Ok(report) => {
            eprintln!("{}", report.device_note);
            for line in report.json_lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
