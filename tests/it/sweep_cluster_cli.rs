//! The cluster side of `pipeline sweep` without a cluster: what the emitted script asks
//! for (against what a task really uses), the threads a task runs inside an allocation,
//! `--status` from `runs/` alone, and bad `[slurm]` values. The same on a real Slurm:
//! `slurm_cluster`.

use std::path::Path;

use crate::common::run_cli;
use crate::sweep_end_to_end::{project, run};

const INTERRUPT_ENV: &str = "PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS";

fn append(dir: &Path, text: &str) {
    let exp = dir.join("exp.toml");
    let old = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, format!("{old}\n{text}")).unwrap();
}

fn script(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("runs/st/sweep.sbatch")).unwrap()
}

/// The value of `#SBATCH --NAME=…`.
fn option<'a>(script: &'a str, name: &str) -> Option<&'a str> {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#SBATCH --{name}=")))
}

#[test]
fn the_script_asks_for_what_a_task_uses_and_status_reads_runs() {
    let p = project();
    append(p.path(), "[slurm]\ncpus_per_task = 1\ntime = \"0:30:00\"\n");
    run(
        p.path(),
        "runs",
        &["sweep", "exp.toml", "--emit", "slurm"],
        &[],
        0,
    );
    let s = script(p.path());
    assert_eq!(option(&s, "cpus-per-task"), Some("1"), "{s}");
    assert_eq!(option(&s, "time"), Some("0:30:00"), "{s}");
    assert!(s.contains("#SBATCH --requeue\n"), "{s}");
    assert_eq!(
        option(&s, "gres"),
        None,
        "a CPU experiment asks for no GPU:\n{s}"
    );
    let mem_mib: u64 = option(&s, "mem")
        .and_then(|m| m.strip_suffix('M'))
        .unwrap_or_else(|| panic!("{s}"))
        .parse()
        .unwrap();
    assert!(s.contains("# Memory: estimated "), "{s}");

    // A task inside a 1-CPU allocation runs 1 thread and stays within the estimate.
    let r = run(
        p.path(),
        "runs",
        &["run", "exp.toml", "--variant", "0"],
        &[("SLURM_CPUS_PER_TASK", "1")],
        0,
    );
    assert!(
        r.stderr.contains("(Flex backend, 1 threads)"),
        "{}",
        r.stderr
    );
    let peak_mib: u64 = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .and_then(|l| l.strip_suffix(" MiB resident"))
        .unwrap_or_else(|| panic!("{}", r.stderr))
        .parse()
        .unwrap();
    assert!(
        peak_mib <= mem_mib,
        "peak {peak_mib} MiB > --mem {mem_mib} MiB"
    );
    // … and stops after one step of variant 1's training (checkpoint-1 kept).
    run(
        p.path(),
        "runs",
        &["run", "exp.toml", "--variant", "1"],
        &[(INTERRUPT_ENV, "1")],
        1,
    );

    // A job was submitted, but there is no squeue here: the states come from runs/ (a
    // note says so).
    std::fs::write(p.path().join("runs/st/sweep.jobs"), "123\n").unwrap();
    let st = run(p.path(), "runs", &["sweep", "exp.toml", "--status"], &[], 0);
    // (`squeue` not found, or one that cannot reach a controller.)
    assert!(
        st.stderr.contains("`squeue`") && st.stderr.contains("states come from runs/ only"),
        "{}",
        st.stderr
    );
    let lines: Vec<&str> = st.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", st.stdout);
    assert!(lines[1].contains(" r4-lr1e-3  done"), "{}", st.stdout);
    assert!(
        lines[2].contains(" r4-lr2e-3  failed   train partial; a rerun resumes it"),
        "{}",
        st.stdout
    );
    assert!(
        lines[3].contains(" r8-lr1e-3  not run  missing: train, score"),
        "{}",
        st.stdout
    );
    assert_eq!(lines[5], "4 variants: 1 done, 1 failed, 2 not run");
}

#[test]
fn gpu_experiments_ask_for_gpus_and_sbatch_options_replace_generated_lines() {
    let p = project();
    let exp = p.path().join("exp.toml");
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("device = \"cpu\"", "device = \"cuda\"");
    std::fs::write(&exp, format!("{text}\n[slurm]\nmem = \"6G\"\n")).unwrap();
    let args = [
        "sweep",
        "exp.toml",
        "--emit",
        "slurm",
        "--sbatch=-c 3",
        "--sbatch=--partition=gpu",
    ];
    run(p.path(), "runs", &args, &[], 0);
    let s = script(p.path());
    assert_eq!(option(&s, "gres"), Some("gpu:1"), "{s}");
    assert_eq!(option(&s, "mem"), Some("6G"), "{s}");
    assert!(
        s.contains("# Memory: 6G from [slurm] mem; estimate "),
        "{s}"
    );
    assert_eq!(option(&s, "cpus-per-task"), None, "replaced by -c 3:\n{s}");
    assert!(s.contains("#SBATCH -c 3\n#SBATCH --partition=gpu\n"), "{s}");
    assert_eq!(option(&s, "time"), None, "no [slurm] time, no limit:\n{s}");

    // `device = "auto"` decides on the node: no GPU asked for, and a note says so.
    std::fs::write(&exp, text.replace("device = \"cuda\"", "device = \"auto\"")).unwrap();
    let r = run(
        p.path(),
        "runs",
        &["sweep", "exp.toml", "--emit", "slurm"],
        &[],
        0,
    );
    assert!(
        r.stderr
            .contains("note: [model] device = \"auto\" asks for no GPU"),
        "{}",
        r.stderr
    );
    assert_eq!(option(&script(p.path()), "gres"), None);
}

#[test]
fn bad_slurm_values_name_the_line_and_the_formats() {
    for (table, want) in [
        (
            "time = \"2h\"",
            "exp.toml:50:8: slurm.time: invalid time `2h`; Slurm's formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS",
        ),
        (
            "mem = \"16GB\"",
            "exp.toml:50:7: slurm.mem: invalid mem `16GB`; use a whole number",
        ),
        (
            "cpus_per_task = 0",
            "exp.toml:50:17: slurm.cpus_per_task: cpus_per_task must be ≥ 1",
        ),
        (
            "partition = \"gpu\"",
            "exp.toml:50:1: slurm.partition: unknown key `partition` in [slurm]; valid keys: cpus_per_task, mem, time",
        ),
    ] {
        let p = project();
        append(p.path(), &format!("[slurm]\n{table}\n"));
        // The table's line in the file (the experiment above it may grow).
        let text = std::fs::read_to_string(p.path().join("exp.toml")).unwrap();
        let line = text.lines().position(|l| l == table).unwrap() + 1;
        let want = want.replace("exp.toml:50:", &format!("exp.toml:{line}:"));
        let (code, _, err) = run_cli(p.path(), &["sweep", "exp.toml", "--emit", "slurm"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with(&format!("error: {want}")), "{table}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
