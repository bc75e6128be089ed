"""``python -m pipeline reconstruct``: images from features with a trained decoder.

Applies a trained decoder (Dosovitskiy & Brox 2016) to validation shards and
writes, per shard, a reconstruction store
(:func:`pipeline.store.write_reconstructions`, method ``ours``, or
``autoencoder`` for a decoder trained with a fine-tuned encoder) keyed like
the shard: the reconstructions ``(N, 3, H, W)`` as float16 pixel values in
[0, 255] at the image size (bilinear up-sampling of the native output, as the
paper's evaluation does), plus a PNG grid of (input | reconstruction) pairs.
Feature stores must hold the representation the decoder inverts and come
from the shard they are paired with; a shard without images gives an empty
store.

``--perturb KIND`` perturbs the features before decoding (Dosovitskiy & Brox
2016, section 4.4, Figures 7 and 9: :data:`pipeline.vocabulary.PERTURBATIONS`),
wherever they come from: feature stores, the representation computed on the
fly, or an autoencoder's fine-tuned encoder (whose features exist nowhere
else).  Each image's random choices are seeded by ``(--perturb-seed, key)``,
so they do not depend on the batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.decoders.architectures import Decoder, resize_images
from pipeline.decoders.data import PairedData, _collate
from pipeline.decoders.modelfile import _decoder_file, load_model
from pipeline.features.perturbations import perturb_features
from pipeline.features import get_feature
from pipeline.images import image_grid, side_by_side
from pipeline.io import sha256_file
from pipeline.options import nonnegative_int, parse_device, parse_json_params, positive_int, torch_threads
from pipeline.store import feature_mismatch, write_reconstructions
from pipeline.vocabulary import PERTURBATIONS

def reconstruct_batch(decoder: Decoder, features: torch.Tensor, size=None) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 255] reconstructed from ``features``.

    The decoder's native output is resized bilinearly to ``size`` (int or
    (H, W); default the decoder's ``out_size``, the image size it was trained
    for), as the paper does before computing errors.  Runs without gradients
    on the decoder's device; the result stays there.
    """
    p = next(decoder.parameters())
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.no_grad():
            y = decoder(torch.as_tensor(features).to(device=p.device, dtype=p.dtype))
            return Decoder.to_image(resize_images(y.float(), size or decoder.out_size, antialias=True))
    finally:
        decoder.train(was_training)


def configure_reconstruct_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained model: decoder.pt or its folder")
    p.add_argument("--images", nargs="+", required=True, metavar="SHARD", help="validation image shards")
    p.add_argument("--features", nargs="+", metavar="STORE", help="feature stores aligned with --images")
    p.add_argument("--on-the-fly", action="store_true",
                   help="compute features (default: the model's feature, or --feature/--params)")
    p.add_argument("--feature", help="feature name for --on-the-fly (default: the model's)")
    p.add_argument("--params", help="feature parameters (JSON) for --on-the-fly (default: the model's)")
    o = p.add_mutually_exclusive_group(required=True)
    o.add_argument("--out", nargs="+", metavar="STORE", help="one output store per image shard")
    o.add_argument("--out-dir", help="folder for the output stores ({shard name}.h5)")
    p.add_argument("--grid", help="PNG of (input | reconstruction) pairs")
    p.add_argument("--grid-count", type=positive_int, default=16, help="pairs in the grid")
    p.add_argument("--grid-cols", type=positive_int, default=4, help="pairs per grid row")
    p.add_argument("--size", type=positive_int, help="reconstruction size (default: each image's size)")
    p.add_argument("--perturb", choices=tuple(PERTURBATIONS), default=None,
                   help="perturb the features before decoding (Figure 7's curves; also an autoencoder's)")
    p.add_argument("--perturb-seed", type=int, default=0, help="seed of the random perturbations (with the key)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images decoded together")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")


def run_reconstruct(args) -> int:
    with torch_threads(args.threads):
        reconstruct(args)
    return 0


