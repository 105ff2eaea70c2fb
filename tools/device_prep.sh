#!/usr/bin/env bash
# Build, here (the development machine), everything tools/device_check.sh runs on the GPU
# machine, and put it in .device/ (git-ignored through .git/info/exclude; carried with
# `carry: [".device"]`). Two variants: `plain` (the default build) and `tuned`
# (`--features cuda-tuned`: CUDA autotune + fusion). Binaries are stripped and gzipped
# (~7 MB each) to stay far under the 64 MiB a device call may carry.
#
#   bash tools/device_prep.sh            # both variants
#   VARIANTS=plain bash tools/device_prep.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
mkdir -p .device
rm -f .device/*.gz
for variant in ${VARIANTS:-plain tuned}; do
    features=()
    [ "$variant" = tuned ] && features=(--features cuda-tuned)
    if ! cargo build --release "${features[@]}" --example bench; then
        echo "warning: the $variant build failed; the device check runs without it" >&2
        continue
    fi
    cp target/release/examples/bench ".device/bench-$variant"
    # The test binary's path carries a hash: ask cargo for it.
    test_bin=$(cargo test --release "${features[@]}" --test it --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    d = json.loads(l)
    if d.get("reason") == "compiler-artifact" and d["target"]["name"] == "it" and d.get("executable"):
        print(d["executable"])')
    cp "$test_bin" ".device/cuda_parity-$variant"
done
for f in .device/bench-* .device/cuda_parity-*; do
    [ "${f%.gz}" = "$f" ] || continue
    strip "$f"
    gzip -f "$f"
done
git rev-parse HEAD > .device/COMMIT
ls -la .device
echo "carry .device; run: bash tools/device_check.sh"
