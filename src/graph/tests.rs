//! Executor, cache, locks, invalidation, force, sweeps and concurrency, driven by the
//! test stage kind (`testkit`) over real experiment files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressDrawTarget};

use super::explain::{Status, explain};
use super::*;
use crate::experiment::tests::{BASE, project};
use crate::experiment::{Loaded, Variant, load};
use crate::store::{Lookup, Manifest, Store};
use crate::testkit::{Behavior, Kit};

struct Env {
    dir: tempfile::TempDir,
    store: Store,
}

impl Env {
    fn new() -> Env {
        let dir = project();
        let store = Store::new(dir.path().join("runs"));
        Env { dir, store }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn load(&self, text: &str) -> Loaded {
        std::fs::write(self.path().join("exp.toml"), text).unwrap();
        load(&self.path().join("exp.toml")).unwrap()
    }

    fn plan(&self, loaded: &Loaded, kit: &Kit) -> Plan {
        let variants: Vec<&Variant> = loaded.variants.iter().collect();
        Plan::build(
            loaded.name(),
            &variants,
            &loaded.base.devices,
            devices::no_gpus,
            &self.store,
            &*kit.factory(),
        )
        .unwrap()
    }

    fn run(&self, text: &str, kit: &Kit, opts: &RunOptions) -> Result<RunReport, ExecError> {
        let loaded = self.load(text);
        let plan = self.plan(&loaded, kit);
        execute(&plan, &self.store, opts, &quiet())
    }

    fn key_of(&self, text: &str, stage: &str) -> String {
        let kit = Kit::new(self.path());
        let plan = self.plan(&self.load(text), &kit);
        let (_, idx) = plan.listing.iter().find(|(u, _)| u.stage == stage).unwrap();
        plan.graph[*idx].key.clone()
    }

    fn explain_of(&self, text: &str, stage: &str) -> Status {
        let kit = Kit::new(self.path());
        let plan = self.plan(&self.load(text), &kit);
        explain(&plan, &self.store)
            .into_iter()
            .find(|l| l.usage.stage == stage)
            .unwrap()
            .status
    }
}

fn quiet() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
}

fn opts() -> RunOptions {
    RunOptions::default()
}

#[track_caller]
fn stale_because(status: Status, needle: &str) {
    match status {
        Status::Stale(r) => assert!(
            r.iter().any(|x| x.contains(needle)),
            "{needle:?} not in {r:?}"
        ),
        Status::Cached => panic!("expected stale ({needle})"),
    }
}

#[test]
fn rerun_is_a_cache_hit_and_entries_are_complete() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (4, 0));
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (0, 4));
    for s in ["data", "train", "export", "score"] {
        assert_eq!(kit.count(s), 1, "{s} computed once");
    }
    // runs/exp/train links to a complete entry with a full manifest.
    let link = env.store.pointer_path("exp", None, "train");
    assert!(std::fs::read_link(&link).unwrap().starts_with("../cache"));
    let m = Manifest::read(&link).unwrap();
    assert_eq!(
        (m.kind.as_str(), m.stage.as_str(), m.key.len()),
        ("train", "train", 64)
    );
    assert_eq!(m.tool_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(m.upstream["data"], env.key_of(BASE, "data"));
    assert_eq!(m.params["lora_rank"], 8);
    assert!(m.finished >= m.started);
    let out = std::fs::read_to_string(link.join("out.txt")).unwrap();
    assert!(
        out.contains("data: "),
        "train saw its upstream's artifacts: {out}"
    );
    assert!(
        !env.store.partial_dir("train", &m.key).exists(),
        "partial dir was renamed into place"
    );
    assert_eq!(explain_counts(&env, BASE), (4, 0));
}

fn explain_counts(env: &Env, text: &str) -> (usize, usize) {
    let kit = Kit::new(env.path());
    let plan = env.plan(&env.load(text), &kit);
    let lines = explain(&plan, &env.store);
    let cached = lines.iter().filter(|l| l.status == Status::Cached).count();
    (cached, lines.len() - cached)
}

