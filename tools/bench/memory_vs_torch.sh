#!/usr/bin/env bash
# Peak memory of one LoRA training step: `pipeline bench` vs transformers + PEFT with gradient
# checkpointing, side by side on the same random weights.
#
# Workload (the seed's, on the CPU in f32): Qwen2.5-VL-7B widths cut to 2 decoder layers and 4
# ViT blocks (the last one full attention), one 1003520-pixel image (5120 patches, 1280 image
# tokens) + 120 text tokens, LoRA r32 on every LLM and ViT linear, score head trained. The
# weights (4.6 GB) are written once to a temporary directory and read by both sides.
#
#   tools/bench/memory_vs_torch.sh [--layers N] [--vision-blocks M] [--pixels N] [--text N]
#                                  [--grad-ckpt on|off] [--weights DIR] [--keep]
#
# Needs target/release/pipeline (cargo build --release) and python3 with torch, transformers,
# peft and safetensors. Peaks are each process' VmHWM over the train phase (reset when it
# starts); "activations" is that peak minus the resident set at the start (weights, runtime).
# Both processes need ~2x the weights while loading; run one such measurement at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."

layers=2 blocks=4 pixels=1003520 text=120 ckpt=on weights="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2 ;;
    --vision-blocks) blocks=$2; shift 2 ;;
    --pixels) pixels=$2; shift 2 ;;
    --text) text=$2; shift 2 ;;
    --grad-ckpt) ckpt=$2; shift 2 ;;
    --weights) weights=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$ckpt" in on|off) ;; *) echo "--grad-ckpt $ckpt (valid: on, off)" >&2; exit 2 ;; esac
bin=target/release/pipeline
[ -x "$bin" ] || { echo "$bin not found: run cargo build --release" >&2; exit 2; }

work=$(mktemp -d)
cleanup() { if [ "$keep" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
if [ -z "$weights" ]; then
  weights=$work/model
  python3 tools/bench/torch_baseline.py --size 7b --device cpu --layers "$layers" \
    --vision-blocks "$blocks" --save-weights "$weights" >"$work/save.json"
fi

torch_flag=""
[ "$ckpt" = on ] && torch_flag=--grad-ckpt
"$bin" bench --model "$weights" --device cpu --pixels "$pixels" --text "$text" --rank 32 \
  --mode train --steps 1 --warmup 0 --grad-ckpt "$ckpt" >"$work/ours.jsonl" 2>"$work/ours.log" ||
  { cat "$work/ours.log" >&2; exit 1; }
python3 tools/bench/torch_baseline.py --weights "$weights" --device cpu --pixels "$pixels" \
  --text "$text" --rank 32 --steps 1 --warmup 0 --train-only $torch_flag >"$work/torch.json" \
  2>"$work/torch.log" || { tail -20 "$work/torch.log" >&2; exit 1; }

python3 - "$work/ours.jsonl" "$work/torch.json" "$ckpt" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')][-1]
text = open(sys.argv[2]).read()
torch = json.loads(text[text.index('{'):])
gb = lambda b: b / 1e9
w = ours['workload']
print(f"workload: {w['text_layers']} decoder layers, {w['vision_blocks']} ViT blocks (full attention: "
      f"{w['full_attention_blocks']}), {w['vision_patches']} patches, {w['seq_tokens']} tokens, "
      f"LoRA r{w['lora_rank']}, f32 on the CPU, gradient checkpointing {sys.argv[3]} on both sides")
rows = [('pipeline', ours['peak_mem_bytes'], ours['weights_mem_bytes'], ours['step_ms'] / 1e3),
        ('transformers+PEFT', torch['peak_rss_bytes'], torch['rss_before_bytes'], torch['train_step_s'])]
print(f"{'':<20}{'peak RSS':>10}{'at start':>10}{'activations':>13}{'step s':>9}")
for name, peak, start, secs in rows:
    print(f"{name:<20}{gb(peak):>8.2f}GB{gb(start):>8.2f}GB{gb(peak - start):>11.2f}GB{secs:>9.1f}")
(_, op, os_, _), (_, tp, ts, _) = rows
print(f"ratio pipeline / torch: peak {op / tp:.2f}x, activations {(op - os_) / (tp - ts):.2f}x")
PY
