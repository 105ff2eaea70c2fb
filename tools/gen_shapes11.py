#!/usr/bin/env python3
"""Generate datasets/shapes11: the bundled 11-class shape dataset (SWIFT seq_cls format).

Deterministic (numpy seed 11; Pillow >= 10, qwen-vl-utils 0.0.14). Usage: python3 tools/gen_shapes11.py [OUT_DIR]

Design: a tiny *random* Qwen2.5-VL with LoRA only
learns what random features expose, so shapes are CENTRED, LARGE and roughly UPRIGHT
(small jitter in position, size and rotation), drawn in a random light colour on a
random dark background (colour carries no class information). Most images are 112-160 px
squares (so max_pixels = 12544 resizes them to about 112x112); a few are tiny (below
min_pixels) or huge (above max_pixels 1003520), and a few are not square. Files are RGB
PNG, RGBA PNG (background half transparent: loaders must drop alpha, not composite),
grayscale PNG and JPEG. Prompts vary; a few rows have no <image> tag (SWIFT prepends it).
"""

import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from qwen_vl_utils import smart_resize

CLASSES = ["circle", "triangle", "square", "pentagon", "hexagon", "heptagon", "octagon",
           "star", "cross", "ring", "x"]
PER_CLASS = {"train": 60, "test": 20}
PROMPTS = [
    "<image>What shape is shown in the image?",
    "<image>\nWhich of the 11 shapes is this?",
    "Classify the shape in this picture: <image>",
    "Identify the geometric figure.<image>",
    "<image>Name the shape.",
    "Look at <image> and tell me which shape it contains.",
]
UNTAGGED = "What shape is this?"  # SWIFT prepends the missing <image> tag


def regular(n, cx, cy, r, rot):
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def rotated(points, cx, cy, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def plus(r, arm):
    """A plus sign centred at the origin: arms of half-width `arm`, reach `r`."""
    return [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r),
            (-arm, r), (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]


def draw_shape(img, cls, rng):
    w, h = img.size
    d = ImageDraw.Draw(img)
    side = min(w, h)
    r = rng.uniform(0.34, 0.42) * side
    cx = w / 2 + rng.uniform(-0.04, 0.04) * side
    cy = h / 2 + rng.uniform(-0.04, 0.04) * side
    jitter = math.radians(rng.uniform(-8, 8))
    col = tuple(int(v) for v in rng.integers(140, 256, 3))
    name = CLASSES[cls]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif name in ("triangle", "square", "pentagon", "hexagon", "heptagon", "octagon"):
        n = CLASSES.index(name) + 2
        up = -math.pi / 2 + (math.pi / n if n % 2 == 0 else 0.0)  # vertex up / flat top
        d.polygon(regular(n, cx, cy, r, up + jitter), fill=col)
    elif name == "star":
        pts = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + jitter + math.pi * k / 5),
                cy + (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + jitter + math.pi * k / 5))
               for k in range(10)]
        d.polygon(pts, fill=col)
    elif name == "cross":
        d.polygon(rotated(plus(r, 0.24 * r), cx, cy, jitter), fill=col)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=max(3, int(0.22 * r)))
    else:  # x: a plus turned by 45 degrees, thinner arms
        d.polygon(rotated(plus(r, 0.16 * r), cx, cy, math.pi / 4 + jitter), fill=col)


def image_size(rng, i):
    """Mostly 112-160 px squares; every 37th tiny, every 101st huge, every 13th not square."""
    if i % 101 == 50:
        return 1200, 1000  # > max_pixels 1003520
    if i % 37 == 20:
        return (40, 50) if i % 2 else (48, 44)  # < min_pixels 3136
    s = int(rng.integers(112, 161))
    while smart_resize(s, s, 28, 3136, 12544) != (112, 112):  # 130, 137, ... round down to 84
        s = int(rng.integers(112, 161))
    if i % 13 == 6:
        return s, int(s * rng.uniform(0.8, 0.95))
    return s, s


def make_split(split, rng, out_dir):
    rows = []
    order = [c for c in range(len(CLASSES)) for _ in range(PER_CLASS[split])]
    rng.shuffle(order)
    for i, cls in enumerate(order):
        w, h = image_size(rng, i)
        bg = tuple(int(v) for v in rng.integers(0, 90, 3))
        img = Image.new("RGB", (w, h), bg)
        draw_shape(img, cls, rng)
        kind = ["rgb", "rgb", "rgb", "rgb", "rgb", "rgb", "rgb", "rgba", "gray", "jpeg"][i % 10]
        base = f"images/{split}_{i:04d}"
        if kind == "jpeg":
            path = base + ".jpg"
            img.save(os.path.join(out_dir, path), quality=90)
        elif kind == "gray":
            path = base + ".png"
            img.convert("L").save(os.path.join(out_dir, path))
        elif kind == "rgba":
            path = base + ".png"
            alpha = Image.new("L", (w, h), 128)
            shape_mask = Image.eval(img.convert("L"), lambda v: 255 if v > 100 else 0)
            alpha.paste(255, mask=shape_mask)
            rgba = img.copy()
            rgba.putalpha(alpha)
            rgba.save(os.path.join(out_dir, path))
        else:
            path = base + ".png"
            img.save(os.path.join(out_dir, path), optimize=True)
        prompt = UNTAGGED if i % 20 == 7 else PROMPTS[int(rng.integers(len(PROMPTS)))]
        rows.append({"messages": [{"role": "user", "content": prompt}], "images": [path], "label": cls})
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def main():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "datasets", "shapes11")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = np.random.default_rng(11)
    for split in ("train", "test"):
        rows = make_split(split, rng, out_dir)
        print(f"{split}: {len(rows)} rows")


if __name__ == "__main__":
    main()
