"""``python -m pipeline bench train``: decoder speed against the paper.

Dosovitskiy & Brox (2016) report roughly 5 ms per image for one forward pass
of a paper-sized decoder on a GPU; this benchmark prints training images/s
and inference ms/image of each decoder kind on the CPU and, when present,
the GPU.  ``python -m pipeline bench feed``: how fast the training data
(image shards, and feature stores) reach the training loop with N workers.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import Sample, write_shard
from pipeline.decoders.architectures import KINDS, build_decoder
from pipeline.decoders.data import PairedData, epoch_batches, iter_batches
from pipeline.features import get_feature
from pipeline.store import write_store
from pipeline.decoders.step import InversionModel, _amp_dtype, train_step
from pipeline.options import parse_device, parse_json_params

PAPER_MS_PER_IMAGE = 5.0  # Dosovitskiy & Brox 2016: "roughly 5 ms per image on a GPU"


def _bench_shape(kind: str, size: int) -> tuple[int, int, int]:
    return {
        "hog": (31, (size + 4) // 8, (size + 4) // 8),
        "lbp": (58, max(1, size // 16), max(1, size // 16)),
        "sift": (133, -(-size // 4), -(-size // 4)),
        "conv": (256, max(1, round(size / 37.8)), max(1, round(size / 37.8))),
        "fc": (1000, 1, 1),
    }[kind]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(argv: list[str]) -> int:
    """Training images/s and inference ms/image of decoders, CPU and GPU when present."""
    p = argparse.ArgumentParser(prog="python -m pipeline bench train", description=bench_train.__doc__)
    p.add_argument("--size", type=int, default=64, help="image size (the features' grids follow it)")
    p.add_argument("--out-size", type=int, default=None,
                   help="decoder output size (decoders.image_size; default: --size)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = the paper's decoders)")
    p.add_argument("--kinds", nargs="+", default=["hog", "fc"], choices=KINDS, help="decoder architectures to time")
    p.add_argument("--batch-size", type=int, default=64, help="images per training step")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--channels-last", choices=["auto", "both"], default="auto",
                   help="auto: the memory format training uses (channels_last); both: also time contiguous "
                        "(NCHW) and print the ratio")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"decoder benchmark: {a.size}x{a.size} images, output {a.out_size or a.size}, width {a.width}, batch {a.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':8} {'kind':5} {'format':6} {'in_shape':>14} {'params':>8} {'train img/s':>12} {'infer ms/img':>13} "
          f"{'vs paper 5 ms':>14}")
    results = {}
    for dev_name in devices:
        device = parse_device(dev_name, "--devices")
        amp = _amp_dtype(device, "auto")
        formats = [True, False] if a.channels_last == "both" else [True]
        for kind, cl in [(k, f) for k in a.kinds for f in formats]:
            torch.manual_seed(0)
            shape = _bench_shape(kind, a.size)
            dec = build_decoder(kind, shape, a.out_size or a.size, a.width).to(device)
            model = InversionModel(dec).to(device)
            if cl:  # as training does with feature stores (pipeline.decoders.training.use_channels_last)
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
            feats = torch.rand(a.batch_size, *shape, device=device)
            imgs = torch.randint(0, 256, (a.batch_size, *dec.native_size, 3), dtype=torch.uint8, device=device)
            for i in range(a.warmup + a.steps):
                if i == a.warmup:
                    _sync(device)
                    t = time.perf_counter()
                train_step(model, opt, scaler, imgs, feats, dec.native_size, amp, cl, 1.0)
            _sync(device)
            ips = a.steps * a.batch_size / (time.perf_counter() - t)
            dec.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                for i in range(a.warmup + a.steps):
                    if i == a.warmup:
                        _sync(device)
                        t = time.perf_counter()
                    dec(feats)
                _sync(device)
            ms = 1000 * (time.perf_counter() - t) / (a.steps * a.batch_size)
            n_par = sum(q.numel() for q in dec.parameters()) / 1e6
            results[(dev_name, kind, cl)] = (ips, ms)
            print(f"{dev_name:8} {kind:5} {'NHWC' if cl else 'NCHW':6} {str(shape):>14} {n_par:7.2f}M {ips:12.1f} {ms:13.3f} "
                  f"{PAPER_MS_PER_IMAGE / ms:13.2f}x", flush=True)
    print(f"reference: Dosovitskiy & Brox (2016) report ~{PAPER_MS_PER_IMAGE:g} ms per image for one forward "
          "pass on a 2015 GPU (paper-sized networks); 'vs paper' > 1 means faster than that")
    for dev_name, kind in [(d, k) for d in devices for k in a.kinds]:
        if (dev_name, kind, False) in results:
            c, n = results[(dev_name, kind, True)], results[(dev_name, kind, False)]
            print(f"{dev_name} {kind}: channels_last / contiguous, training {c[0] / n[0]:.2f}x, "
                  f"inference {n[1] / c[1]:.2f}x")
    for kind in a.kinds:
        if ("cpu", kind, True) in results and ("cuda", kind, True) in results:
            c, g = results[("cpu", kind, True)], results[("cuda", kind, True)]
            print(f"{kind}: GPU/CPU speed-up training {g[0] / c[0]:.1f}x, inference {c[1] / g[1]:.1f}x")
    return 0


def _smooth_images(rng, n: int, size: int) -> np.ndarray:
    """``n`` (size, size, 3) uint8 images: blurred colour blocks plus grain (JPEG-compressible like photos)."""
    coarse = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(size, size),
                                         mode="bicubic", align_corners=False).permute(0, 2, 3, 1).numpy()
    return np.clip(up + rng.normal(0, 6, up.shape), 0, 255).astype(np.uint8)


def bench_feed(argv: list[str]) -> int:
    """Training images/s delivered by the decoders' data path (PairedData, random access into the
    tars and the HDF5 feature stores, a shuffled epoch) with 0..N DataLoader workers, per worker."""
    p = argparse.ArgumentParser(prog="python -m pipeline bench feed", description=bench_feed.__doc__)
    p.add_argument("--images", type=int, default=1024, help="synthetic images written to the shards")
    p.add_argument("--size", type=int, default=256, help="image side in the shards (256: HOG/SIFT/LBP)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard")
    p.add_argument("--feature", default="hog", help="representation of the feature stores (float16, gzip)")
    p.add_argument("--params", default="{}", help="its parameters, a JSON object (e.g. an AlexNet layer)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers to time")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    feature = get_feature(a.feature, **parse_json_params(a.params)).eval()
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        shards, stores = [], []
        for s, start in enumerate(range(0, a.images, a.shard_size)):
            x = _smooth_images(rng, min(a.shard_size, a.images - start), a.size)
            keys = [f"img{start + i:07d}" for i in range(len(x))]
            shards.append(Path(tmp, f"{s:05d}.tar"))
            write_shard(shards[-1], (Sample(k, im) for k, im in zip(keys, x)), fmt="jpg")
            with torch.no_grad():
                f = torch.cat([feature(torch.from_numpy(x[i:i + 64]).permute(0, 3, 1, 2).float())
                               for i in range(0, len(x), 64)]).numpy()
            stores.append(Path(tmp, f"{s:05d}.h5"))
            write_store(stores[-1], keys, f, feature=a.feature, params=dict(getattr(feature, "params", {})))
        per = f[0].size * 2
        print(f"bench feed: {a.images} JPEG images {a.size}x{a.size} (quality 95) in {len(shards)} shards, "
              f"{a.feature} features {tuple(f.shape[1:])} float16 gzip ({per / 1e3:.0f} kB raw), batch {a.batch_size}")
        for with_features in (False, True):
            data = PairedData(shards, stores if with_features else None, in_memory=False)
            for w in a.workers:
                batches = epoch_batches(data.counts, 0, 0, a.batch_size)
                it = iter_batches(data, batches, w)
                next(it)  # workers started
                t, n = time.perf_counter(), 0
                for imgs, _ in it:
                    n += len(imgs)
                rate = n / (time.perf_counter() - t)
                print(f"  {'images + features' if with_features else 'images only':18s} workers {w}: "
                      f"{rate:8.0f} images/s" + (f" ({rate / w:.0f} per worker)" if w else " (main process)"))
            data.close()
    return 0