#[test]
fn a_param_change_invalidates_that_stage_and_downstream_only() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    let changed = BASE.replace("lora_rank = 8", "lora_rank = 8\nlearning_rate = 2e-4");
    assert_eq!(
        env.key_of(BASE, "data"),
        env.key_of(&changed, "data"),
        "unrelated param leaves the dataset key"
    );
    assert_ne!(env.key_of(BASE, "train"), env.key_of(&changed, "train"));
    stale_because(
        env.explain_of(&changed, "train"),
        "`learning_rate` changed: 0.0001 → 0.0002",
    );
    stale_because(
        env.explain_of(&changed, "export"),
        "upstream `train` changed",
    );
    assert_eq!(env.explain_of(&changed, "data"), Status::Cached);
    let r = env.run(&changed, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (3, 1));
    assert_eq!((kit.count("data"), kit.count("train")), (1, 2));
    // Going back is a hit again: the old entries are still in the cache.
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (0, 4));
}

#[test]
fn an_input_file_change_invalidates_by_content() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    let data = env.path().join("data/train.jsonl");
    std::fs::write(&data, "{\"changed\": 1}\n").unwrap();
    stale_because(
        env.explain_of(BASE, "data"),
        &format!("input file changed: {}", data.display()),
    );
    stale_because(env.explain_of(BASE, "train"), "upstream `data` changed");
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!(r.computed.len(), 4);
    // Same bytes again (new mtime): the key comes back, a hit.
    std::fs::write(&data, "{}\n").unwrap();
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (0, 4));
}

#[test]
fn an_upstream_change_invalidates_downstream() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    let changed = BASE.replace(
        "val_dataset = \"data/test.jsonl\"",
        "val_dataset = \"data/test.jsonl\"\nmax_pixels = 50000",
    );
    stale_because(
        env.explain_of(&changed, "data"),
        "`max_pixels` changed: 1003520 → 50000",
    );
    let data_old = env.key_of(BASE, "data");
    let data_new = env.key_of(&changed, "data");
    stale_because(
        env.explain_of(&changed, "train"),
        &format!(
            "upstream `data` changed ({} → {})",
            &data_old[..16],
            &data_new[..16]
        ),
    );
    stale_because(env.explain_of(&changed, "score"), "upstream `data` changed");
}

#[test]
fn plan_says_never_run_and_sees_deleted_entries() {
    let env = Env::new();
    stale_because(env.explain_of(BASE, "train"), "never run");
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    std::fs::remove_dir_all(env.store.entry_dir("train", &env.key_of(BASE, "train"))).unwrap();
    stale_because(
        env.explain_of(BASE, "train"),
        "cache entry missing or incomplete",
    );
}

#[test]
fn a_failing_stage_leaves_no_entry_and_stops_downstream() {
    for (behavior, needle, code) in [
        (Behavior::Fail, "simulated failure", 1),
        (Behavior::Panic, "panicked: simulated panic in train", 1),
        (Behavior::InputError, "label 12", 2),
    ] {
        let env = Env::new();
        let kit = Kit::new(env.path()).with("train", behavior);
        let err = env.run(BASE, &kit, &opts()).unwrap_err();
        assert_eq!(err.exit_code(), code);
        let msg = format!("{:#}", anyhow::Error::new(err)); // as `main` prints it
        assert!(
            msg.starts_with("stage `train` failed: ") && msg.contains(needle),
            "{msg}"
        );
        let key = env.key_of(BASE, "train");
        assert!(
            !env.store.entry_dir("train", &key).exists(),
            "no complete-looking entry"
        );
        assert!(matches!(env.store.lookup("train", &key), Lookup::Miss));
        assert!(env.store.read_pointer("exp", None, "train").is_none());
        assert_eq!(
            (kit.count("export"), kit.count("score")),
            (0, 0),
            "downstream never started"
        );
        assert!(
            env.store.read_pointer("exp", None, "data").is_some(),
            "the dataset stage finished and is linked"
        );
        // Fixed: the next run computes only what is missing.
        let kit = Kit::new(env.path());
        let r = env.run(BASE, &kit, &opts()).unwrap();
        assert_eq!((r.computed.len(), r.cached), (3, 1));
    }
}

#[test]
fn an_entry_without_a_valid_manifest_is_a_miss() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    let dir = env.store.entry_dir("train", &env.key_of(BASE, "train"));
    std::fs::write(dir.join("manifest.json"), "{ truncated").unwrap();
    let r = env.run(BASE, &kit, &opts()).unwrap();
    assert_eq!(r.computed, ["train"]);
    assert!(Manifest::read(&dir).is_ok(), "replaced by a complete entry");
}

