//! Two hosts sharing `runs/` (NFS, where `flock` may be node-local): simulated by writing a
//! lease file that names another host. A fresh lease — its holder heartbeating — makes a
//! run wait; a stale one is taken over with a warning; `gc` leaves a partial dir in use
//! on another host alone.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{BASE, pipeline, planned_entry, project};

/// Only the dataset stage: what the lock test needs.
fn data_only() -> String {
    BASE.split("[stages.train]").next().unwrap().to_string()
}

fn lease(host: &str, beat: u64, lease_s: f64) -> String {
    format!(
        "{{\"host\":\"{host}\",\"pid\":999,\"token\":\"other\",\"lease_s\":{lease_s},\"beat\":{beat}}}"
    )
}

fn lease_path(dir: &Path) -> std::path::PathBuf {
    let plan = pipeline(dir, &["plan", "exp.toml"], &[], 0).stdout;
    let name = planned_entry(&plan, "data");
    let locks = dir.join("runs/cache/.locks");
    std::fs::create_dir_all(&locks).unwrap();
    locks.join(format!("{name}.lease"))
}

#[test]
fn a_run_waits_for_another_hosts_live_lease() {
    let p = project(&data_only());
    let lease_file = lease_path(p.path());
    std::fs::write(&lease_file, lease("other-node", 0, 1.0)).unwrap();
    // The other host heartbeats for 3 s, then releases.
    let beat = std::thread::spawn({
        let f = lease_file.clone();
        move || {
            for b in 1..=12 {
                std::thread::sleep(Duration::from_millis(250));
                std::fs::write(&f, lease("other-node", b, 1.0)).unwrap();
            }
            std::fs::remove_file(&f).unwrap();
        }
    });
    let t0 = Instant::now();
    let env = [("PIPELINE_LOCK_LEASE_S", "1")];
    let out = pipeline(p.path(), &["run", "exp.toml"], &env, 0);
    beat.join().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "{:?}\n{}",
        t0.elapsed(),
        out.shown
    );
    assert!(
        out.stderr
            .contains("waiting: another run (pid 999 on host other-node) holds"),
        "{}",
        out.shown
    );
    assert!(!out.stderr.contains("took over"), "{}", out.shown);
    assert_eq!(out.counts(), (1, 0));
    assert!(!lease_file.exists(), "our own lease is gone with the run");
}

#[test]
fn a_stale_lease_of_another_host_is_taken_over() {
    let p = project(&data_only());
    let lease_file = lease_path(p.path());
    std::fs::write(&lease_file, lease("other-node", 7, 1.0)).unwrap();
    let env = [("PIPELINE_LOCK_LEASE_S", "1")];
    let out = pipeline(p.path(), &["run", "exp.toml"], &env, 0);
    assert!(
        out.stderr
            .contains("took over the stale lock of pid 999 on host other-node"),
        "{}",
        out.shown
    );
    assert_eq!(out.counts(), (1, 0));
}

#[test]
fn gc_leaves_a_partial_dir_in_use_on_another_host() {
    let p = project(&data_only());
    let lease_file = lease_path(p.path());
    let name = lease_file
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let partial = p.path().join("runs/cache/.partial").join(&name);
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("half-written.png"), "x").unwrap();
    std::fs::write(&lease_file, lease("other-node", 0, 60.0)).unwrap();
    let out = pipeline(p.path(), &["gc"], &[], 0);
    assert!(
        out.stdout.contains("in use by a running process"),
        "{}",
        out.shown
    );
    assert!(partial.join("half-written.png").exists());
    // Once released, it is garbage.
    std::fs::remove_file(&lease_file).unwrap();
    pipeline(p.path(), &["gc"], &[], 0);
    assert!(!partial.exists());
}
