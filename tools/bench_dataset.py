#!/usr/bin/env python3
"""Python baseline for the dataset-stage benchmark (examples/bench_dataset.rs).

What ms-swift does per image with MAX_PIXELS set: PIL open + .convert('RGB'), then
qwen-vl-utils' fetch_image (smart_resize + PIL BICUBIC resize). Single process, as in
SWIFT's preprocessing of one dataset shard. Prints `python: N images/s`.

Usage: python3 tools/bench_dataset.py [DATASET_JSONL ...] [--max-pixels N] [--repeat R]
"""
import argparse
import json
import os
import time

from PIL import Image
from qwen_vl_utils import fetch_image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", default=[
        os.path.join(ROOT, "datasets/shapes11/train.jsonl"),
        os.path.join(ROOT, "datasets/shapes11/test.jsonl")])
    ap.add_argument("--max-pixels", type=int, default=1003520)
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    paths = []
    for ds in args.datasets:
        folder = os.path.dirname(ds)
        for line in open(ds):
            if line.strip():
                paths += [os.path.join(folder, p) for p in json.loads(line)["images"]]
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for p in paths:
            img = Image.open(p).convert("RGB")
            fetch_image({"image": img, "min_pixels": args.min_pixels, "max_pixels": args.max_pixels})
        best = min(best, time.perf_counter() - t0)
    print(f"python: {len(paths) / best:.1f} images/s ({len(paths)} images, best of {args.repeat}: {best:.3f} s)")


if __name__ == "__main__":
    main()
