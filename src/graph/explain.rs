//! `pipeline plan`: for every stage of every variant, its key, whether it is cached, and
//! for a stale one why — compared with the entry `runs/<name>/[<variant>/]<stage>` links
//! to (the stage's previous run), DVC-style: which parameter, input file or upstream
//! changed.

use std::collections::BTreeMap;

use serde_json::Value;

use super::plan::{Plan, PlanNode, StageUse};
use crate::store::{KEY_PREFIX, Lookup, Manifest, Store};

/// Cache status of one (variant, stage).
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Cached,
    /// Will run; the reasons (at least one).
    Stale(Vec<String>),
}

/// One line of `pipeline plan`.
#[derive(Debug, Clone)]
pub struct PlanLine {
    pub usage: StageUse,
    pub kind: String,
    pub key: String,
    /// How many (variant, stage) pairs share this computation.
    pub shared: usize,
    pub status: Status,
}

/// Status of every planned (variant, stage), in listing order.
pub fn explain(plan: &Plan, store: &Store) -> Vec<PlanLine> {
    plan.listing
        .iter()
        .map(|(usage, idx)| {
            let node = &plan.graph[*idx];
            let status = match store.lookup(&node.kind, &node.key) {
                Lookup::Hit(_) => Status::Cached,
                Lookup::Miss => Status::Stale(why(plan, store, usage, node, None)),
                Lookup::Invalid(r) => Status::Stale(why(plan, store, usage, node, Some(r))),
            };
            PlanLine {
                usage: usage.clone(),
                kind: node.kind.clone(),
                key: node.key.clone(),
                shared: node.uses.len(),
                status,
            }
        })
        .collect()
}

fn why(
    plan: &Plan,
    store: &Store,
    usage: &StageUse,
    node: &PlanNode,
    invalid: Option<String>,
) -> Vec<String> {
    let link = store.pointer_path(&plan.experiment, usage.variant.as_deref(), &usage.stage);
    let Some(prev_dir) =
        store.read_pointer(&plan.experiment, usage.variant.as_deref(), &usage.stage)
    else {
        return vec![match invalid {
            Some(r) => format!("cache entry incomplete ({r})"),
            None => "never run".into(),
        }];
    };
    if prev_dir == store.entry_dir(&node.kind, &node.key) {
        let why = invalid.unwrap_or_else(|| "deleted".into());
        return vec![format!("cache entry missing or incomplete ({why})")];
    }
    match Manifest::read(&prev_dir) {
        Ok(prev) => diff(&prev, node),
        Err(r) => vec![format!(
            "previous run ({} → {}) cannot be compared: {r}",
            link.display(),
            prev_dir.display()
        )],
    }
}

/// Reasons `node` differs from the entry `prev` recorded.
pub fn diff(prev: &Manifest, node: &PlanNode) -> Vec<String> {
    let mut out = Vec::new();
    if prev.kind != node.kind {
        out.push(format!("kind changed: {} → {}", prev.kind, node.kind));
    }
    if prev.version != node.version {
        out.push(format!(
            "{} implementation version {} → {}",
            node.kind, prev.version, node.version
        ));
    }
    diff_values("", &prev.params, &node.params, &mut out);
    let old: BTreeMap<&str, &str> = prev
        .inputs
        .iter()
        .map(|i| (i.path.as_str(), i.blake3.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = node
        .inputs
        .iter()
        .map(|i| (i.path.as_str(), i.blake3.as_str()))
        .collect();
    for (p, d) in &new {
        match old.get(p) {
            None => out.push(format!("new input file {p}")),
            Some(o) if o != d => out.push(format!("input file changed: {p}")),
            _ => {}
        }
    }
    for p in old.keys().filter(|p| !new.contains_key(*p)) {
        out.push(format!("input file no longer read: {p}"));
    }
    for (need, k) in &node.upstream_keys {
        match prev.upstream.get(need) {
            None => out.push(format!("new upstream `{need}`")),
            Some(o) if o != k => out.push(format!(
                "upstream `{need}` changed ({} → {})",
                short(o),
                short(k)
            )),
            _ => {}
        }
    }
    for need in prev
        .upstream
        .keys()
        .filter(|n| !node.upstream_keys.contains_key(*n))
    {
        out.push(format!("no longer needs `{need}`"));
    }
    if prev.seed != node.seed {
        let show = |s: Option<u64>| s.map_or("unused".to_string(), |s| s.to_string());
        out.push(format!("seed {} → {}", show(prev.seed), show(node.seed)));
    }
    if prev.device != node.device {
        out.push(format!("device changed: {} → {}", prev.device, node.device));
    }
    if out.is_empty() {
        out.push("key recipe changed (new pipeline version)".into());
    }
    out
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, nv) in b {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    Some(ov) => diff_values(&p, ov, nv, out),
                    None => out.push(format!("new param `{p}` = {nv}")),
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push(format!("param `{p}` removed"));
            }
        }
        (a, b) if a != b => out.push(format!("`{path}` changed: {a} → {b}")),
        _ => {}
    }
}

fn short(key: &str) -> &str {
    &key[..KEY_PREFIX.min(key.len())]
}

/// The text `pipeline plan` prints.
pub fn render(plan: &Plan, lines: &[PlanLine]) -> String {
    let width = lines.iter().map(|l| l.usage.stage.len()).max().unwrap_or(0);
    let mut out = String::new();
    let mut current: Option<&Option<String>> = None;
    for l in lines {
        if current != Some(&l.usage.variant) {
            current = Some(&l.usage.variant);
            match &l.usage.variant {
                Some(v) => out.push_str(&format!("variant {v}\n")),
                None => out.push_str(&format!("experiment {}\n", plan.experiment)),
            }
        }
        let entry = format!("{}-{}", l.kind, short(&l.key));
        let status = match &l.status {
            Status::Cached => "cached".to_string(),
            Status::Stale(r) => format!("will run: {}", r.join("; ")),
        };
        let shared = if l.shared > 1 {
            format!(" (shared ×{})", l.shared)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:<width$}  {entry}{shared}  {status}\n",
            l.usage.stage
        ));
    }
    let cached: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.status == Status::Cached)
        .map(|l| l.key.as_str())
        .collect();
    let total = plan.graph.node_count();
    out.push_str(&format!(
        "{total} stage computation(s): {} cached, {} to run\n",
        cached.len(),
        total - cached.len()
    ));
    out
}
