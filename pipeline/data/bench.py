"""``python -m pipeline bench data``: decoding and shard-encoding speed."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.imagefolder import load_image_file
from pipeline.data.sample import load_sample_photo
from pipeline.data.shards import encode_image


def bench_data(argv: list[str]) -> int:
    """Images/s per core for decode + resize + crop + encode on ImageNet-sized JPEGs."""
    p = argparse.ArgumentParser(prog="python -m pipeline bench data")
    p.add_argument("--images", type=int, default=200, help="number of synthetic ImageNet-sized JPEGs to time")
    p.add_argument("--size", type=int, nargs="+", default=[256, 227, 128, 64],
                   help="output sides (256 HOG/SIFT/LBP, 227 AlexNet)")
    p.add_argument("--format", default="jpg", choices=["png", "jpg"], help="encoding of the output images")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        base = [load_sample_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket")]
        for i in range(args.images):
            src = Image.fromarray(base[i % len(base)]).resize((500, 375), Image.BICUBIC)
            if i % 2:
                src = src.transpose(Image.FLIP_LEFT_RIGHT)
            arr = np.asarray(src).astype(np.int16) + rng.integers(-3, 4, (375, 500, 3))
            path = Path(tmp, f"img{i:05d}.JPEG")
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
        print(f"bench data: {args.images} JPEGs 500x375, decode + resize + centre crop + encode {args.format}, one process (one core)")
        for size in args.size:
            rates = {}
            for draft in (False, True):
                t = time.perf_counter()
                for path in paths:
                    img, _ = load_image_file(path, size, draft=draft)
                    encode_image(img, args.format)
                rates[draft] = len(paths) / (time.perf_counter() - t)
            print(
                f"  {size:4d}px: full decode {rates[False]:7.1f} images/s | draft decode {rates[True]:7.1f} images/s"
                f" | ratio draft/full {rates[True] / rates[False]:.2f}x"
            )
    return 0