#[test]
fn force_recomputes_a_stage_and_downstream() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    env.run(BASE, &kit, &opts()).unwrap();
    let force = RunOptions {
        force: vec!["train".into()],
        ..opts()
    };
    let r = env.run(BASE, &kit, &force).unwrap();
    assert_eq!(r.cached, 1);
    assert_eq!(
        (
            kit.count("data"),
            kit.count("train"),
            kit.count("export"),
            kit.count("score")
        ),
        (1, 2, 2, 2)
    );
    let all = RunOptions {
        force_all: true,
        ..opts()
    };
    assert_eq!(env.run(BASE, &kit, &all).unwrap().computed.len(), 4);
    let bad = RunOptions {
        force: vec!["trian".into()],
        ..opts()
    };
    let err = env.run(BASE, &kit, &bad).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .contains("stages: data, export, score, train"),
        "{err}"
    );
    // Entries stay complete after being replaced.
    assert!(matches!(
        env.store.lookup("train", &env.key_of(BASE, "train")),
        Lookup::Hit(_)
    ));
}

#[test]
fn a_resumable_stage_keeps_its_partial_dir() {
    let env = Env::new();
    let kit = Kit::new(env.path()).with("train", Behavior::FailOnceThenResume);
    env.run(BASE, &kit, &opts()).unwrap_err();
    let key = env.key_of(BASE, "train");
    assert!(
        env.store
            .partial_dir("train", &key)
            .join("progress.txt")
            .exists()
    );
    env.run(BASE, &kit, &opts()).unwrap();
    let link = env.store.pointer_path("exp", None, "train");
    assert_eq!(
        std::fs::read_to_string(link.join("resumed.txt")).unwrap(),
        "yes"
    );
    // --force starts over even when resumable: the stage then fails as on a first try.
    let partial = env.store.partial_dir("train", &key);
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("progress.txt"), "old").unwrap();
    let force = RunOptions {
        force: vec!["train".into()],
        ..opts()
    };
    let err = env.run(BASE, &kit, &force).unwrap_err();
    assert!(format!("{:#}", anyhow::Error::new(err)).contains("interrupted"));
    // A non-resumable stage starts from an empty dir.
    let env = Env::new();
    let kit = Kit::new(env.path()).with("train", Behavior::Fail);
    env.run(BASE, &kit, &opts()).unwrap_err();
    let partial = env.store.partial_dir("train", &env.key_of(BASE, "train"));
    std::fs::write(partial.join("stale.txt"), "x").unwrap();
    env.run(BASE, &Kit::new(env.path()), &opts()).unwrap();
    assert!(
        !env.store
            .pointer_path("exp", None, "train")
            .join("stale.txt")
            .exists()
    );
}

const SWEEP: &str = "\n[sweep]\n\"stages.train.lora_rank\" = [8, 16]\n\"stages.train.learning_rate\" = [1e-4, 5e-5]\n";

#[test]
fn a_sweep_shares_the_dataset_stage() {
    let env = Env::new();
    let text = format!("{BASE}{SWEEP}");
    let kit = Kit::new(env.path());
    let loaded = env.load(&text);
    let plan = env.plan(&loaded, &kit);
    assert_eq!(
        plan.graph.node_count(),
        1 + 4 * 3,
        "one dataset node, 4 × (train, export, score)"
    );
    assert_eq!(plan.listing.len(), 16);
    let data: Vec<_> = plan
        .graph
        .node_indices()
        .filter(|i| plan.graph[*i].kind == "dataset")
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(plan.graph[data[0]].uses.len(), 4);
    assert_eq!(plan.graph[data[0]].label(), "data (shared by 4 variants)");
    let calls = kit.input_calls.lock().unwrap().clone();
    assert_eq!(
        (calls["dataset"], calls["train"]),
        (1, 4),
        "shared inputs listed once"
    );
    let r = execute(&plan, &env.store, &opts(), &quiet()).unwrap();
    assert_eq!(r.computed.len(), 13);
    assert_eq!((kit.count("data"), kit.count("train")), (1, 4));
    let entry = env
        .store
        .read_pointer("exp", Some("r8-lr1e-4"), "data")
        .unwrap();
    for v in ["r8-lr5e-5", "r16-lr1e-4", "r16-lr5e-5"] {
        assert_eq!(
            env.store.read_pointer("exp", Some(v), "data").unwrap(),
            entry
        );
    }
    let r16 = Manifest::read(&env.store.pointer_path("exp", Some("r16-lr5e-5"), "train")).unwrap();
    assert_eq!(
        (
            r16.params["lora_rank"].as_u64(),
            r16.params["learning_rate"].as_f64()
        ),
        (Some(16), Some(5e-5))
    );
    // Adding a value to the grid runs only the new variants' stages.
    let bigger = text.replace("[8, 16]", "[8, 16, 32]");
    let r = env.run(&bigger, &kit, &opts()).unwrap();
    assert_eq!((r.computed.len(), r.cached), (6, 13));
}

