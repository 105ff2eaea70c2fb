//! Stage-graph rules checked before anything runs: every `needs` names a stage, there
//! is no cycle, and each kind gets the inputs it requires. Returns a topological order.

use std::collections::BTreeMap;

use super::check::{Check, Result};
use super::error::{closest, list};
use super::spec::StageParams;

/// Kinds a stage of `kind` requires among its needs (exactly one each), and the kinds it
/// may take at most one of.
pub(crate) fn required_kinds(kind: &str) -> &'static [&'static str] {
    match kind {
        "train" => &["dataset"],
        "export" => &["train"],
        "score" => &["dataset"],
        _ => &[],
    }
}

/// Check the graph of `stages` (file order) and return their names in a topological
/// order that keeps file order among independent stages.
pub(crate) fn check_graph(c: &Check, stages: &[(String, StageParams)]) -> Result<Vec<String>> {
    let kinds: BTreeMap<&str, &str> = stages.iter().map(|(n, p)| (n.as_str(), p.kind())).collect();
    let names: Vec<&str> = kinds.keys().copied().collect();
    for (name, params) in stages {
        let path = ["stages", name.as_str(), "needs"];
        for need in params.needs() {
            if need == name {
                return Err(c.err(
                    &path,
                    format!("stage `{name}` needs itself (cycle: {name} → {name})"),
                ));
            }
            if !kinds.contains_key(need.as_str()) {
                let hint = closest(need, &names)
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default();
                return Err(c.err(
                    &path,
                    format!(
                        "stage `{name}` needs `{need}`, which does not exist{hint}; stages: {}",
                        list(&names)
                    ),
                ));
            }
        }
        let mut by_kind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for need in params.needs() {
            by_kind.entry(kinds[need.as_str()]).or_default().push(need);
        }
        for (kind, needs) in &by_kind {
            if needs.len() > 1 {
                return Err(c.err(
                    &path,
                    format!(
                        "stage `{name}` needs {} {kind} stages ({}); it takes at most one",
                        needs.len(),
                        list(needs)
                    ),
                ));
            }
        }
        for required in required_kinds(params.kind()) {
            if !by_kind.contains_key(required) {
                let candidates: Vec<&str> = kinds
                    .iter()
                    .filter(|(_, k)| *k == required)
                    .map(|(n, _)| *n)
                    .collect();
                let have = if candidates.is_empty() {
                    format!("the file has no {required} stage")
                } else {
                    format!("{required} stages: {}", list(&candidates))
                };
                let article = if params.kind().starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                return Err(c.err(
                    &path,
                    format!(
                        "{article} {} stage needs a {required} stage in `needs`; {have}",
                        params.kind()
                    ),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(stages) {
        let first = cycle[0].clone();
        return Err(c.err(
            &["stages", first.as_str(), "needs"],
            format!("cycle in needs: {}", cycle.join(" → ")),
        ));
    }
    Ok(topological_order(stages))
}

/// A cycle as `a, b, …, a`, if any.
fn find_cycle(stages: &[(String, StageParams)]) -> Option<Vec<String>> {
    let needs: BTreeMap<&str, &[String]> = stages
        .iter()
        .map(|(n, p)| (n.as_str(), p.needs()))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        needs: &BTreeMap<&'a str, &'a [String]>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for m in needs[n].iter() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| *s == m).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, needs, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    for (name, _) in stages {
        if state.get(name.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(name, &needs, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Kahn's algorithm, always taking the earliest ready stage in file order.
fn topological_order(stages: &[(String, StageParams)]) -> Vec<String> {
    let mut done: Vec<String> = Vec::new();
    while done.len() < stages.len() {
        let next = stages
            .iter()
            .find(|(n, p)| !done.contains(n) && p.needs().iter().all(|m| done.contains(m)));
        match next {
            Some((n, _)) => done.push(n.clone()),
            None => break, // unreachable after find_cycle
        }
    }
    done
}
