#!/usr/bin/env bash
# The GPU check, ONE call on the device machine (an H100/H200), from the repository root:
#
#   run(command="bash tools/device_check.sh", carry=[".device"], timeout_s=600)
#
# after `bash tools/device_prep.sh` here. Runs, each under its own time cap so the whole stays
# under ~9.5 minutes:
#   1. the CUDA parity tests (tests/it/cuda_parity.rs) of the tuned build (plain if absent)
#   2. our bench, 7B workload, bf16, train + eval (examples/bench), same build
#   3. tools/bench/torch_baseline.py --size 7b --device cuda, without and with --grad-ckpt
#   4. data-parallel scaling: our train step at nproc_per_node 1/2/4/8 (as many as there are
#      GPUs; with one GPU, 2 replicas on it), and the tests/it/cuda_dp.rs tests
#   5. if time is left: our bench with the other build, then its parity tests
# Writes $OUT/results.jsonl (every JSON line, tagged with "source"), summary.txt (the ratio
# table, also printed last), parity.log, bench.log, torch.log, gpu.txt.
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
W=$(mktemp -d)
START=$SECONDS
BUDGET=${BUDGET:-560}
left() { echo $((BUDGET - (SECONDS - START))); }
# cap SECONDS: the smaller of SECONDS and the time left (at least 1).
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"; }
note() { echo "[$((SECONDS - START))s] $*" | tee -a "$OUT/summary.txt"; }

for f in .device/*.gz; do
    [ -e "$f" ] || { echo "no .device/*.gz: run tools/device_prep.sh and carry .device" >&2; exit 2; }
    b="$W/$(basename "$f" .gz)"
    gunzip -c "$f" > "$b" && chmod +x "$b"
done
note "commit $(cat .device/COMMIT 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

parity() {
    local v=$1 t=$2
    [ -x "$W/cuda_parity-$v" ] || return 0
    echo "== cuda_parity ($v)" >> "$OUT/parity.log"
    timeout "$(cap "$t")" "$W/cuda_parity-$v" cuda_parity --include-ignored --test-threads=1 --nocapture \
        >> "$OUT/parity.log" 2>&1
    note "parity $v: rc=$? ($(grep '^test result' "$OUT/parity.log" | tail -1))"
}

bench() {
    local v=$1 t=$2
    [ -x "$W/bench-$v" ] || return 0
    echo "== bench ($v)" >> "$OUT/bench.log"
    timeout "$(cap "$t")" "$W/bench-$v" --preset qwen2.5-vl-7b --device cuda --dtype bfloat16 \
        --mode both --steps 5 --warmup 2 > "$W/ours_$v.jsonl" 2>> "$OUT/bench.log"
    note "bench $v: rc=$? $(wc -l < "$W/ours_$v.jsonl") result line(s)"
}

# Data parallel: the 7B train step on 1, 2, 4, 8 replicas, one GPU each while there are GPUs
# (two on cuda:0 when there is one), one JSON line each with "replicas" and samples_per_s.
dp_scaling() {
    local v=$1 t=$2 gpus n devs
    [ -x "$W/bench-$v" ] || return 0
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    echo "== dp scaling ($v, $gpus GPU(s))" >> "$OUT/bench.log"
    for n in 1 2 4 8; do
        devs=""
        if [ "$n" -gt "$gpus" ]; then
            [ "$gpus" -eq 1 ] && [ "$n" -eq 2 ] || continue
            devs="--replica-devices cuda:0,cuda:0"
        fi
        timeout "$(cap "$t")" "$W/bench-$v" --preset qwen2.5-vl-7b --device cuda --dtype bfloat16 \
            --mode train --steps 3 --warmup 1 --nproc-per-node "$n" $devs \
            >> "$W/dp_$v.jsonl" 2>> "$OUT/bench.log"
        note "dp $v: $n replica(s)${devs:+ on cuda:0}: rc=$?"
    done
    echo "== cuda_dp ($v)" >> "$OUT/parity.log"
    timeout "$(cap 90)" "$W/cuda_parity-$v" cuda_dp --include-ignored --test-threads=1 --nocapture \
        >> "$OUT/parity.log" 2>&1
    note "cuda_dp $v: rc=$? ($(grep '^test result' "$OUT/parity.log" | tail -1))"
    python3 - "$W/dp_$v.jsonl" "$OUT/results.jsonl" "$v" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
with open(sys.argv[2], "a") as f:
    for r in rows:
        f.write(json.dumps({**r, "source": f"pipeline-dp-{sys.argv[3]}"}) + "\n")
base = next((r["samples_per_s"] for r in rows if r["replicas"] == 1), None)
for r in rows:
    scale = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
    print(f"dp: {r['replicas']} replica(s) on {r['device']}: {r['step_ms']:.0f} ms/step, "
          f"{r['samples_per_s']:.2f} samples/s ({scale} of 1), peak {r['peak_mem_bytes']}")
PY
}

torch_run() {
    local label=$1 t=$2; shift 2
    echo "== torch_baseline $*" >> "$OUT/torch.log"
    PYTHONUNBUFFERED=1 timeout "$(cap "$t")" python3 tools/bench/torch_baseline.py --size 7b \
        --device cuda "$@" > "$W/$label.json" 2>> "$OUT/torch.log"
    note "torch $label: rc=$?"
}

# The tuned build first when it was built (tools/device_prep.sh skips it if it fails to build).
first=tuned second=plain
[ -x "$W/bench-tuned" ] || { first=plain; second=none; }
parity "$first" 120
bench "$first" 240
dp_scaling "$first" 150
torch_run torch 120
torch_run torch_ckpt 120 --grad-ckpt
[ "$(left)" -gt 150 ] && bench "$second" 200
[ "$(left)" -gt 60 ] && parity "$second" 90

note "done in $((SECONDS - START))s"
python3 tools/bench/compare.py "$W" "$OUT" | tee -a "$OUT/summary.txt"
