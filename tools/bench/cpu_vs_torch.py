#!/usr/bin/env python3
"""Ours vs transformers + PEFT on the CPU, side by side in one run, and the dataset stage vs
qwen-vl-utils + PIL. Prints one table; every raw line goes to --out (JSON lines).

  cargo build --release --bin pipeline --example bench_dataset
  python3 tools/bench/cpu_vs_torch.py [--rounds 5] [--only tiny,cut,dataset] [--grad-ckpt on|off]
                                      [--threads N] [--lock FILE] [--out FILE]

Workloads (both sides build the same model from the same shapes, random weights, f32):
  tiny     the `tiny` preset, one 112x112 image (64 patches) + 40 text tokens, LoRA r16
  cut      Qwen2.5-VL-7B widths cut to 2 LLM layers + 4 ViT blocks, one 1003520-pixel image
           (5120 patches, 1280 image tokens) + 120 text tokens, LoRA r32 (~16 GB of RAM)
  dataset  the dataset stage on datasets/shapes11 at max_pixels 1003520 vs PIL +
           qwen-vl-utils (`examples/bench_dataset`, which runs tools/bench_dataset.py)

Train = one optimizer step per sample (ours: the trainer's step as `pipeline bench` times
it; torch: forward, backward, clip_grad_norm_, AdamW); eval = one eval forward. Each round
runs both sides as fresh processes, back to back, the order alternating between rounds; the
table shows medians over rounds and the median of the per-round ratios (pairing keeps the
ratio meaningful while a shared machine's speed drifts). --lock FILE runs every command under
`flock FILE` so that heavy runs of several users do not overlap.
"""
import argparse, json, os, statistics, subprocess, sys, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
WORKLOADS = {
    'tiny': dict(ours=['--preset', 'tiny', '--pixels', '12544', '--text', '40', '--rank', '16'],
                 torch=['--size', 'tiny', '--pixels', '12544', '--text', '40', '--rank', '16'],
                 steps=30, warmup=3),
    'cut': dict(ours=['--preset', 'qwen2.5-vl-7b', '--layers', '2', '--vision-blocks', '4',
                      '--pixels', '1003520', '--text', '120', '--rank', '32'],
                torch=['--size', '7b', '--layers', '2', '--vision-blocks', '4',
                       '--pixels', '1003520', '--text', '120', '--rank', '32'],
                steps=1, warmup=1),
}


def run(cmd, lock):
    if lock:
        cmd = ['flock', lock] + cmd
    t = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f'failed ({p.returncode}): {" ".join(cmd)}\n{p.stderr[-2000:]}')
    return p.stdout, time.time() - t


def ours(name, w, a):
    cmd = ['env', f'RAYON_NUM_THREADS={a.threads}'] if a.threads else []
    cmd += [a.bin, 'bench', '--device', 'cpu', '--steps', str(w['steps']), '--warmup', str(w['warmup']),
            '--grad-ckpt', a.grad_ckpt] + w['ours']
    out, _ = run(cmd, a.lock)
    lines = [json.loads(l) for l in out.splitlines() if l.startswith('{')]
    by = {l['mode']: l for l in lines}
    return dict(train=by['train']['samples_per_s'], eval=by['eval']['samples_per_s'],
                cpu_train=by['train'].get('cpu_s_per_step'), cpu_eval=by['eval'].get('cpu_s_per_step'), raw=lines)


def torch(name, w, a):
    cmd = [sys.executable, os.path.join(ROOT, 'tools/bench/torch_baseline.py'), '--device', 'cpu',
           '--steps', str(w['steps']), '--warmup', str(w['warmup'])] + w['torch']
    if a.threads:
        cmd += ['--threads', str(a.threads)]
    if a.grad_ckpt == 'on':
        cmd += ['--grad-ckpt']
    out, _ = run(cmd, a.lock)
    d = json.loads(out[out.index('{'):])
    return dict(train=d['train_samples_per_s'], eval=d['eval_samples_per_s'],
                cpu_train=d.get('train_cpu_s_per_step'), cpu_eval=d.get('eval_cpu_s_per_step'), raw=[d])


