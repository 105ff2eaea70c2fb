//! A stage kind standing in for the real ones, for tests of the runner (the crate's own
//! and `tests/it`): it records each run in a log file (so tests count computations and
//! see the devices and threads it got), writes its params and its upstreams' outputs to
//! `out.txt`, the files a sweep summary reads (a train stage's `logging.jsonl` with a
//! made-up loss of its swept values, a score stage's `metrics.json`), and can fail, panic,
//! sleep or resume on request. Public so the integration tests share it; not an API.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::experiment::{Common, StageParams, StageSpec};
use crate::graph::{Stage, StageContext, StageError, StageFactory};
use crate::train::log_step::STEP_KEY;

#[derive(Debug, Clone)]
pub enum Behavior {
    Ok,
    Fail,
    Panic,
    InputError,
    Sleep(Duration),
    /// Resumable: fails the first time (leaving `progress.txt`), succeeds when it finds it.
    FailOnceThenResume,
}

pub struct TestStage {
    kind: &'static str,
    params: Value,
    inputs: Vec<PathBuf>,
    log: PathBuf,
    behavior: Behavior,
    /// Device slots it holds (a train stage's `nproc_per_node`).
    slots: usize,
    /// (stage name, start, end) of each run, for overlap checks.
    spans: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    input_calls: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Stage for TestStage {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Value {
        self.params.clone()
    }
    /// As the real stage kinds that run the model.
    fn uses_device(&self) -> bool {
        matches!(self.kind, "train" | "export" | "score")
    }
    fn input_files(&self) -> Result<Vec<PathBuf>, StageError> {
        *self
            .input_calls
            .lock()
            .unwrap()
            .entry(self.kind)
            .or_default() += 1;
        Ok(self.inputs.clone())
    }
    fn resumable(&self) -> bool {
        matches!(self.behavior, Behavior::FailOnceThenResume)
    }
    fn device_slots(&self) -> usize {
        self.slots
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let start = Instant::now();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // The stage name without the variant (`r8-lr1e-4/train` → `train`).
        let stage = ctx.name.rsplit('/').next().unwrap_or(ctx.name);
        let threads = rayon::current_num_threads();
        // One write per line: stages log concurrently, and `writeln!` may split a line
        // into several writes that interleave with other stages' lines.
        let devices = match ctx.devices {
            [] => "-".to_string(),
            d => d.join(","),
        };
        let line = format!("{stage} {devices} {threads}\n");
        log.write_all(line.as_bytes()).unwrap();
        // For tests that kill the process mid-stage.
        std::fs::write(ctx.out_dir.join("started"), "").unwrap();
        let mut out = format!("{}\n", self.params);
        for (need, up) in ctx.inputs {
            let text = std::fs::read_to_string(up.dir.join("out.txt"))
                .map_err(|e| StageError::Failed(e.into()))?;
            out.push_str(&format!("{need}: {text}"));
        }
        std::fs::write(ctx.out_dir.join("out.txt"), &out).unwrap();
        let result = match &self.behavior {
            Behavior::Ok => Ok(()),
            Behavior::Fail => Err(StageError::Failed(anyhow::anyhow!("simulated failure"))),
            Behavior::InputError => {
                Err(StageError::Input("row 3: label 12 ≥ num_labels 11".into()))
            }
            Behavior::Panic => panic!("simulated panic in {}", ctx.name),
            Behavior::Sleep(d) => {
                std::thread::sleep(*d);
                Ok(())
            }
            Behavior::FailOnceThenResume => {
                let marker = ctx.out_dir.join("progress.txt");
                if marker.exists() {
                    std::fs::write(ctx.out_dir.join("resumed.txt"), "yes").unwrap();
                    Ok(())
                } else {
                    std::fs::write(marker, "step 5").unwrap();
                    Err(StageError::Failed(anyhow::anyhow!("interrupted")))
                }
            }
        };
        if result.is_ok() {
            self.write_outputs(ctx)?;
        }
        self.spans
            .lock()
            .unwrap()
            .push((stage.to_string(), start, Instant::now()));
        result
    }
}

impl TestStage {
    /// `params.json`, and what a sweep summary reads: a train stage's `logging.jsonl` with
    /// a loss that depends on the swept values (so summaries can be sorted), a score
    /// stage's `metrics.json` (accuracy 0.9 when a train upstream logged, else 0).
    fn write_outputs(&self, ctx: &StageContext) -> Result<(), StageError> {
        let write = |name: &str, text: String| {
            std::fs::write(ctx.out_dir.join(name), text).map_err(|e| StageError::Failed(e.into()))
        };
        write("params.json", self.params.to_string())?;
        match self.kind {
            "train" => {
                let r = self.params["lora_rank"].as_f64().unwrap_or(0.0);
                let lr = self.params["learning_rate"].as_f64().unwrap_or(0.0);
                let loss = 1.0 / (1.0 + r) + lr * 1e3;
                let lines = [
                    json!({"loss": 2.0, STEP_KEY: "1/2"}),
                    json!({"eval_loss": loss + 0.5, "eval_acc": 0.1, "eval_runtime": 1.0}),
                    json!({"eval_loss": loss, "eval_acc": 1.0 - loss, "eval_runtime": 1.0}),
                    json!({"best_metric": loss}),
                ];
                write(
                    "logging.jsonl",
                    lines.iter().map(|l| format!("{l}\n")).collect(),
                )
            }
            "score" => {
                let trained = ctx
                    .upstream_of_kind("train")
                    .is_some_and(|u| u.dir.join("logging.jsonl").exists());
                let acc = if trained { 0.9 } else { 0.0 };
                write(
                    "metrics.json",
                    json!({"acc": acc, "macro_f1": acc, "confusion": [[1]]}).to_string(),
                )
            }
            _ => Ok(()),
        }
    }
}

/// Builds test stages from real validated specs; `behaviors` by stage name.
pub struct Kit {
    pub log: PathBuf,
    pub behaviors: BTreeMap<String, Behavior>,
    pub spans: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    /// `input_files()` calls by kind.
    pub input_calls: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Kit {
    pub fn new(dir: &Path) -> Kit {
        Kit {
            log: dir.join("runs.log"),
            behaviors: BTreeMap::new(),
            spans: Arc::default(),
            input_calls: Arc::default(),
        }
    }

    pub fn with(mut self, stage: &str, b: Behavior) -> Kit {
        self.behaviors.insert(stage.into(), b);
        self
    }

    /// How many times each stage name ran.
    pub fn count(&self, stage: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(stage))
            .count()
    }

