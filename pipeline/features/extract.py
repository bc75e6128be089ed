"""``python -m pipeline extract``: one feature store from one image shard, and
``python -m pipeline store info``: what a store holds."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from pipeline.features import get_feature, traits
from pipeline.io import sha256_file
from pipeline.data.shards import load_shard_arrays
from pipeline.options import parse_device, parse_json_params, positive_int
from pipeline.store import store_info, write_store


def compute_features(module: torch.nn.Module, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D, h, w) float32 with ``module`` in batches."""
    module = module.to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float()
            out.append(module(x).float().cpu().numpy())
    if not out:
        d, h, w = module.output_shape(*images.shape[1:3]) if images.ndim == 4 and images.shape[1] else (0, 0, 0)
        return np.zeros((0, d, h, w), np.float32)
    return np.concatenate(out)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature", required=True, help="registered representation name (hog, lbp, alexnet, ...)")
    p.add_argument("--params", default="{}", help="the representation's parameters as JSON")
    p.add_argument("--shard", required=True, help="image shard (tar)")
    p.add_argument("--out", required=True, help="feature store (HDF5) to write")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="dtype of the stored features (float16 halves the size)")
    p.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"],
                   help="HDF5 compression of the store")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per feature batch")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N; representations that run on the CPU only (sift) use the CPU")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")


def run(args) -> int:
    params = parse_json_params(args.params)
    # a CPU-only representation (registry trait cpu_only, e.g. VLFeat's sparse SIFT)
    # computes on the CPU whatever --device says: the workflow gives its jobs no GPU
    device = torch.device("cpu") if traits(args.feature).cpu_only else parse_device(args.device)
    torch.set_num_threads(max(1, args.threads))
    t = time.perf_counter()
    module = get_feature(args.feature, **params)
    keys, images, _ = load_shard_arrays(args.shard)
    feats = compute_features(module, images, args.batch_size, device)
    write_store(
        args.out,
        keys,
        feats,
        feature=args.feature,
        params=getattr(module, "params", params),
        image_shard=str(args.shard),
        image_shard_sha256=sha256_file(args.shard),
        dtype=args.dtype,
        compression=None if args.compression == "none" else args.compression,
        extra_attrs={"trained": bool(getattr(module, "trained", True))},
    )
    dt = time.perf_counter() - t
    print(
        f"{args.feature}: {len(keys)} images -> {tuple(feats.shape[1:])} in {dt:.1f}s "
        f"({len(keys) / max(dt, 1e-9):.1f} images/s) -> {args.out}",
        file=sys.stderr,
    )
    return 0


def configure_store_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="store_command", required=True, metavar="info")
    info = sub.add_parser("info", help="print shapes, dtype, count and bytes on disk")
    info.add_argument("paths", nargs="+", help="feature or reconstruction stores (HDF5)")
    info.add_argument("--json", action="store_true", help="print JSON")


def run_store(args) -> int:
    total_bytes = total_count = 0
    for path in args.paths:
        info = store_info(path)
        total_bytes += info["bytes_on_disk"]
        total_count += info["count"]
        if args.json:
            print(json.dumps(info, sort_keys=True))
        else:
            print(
                f"{path}: feature={info['feature']} count={info['count']} shape={tuple(info['shape'])} "
                f"dtype={info['dtype']} bytes={info['bytes_on_disk']} ({info['bytes_per_item']:.0f}/item) "
                f"params={json.dumps(info['params'], sort_keys=True)}"
            )
    if len(args.paths) > 1 and not args.json:
        print(f"total: {len(args.paths)} stores, {total_count} items, {total_bytes} bytes")
    return 0
