//! Execution: topological order, a cache check first (DVC's "try the cache"), then the
//! stage under its key's lock in a stable partial dir, published atomically with the
//! manifest written last. Independent stages run on up to `jobs` threads; device-bound
//! stages hold one device slot each (`devices`), and stages running side by side split
//! the CPU cores.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use indicatif::MultiProgress;
use petgraph::graph::NodeIndex;

use super::devices::{device_slots, thread_share};
use super::error::ExecError;
use super::plan::{Plan, PlanNode};
use super::progress::{Progress, human_duration};
use super::schedule::Scheduler;
use super::stage::{CacheHit, StageContext, StageError, Upstream};
use crate::store::manifest::rfc3339;
use crate::store::{KeyLock, Lookup, Manifest, Store, StoreError};

/// Name of the threads stages run on (the binary's panic hook stays quiet on them: the
/// executor reports a stage's panic as its failure).
pub const STAGE_THREAD: &str = "stage";

/// What `pipeline run` asks for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recompute these stages (by name, in every variant) and everything downstream.
    pub force: Vec<String>,
    /// Recompute everything.
    pub force_all: bool,
    /// Stages run at the same time (≥ 1).
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            force: vec![],
            force_all: false,
            jobs: 1,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    /// Labels of the stages computed, in completion order.
    pub computed: Vec<String>,
    /// Stage computations served from the cache.
    pub cached: usize,
    pub elapsed: Duration,
}

enum Outcome {
    Computed(Duration),
    /// Another process finished it while we waited for the lock.
    CachedMeanwhile,
}

/// Run `plan` against `store`. Every stage that can run does; after a failure no new
/// stage starts, running ones finish, and the first failure is returned.
pub fn execute(
    plan: &Plan,
    store: &Store,
    opts: &RunOptions,
    multi: &MultiProgress,
) -> Result<RunReport, ExecError> {
    let t0 = Instant::now();
    let forced = forced_nodes(plan, opts)?;
    let progress = Progress::new(multi);
    let need: Vec<usize> = plan
        .graph
        .node_indices()
        .map(|i| {
            let stage = &plan.graph[i].stage;
            if stage.uses_device() {
                stage.device_slots().max(1)
            } else {
                0
            }
        })
        .collect();
    let group = need.iter().copied().max().unwrap_or(1);
    let slots = device_slots(
        &plan.devices,
        &plan.model_device,
        (opts.jobs, group),
        plan.gpus,
    );
    check_pool(plan, &need, &slots)?;
    let mut sched = Scheduler::new(&plan.graph, &plan.order, need, &slots, opts.jobs);
    let total_threads = rayon::current_num_threads();
    let mut report = RunReport::default();
    let mut failures: Vec<(String, StageError)> = Vec::new();
    let mut checked: BTreeSet<NodeIndex> = BTreeSet::new();
    let (tx, rx) = mpsc::channel::<(NodeIndex, Vec<usize>, Result<Outcome, StageError>)>();

    std::thread::scope(|scope| {
        loop {
            let mut progressed = false;
            for idx in sched.ready() {
                let node = &plan.graph[idx];
                if !forced.contains(&idx) && checked.insert(idx) {
                    match use_cached(plan, store, node, &progress) {
                        Ok(true) => {
                            progress.line(&format!("✓ {} cached", node.label()));
                            report.cached += 1;
                            sched.skip(idx);
                            progressed = true;
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            progress.line(&format!("✗ {}: {}", node.label(), one_line(&e)));
                            failures.push((node.label(), e));
                            sched.start(idx, &[]);
                            sched.finish(idx, &[], false);
                            progressed = true;
                            break;
                        }
                    }
                }
                let Some(held) = sched.fits(idx) else {
                    continue;
                };
                sched.start(idx, &held);
                progressed = true;
                let devices: Vec<String> =
                    held.iter().filter_map(|&s| sched.slot_device(s)).collect();
                // Stages that will run beside this one (those ready but waiting too).
                let width = (sched.running() + sched.ready().len()).min(opts.jobs);
                let threads = thread_share(total_threads, width);
                let (tx, progress, force) = (tx.clone(), &progress, forced.contains(&idx));
                std::thread::Builder::new()
                    .name(STAGE_THREAD.into())
                    .spawn_scoped(scope, move || {
                        let r = run_node(plan, store, idx, force, &devices, threads, progress);
                        let _ = tx.send((idx, held, r));
                    })
                    .expect("spawn a stage thread");
            }
            if progressed {
                continue; // a cache hit may have readied more stages
            }
            if sched.running() == 0 {
                break;
            }
            let (idx, held, result) = rx.recv().expect("a worker is running");
            let label = plan.graph[idx].label();
            match result {
                Ok(Outcome::Computed(d)) => {
                    progress.line(&format!("✓ {label} done in {}", human_duration(d)));
                    report.computed.push(label);
                    sched.finish(idx, &held, true);
                }
                Ok(Outcome::CachedMeanwhile) => {
                    progress.line(&format!("✓ {label} cached (computed by another run)"));
                    report.cached += 1;
                    sched.finish(idx, &held, true);
                }
                Err(e) => {
                    progress.line(&format!("✗ {label} failed: {}", one_line(&e)));
                    failures.push((label, e));
                    sched.finish(idx, &held, false);
                }
            }
        }
    });
    report.elapsed = t0.elapsed();
    if failures.is_empty() {
        return Ok(report);
    }
    let all_input = failures
        .iter()
        .all(|(_, e)| matches!(e, StageError::Input(_) | StageError::Param { .. }));
    let more = failures.len() - 1;
    let (stage, source) = failures.swap_remove(0);
    Err(ExecError::StageFailed {
        stage,
        source,
        more,
        all_input,
    })
}

