#!/usr/bin/env python3
"""Merge the device check's raw outputs into one JSON-lines file and print the ratios.

  python3 tools/bench/compare.py WORKDIR OUT

Reads WORKDIR/ours_<variant>.jsonl (examples/bench lines, one per mode) and
WORKDIR/torch<suffix>.json (tools/bench/torch_baseline.py output); writes OUT/results.jsonl
(every line tagged with "source") and prints the ratios ours / torch:
train samples/s, eval samples/s, peak memory, and MFU of both (torch's MFU uses our model-FLOP
count of the same workload, so the two are on one scale)."""
import glob, json, os, sys

work, out = sys.argv[1], sys.argv[2]
lines = []
ours = {}  # (variant, mode) -> line
for path in sorted(glob.glob(os.path.join(work, 'ours_*.jsonl'))):
    variant = os.path.basename(path)[len('ours_'):-len('.jsonl')]
    for raw in open(path):
        raw = raw.strip()
        if not raw.startswith('{'):
            continue
        d = json.loads(raw)
        d['source'] = f'pipeline-{variant}'
        ours[(variant, d['mode'])] = d
        lines.append(d)
torch = {}  # label -> dict
for path in sorted(glob.glob(os.path.join(work, 'torch*.json'))):
    label = os.path.basename(path)[:-len('.json')]
    text = open(path).read()
    try:
        d = json.loads(text[text.index('{'):])
    except ValueError:
        d = {'error': text[-500:]}
    d['source'] = label
    torch[label] = d
    lines.append(d)
with open(os.path.join(out, 'results.jsonl'), 'a') as f:
    for d in lines:
        f.write(json.dumps(d) + '\n')

PEAK = 790e12
def fmt(x, spec='.3f'):
    return 'n/a' if x is None else format(x, spec)
def ratio(a, b):
    return None if a is None or not b else a / b

rows = []
for (variant, mode), d in sorted(ours.items()):
    for label, t in sorted(torch.items()):
        if 'error' in t:
            continue
        if mode == 'train':
            tsps = t.get('train_samples_per_s')
            tmem = t['peak_gib'] * 2**30 if t.get('peak_gib') is not None else None
        else:
            tsps = t.get('eval_samples_per_s')
            tmem = None  # the baseline reports its peak for the train phase only
        tmfu = tsps * d['flops_per_sample'] / PEAK if tsps and d.get('mfu') is not None else None
        rows.append((variant, mode, label, d['samples_per_s'], tsps,
                     ratio(d['samples_per_s'], tsps), d.get('peak_mem_bytes'), tmem,
                     ratio(d.get('peak_mem_bytes'), tmem), d.get('mfu'), tmfu))
print(f"{'ours':<8}{'mode':<7}{'vs':<12}{'ours/s':>9}{'torch/s':>9}{'speed':>8}"
      f"{'ours GiB':>10}{'torch GiB':>10}{'mem':>7}{'MFU ours':>10}{'MFU torch':>10}")
for v, m, l, a, b, r, ma, mb, mr, fa, fb in rows:
    gib = lambda x: None if x is None else x / 2**30
    print(f"{v:<8}{m:<7}{l:<12}{fmt(a):>9}{fmt(b):>9}{fmt(r, '.2f'):>8}{fmt(gib(ma), '.1f'):>10}"
          f"{fmt(gib(mb), '.1f'):>10}{fmt(mr, '.2f'):>7}{fmt(fa, '.3f'):>10}{fmt(fb, '.3f'):>10}")
for label, t in sorted(torch.items()):
    if 'error' in t:
        print(f'{label}: FAILED (no JSON on stdout; see torch.log): {t["error"][-200:]}')
for (variant, mode), d in sorted(ours.items()):
    if d.get('loss') is not None:
        print(f'pipeline-{variant} train loss after the timed steps: {d["loss"]:.4f}')
if not ours:
    print('pipeline bench: no result (see bench.log)')
