"""``python -m pipeline bench evaluate``: throughput of the evaluation
metrics (normalised error, PSNR, SSIM, mean pairwise distance, bootstrap
interval) on random images, against a plain numpy pass over the same data;
with ``--images N``, the peak memory of Table 2 (Dosovitskiy & Brox 2016)
on N synthetic validation images, through the command the workflow runs.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.shards import Sample, write_shard
from pipeline.evaluation import commands
from pipeline.evaluation.metrics import (
    images_nchw, mean_pairwise_distance, normalized_errors, psnr_per_image, ssim_per_image, summarize,
)
from pipeline.store import write_reconstructions


def bench_evaluate(argv: list[str]) -> int:
    """``python -m pipeline bench evaluate``: throughput of the metrics on random images.

    Prints images/s for the normalised error (with N), PSNR, SSIM and the
    mean pairwise distance, and the ratio of SSIM time to a plain numpy
    squared-error pass over the same data (the reference, measured here).
    With ``--images N``: :func:`bench_table_memory` instead.
    """
    ap = argparse.ArgumentParser(prog="python -m pipeline bench evaluate")
    ap.add_argument("--n", type=int, default=256, help="number of synthetic images")
    ap.add_argument("--size", type=int, default=None, help="image side (default 64; 32 with --images)")
    ap.add_argument("--rec-size", type=int, default=None, help="reconstruction size (default: --size / 2)")
    ap.add_argument("--images", type=int, default=None,
                    help="peak memory of Table 2 on this many synthetic validation images (last line: peak_rss_mb=)")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per shard with --images")
    ap.add_argument("--rows", type=int, default=1, choices=(1, 2, 3), help="decoder rows with --images (and the floor)")
    ap.add_argument("--norm-max-images", type=int, default=None, help="with --images: N from a random subset")
    ap.add_argument("--dir", default=None, help="with --images: write the shards and stores here and keep them")
    a = ap.parse_args(argv)
    if a.images is not None:
        return bench_table_memory(a.images, size=a.size or 32, shard_size=a.shard_size, rows=a.rows,
                                  norm_max_images=a.norm_max_images, directory=a.dir)
    size = a.size or 64
    rng = np.random.default_rng(0)
    rs = a.rec_size or max(8, size // 2)
    x = rng.integers(0, 256, (a.n, size, size, 3), dtype=np.uint8)
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
    print(f"{a.n} images {size}x{size}, reconstructions {rs}x{rs}")
    for name, t in [("reference: numpy squared error", t_ref), ("mean pairwise distance (N)", t_norm),
                    ("normalised error incl. N", t_err), ("PSNR", t_psnr), ("SSIM", t_ssim),
                    ("bootstrap CI (10k)", t_boot)]:
        print(f"  {name:34s} {t * 1e3:9.1f} ms  {a.n / t:10.0f} images/s  x{t / t_ref:8.1f} reference")
    return 0


_ROWS = ("ours-hog", "ours-sift", "ours-lbp")


def write_synthetic_test_set(directory, images: int, *, size: int = 32, shard_size: int = 1000,
                             rows: int = 1) -> tuple[list[str], dict[str, list[str]]]:
    """Validation shards of ``images`` smooth random images and, per row, reconstruction stores
    (half size, noisy), one shard at a time; returns the shard paths and row -> stores."""
    directory = Path(directory)
    rng = np.random.default_rng(0)
    shards, stores = [], {r: [] for r in _ROWS[:rows]}
    h = max(8, size // 2)
    for s, start in enumerate(range(0, images, shard_size)):
        n = min(shard_size, images - start)
        coarse = rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32)
        x = np.repeat(np.repeat(coarse, size // 4 + 1, axis=2), size // 4 + 1, axis=3)[:, :, :size, :size]
        x = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        keys = [f"val{start + i:07d}" for i in range(n)]
        shard = directory / f"{s:05d}.tar"
        write_shard(shard, (Sample(k, im) for k, im in zip(keys, x)))
        shards.append(str(shard))
        small = x.transpose(0, 3, 1, 2).reshape(n, 3, h, size // h, h, size // h).mean(axis=(3, 5))
        for j, row in enumerate(stores):
            rec = np.clip(small + rng.normal(0, 10 * (j + 1), small.shape), 0, 255)
            path = directory / f"{row}-{s:05d}.h5"
            write_reconstructions(path, keys, rec, method="ours", representation=row[5:], feature=None,
                                  feature_params=None)
            stores[row].append(str(path))
    return shards, stores


def bench_table_memory(images: int, *, size: int = 32, shard_size: int = 1000, rows: int = 1,
                       norm_max_images: int | None = None, directory=None) -> int:
    """Peak resident memory of ``evaluate table2`` (the workflow's command, run in this process) on
    ``images`` synthetic validation images: ``rows`` decoder rows and the in-sample floor, the exact
    normaliser unless ``norm_max_images``.  The last line printed is ``peak_rss_mb=<number>``."""
    tmp = None if directory else tempfile.TemporaryDirectory(prefix="bench-evaluate-")
    work = Path(directory or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shards, stores = write_synthetic_test_set(work, images, size=size, shard_size=shard_size, rows=rows)
    t1 = time.perf_counter()
    argv = ["table2", "--images", *shards, "--floor-from-val", "--out", str(work / "table2.csv")]
    for row, paths in stores.items():
        argv += ["--row", f"{row}={','.join(paths)}"]
    if norm_max_images:
        argv += ["--norm-max-images", str(norm_max_images)]
    parser = argparse.ArgumentParser(prog="python -m pipeline evaluate")
    commands.configure_parser(parser)
    rc = commands.run(parser.parse_args(argv))
    t2 = time.perf_counter()
    if tmp is not None:
        tmp.cleanup()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(f"bench evaluate: {images} images {size}x{size} in {len(shards)} shards, {rows} row(s) + floor, "
          f"normaliser {'exact' if not norm_max_images else f'from {norm_max_images} images'}: "
          f"data {t1 - t0:.1f} s, table2 {t2 - t1:.1f} s")
    print(f"peak_rss_mb={peak:.0f}")
    return rc