/// Every device-bound stage can run on `pool`: its own rules (`Stage::check_pool`), and at
/// least as many slots as it holds, else it would wait forever.
fn check_pool(plan: &Plan, need: &[usize], pool: &[String]) -> Result<(), ExecError> {
    for i in plan.graph.node_indices() {
        let node = &plan.graph[i];
        let k = need[i.index()];
        if k == 0 {
            continue;
        }
        let refused = |message: String| ExecError::Devices {
            stage: node.label(),
            message,
        };
        node.stage
            .check_pool(pool)
            .map_err(|e| refused(e.to_string()))?;
        if k > pool.len() {
            return Err(refused(format!(
                "needs {k} devices but the pool has {} ({})",
                pool.len(),
                pool.join(", ")
            )));
        }
    }
    Ok(())
}

fn forced_nodes(plan: &Plan, opts: &RunOptions) -> Result<BTreeSet<NodeIndex>, ExecError> {
    if opts.force_all {
        return Ok(plan.graph.node_indices().collect());
    }
    let mut out = BTreeSet::new();
    let names = plan.stage_names();
    for f in &opts.force {
        if !names.contains(f) {
            return Err(ExecError::UnknownForce {
                stage: f.clone(),
                stages: names.join(", "),
            });
        }
        out.extend(plan.downstream_of(f));
    }
    Ok(out)
}

/// A complete entry: link every use to it, let the stage refresh what it publishes outside
/// the cache, and report `true`. Holds a shared lock while linking so `gc` cannot delete
/// it in between.
fn use_cached(
    plan: &Plan,
    store: &Store,
    node: &PlanNode,
    progress: &Progress,
) -> Result<bool, StageError> {
    let failed = |e: StoreError| StageError::Failed(e.into());
    match store.lookup(&node.kind, &node.key) {
        Lookup::Miss => return Ok(false),
        Lookup::Invalid(why) => {
            progress.line(&format!(
                "⚠ cache entry {} is incomplete or damaged ({why}): recomputing it",
                node.entry_name()
            ));
            return Ok(false);
        }
        Lookup::Hit(_) => {}
    }
    let Some(_shared) =
        KeyLock::try_shared(&store.lock_path(&node.kind, &node.key)).map_err(failed)?
    else {
        return Ok(false); // someone is replacing it; wait for them in a worker
    };
    if !matches!(store.lookup(&node.kind, &node.key), Lookup::Hit(_)) {
        return Ok(false);
    }
    link_uses(plan, store, node).map_err(failed)?;
    cache_hit(store, node, progress)?;
    Ok(true)
}

fn cache_hit(store: &Store, node: &PlanNode, progress: &Progress) -> Result<(), StageError> {
    let entry = store.entry_dir(&node.kind, &node.key);
    node.stage.on_cache_hit(&CacheHit {
        name: &stage_name(node),
        key: &node.key,
        entry: &entry,
        progress: progress.multi,
    })
}

/// The stage's name for messages: with the variant (as in runs/<name>/<variant>/<stage>),
/// unless the node is shared between variants.
fn stage_name(node: &PlanNode) -> String {
    let first = &node.uses[0];
    match &first.variant {
        Some(v) if node.uses.iter().all(|u| u.variant == first.variant) => {
            format!("{v}/{}", first.stage)
        }
        _ => first.stage.clone(),
    }
}

