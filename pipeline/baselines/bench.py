"""``python -m pipeline bench invert``: the cost of the optimisation baselines.

:func:`bench_invert` times Mahendran & Vedaldi (CVPR 2015) inversion per
iteration and image (AlexNet conv3, HOG; batch 1 against larger batches, CPU
and GPU) and, with :func:`_bench_hoggles`, HOGgles inversion (Vondrick et al.
2013) with dictionaries of a few sizes, against the papers' reported times.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.baselines import hoggles as hg
from pipeline.baselines.descent import default_schedule, make_schedule
from pipeline.baselines.mv import invert
from pipeline.baselines.terms import REF_SIZE
from pipeline.data.sample import SAMPLE_PHOTOS, load_sample_photo
from pipeline.features import available, get_feature


def bench_invert(argv: list[str]) -> int:
    """Seconds per image of M&V inversion at 227x227 (AlexNet conv3, HOG), batch 1 vs 32."""
    p = argparse.ArgumentParser(prog="python -m pipeline bench invert", description=bench_invert.__doc__)
    p.add_argument("--iterations", type=int, default=10, help="iterations timed (after 2 warm-up)")
    p.add_argument("--size", type=int, default=REF_SIZE, help="image side in pixels (the paper's 227)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32],
                   help="batch sizes to time (targets optimised together)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--features", nargs="+", default=["alexnet:conv3", "hog"],
                   help="name or name:layer (AlexNet layer)")
    p.add_argument("--weights", default=None, help="AlexNet weights file (default: random weights)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--hoggles-atoms", type=int, nargs="*", default=[256, 1024],
                   help="also time HOGgles inversion with dictionaries of these sizes (none: skip)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"M&V inversion benchmark, {a.size}x{a.size}, {a.iterations} timed iterations, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "cuda" not in devices:
        print("GPU: not available on this machine (CPU only)")
    results = []
    for spec in a.features:
        name, _, layer = spec.partition(":")
        if name not in available():
            print(f"{spec}: not in the registry ({', '.join(available())}), skipped")
            continue
        params = {"layer": layer} if layer else {}
        if name == "alexnet" and a.weights:
            params["weights"] = a.weights
        try:
            feat = get_feature(name, **params)
        except Exception as e:  # a representation still being written
            print(f"{spec}: cannot build ({e}), skipped")
            continue
        sched = default_schedule(name)
        paper_its = sum(n for n, _ in make_schedule(sched))
        for dev in devices:
            for bs in a.batches:
                rng = np.random.default_rng(0)
                imgs = torch.from_numpy(rng.uniform(0, 255, (bs, 3, a.size, a.size)).astype(np.float32))
                try:
                    invert(feat, imgs, iterations=2, device=dev)  # warm-up
                    if dev.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    invert(feat, imgs, iterations=a.iterations, device=dev, log_every=a.iterations)
                    if dev.startswith("cuda"):
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                except RuntimeError as e:
                    print(f"{spec} {dev} batch {bs}: failed ({e})")
                    continue
                per_it = dt / a.iterations / bs
                results.append((spec, dev, bs, per_it))  # seconds per iteration per image
                print(f"{spec:>14} {dev:>5} batch {bs:>3}: {per_it * 1e3:8.1f} ms/iteration/image -> "
                      f"{per_it * paper_its:7.1f} s/image at {paper_its} it ({sched} schedule), "
                      f"{per_it * 2100:7.1f} s/image at 2100 it (invert_nn.m)")
        for dev in devices:
            r = {bs: t for s, d, bs, t in results if s == spec and d == dev}
            if 1 in r and len(r) > 1:
                for bs, t in sorted(r.items()):
                    if bs != 1:
                        print(f"{spec:>14} {dev:>5}: batch {bs} is {r[1] / t:.2f}x faster per image than batch 1")
    if a.hoggles_atoms and "hog" in available():
        results += _bench_hoggles(a.size, a.hoggles_atoms, devices)
    mv_hog = {d: t for s, d, bs, t in results if s == "hog" and bs == 1}
    for s, d, bs, t in results:
        if s.startswith("hoggles") and "cpu" in mv_hog and d == "cpu":
            its = sum(n for n, _ in make_schedule("shallow"))
            print(f"{s}: {t:.2f} s/image on the CPU; M&V on HOG at {its} iterations, batch 1: "
                  f"{mv_hog['cpu'] * its:.1f} s/image, {mv_hog['cpu'] * its / t:.0f}x slower "
                  f"(Mahendran & Vedaldi 2015: 60 s vs 2-3 s, 20-30x)")
    print("references: Dosovitskiy & Brox 2016: 'the authors report 6s per image on a GPU' (M&V, 2015 GPU); "
          "Mahendran & Vedaldi 2015 section 4: HOGgles 2-3 s vs 60 s for M&V on HOG, same CPU")
    return 0


def _bench_hoggles(size: int, atoms_list, devices) -> list[tuple[str, str, int, float]]:
    """Seconds per image of HOGgles inversion at size x size (ihog's 'fast' dictionaries:
    random training pairs as atoms, which code like learned ones)."""
    hog = get_feature("hog")
    photos = []
    for name in list(SAMPLE_PHOTOS)[:6]:
        im = load_sample_photo(name)
        s = min(im.shape[:2])
        im = im[(im.shape[0] - s) // 2:][:s, (im.shape[1] - s) // 2:][:, :s]
        photos.append(np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(im.transpose(2, 0, 1)[None].astype(np.float32)), size=(size, size),
            mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 255).byte()))
    photos = np.stack(photos)
    out = []
    for atoms in atoms_list:
        g, h = hg.sample_pairs(photos[1:], hog, max(atoms, 2000), seed=0)
        rng = np.random.default_rng(0)
        d = np.concatenate([g, h], 1)[rng.choice(len(g), atoms, replace=atoms > len(g))]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pd = hg.PairedDictionary(gray=d[:, : g.shape[1]].astype(np.float32), hog=d[:, g.shape[1]:].astype(np.float32),
                                 ny=hg.WINDOW, nx=hg.WINDOW, cell=hg.cell_size(hog), lam=hg.LAMBDA)
        for dev in devices:
            solver = "sklearn" if dev == "cpu" else "fista"
            t0 = time.perf_counter()
            hg.invert_images(pd, photos[:1], feature=hog, solver=solver, device=dev)
            dt = time.perf_counter() - t0
            name = f"hoggles-{atoms}"
            out.append((name, dev, 1, dt))
            print(f"{name:>14} {dev:>5} batch   1: {dt:8.2f} s/image ({solver} solver, "
                  f"{((size + 4) // 8 + 2 * hg.PAD_CELLS - hg.WINDOW + 1) ** 2} windows)")
    return out
