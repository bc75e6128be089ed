"""``python -m pipeline bench features``: images/s of the shallow features
beside VLFeat's, measured in the same run.

For each of hog, hogb, lbp, dsift and sift: the torch module on a batch
(``--batch`` images of ``--size`` x ``--size``, crops of scikit-image's
photographs in [0, 255]) on the CPU with ``--threads`` threads, and on CUDA
when available, fed RGB (its ``to_gray`` conversion timed) and fed the grey
images; VLFeat 0.9.21 through ctypes, one image at a time, on the same grey
images (conversion not timed).  Figures are the best of ``--repeat`` runs; ``--clock cpu`` times
with the thread's CPU time instead of the wall clock (steadier on a shared
machine; for the CPU runs only).  Then AlexNet's layers
(:func:`pipeline.features.alexnet_bench.bench_alexnet`) at
``--alexnet-size``.  ``--store-sizes`` also writes each feature of
``--store-images`` photo crops to a float16 gzip HDF5 store
(:func:`pipeline.store.write_store`) and prints bytes per image.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import numpy as np
import torch

from pipeline import vlfeat
from pipeline.features import get_feature, to_gray
from pipeline.features.alexnet_bench import bench_alexnet

FEATURES = ("hog", "hogb", "lbp", "dsift", "sift")
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "immunohistochemistry",
          "motorcycle", "page", "moon", "hubble_deep_field", "retina", "cat", "grass", "gravel", "brick")


def photo_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` varied RGB crops (n, 3, size, size) in [0, 255]: random squares
    (side 0.4-1 of the shorter image side) of scikit-image's photographs,
    resized bilinearly."""
    import skimage.data

    rng = np.random.default_rng(seed)
    imgs = []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, "stereo_motorcycle")()[0] if name == "motorcycle" \
                else getattr(skimage.data, name)()
        except Exception:  # a photograph missing from this scikit-image
            continue
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, -1)
        imgs.append(torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float())
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        H, W = img.shape[1:]
        side = int(min(H, W) * rng.uniform(0.4, 1.0))
        y0, x0 = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
        c = img[:, y0:y0 + side, x0:x0 + side][None]
        out.append(torch.nn.functional.interpolate(c, size=(size, size), mode="bilinear",
                                                   align_corners=False, antialias=True))
    return torch.cat(out).clamp_(0, 255)


def _vlfeat_call(name: str, f):
    p = f.params
    if name in ("hog", "hogb"):
        return lambda g: vlfeat.hog(g, p["cell_size"], p["num_orientations"], bilinear=f.bilinear)
    if name == "lbp":
        return lambda g: vlfeat.lbp(g, p["cell_size"])
    if name == "dsift":
        return lambda g: vlfeat.dsift(g, p["step"], p["bin_size"])
    if name == "sift":
        return lambda g: vlfeat.sift(g)
    raise KeyError(name)


def _best(fn, repeat: int, clock: str, sync=None) -> float:
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t0 = timer()
        fn()
        if sync:
            sync()
        best = min(best, timer() - t0)
    return max(best, 1e-9)


def _store_sizes(names, n: int, size: int) -> None:
    from pipeline.store import write_store

    x = photo_batch(n, size, seed=1)
    keys = [f"img{i:04d}" for i in range(n)]
    print(f"\nstore size: {n} photo crops {size}x{size}, float16, gzip, one chunk per image")
    print(f"{'feature':>8} {'shape':>16} {'bytes/image':>12} {'raw f16 bytes':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            f = get_feature(name)
            with torch.no_grad():
                feats = torch.cat([f(x[i:i + 16]) for i in range(0, n, 16)]).numpy()
            path = os.path.join(tmp, f"{name}.h5")
            write_store(path, keys, feats, feature=name, params=f.params, dtype="float16")
            per = os.path.getsize(path) / n
            print(f"{name:>8} {str(tuple(feats.shape[1:])):>16} {per:12.0f} {2 * feats[0].size:14d}")


def bench_features(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline bench features",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    p.add_argument("--device", default="all", choices=("cpu", "cuda", "all"),
                   help="cpu, cuda, or all = CPU and CUDA when available (default)")
    p.add_argument("--reference-images", type=int, default=64,
                   help="images VLFeat (one at a time, CPU) is timed on (default 64; 0: all)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall clock (default) or the thread's CPU time (CPU runs)")
    p.add_argument("--features", default=",".join(FEATURES + ("alexnet",)),
                   help="comma-separated subset of " + ",".join(FEATURES + ("alexnet",)))
    p.add_argument("--alexnet-size", type=int, default=227, help="image side for AlexNet (227)")
    p.add_argument("--store-sizes", action="store_true", help="also measure store bytes per image")
    p.add_argument("--store-images", type=int, default=64, help="images for --store-sizes (64)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.features.split(",") if n.strip()]
    unknown = set(names) - set(FEATURES) - {"alexnet"}
    if unknown:
        p.error(f"unknown features {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append("cpu")
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif args.device == "cuda":
            print("CUDA not available: CPU only")
            devices.append("cpu")

    x_cpu = photo_batch(args.batch, args.size)
    grays = [np.ascontiguousarray(g) for g in to_gray(x_cpu)[:, 0].numpy()]
    have_vl = vlfeat.available()
    print(f"shallow features: {args.batch} images {args.size}x{args.size}, torch threads "
          f"{args.threads}, best of {args.repeat}, {args.clock} clock; VLFeat "
          + ("0.9.21 via ctypes, one image at a time, 1 thread" if have_vl
             else f"unavailable ({vlfeat.unavailable_reason()})"))
    print(f"{'feature':>8} {'device':>6} {'shape':>16} {'RGB in':>8} {'grey in':>8} "
          f"{'VLFeat':>8} {'ratio':>6} {'ratio':>6}   (images/s; ratios RGB/VLFeat, grey/VLFeat)")
    for name in [n for n in names if n in FEATURES]:
        f = get_feature(name)
        vl_ips = None
        if have_vl:
            call = _vlfeat_call(name, f)
            call(grays[0])
            ref = grays[:args.reference_images] if args.reference_images > 0 else grays
            vl_ips = len(ref) / _best(lambda: [call(g) for g in ref], args.repeat, args.clock)
        for dev in devices:
            x = x_cpu.to(dev)
            xg = to_gray(x).contiguous()  # VLFeat's input: grey conversion not timed
            sync = torch.cuda.synchronize if dev == "cuda" else None
            clock = args.clock if dev == "cpu" else "wall"
            with torch.no_grad():
                out = f(x[:2])  # warm-up (caches, CUDA context)
                ips = [len(x) / _best(lambda: f(inp), args.repeat, clock, sync) for inp in (x, xg)]
            vl = f"{vl_ips:8.0f}" if vl_ips else f"{'n/a':>8}"
            ratios = " ".join(f"{i / vl_ips:6.2f}" if vl_ips else f"{'-':>6}" for i in ips)
            print(f"{name:>8} {dev:>6} {str(tuple(out.shape[1:])):>16} {ips[0]:8.0f} {ips[1]:8.0f} "
                  f"{vl} {ratios}", flush=True)
    if args.store_sizes:
        _store_sizes([n for n in names if n in FEATURES], args.store_images, args.size)
    if "alexnet" in names:
        a = copy.copy(args)
        a.size = args.alexnet_size
        bench_alexnet(a)
    return 0
