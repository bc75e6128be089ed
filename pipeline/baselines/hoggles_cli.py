"""``python -m pipeline invert-hoggles {train, invert}``: HOGgles (Vondrick et al. 2013).

``train`` learns a paired dictionary on training image shards
(:func:`pipeline.baselines.hoggles.train_paired_dictionary`) and writes it as
an ``.npz``; ``invert`` inverts the representation of the images of image
shards with it (:func:`pipeline.baselines.hoggles.invert_hoggles`) and writes
one reconstruction store per shard (:func:`pipeline.store.write_reconstructions`,
method ``hoggles``; grey, replicated to 3 channels).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from pipeline.baselines.hoggles import (
    ATOMS,
    BATCH,
    BLEND_SIGMA,
    LAMBDA,
    PAD_CELLS,
    WINDOW,
    PairedDictionary,
    _gray_tensor,
    _shard_image_count,
    invert_hoggles,
    train_paired_dictionary,
)
from pipeline.features import get_feature
from pipeline.io import sha256_file
from pipeline.data.commands import FirstImages
from pipeline.options import nonnegative_int, parse_device, parse_json_params, positive_float, positive_int
from pipeline.store import write_reconstructions


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hoggles_command", metavar="{train,invert}", required=True)
    t = sub.add_parser("train", help="learn a paired dictionary on training image shards")
    t.add_argument("--shards", nargs="+", required=True, help="training image shards (.tar)")
    t.add_argument("--out", required=True, help="output dictionary (.npz)")
    t.add_argument("--feature", default="hog", help="representation (a cell grid; default hog)")
    t.add_argument("--params", default="{}", help="representation parameters, JSON object")
    t.add_argument("--atoms", type=positive_int, default=ATOMS, help="dictionary size (ihog: 1024)")
    t.add_argument("--window", type=positive_int, default=WINDOW, help="window side in cells (ihog: 5)")
    t.add_argument("--lam", type=positive_float, default=LAMBDA, help="LASSO weight (ihog: 0.02)")
    t.add_argument("--windows", type=positive_int, default=100_000, help="training windows sampled")
    t.add_argument("--epochs", type=positive_int, default=10, help="passes of mini-batch dictionary learning")
    t.add_argument("--batch-size", type=positive_int, default=BATCH, help="mini-batch (ihog: 400)")
    t.add_argument("--max-images", type=positive_int, default=None, help="use only the first N images of each shard")
    t.add_argument("--seed", type=int, default=0, help="seed of the window sampling and the dictionary learning")
    t.add_argument("--threads", type=nonnegative_int, default=None, help="torch threads")
    i = sub.add_parser("invert", help="invert the HOG of image shards")
    i.add_argument("--dict", required=True, help="paired dictionary (.npz) from 'train'")
    i.add_argument("--shard", nargs="+", required=True, help="image shard(s) whose images are inverted")
    i.add_argument("--out", nargs="+", required=True, help="output HDF5 store per shard")
    i.add_argument("--max-images", type=positive_int, default=None,
                   help="invert only the first N images of each shard (of the split, with --preceding)")
    i.add_argument("--preceding", nargs="*", metavar="MANIFEST",
                   help="per-shard manifests of the split's shards before --shard: --max-images counts the "
                        "split's first N images")
    i.add_argument("--batch-size", type=positive_int, default=8, help="images coded together")
    i.add_argument("--pad", type=nonnegative_int, default=PAD_CELLS,
                   help="zero cells padded around the HOG map (ihog: 5)")
    i.add_argument("--solver", choices=("sklearn", "fista"), default="sklearn",
                   help="sparse coding: scikit-learn's LASSO, or FISTA in batched PyTorch")
    i.add_argument("--device", default="cpu", help="device of the fista solver and the representation")


def run(args) -> int:
    return {"train": run_train, "invert": run_invert}[args.hoggles_command](args)


def run_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    params = parse_json_params(args.params)
    feature = get_feature(args.feature, **params).eval()
    n_images = sum(_shard_image_count(p, args.max_images) for p in args.shards)
    pd = train_paired_dictionary(
        [str(p) for p in args.shards], feature, atoms=args.atoms, ny=args.window, nx=args.window, lam=args.lam,
        n_windows=args.windows, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        feature_name=args.feature, feature_params=dict(getattr(feature, "params", params)),
        max_images=args.max_images,
    )
    pd.meta["train_shards"] = [str(s) for s in args.shards]
    pd.meta["train_images"] = int(n_images)
    pd.save(args.out)
    print(f"wrote {args.out}: {pd.atoms} atoms, {pd.ny}x{pd.nx} cells, lambda {pd.lam}, "
          f"{pd.meta['n_windows']} windows from {n_images} images in {pd.meta['seconds']}s", file=sys.stderr)
    return 0


def run_invert(args) -> int:
    if len(args.out) != len(args.shard):
        raise ValueError(f"--out: {len(args.out)} paths for {len(args.shard)} shards")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    pd = PairedDictionary.load(args.dict)
    device = parse_device(args.device)
    feature = get_feature(pd.feature, **pd.feature_params).to(device).eval()
    first = FirstImages(args.max_images, args.preceding)
    for shard, out in zip(args.shard, args.out):
        t0 = time.perf_counter()
        keys, images = first.images(shard)
        H, W = images.shape[1:3] if len(keys) else (0, 0)
        rec = np.zeros((len(keys), 3, H, W), np.float32)
        for s in range(0, len(keys), args.batch_size):
            gray = _gray_tensor(images[s: s + args.batch_size]).to(device)
            with torch.no_grad():
                phi = feature(gray).cpu()
            g = invert_hoggles(pd, phi, (H, W), pad=args.pad, solver=args.solver, device=device)
            rec[s: s + len(g)] = np.repeat(g, 3, axis=1)  # grey -> 3 channels
        write_reconstructions(
            out, keys, rec, method="hoggles", representation=pd.feature,
            feature=pd.feature, feature_params=pd.feature_params,
            image_shard=str(shard), image_shard_sha256=sha256_file(shard),
            details={"inversion": {"dictionary": str(args.dict), "atoms": pd.atoms, "window": [pd.ny, pd.nx],
                                   "cell": pd.cell, "lambda": pd.lam, "pad": args.pad, "solver": args.solver,
                                   "blend_sigma": BLEND_SIGMA, "train": pd.meta}},
            extra_attrs={"grey": "replicated to 3 channels"},
        )
        print(f"wrote {out}: {len(keys)} HOGgles reconstructions in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