def reconstruct(args) -> list[str]:
    device = parse_device(args.device)
    decoder, encoder, payload = load_model(args.model, device)
    shards = [str(s) for s in args.images]
    if args.features and args.on_the_fly:
        raise ValueError("give either --features or --on-the-fly, not both")
    if args.features:
        if len(args.features) != len(shards):
            raise ValueError(f"{len(shards)} image shards but {len(args.features)} feature stores")
    else:
        cfg = payload.get("config") or {}
        if not (args.on_the_fly or cfg.get("on_the_fly")):
            raise ValueError("the model was trained on feature stores: give --features STORE... (or --on-the-fly)")
        if encoder is None or args.feature:
            feat = payload.get("feature") or {}
            name = args.feature or feat.get("name")
            params = parse_json_params(args.params) if args.params else feat.get("params", {})
            if not name:
                raise ValueError("--on-the-fly: the model records no feature; give --feature NAME")
            encoder = get_feature(name, **params).to(device).eval()
    if args.out:
        outs = [str(p) for p in args.out]
        if len(outs) != len(shards):
            raise ValueError(f"{len(shards)} image shards but {len(outs)} --out stores")
    else:
        outs = [str(Path(args.out_dir) / (Path(s).name.split(".")[0] + ".h5")) for s in shards]

    method = "autoencoder" if payload.get("encoder_state_dict") is not None else "ours"
    perturbation = {"kind": args.perturb, "seed": args.perturb_seed}
    inverted = payload.get("feature") or {}  # the representation the decoder inverts
    grid_pairs = []
    for i, (shard, out) in enumerate(zip(shards, outs)):
        data = PairedData([shard], [args.features[i]] if args.features else None, in_memory=False,
                          allow_empty=True)
        if args.features and inverted:
            why = feature_mismatch({"name": data.feature_name, "params": data.feature_params}, inverted)
            if why:
                raise ValueError(f"{args.features[i]}: the store {why}, the representation that the decoder "
                                 f"{_decoder_file(args.model)} inverts; give stores of that representation")
        size = (args.size, args.size) if args.size else data.image_size or tuple(decoder.out_size)
        if tuple(decoder.in_shape) != tuple(data.feature_shape or decoder.in_shape):
            raise ValueError(f"{args.features[i]}: features of shape {data.feature_shape}, but the decoder "
                             f"expects {tuple(decoder.in_shape)}")
        recon = np.empty((len(data), 3, *size), np.float16)
        for s in range(0, len(data), args.batch_size):
            imgs, feats = _collate([data[j] for j in range(s, min(len(data), s + args.batch_size))])
            if feats is None:
                x = imgs.to(device).permute(0, 3, 1, 2).float()
                with torch.no_grad():
                    feats = encoder(x).float()
            if args.perturb:
                feats = perturb_features(torch.as_tensor(feats), data.keys[s:s + len(feats)], args.perturb,
                                         args.perturb_seed)
            y = reconstruct_batch(decoder, feats, size).cpu()
            recon[s:s + len(y)] = y.numpy().astype(np.float16)
            for j in range(len(y)):
                if len(grid_pairs) < args.grid_count:
                    grid_pairs.append((imgs[j].numpy(), y[j].permute(1, 2, 0).round().byte().numpy()))
        data.close()
        write_reconstructions(
            out, data.keys, recon, method=method, representation=payload.get("representation"),
            feature=inverted.get("name"), feature_params=inverted.get("params"),
            image_shard=shard, image_shard_sha256=sha256_file(shard),
            details={"decoder": payload["build_args"], "model": str(_decoder_file(args.model)),
                     **({"perturbation": perturbation} if args.perturb else {})},
            extra_attrs={"native_size": json.dumps(payload.get("native_size")),
                         **({"perturbation": json.dumps(perturbation)} if args.perturb else {})},
        )
        print(f"{out}: {len(data)} reconstructions from {shard}", flush=True)
    if args.grid:  # rows of --grid-cols (input | reconstruction) pairs, 2 px white gaps
        cols = max(1, min(args.grid_cols, len(grid_pairs)))
        cells = [side_by_side(a, b) for a, b in grid_pairs]
        image_grid(args.grid, [cells[k:k + cols] for k in range(0, len(cells), cols)], gap=2, col_gap=4)
    return outs
