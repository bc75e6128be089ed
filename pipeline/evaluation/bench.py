"""``python -m pipeline bench evaluate``: throughput of the evaluation
metrics (normalised error, PSNR, SSIM, mean pairwise distance, bootstrap
interval) on random images, against a plain numpy pass over the same data.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.evaluation.metrics import (
    images_nchw, mean_pairwise_distance, normalized_errors, psnr_per_image, ssim_per_image, summarize,
)


def bench_evaluate(argv: list[str]) -> int:
    """``python -m pipeline bench evaluate``: throughput of the metrics on random images.

    Prints images/s for the normalised error (with N), PSNR, SSIM and the
    mean pairwise distance, and the ratio of SSIM time to a plain numpy
    squared-error pass over the same data (the reference, measured here).
    """
    ap = argparse.ArgumentParser(prog="python -m pipeline bench evaluate")
    ap.add_argument("--n", type=int, default=256, help="number of synthetic images")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--rec-size", type=int, default=None, help="reconstruction size (default: --size / 2)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rs = a.rec_size or max(8, a.size // 2)
    x = rng.integers(0, 256, (a.n, a.size, a.size, 3), dtype=np.uint8)
    r = rng.uniform(0, 255, (a.n, 3, rs, rs)).astype(np.float32)

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    normalized_errors(x[:4], r[:4]), psnr_per_image(x[:2], r[:2]), ssim_per_image(x[:2], r[:2])  # warm-up, imports
    t_ref = timed(lambda: ((x.astype(np.float32) - x.astype(np.float32)[::-1]) ** 2).sum())
    t_norm = timed(lambda: mean_pairwise_distance(images_nchw(x)))
    t_err = timed(lambda: normalized_errors(x, r))
    t_psnr = timed(lambda: psnr_per_image(x, r))
    t_ssim = timed(lambda: ssim_per_image(x, r))
    t_boot = timed(lambda: summarize(rng.random(a.n)))
    print(f"{a.n} images {a.size}x{a.size}, reconstructions {rs}x{rs}")
    for name, t in [("reference: numpy squared error", t_ref), ("mean pairwise distance (N)", t_norm),
                    ("normalised error incl. N", t_err), ("PSNR", t_psnr), ("SSIM", t_ssim),
                    ("bootstrap CI (10k)", t_boot)]:
        print(f"  {name:34s} {t * 1e3:9.1f} ms  {a.n / t:10.0f} images/s  x{t / t_ref:8.1f} reference")
    return 0
