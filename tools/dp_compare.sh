#!/usr/bin/env bash
# experiments/dp-tiny.toml on 2 replicas × 4 and on 1 × 8 (one global batch), each in its own
# run folder: the losses, eval metrics, scores and adapter bytes must be equal. Then a run on
# 2 replicas stopped after step 4 finishes on 1 from checkpoint-4, to the same adapter.
#
#   cargo build --release && tools/dp_compare.sh        (PIPELINE=path/to/pipeline to pick one)
#
# Prints one line per check and exits 1 at the first difference.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${PIPELINE:-$root/target/release/pipeline}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s#\.\./datasets/#$root/datasets/#" "$root/experiments/dp-tiny.toml" > "$work/two.toml"
sed -e 's/^nproc_per_node = 2$/nproc_per_node = 1/' \
    -e 's/^per_device_train_batch_size = 4$/per_device_train_batch_size = 8/' \
    "$work/two.toml" > "$work/one.toml"
grep -q '^per_device_train_batch_size = 8$' "$work/one.toml"

cd "$work"
"$bin" --runs-dir two run two.toml > two.log 2>&1
echo "2 replicas × 4: $(grep -c '"loss"' two/dp-tiny/train/logging.jsonl) logged steps"
# One key for both: the 1-replica file is a cache hit in the 2-replica run folder.
"$bin" --runs-dir two plan one.toml | tee plan.txt | grep -E '^\s*train' || true
grep -Eq 'train.*cached' plan.txt || { echo "expected the 1 × 8 training to be cached"; exit 1; }
"$bin" --runs-dir one run one.toml > one.log 2>&1
echo "1 replica × 8: $(grep -c '"loss"' one/dp-tiny/train/logging.jsonl) logged steps"

python3 - two one <<'PY'
import json, sys
a, b = sys.argv[1:]
TIME = ("elapsed_time", "remaining_time", "train_speed(s/it)", "train_runtime",
        "train_samples_per_second", "train_steps_per_second", "eval_runtime",
        "eval_samples_per_second", "eval_steps_per_second")
def lines(d):
    out = []
    for l in open(f"{d}/dp-tiny/train/logging.jsonl"):
        j = json.loads(l)
        out.append({k: v for k, v in j.items() if k not in TIME})
    return out
la, lb = lines(a), lines(b)
assert la == lb, "logging.jsonl differs"
evals = [l["eval_loss"] for l in la if "eval_loss" in l]
print(f"logging.jsonl: equal ({len(la)} lines; eval_loss {evals})")
for f in ["train/adapter/adapter_model.safetensors", "train/metrics.json", "score/scores.jsonl"]:
    x, y = (open(f"{d}/dp-tiny/{f}", "rb").read() for d in (a, b))
    assert x == y, f"{f} differs"
    print(f"{f}: {len(x)} bytes, equal")
m = json.load(open(f"{a}/dp-tiny/score/metrics.json"))
print(f"score: acc {m.get('acc')}")
PY

# Stopped on 2 replicas after step 4, finished on 1.
PIPELINE_TRAIN_INTERRUPT_AFTER_STEPS=4 "$bin" --runs-dir cut run two.toml > cut.log 2>&1 && {
    echo "expected the interrupted run to fail"; exit 1; }
"$bin" --runs-dir cut run one.toml > resumed.log 2>&1
grep -o 'resumed from checkpoint-[0-9]*' resumed.log
cmp cut/dp-tiny/train/adapter/adapter_model.safetensors two/dp-tiny/train/adapter/adapter_model.safetensors
echo "resumed on 1 replica: adapter equal to the uninterrupted 2-replica run"
