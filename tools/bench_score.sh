#!/usr/bin/env bash
# Scoring throughput on the CPU: the score stage (tiny preset, LoRA r=32 on every LLM and ViT
# linear as the baseline, shapes11 val split = 220 samples at max_pixels 12544 → one 112×112
# image = 16 image tokens, ~106 tokens per sample) against the PyTorch eval forward of
# tools/bench/torch_baseline.py on the same shapes (transformers + PEFT, batch 1).
#
#   cargo build --release && tools/bench_score.sh [batch_size]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bs="${1:-1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<TOML
name = "bench-score"
[model]
preset = "tiny"
torch_dtype = "float32"
device = "cpu"
[task]
num_labels = 11
[stages.data]
kind = "dataset"
dataset = "$root/datasets/shapes11/train.jsonl"
val_dataset = "$root/datasets/shapes11/test.jsonl"
max_pixels = 12544
[stages.train]
kind = "train"
needs = ["data"]
lora_rank = 32
lora_alpha = 32
target_modules = "all-linear"
freeze_vit = false
max_steps = 1
[stages.score]
kind = "score"
needs = ["data", "train"]
batch_size = $bs
TOML
(cd "$work" && "$root/target/release/pipeline" run bench.toml >/dev/null 2>&1)
python3 - "$work/runs/bench-score/score/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"bench": "score_stage", "samples": m["num_samples"], **m["runtime"]}))
PY
python3 "$root/tools/bench/torch_baseline.py" --size tiny --device cpu \
  --pixels 12544 --text 40 --steps 20 2>/dev/null \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"bench": "torch_eval_forward", "seq_tokens": d["seq_tokens"], "eval_samples_per_s": d["eval_samples_per_s"], "threads": d["threads"]}))'