#[test]
fn two_concurrent_runs_compute_a_shared_stage_once() {
    let env = Env::new();
    let kit = Kit::new(env.path()).with("data", Behavior::Sleep(Duration::from_millis(400)));
    let loaded = env.load(BASE);
    let (p1, p2) = (env.plan(&loaded, &kit), env.plan(&loaded, &kit));
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [&p1, &p2]
            .into_iter()
            .map(|p| {
                let (env, barrier) = (&env, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    execute(p, &env.store, &opts(), &quiet())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reports: Vec<RunReport> = results.into_iter().map(|r| r.unwrap()).collect();
    for s in ["data", "train", "export", "score"] {
        assert_eq!(kit.count(s), 1, "{s} computed once across both runs");
    }
    assert_eq!(reports.iter().map(|r| r.computed.len()).sum::<usize>(), 4);
    assert_eq!(reports.iter().map(|r| r.cached).sum::<usize>(), 4);
}

#[test]
fn jobs_run_independent_stages_concurrently_one_per_device() {
    let text = format!(
        "{}{SWEEP}",
        BASE.replacen(
            "seed = 42",
            "seed = 42\ndevices = [\"cuda:0\", \"cuda:1\"]",
            1
        )
    );
    let sleepy =
        |env: &Env| Kit::new(env.path()).with("train", Behavior::Sleep(Duration::from_millis(300)));
    let overlaps = |kit: &Kit| {
        let spans = kit.spans.lock().unwrap();
        let trains: Vec<_> = spans.iter().filter(|(n, _, _)| n == "train").collect();
        let mut n = 0;
        for (i, a) in trains.iter().enumerate() {
            for b in &trains[i + 1..] {
                if a.1 < b.2 && b.1 < a.2 {
                    n += 1;
                }
            }
        }
        n
    };
    let env = Env::new();
    let kit = sleepy(&env);
    env.run(&text, &kit, &RunOptions { jobs: 4, ..opts() })
        .unwrap();
    assert!(overlaps(&kit) > 0, "trains overlapped with --jobs 4");
    // Train, export and score stages are device-bound: never more than 2 at once, each
    // on a device.
    let devices = kit.devices();
    assert!(
        devices.iter().filter(|d| d.starts_with("cuda:")).count() == 12,
        "{devices:?}"
    );
    let spans = kit.spans.lock().unwrap().clone();
    for (_, s, _) in &spans {
        let live = spans
            .iter()
            .filter(|(n, a, b)| (n == "train" || n == "export" || n == "score") && a <= s && s < b)
            .count();
        assert!(live <= 2, "at most one device-bound stage per device");
    }
    let env = Env::new();
    let kit = sleepy(&env);
    env.run(&text, &kit, &opts()).unwrap();
    assert_eq!(overlaps(&kit), 0, "--jobs 1 runs one stage at a time");
}

#[test]
fn on_the_cpu_jobs_are_device_slots_that_split_the_cores() {
    let text = format!(
        "{}{SWEEP}",
        BASE.replacen(
            "preset = \"tiny\"",
            "preset = \"tiny\"\ndevice = \"cpu\"",
            1
        )
    );
    let env = Env::new();
    let kit = Kit::new(env.path()).with("train", Behavior::Sleep(Duration::from_millis(300)));
    env.run(&text, &kit, &RunOptions { jobs: 2, ..opts() })
        .unwrap();
    let spans = kit.spans.lock().unwrap().clone();
    let trains: Vec<_> = spans.iter().filter(|(n, _, _)| n == "train").collect();
    assert!(
        trains
            .iter()
            .any(|a| trains.iter().any(|b| a.1 < b.1 && b.1 < a.2)),
        "two trainings ran side by side on the CPU"
    );
    for (_, s, _) in &spans {
        let live = spans.iter().filter(|(_, a, b)| a <= s && s < b).count();
        assert!(live <= 2, "--jobs 2");
    }
    let devices = kit.devices();
    let bound = devices.iter().filter(|d| *d == "cpu").count();
    assert_eq!(
        bound, 12,
        "train, export, score × 4 pinned to a CPU slot: {devices:?}"
    );
    // The shared dataset stage runs alone with every core; trainings started side by
    // side get half each.
    let total = rayon::current_num_threads();
    let half = devices::thread_share(total, 2).unwrap_or(total);
    let threads = kit.threads();
    assert_eq!(threads[0], ("data".to_string(), total));
    assert_eq!(threads[1], ("train".to_string(), half), "{threads:?}");
    assert_eq!(threads[2], ("train".to_string(), half), "{threads:?}");
}

#[test]
fn data_parallel_trainings_hold_a_group_of_devices_each() {
    // 8 devices, 4 trainings of nproc_per_node = 2: all four at once, each on its own
    // pair; export and score take one device each.
    let devices: Vec<String> = (0..8).map(|i| format!("\"cuda:{i}\"")).collect();
    let text = format!(
        "{}{SWEEP}",
        BASE.replacen(
            "seed = 42",
            &format!("seed = 42\ndevices = [{}]", devices.join(", ")),
            1
        )
        .replacen("lora_rank = 8", "lora_rank = 8\nnproc_per_node = 2", 1)
    );
    let env = Env::new();
    let kit = Kit::new(env.path()).with("train", Behavior::Sleep(Duration::from_millis(400)));
    env.run(&text, &kit, &RunOptions { jobs: 8, ..opts() })
        .unwrap();
    let text_log = std::fs::read_to_string(&kit.log).unwrap();
    let groups: Vec<Vec<String>> = text_log
        .lines()
        .filter(|l| l.starts_with("train "))
        .map(|l| {
            l.split(' ')
                .nth(1)
                .unwrap()
                .split(',')
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(groups.len(), 4);
    assert!(groups.iter().all(|g| g.len() == 2), "{groups:?}");
    // Started side by side, the four pairs are disjoint.
    let mut all: Vec<&String> = groups.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "{groups:?}");
    let spans = kit.spans.lock().unwrap().clone();
    let trains: Vec<_> = spans.iter().filter(|(n, _, _)| n == "train").collect();
    let most = trains
        .iter()
        .map(|(_, s, _)| trains.iter().filter(|(_, a, b)| a <= s && s < b).count())
        .max()
        .unwrap();
    assert_eq!(most, 4, "four trainings at once");

    // More replicas than the pool holds: refused before anything runs, exit 2.
    let env = Env::new();
    let text = BASE.replacen("lora_rank = 8", "lora_rank = 8\nnproc_per_node = 2", 1);
    let kit = Kit::new(env.path());
    let loaded = env.load(&text);
    let variants: Vec<&Variant> = loaded.variants.iter().collect();
    let plan = Plan::build(
        loaded.name(),
        &variants,
        &["cuda:0".to_string()],
        devices::no_gpus,
        &env.store,
        &*kit.factory(),
    )
    .unwrap();
    let err = execute(&plan, &env.store, &opts(), &quiet()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `train`: needs 2 devices but the pool has 1 (cuda:0)"
    );
    assert_eq!(err.exit_code(), 2);
    assert_eq!(kit.count("data"), 0, "nothing ran");
}

#[test]
fn planning_reads_input_files_through_the_stat_cache() {
    let env = Env::new();
    let kit = Kit::new(env.path());
    let data = env.path().join("data/train.jsonl");
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    for f in [&data, &env.path().join("data/test.jsonl")] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
    env.plan(&env.load(BASE), &kit);
    let cache = std::fs::read_to_string(env.store.statcache_path()).unwrap();
    assert!(cache.contains(&data.display().to_string()));
    let missing: PathBuf = env.path().join("data/test.jsonl");
    std::fs::remove_file(&missing).unwrap();
    let loaded = {
        std::fs::write(missing.clone(), "{}\n").unwrap();
        let l = env.load(BASE);
        std::fs::remove_file(&missing).unwrap();
        l
    };
    let variants: Vec<&Variant> = loaded.variants.iter().collect();
    let err = Plan::build(
        loaded.name(),
        &variants,
        &[],
        devices::no_gpus,
        &env.store,
        &*kit.factory(),
    )
    .err()
    .unwrap();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("stage `data`: cannot read input")
            && err.to_string().contains("test.jsonl"),
        "{err}"
    );
}