fn link_uses(plan: &Plan, store: &Store, node: &PlanNode) -> Result<(), StoreError> {
    for u in &node.uses {
        store.set_pointer(
            &plan.experiment,
            u.variant.as_deref(),
            &u.stage,
            &node.kind,
            &node.key,
        )?;
    }
    Ok(())
}

fn run_node(
    plan: &Plan,
    store: &Store,
    idx: NodeIndex,
    forced: bool,
    devices: &[String],
    threads: Option<usize>,
    progress: &Progress,
) -> Result<Outcome, StageError> {
    let node = &plan.graph[idx];
    let label = node.label();
    let failed = |e: StoreError| StageError::Failed(e.into());
    let lock_path = store.lock_path(&node.kind, &node.key);
    let lock = match KeyLock::try_exclusive(&lock_path).map_err(failed)? {
        Some(l) => l,
        None => {
            let who = KeyLock::holder(&lock_path).map_or_else(String::new, |h| format!(" ({h})"));
            progress.line(&format!(
                "… {label} waiting: another run{who} holds {}",
                lock_path.display()
            ));
            KeyLock::exclusive(&lock_path).map_err(failed)?
        }
    };
    if let Some(stale) = &lock.took_over {
        progress.line(&format!(
            "⚠ {label}: took over the stale lock of {stale} (no heartbeat for a lease period)"
        ));
    }
    if !forced && let Lookup::Hit(_) = store.lookup(&node.kind, &node.key) {
        link_uses(plan, store, node).map_err(failed)?;
        cache_hit(store, node, progress)?;
        return Ok(Outcome::CachedMeanwhile);
    }
    let partial = store
        // `--force` means from scratch: no resuming from an earlier crash either.
        .prepare_partial(&node.kind, &node.key, node.stage.resumable() && !forced)
        .map_err(failed)?;
    let inputs: BTreeMap<String, Upstream> = node
        .upstream
        .iter()
        .map(|(need, up)| {
            let u = &plan.graph[*up];
            (
                need.clone(),
                Upstream {
                    kind: u.kind.clone(),
                    key: u.key.clone(),
                    dir: store.entry_dir(&u.kind, &u.key),
                },
            )
        })
        .collect();
    let first = &node.uses[0];
    let name = stage_name(node);
    let ctx = StageContext {
        name: &name,
        key: &node.key,
        out_dir: &partial,
        inputs: &inputs,
        device: devices.first().map(String::as_str),
        devices,
        progress: progress.multi,
    };
    // A pool of its own when the cores are shared; its threads carry the stage thread
    // name so a panic in them is reported as the stage's failure, like one on this thread.
    let pool = threads.and_then(|n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|_| STAGE_THREAD.into())
            .build()
            .ok()
    });
    let mut on = if devices.is_empty() {
        String::new()
    } else {
        format!(" on {}", devices.join(", "))
    };
    if let Some(p) = &pool {
        let n = p.current_num_threads();
        on.push_str(&format!(" ({n} thread{})", if n == 1 { "" } else { "s" }));
    }
    progress.line(&format!("▶ {label} running{on}"));
    let spinner = progress.spinner(format!("{label}{on}"));
    let (started, t0) = (SystemTime::now(), Instant::now());
    let result = catch_unwind(AssertUnwindSafe(|| match &pool {
        Some(p) => p.install(|| node.stage.run(&ctx)),
        None => node.stage.run(&ctx),
    }));
    spinner.finish_and_clear();
    match result {
        Err(payload) => {
            return Err(StageError::Failed(anyhow::anyhow!(
                "panicked: {}",
                panic_message(&*payload)
            )));
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let duration = t0.elapsed();
    let manifest = Manifest {
        schema: Manifest::schema(),
        key: node.key.clone(),
        kind: node.kind.clone(),
        stage: first.stage.clone(),
        variant: first.variant.clone(),
        version: node.version,
        params: node.params.clone(),
        inputs: node.inputs.clone(),
        upstream: node.upstream_keys.clone(),
        seed: node.seed,
        device: node.device.clone(),
        started: rfc3339(started),
        finished: rfc3339(SystemTime::now()),
        duration_s: duration.as_secs_f64(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        artifacts: Vec::new(),
    };
    store.publish(&partial, &manifest).map_err(failed)?;
    link_uses(plan, store, node).map_err(failed)?;
    Ok(Outcome::Computed(duration))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// An error and its causes on one line.
fn one_line(e: &StageError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}
