"""AlexNet benchmark: images/s of every paper layer (``python -m pipeline bench features``)."""
from __future__ import annotations

import argparse
import time

import torch

from .alexnet import PAPER_LAYERS, AlexNetFeature, layer_shape
from .alexnet_weights import ARCHS


def bench_alexnet(args=None) -> int:
    """Print images/s of every paper layer (truncated forward, random weights).

    ``args``: a Namespace with ``size`` (227), ``batch`` (64), ``threads`` (1),
    ``repeat`` (3, best of), ``device`` ("cpu"; "cuda" also adds CUDA when
    available, "all" = CPU and CUDA when available) and ``arch`` ("both").  The
    reference is the full network (fc8) in the same run: each layer's speed is
    also given as a ratio to it.
    """
    args = args or argparse.Namespace()
    size = int(getattr(args, "size", 227) or 227)
    batch = int(getattr(args, "batch", 64) or 64)
    threads = int(getattr(args, "threads", 1) or 1)
    repeat = max(1, int(getattr(args, "repeat", 3) or 3))
    device = getattr(args, "device", "cpu") or "cpu"
    arch_arg = getattr(args, "arch", "both") or "both"
    archs = ARCHS if arch_arg in ("both", "all") else (arch_arg,)
    devices = ["cpu"] if device in ("cpu", "cuda", "all") else [device]
    if device in ("cuda", "all") or device.startswith("cuda"):
        if torch.cuda.is_available():
            devices = (["cpu"] if device == "all" else []) + [device if device.startswith("cuda:") else "cuda"]
        elif device != "all":
            print("alexnet bench: CUDA not available, CPU only")
            devices = ["cpu"]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dev in devices:
            g = torch.Generator().manual_seed(0)
            x_cpu = torch.rand(batch, 3, size, size, generator=g) * 255
            for arch in archs:
                if arch == "caffenet" and size != 227:
                    print(f"alexnet bench: skipping fc layers of caffenet at {size}x{size} (needs 227)")
                print(f"\nAlexNet arch={arch} weights=random (untrained) device={dev} "
                      f"size={size} batch={batch} threads={threads} best of {repeat}")
                print(f"{'layer':>6} {'tap':>8} {'shape':>14} {'images/s':>10} {'x full net':>10}")
                x = x_cpu.to(dev)
                rows = []
                for layer in PAPER_LAYERS:
                    try:
                        shape = layer_shape(arch, layer, size, size)
                    except ValueError:
                        continue
                    f = AlexNetFeature(layer=layer, arch=arch, weights="random").to(dev)
                    best = float("inf")
                    with torch.inference_mode():
                        f(x[:2])  # warm-up
                        for _ in range(repeat):
                            if dev.startswith("cuda"):
                                torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            f(x)
                            if dev.startswith("cuda"):
                                torch.cuda.synchronize()
                            best = min(best, time.perf_counter() - t0)
                    rows.append((layer, f.tap, shape, batch / best))
                ref = rows[-1][3] if rows and rows[-1][0] == "fc8" else None
                for layer, tap, shape, ips in rows:
                    ratio = f"{ips / ref:10.2f}" if ref else f"{'-':>10}"
                    print(f"{layer:>6} {tap:>8} {'x'.join(map(str, shape)):>14} {ips:10.1f} {ratio}")
    finally:
        torch.set_num_threads(old_threads)
    return 0
