//! The plan: ONE petgraph DAG over all sweep variants, each node a stage with its content
//! key. Stages whose key is equal across variants (the dataset stage of a rank × lr
//! sweep) are one node, computed once and linked from every variant.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, EdgeRef, Walker};

use super::devices::{GpuCount, device_kind};
use super::error::PlanError;
use super::key::{KeyParts, canonical_json, content_key, sorted};
use super::stage::{Stage, StageError};
use crate::store::manifest::InputDigest;
use crate::store::{StatCache, Store, StoreError};

/// What the planner reads of one variant of an experiment. The graph knows no experiment
/// schema: the validated experiment implements this in `stages::plan_source`.
pub trait PlanVariant {
    /// A stage's validated spec, handed to the factory.
    type Stage: PlanStage;
    /// What the factory needs besides the spec (the tables every stage shares).
    type Common;
    /// `r8-lr1e-4`; `None` without a sweep.
    fn variant_name(&self) -> Option<String>;
    /// Stages in a topological order (each after the stages it needs).
    fn stages(&self) -> &[Self::Stage];
    fn common(&self) -> &Self::Common;
    /// The seed, for the stages whose output depends on it.
    fn seed(&self) -> u64;
    /// The model's device setting (`auto`, `cpu`, `cuda:N`).
    fn model_device(&self) -> &str;
}

/// A stage of a [`PlanVariant`].
pub trait PlanStage {
    fn name(&self) -> &str;
    /// The kind the file names (the built stage must be of it).
    fn kind(&self) -> &str;
    /// Names of the stages whose artifacts it reads.
    fn needs(&self) -> &[String];
}

/// Builds the `Stage` of a validated stage spec (`stages::build` in the binary; test
/// kinds in tests).
pub type StageFactory<'a, S, C> = dyn Fn(&S, &C) -> Result<Box<dyn Stage>, StageError> + Sync + 'a;

/// Where a node is used: a stage of a variant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StageUse {
    pub variant: Option<String>,
    pub stage: String,
}

impl StageUse {
    /// `train` or `train [r8-lr1e-4]`.
    pub fn label(&self) -> String {
        match &self.variant {
            Some(v) => format!("{} [{v}]", self.stage),
            None => self.stage.clone(),
        }
    }
}

/// One stage computation.
pub struct PlanNode {
    pub kind: String,
    /// Full content key (64 hex).
    pub key: String,
    pub stage: Box<dyn Stage>,
    /// Canonical `Stage::params()`.
    pub params: serde_json::Value,
    pub version: u32,
    /// The seed, for stages whose output depends on it.
    pub seed: Option<u64>,
    /// `Stage::device_key` of the planned device kind (null for stages off the device).
    pub device: serde_json::Value,
    pub inputs: Vec<InputDigest>,
    /// Need name → upstream node / key.
    pub upstream: BTreeMap<String, NodeIndex>,
    pub upstream_keys: BTreeMap<String, String>,
    /// Every (variant, stage) this node stands for; at least one.
    pub uses: Vec<StageUse>,
}

impl PlanNode {
    /// `data` or `data [r8-lr1e-4]`, or `data (shared by 4 variants)`.
    pub fn label(&self) -> String {
        let variants: BTreeSet<&Option<String>> = self.uses.iter().map(|u| &u.variant).collect();
        if variants.len() > 1 {
            let stages: BTreeSet<&str> = self.uses.iter().map(|u| u.stage.as_str()).collect();
            let names: Vec<&str> = stages.into_iter().collect();
            format!(
                "{} (shared by {} variants)",
                names.join("/"),
                variants.len()
            )
        } else {
            self.uses[0].label()
        }
    }

    /// Directory name of its cache entry.
    pub fn entry_name(&self) -> String {
        Store::entry_name(&self.kind, &self.key)
    }
}

/// The DAG of one `pipeline run`/`plan`.
pub struct Plan {
    /// `runs/<experiment>/`.
    pub experiment: String,
    /// Edges point from an upstream stage to the stage that needs it.
    pub graph: DiGraph<PlanNode, String>,
    /// Topological order of `graph` (variants in listed order).
    pub order: Vec<NodeIndex>,
    /// Devices to pin device-bound stages to (empty: decided by `model_device`, see
    /// `devices::device_slots`).
    pub devices: Vec<String>,
    /// The model's `device` setting (`auto`, `cpu`, `cuda:N`).
    pub model_device: String,
    /// The caller's GPU count, for `model_device = "auto"`.
    pub gpus: GpuCount,
    /// The planned variants, in order (`None` alone without a sweep).
    pub variants: Vec<Option<String>>,
    /// Uses in variant order, then stage order, for listing.
    pub listing: Vec<(StageUse, NodeIndex)>,
}

