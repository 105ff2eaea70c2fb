//! The reference of every experiment-file key: its ms-swift flag, default and meaning.
//! `docs/EXPERIMENT.md` is rendered from this table (with defaults read from the schema's
//! serde defaults), and a test checks that the table covers exactly the schema's fields
//! and that the committed document is current, so the two cannot drift.

use super::cluster::SlurmSpec;
use super::fields::fields_of;
use super::schema::{DatasetParams, ExportParams, ModelSpec, ScoreParams, TaskSpec, TrainParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One key: name, the ms-swift flag or environment variable it maps to (`""`: none, ours),
/// and what it does here.
pub struct KeyDoc {
    pub key: &'static str,
    pub swift: &'static str,
    pub meaning: &'static str,
}

const fn k(key: &'static str, swift: &'static str, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        swift,
        meaning,
    }
}

/// A table of the file: its heading, its keys, the schema's field names, and the defaults.
pub struct Section {
    pub title: &'static str,
    pub intro: &'static str,
    pub keys: &'static [KeyDoc],
    pub fields: fn() -> Vec<&'static str>,
    /// The table's defaults as JSON (keys without a default are absent or null).
    pub defaults: fn() -> serde_json::Value,
    /// Keys that must be given.
    pub required: &'static [&'static str],
}

/// Defaults of a params type: deserialize `required` (the keys that have no default).
fn defaults_of<T: DeserializeOwned + Serialize>(required: &str) -> serde_json::Value {
    let t: T = toml::from_str(required).expect("schema defaults deserialize");
    serde_json::to_value(t).expect("schema serializes")
}

fn top_fields() -> Vec<&'static str> {
    fields_of::<super::schema::RawExperiment>().to_vec()
}

fn top_defaults() -> serde_json::Value {
    serde_json::json!({ "seed": super::schema::default_seed() })
}

/// Every section, in the order the document lists them.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            title: "Top level",
            intro: "",
            keys: TOP,
            fields: top_fields,
            defaults: top_defaults,
            required: &["model", "task", "stages"],
        },
        Section {
            title: "[model]",
            intro: "Which weights, in which dtype, on which device. Exactly one of `preset`, `path` and `model`.",
            keys: MODEL,
            fields: || fields_of::<ModelSpec>().to_vec(),
            defaults: || defaults_of::<ModelSpec>(""),
            required: &[],
        },
        Section {
            title: "[task]",
            intro: "What the classifier predicts.",
            keys: TASK,
            fields: || fields_of::<TaskSpec>().to_vec(),
            defaults: || defaults_of::<TaskSpec>("num_labels = 2"),
            required: &["num_labels"],
        },
        Section {
            title: "[stages.NAME] kind = \"dataset\"",
            intro: "Reads SWIFT-format JSONL/JSON rows, resizes images with Qwen's smart resize, \
                    tokenizes with the Qwen2.5-VL chat template.",
            keys: DATASET,
            fields: || with_kind(fields_of::<DatasetParams>()),
            defaults: || defaults_of::<DatasetParams>(""),
            required: &["kind"],
        },
        Section {
            title: "[stages.NAME] kind = \"train\"",
            intro: "`swift sft --task_type seq_cls --tuner_type lora`: LoRA on the target \
                    modules plus a fully trained `score` head, AdamW, warmup + schedule, \
                    evaluation every `eval_steps`, checkpoints every `save_steps`.",
            keys: TRAIN,
            fields: || with_kind(fields_of::<TrainParams>()),
            defaults: || defaults_of::<TrainParams>(""),
            required: &["kind"],
        },
        Section {
            title: "[stages.NAME] kind = \"export\"",
            intro: "`swift export`: a PEFT adapter directory and merged HF-layout weights.",
            keys: EXPORT,
            fields: || with_kind(fields_of::<ExportParams>()),
            defaults: || defaults_of::<ExportParams>(""),
            required: &["kind"],
        },
        Section {
            title: "[stages.NAME] kind = \"score\"",
            intro: "`swift infer --logprobs true`: per-class log-probabilities of a split.",
            keys: SCORE,
            fields: || with_kind(fields_of::<ScoreParams>()),
            defaults: || defaults_of::<ScoreParams>(""),
            required: &["kind"],
        },
        Section {
            title: "[slurm]",
            intro: "What each Slurm array task asks for. None of it is part of a stage's key.",
            keys: SLURM,
            fields: || fields_of::<SlurmSpec>().to_vec(),
            defaults: || defaults_of::<SlurmSpec>(""),
            required: &[],
        },
    ]
}