    /// (stage, rayon threads it could use), in start order.
    pub fn threads(&self) -> Vec<(String, usize)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].to_string(), f[2].parse().unwrap())
            })
            .collect()
    }

    pub fn devices(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| l.split(' ').nth(1).unwrap_or_default().to_string())
            .collect()
    }

    pub fn factory(&self) -> Box<StageFactory<'_, StageSpec, Common>> {
        Box::new(move |spec: &StageSpec, _common: &Common| {
            let slots = match &spec.params {
                StageParams::Train(p) => p.nproc_per_node,
                _ => 1,
            };
            let (kind, params, inputs) = match &spec.params {
                StageParams::Dataset(p) => (
                    "dataset",
                    json!({"dataset": p.dataset, "val_dataset": p.val_dataset, "max_pixels": p.max_pixels}),
                    p.dataset
                        .iter()
                        .chain(&p.val_dataset)
                        .map(PathBuf::from)
                        .collect(),
                ),
                StageParams::Train(p) => (
                    "train",
                    json!({"lora_rank": p.lora_rank, "learning_rate": p.learning_rate, "lora_alpha": p.lora_alpha}),
                    vec![],
                ),
                StageParams::Export(p) => ("export", json!({"checkpoint": p.checkpoint}), vec![]),
                StageParams::Score(p) => ("score", json!({"split": p.split}), vec![]),
            };
            Ok(Box::new(TestStage {
                kind,
                params,
                inputs,
                log: self.log.clone(),
                behavior: self
                    .behaviors
                    .get(&spec.name)
                    .cloned()
                    .unwrap_or(Behavior::Ok),
                slots,
                spans: self.spans.clone(),
                input_calls: self.input_calls.clone(),
            }) as Box<dyn Stage>)
        })
    }
}
