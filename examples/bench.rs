//! Train-step and eval-forward throughput of the classifier, one JSON line per phase on stdout
//! (the device choice goes to stderr). Same workload as `tools/bench/torch_baseline.py`.
//!
//!     cargo run --release --example bench -- [--preset qwen2.5-vl-7b | --model DIR]
//!         [--device auto|cpu|cuda|cuda:N] [--dtype float32|bfloat16] [--pixels 1003520]
//!         [--text 120] [--batch 1] [--rank 32] [--freeze-vit] [--steps 5] [--warmup 1]
//!         [--mode train|eval|both] [--seed 0]
//!
//! CPU comparison with the tiny preset:
//!
//!     cargo run --release --example bench -- --preset tiny --device cpu --pixels 12544 --text 40 --rank 16

use std::process::ExitCode;

use pipeline::bench::{BenchArgs, run_bench};

fn main() -> ExitCode {
    let flags: Vec<String> = std::env::args().skip(1).collect();
    if flags.iter().any(|f| f == "--help" || f == "-h") {
        println!("usage: bench {}", pipeline::bench::args::FLAGS);
        return ExitCode::SUCCESS;
    }
    let args = match BenchArgs::from_flags(&flags) {
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