fn with_kind(fields: &[&'static str]) -> Vec<&'static str> {
    std::iter::once("kind")
        .chain(fields.iter().copied())
        .collect()
}

const NEEDS: KeyDoc = k(
    "needs",
    "",
    "Names of the stages whose artifacts this stage reads (the DAG's edges).",
);
const KIND: KeyDoc = k(
    "kind",
    "",
    "The stage kind: `dataset`, `train`, `export` or `score`.",
);

const TOP: &[KeyDoc] = &[
    k(
        "name",
        "",
        "Names `runs/<name>/`. Default: the file's stem.",
    ),
    k(
        "seed",
        "--seed",
        "Seed of LoRA initialisation, the score head and dropout masks.",
    ),
    k("model", "", "The `[model]` table."),
    k("task", "", "The `[task]` table."),
    k(
        "stages",
        "",
        "The `[stages.NAME]` tables; each has a `kind`.",
    ),
    k(
        "sweep",
        "",
        "Optional grid (or seeded random search) over dotted keys, e.g. \
         `\"stages.train.lora_rank\" = [8, 16]`; one variant per point, shared stages run once.",
    ),
    k(
        "devices",
        "CUDA_VISIBLE_DEVICES",
        "Devices the scheduler may place model stages on, e.g. `[\"cuda:0\", \"cuda:1\"]`. \
         Default: every visible GPU with `device = \"auto\"`, else CPU slots.",
    ),
    k(
        "slurm",
        "",
        "The optional `[slurm]` table: what each array task of `pipeline sweep --submit` \
         asks for.",
    ),
];

const SLURM: &[KeyDoc] = &[
    k(
        "cpus_per_task",
        "",
        "`#SBATCH --cpus-per-task`; the task runs that many threads. Default: 4 (the CPU \
         trainer's shards per micro-batch).",
    ),
    k(
        "mem",
        "",
        "`#SBATCH --mem` per task (`<n>[K|M|G|T]`, MiB without a unit). Default: an \
         estimate for the largest variant (README, \"Running on a cluster\").",
    ),
    k(
        "time",
        "",
        "`#SBATCH --time` per task: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or \
         `D-HH:MM:SS`. Default: none (the partition's limit).",
    ),
];

const MODEL: &[KeyDoc] = &[
    k(
        "preset",
        "",
        "A built-in random-weight model of Qwen2.5-VL's architecture: `tiny`, \
         `qwen2.5-vl-3b`, `qwen2.5-vl-7b`.",
    ),
    k(
        "path",
        "--model",
        "A Hugging Face layout directory: config.json, *.safetensors (+ index), \
         tokenizer.json, preprocessor_config.json.",
    ),
    k(
        "model",
        "--model",
        "A hub id (`Qwen/Qwen2.5-VL-7B-Instruct`; a bare name means the Qwen organisation), \
         taken from the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub`) or the ModelScope \
         cache (`MODELSCOPE_CACHE`); never downloaded. One of `preset`, `path`, `model`.",
    ),
    k(
        "torch_dtype",
        "--torch_dtype",
        "`float32` or `bfloat16` (the frozen base; LoRA and the head stay float32). The CPU \
         computes in float32.",
    ),
    k(
        "device",
        "",
        "`auto` (CUDA when a driver is present, else CPU), `cpu`, `cuda`, `cuda:N`.",
    ),
];

const TASK: &[KeyDoc] = &[
    k("task_type", "--task_type", "`seq_cls` (the only one)."),
    k(
        "num_labels",
        "--num_labels",
        "Number of classes (1 with regression).",
    ),
    k(
        "problem_type",
        "--problem_type",
        "`single_label_classification`, `multi_label_classification` or `regression`. \
         Default: regression when num_labels is 1, else single-label.",
    ),
    k(
        "labels",
        "",
        "Optional class names in index order (written to id2label on export).",
    ),
];

const DATASET: &[KeyDoc] = &[
    KIND,
    NEEDS,
    k(
        "dataset",
        "--dataset",
        "Training rows (JSONL or JSON array): `messages`, `images`, `label`.",
    ),
    k(
        "val_dataset",
        "--val_dataset",
        "Validation rows; no split of the training set is made.",
    ),
    k(
        "max_pixels",
        "MAX_PIXELS",
        "Upper bound on each image's pixels after smart resize (multiples of 28).",
    ),
    k(
        "min_pixels",
        "MIN_PIXELS",
        "Lower bound on each image's pixels after smart resize.",
    ),
    k(
        "max_length",
        "--max_length",
        "Longest token sequence (after image-token expansion).",
    ),
    k(
        "truncation_strategy",
        "--truncation_strategy",
        "What happens to rows longer than max_length: `delete` drops them with a count \
         (ms-swift 4's default), `left` / `right` cut text tokens from that end and keep \
         every image pad, `raise` (or `error`) lists them.",
    ),
    k("system", "--system", "System prompt of the chat template."),
];

const TRAIN: &[KeyDoc] = &[
    KIND,
    NEEDS,
    k(
        "tuner_type",
        "--tuner_type",
        "`lora` (the only one). ms-swift 3's `train_type` is read as the same key.",
    ),
    k(
        "train_type",
        "--train_type",
        "ms-swift 3's name of `tuner_type`: the same key, accepted for older commands.",
    ),
    k(
        "adapter",
        "--adapters",
        "Start from this PEFT adapter directory (ours or an ms-swift checkpoint) instead of \
         a fresh LoRA initialisation.",
    ),
    k("lora_rank", "--lora_rank", "LoRA rank r."),
    k(
        "lora_alpha",
        "--lora_alpha",
        "LoRA alpha; the update is scaled by alpha/r (alpha/√r with use_rslora).",
    ),
    k(
        "lora_dropout",
        "--lora_dropout",
        "Dropout on the LoRA branch's input during training.",
    ),
    k(
        "use_rslora",
        "--use_rslora",
        "Rank-stabilised scaling alpha/√r.",
    ),
    k(
        "target_modules",
        "--target_modules",
        "`all-linear`, a list of module names, or a regex over module paths.",
    ),
    k(
        "freeze_vit",
        "--freeze_vit",
        "Keep the vision tower out of the LoRA targets.",
    ),
    k(
        "freeze_aligner",
        "--freeze_aligner",
        "Keep the vision-language merger out of the LoRA targets.",
    ),
    k(
        "freeze_llm",
        "--freeze_llm",
        "Keep the language model out of the LoRA targets.",
    ),
    k(
        "num_train_epochs",
        "--num_train_epochs",
        "Passes over the training set.",
    ),
    k(
        "max_steps",
        "--max_steps",
        "Optimizer steps; overrides num_train_epochs when > 0.",
    ),
    k(
        "per_device_train_batch_size",
        "--per_device_train_batch_size",
        "Samples per micro-batch on each replica.",
    ),
    k(
        "per_device_eval_batch_size",
        "--per_device_eval_batch_size",
        "Samples per evaluation batch.",
    ),
    k(
        "gradient_accumulation_steps",
        "--gradient_accumulation_steps",
        "Micro-batches per optimizer step.",
    ),
    k("learning_rate", "--learning_rate", "Peak learning rate."),
    k(
        "weight_decay",
        "--weight_decay",
        "AdamW decoupled weight decay.",
    ),
    k("adam_beta1", "--adam_beta1", "AdamW β1."),
    k("adam_beta2", "--adam_beta2", "AdamW β2."),
    k("adam_epsilon", "--adam_epsilon", "AdamW ε."),
    k(
        "max_grad_norm",
        "--max_grad_norm",
        "Clip gradients to this global L2 norm (0: no clipping).",
    ),
    k(
        "lr_scheduler_type",
        "--lr_scheduler_type",
        "`cosine`, `linear` or `constant`, each after a linear warmup.",
    ),
    k(
        "warmup_ratio",
        "--warmup_ratio",
        "Warmup steps as a fraction of max_steps (rounded up).",
    ),
    k(
        "warmup_steps",
        "--warmup_steps",
        "Warmup steps; overrides warmup_ratio when > 0.",
    ),
    k(
        "eval_steps",
        "--eval_steps",
        "Evaluate every N optimizer steps (and at the end). Unset: every save_steps, as ms-swift.",
    ),
    k(
        "save_steps",
        "--save_steps",
        "Write a checkpoint every N optimizer steps.",
    ),
    k(
        "save_total_limit",
        "--save_total_limit",
        "Keep the newest N checkpoints (never deleting the best).",
    ),
    k(
        "logging_steps",
        "--logging_steps",
        "Write a train line to logging.jsonl every N optimizer steps (and at step 1).",
    ),
    k(
        "metric_for_best_model",
        "--metric_for_best_model",
        "`loss` (eval_loss, lower is better) or `acc` (higher is better).",
    ),
    k(
        "data_seed",
        "--data_seed",
        "Seed of the per-epoch shuffle of the training set (42 whatever `seed` is, as \
         ms-swift).",
    ),
    k(
        "dataset_shuffle",
        "--dataset_shuffle",
        "Shuffle the training set once (with data_seed) before training.",
    ),
    k(
        "train_dataloader_shuffle",
        "--train_dataloader_shuffle",
        "Reshuffle the training set every epoch; with both false, file order.",
    ),
    k(
        "attn_impl",
        "--attn_impl",
        "`flash_attn`, `sdpa` (memory-efficient attention) or `eager`; recorded in args.json.",
    ),
    k(
        "dataloader_num_workers",
        "--dataloader_num_workers",
        "Threads that load and prefetch batches; recorded in args.json.",
    ),
    k(
        "model_author",
        "--model_author",
        "Recorded in args.json and the merged export's README.",
    ),
    k(
        "model_name",
        "--model_name",
        "Recorded in args.json and the merged export's README.",
    ),
    k(
        "output_dir",
        "--output_dir",
        "Also copy the stage's artifacts here when it finishes (never over files pipeline \
         did not write).",
    ),
    k(
        "nproc_per_node",
        "NPROC_PER_NODE",
        "Data-parallel replicas, one per device of the pool (on the CPU they share the cores); \
         each takes `per_device_train_batch_size` samples of every micro-batch. At one global \
         batch the result does not depend on it (README \"Data parallel\").",
    ),
    k(
        "gradient_checkpointing",
        "--gradient_checkpointing",
        "Keep only each ViT block's and decoder layer's input in the forward and recompute \
         the layer in backward: less memory, about one more forward of time, the same \
         gradients.",
    ),
];

const EXPORT: &[KeyDoc] = &[
    KIND,
    NEEDS,
    k(
        "checkpoint",
        "--adapters …/checkpoint-N",
        "Which checkpoint of the train stage: `last` or `best`.",
    ),
    k(
        "peft",
        "",
        "Write `peft/`: the PEFT-loadable adapter with the score head.",
    ),
    k(
        "merged",
        "--merge_lora true",
        "Write `merged/`: LoRA folded into the base weights, `score.weight`, HF layout.",
    ),
    k(
        "output_dir",
        "--output_dir",
        "Also place the export here (never overwriting files pipeline did not write).",
    ),
];

const SCORE: &[KeyDoc] = &[
    KIND,
    NEEDS,
    k(
        "split",
        "",
        "`val` or `train`: which split of the dataset stage (ignored with `dataset`).",
    ),
    k(
        "dataset",
        "--val_dataset",
        "Score this dataset file instead (labels optional).",
    ),
    k(
        "checkpoint",
        "--adapters …/checkpoint-N",
        "`last` or `best` checkpoint of the train stage in `needs`.",
    ),
    k(
        "adapter",
        "--adapters",
        "Score with this PEFT adapter directory (e.g. an ms-swift checkpoint).",
    ),
    k(
        "batch_size",
        "--max_batch_size",
        "Samples per forward pass.",
    ),
    k(
        "nproc_per_node",
        "NPROC_PER_NODE",
        "Replicas the batches are spread over, one per device of the pool; the scores do not \
         depend on it.",
    ),
];

/// A default as the document shows it.
fn show_default(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "—".into(),
        Some(serde_json::Value::Array(a)) if a.is_empty() => "`[]`".into(),
        Some(serde_json::Value::String(s)) => format!("`\"{s}\"`"),
        Some(v) => format!("`{v}`"),
    }
}

/// The whole of `docs/EXPERIMENT.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Experiment file reference\n\n\
         Generated from the schema (`src/experiment/reference.rs`); a test fails when the two \
         disagree. Regenerate with `PIPELINE_WRITE_DOCS=1 cargo test --release --lib \
         experiment_reference`.\n\n\
         Keys use ms-swift's flag names, so a `swift sft` command maps onto a file key for \
         key. Unknown keys, wrong types and bad values fail before anything runs with one \
         line naming `file:line:column` and the valid choices (exit status 2). Relative \
         paths resolve against the experiment file's folder; image paths inside a dataset \
         against the dataset file's folder, then the current directory.\n",
    );
    for s in sections() {
        out.push_str(&format!("\n## {}\n\n", s.title));
        if !s.intro.is_empty() {
            out.push_str(&format!("{}\n\n", s.intro));
        }
        out.push_str("| key | ms-swift | default | meaning |\n|---|---|---|---|\n");
        let defaults = (s.defaults)();
        for d in s.keys {
            let swift = if d.swift.is_empty() {
                "—".to_string()
            } else {
                format!("`{}`", d.swift)
            };
            let default = if s.required.contains(&d.key) {
                "required".to_string()
            } else {
                show_default(defaults.get(d.key))
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                d.key, swift, default, d.meaning
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_reference_covers_exactly_the_schema() {
        for s in sections() {
            let documented: Vec<&str> = s.keys.iter().map(|d| d.key).collect();
            let fields = (s.fields)();
            for f in &fields {
                assert!(
                    documented.contains(f),
                    "key `{f}` of {} has no entry in src/experiment/reference.rs: add one \
                     (ms-swift flag, meaning), then regenerate docs/EXPERIMENT.md",
                    s.title
                );
            }
            for d in &documented {
                assert!(
                    fields.contains(d),
                    "src/experiment/reference.rs documents `{d}` in {}, which the schema lacks",
                    s.title
                );
                let n = documented.iter().filter(|k| *k == d).count();
                assert_eq!(n, 1, "`{d}` is documented {n} times in {}", s.title);
            }
        }
    }

    #[test]
    fn experiment_reference_doc_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/EXPERIMENT.md");
        let want = render_markdown();
        if std::env::var_os("PIPELINE_WRITE_DOCS").is_some() {
            std::fs::write(&path, &want).expect("write docs/EXPERIMENT.md");
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "docs/EXPERIMENT.md is stale: run `PIPELINE_WRITE_DOCS=1 cargo test --release \
             --lib experiment_reference`"
        );
    }
}