def dataset(a):
    exe = os.path.join(ROOT, 'target/release/examples/bench_dataset')
    out, _ = run([exe, '--repeat', '3'], a.lock)
    def rate(key):
        line = next((l for l in out.splitlines() if l.startswith(key)), None)
        if line is None:
            sys.exit(f'bench_dataset printed no "{key}" line (python baseline: pillow, qwen-vl-utils, '
                     f'torchvision):\n{out[-2000:]}')
        return float(line.split(':')[1].split()[0])
    return dict(ours=rate('rust dataset stage'), torch=rate('python'), resize=rate('rust decode+resize'), raw=out)


def load():
    return ' '.join(open('/proc/loadavg').read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--only', default='tiny,cut,dataset')
    ap.add_argument('--bin', default=os.path.join(ROOT, 'target/release/pipeline'))
    ap.add_argument('--lock', default=None, help='run every command under flock FILE')
    ap.add_argument('--threads', type=int, default=0,
                    help='threads of both sides (RAYON_NUM_THREADS, torch.set_num_threads); default: each its own (all cores)')
    ap.add_argument('--grad-ckpt', choices=['on', 'off'], default='on',
                    help='gradient checkpointing on both sides (ms-swift default: on)')
    ap.add_argument('--out', default=None, help='JSON lines of every run')
    a = ap.parse_args()
    only = a.only.split(',')
    log = open(a.out, 'a') if a.out else None
    print(f'{os.cpu_count()} cpus, load average at start {load()}, {a.rounds} rounds, '
          f'gradient checkpointing {a.grad_ckpt} on both sides', flush=True)
    rows = []
    for name in [n for n in ('tiny', 'cut') if n in only]:
        w = WORKLOADS[name]
        got = {'ours': [], 'torch': []}
        for r in range(a.rounds):
            order = [('ours', ours), ('torch', torch)]
            for side, fn in (order if r % 2 == 0 else order[::-1]):
                res = fn(name, w, a)
                got[side].append(res)
                if log:
                    for raw in res['raw']:
                        log.write(json.dumps(dict(raw, source=side, workload=name, round=r)) + '\n')
            print(f'  {name} round {r + 1}: ours train {got["ours"][-1]["train"]:.4g}/s eval {got["ours"][-1]["eval"]:.4g}/s, '
                  f'torch train {got["torch"][-1]["train"]:.4g}/s eval {got["torch"][-1]["eval"]:.4g}/s  (load {load()})',
                  flush=True)
        for mode in ('train', 'eval'):
            o = [x[mode] for x in got['ours']]
            t = [x[mode] for x in got['torch']]
            ratios = [x / y for x, y in zip(o, t)]
            cpu = lambda xs: statistics.median(xs) if all(x is not None for x in xs) else None
            rows.append((name, mode, statistics.median(o), statistics.median(t), statistics.median(ratios),
                         min(ratios), max(ratios), cpu([x['cpu_' + mode] for x in got['ours']]),
                         cpu([x['cpu_' + mode] for x in got['torch']])))
    if 'dataset' in only:
        got = []
        for r in range(a.rounds):
            d = dataset(a)
            got.append(d)
            if log:
                log.write(json.dumps(dict(source='dataset', round=r, ours=d['ours'], python=d['torch'], resize=d['resize'])) + '\n')
            print(f'  dataset round {r + 1}: stage {d["ours"]:.0f} img/s, python {d["torch"]:.0f} img/s  (load {load()})', flush=True)
        ratios = [d['ours'] / d['torch'] for d in got]
        rows.append(('dataset', 'stage', statistics.median([d['ours'] for d in got]),
                     statistics.median([d['torch'] for d in got]), statistics.median(ratios), min(ratios), max(ratios),
                     None, None))
    print(f'load average at end {load()}')
    print(f'threads: {a.threads or "each side its default"}; samples (images) per second, median of rounds;')
    print('ratio: median of the per-round ratios ours/baseline; CPU: process CPU seconds per step')
    print(f'{"workload":<9}{"mode":<7}{"ours/s":>10}{"base/s":>10}{"ratio":>8}{"(min-max)":>13}'
          f'{"CPU ours":>10}{"CPU base":>10}')
    fmt = lambda x: f'{x:>10.3g}' if x is not None else f'{"-":>10}'
    for name, mode, o, t, r, lo, hi, co, ct in rows:
        print(f'{name:<9}{mode:<7}{o:>10.4g}{t:>10.4g}{r:>7.2f}x{f"({lo:.2f}-{hi:.2f})":>13}{fmt(co)}{fmt(ct)}')


if __name__ == '__main__':
    main()