impl Plan {
    /// Plan `variants` of experiment `name`: build each stage, digest its input files
    /// (through the store's stat cache) and key it; equal keys share a node. `gpus` counts
    /// the GPUs `device = "auto"` may use (the caller's probe; see `devices::GpuCount`).
    pub fn build<V: PlanVariant>(
        name: &str,
        variants: &[&V],
        devices: &[String],
        gpus: GpuCount,
        store: &Store,
        factory: &StageFactory<V::Stage, V::Common>,
    ) -> Result<Plan, PlanError> {
        let mut stat = StatCache::load(&store.statcache_path());
        let mut graph: DiGraph<PlanNode, String> = DiGraph::new();
        let mut by_key: BTreeMap<String, NodeIndex> = BTreeMap::new();
        let mut listing = Vec::new();
        let mut inputs_memo: BTreeMap<String, Vec<InputDigest>> = BTreeMap::new();
        for v in variants {
            let mut local: BTreeMap<&str, NodeIndex> = BTreeMap::new();
            for spec in v.stages() {
                let usage = StageUse {
                    variant: v.variant_name(),
                    stage: spec.name().to_string(),
                };
                let stage_err = |source| PlanError::Stage {
                    stage: usage.label(),
                    source,
                };
                let stage = factory(spec, v.common()).map_err(stage_err)?;
                check_stage(stage.as_ref(), spec, v.stages()).map_err(stage_err)?;
                let upstream: BTreeMap<String, NodeIndex> = spec
                    .needs()
                    .iter()
                    .map(|n| (n.clone(), local[n.as_str()]))
                    .collect();
                let upstream_keys: BTreeMap<String, String> = upstream
                    .iter()
                    .map(|(n, i)| (n.clone(), graph[*i].key.clone()))
                    .collect();
                let params = sorted(&stage.params());
                // A stage's input files follow from its kind, version and params, so the
                // variants of a sweep list (and digest) a shared dataset once.
                let memo_key = format!(
                    "{}/{}/{}",
                    stage.kind(),
                    stage.version(),
                    canonical_json(&params)
                );
                let inputs = match inputs_memo.get(&memo_key) {
                    Some(i) => Vec::clone(i),
                    None => {
                        let mut inputs = Vec::new();
                        for f in stage.input_files().map_err(stage_err)? {
                            let blake3 = stat.digest(&f).map_err(|e| input_error(&usage, &f, e))?;
                            inputs.push(InputDigest {
                                path: f.to_string_lossy().into_owned(),
                                blake3,
                            });
                        }
                        inputs_memo.insert(memo_key, inputs.clone());
                        inputs
                    }
                };
                let (kind, version) = (stage.kind().to_string(), stage.version());
                let seed = stage.seeded().then_some(v.seed());
                let device = if stage.uses_device() {
                    let on = device_kind(devices, v.model_device(), gpus);
                    stage.check_fits(spec.name(), on).map_err(stage_err)?;
                    sorted(&stage.device_key(on))
                } else {
                    serde_json::Value::Null
                };
                let key = content_key(&KeyParts {
                    kind: &kind,
                    version,
                    params: &params,
                    upstream: &upstream_keys,
                    inputs: &inputs,
                    device: &device,
                    seed,
                });
                let idx = match by_key.get(&key) {
                    Some(&i) => i,
                    None => {
                        let i = graph.add_node(PlanNode {
                            kind,
                            key: key.clone(),
                            stage,
                            params,
                            version,
                            seed,
                            device,
                            inputs,
                            upstream: upstream.clone(),
                            upstream_keys,
                            uses: vec![],
                        });
                        for (need, up) in &upstream {
                            graph.add_edge(*up, i, need.clone());
                        }
                        by_key.insert(key, i);
                        i
                    }
                };
                graph[idx].uses.push(usage.clone());
                listing.push((usage, idx));
                local.insert(spec.name(), idx);
            }
        }
        stat.save()?;
        // Nodes were added after their upstreams, in variant then stage order: index order
        // is a topological order that runs variants in the order they are listed.
        let order: Vec<NodeIndex> = graph.node_indices().collect();
        debug_assert!(graph.edge_indices().all(|e| {
            let (a, b) = graph.edge_endpoints(e).expect("edge exists");
            a < b
        }));
        Ok(Plan {
            experiment: name.to_string(),
            graph,
            order,
            devices: devices.to_vec(),
            gpus,
            model_device: variants
                .first()
                .map_or_else(|| "auto".into(), |v| v.model_device().to_string()),
            variants: variants.iter().map(|v| v.variant_name()).collect(),
            listing,
        })
    }

    /// Nodes used by a stage named `stage` (in any variant) and everything downstream.
    pub fn downstream_of(&self, stage: &str) -> BTreeSet<NodeIndex> {
        let mut out = BTreeSet::new();
        for (u, idx) in &self.listing {
            if u.stage == stage {
                out.extend(Dfs::new(&self.graph, *idx).iter(&self.graph));
            }
        }
        out
    }

    /// Stage names across the plan, sorted.
    pub fn stage_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.listing.iter().map(|(u, _)| u.stage.clone()).collect();
        names.into_iter().collect()
    }

    /// Upstream nodes of `idx`.
    pub fn parents(&self, idx: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph
            .edges_directed(idx, Direction::Incoming)
            .map(|e| e.source())
    }
}

/// The built stage must be the kind the file names and get the inputs it requires.
fn check_stage<S: PlanStage>(stage: &dyn Stage, spec: &S, all: &[S]) -> Result<(), StageError> {
    if stage.kind() != spec.kind() {
        return Err(StageError::Input(format!(
            "built a `{}` stage for kind `{}`",
            stage.kind(),
            spec.kind()
        )));
    }
    let have: Vec<&str> = spec
        .needs()
        .iter()
        .filter_map(|n| all.iter().find(|s| s.name() == n))
        .map(|s| s.kind())
        .collect();
    for req in stage.required_inputs() {
        if !have.contains(req) {
            return Err(StageError::Input(format!(
                "a {} stage needs a {req} stage in `needs`",
                spec.kind()
            )));
        }
    }
    Ok(())
}

fn input_error(usage: &StageUse, path: &std::path::Path, e: StoreError) -> PlanError {
    let message = match &e {
        StoreError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    PlanError::Input {
        stage: usage.label(),
        path: path.display().to_string(),
        message,
    }
}
