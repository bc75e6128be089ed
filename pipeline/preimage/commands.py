"""``python -m pipeline preimage``: natural pre-images (Mahendran & Vedaldi
2016, IJCV, "Visualizing deep convolutional neural networks using natural
pre-images") from the command line.

``--mode invert|maximise|caricature`` runs :func:`pipeline.preimage.optimise.preimage`
over one or several layers (``--layers``) and writes a reconstruction store
of the pre-images (:func:`pipeline.store.write_reconstructions`: float16
pixels in [0, 255], ``(N, 3, H, W)``, method ``preimage-<mode>``, keys
``<layer>/<image key or unit>``) and a PNG grid
(:func:`pipeline.images.image_grid`).  ``--mode mask`` writes masked copies
of feature stores (:func:`pipeline.preimage.masks.mask_store`).  A shard
without images gives an empty store and a blank grid (invert, caricature),
or activation scales from noise (maximise); NaN or Inf pre-images stop the
command.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from pipeline.baselines.descent import SCHEDULES, check_finite as check_finite_inversion
from pipeline.baselines.terms import ALPHA, BETA, LAMBDA_ALPHA, is_gray_feature
from pipeline.data.shards import load_shard_arrays
from pipeline.features import get_feature
from pipeline.images import image_grid
from pipeline.io import sha256_file
from pipeline.options import nonnegative_float, nonnegative_int, parse_device, parse_json_params, positive_float, positive_int
from pipeline.preimage.masks import feature_mask, mask_store
from pipeline.preimage.objectives import activation_scale
from pipeline.preimage.optimise import MODES, OPTIMIZERS, PRESETS, RANGES, preimage
from pipeline.store import FeatureStore, check_finite, write_reconstructions


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", required=True, choices=MODES + ("mask",),
                   help="invert, maximise, caricature; mask: write masked copies of feature stores")
    p.add_argument("--feature", help="representation name (pipeline.features registry)")
    p.add_argument("--params", default="{}", help="representation parameters, JSON object")
    p.add_argument("--layers", nargs="+", default=None,
                   help="run for each of these layers (sets params['layer']); default: params as given")
    p.add_argument("--shard", help="image shard: targets (invert, caricature) or the activation scale (maximise)")
    p.add_argument("--max-images", type=positive_int, default=None, help="use only the first N images of the shard")
    p.add_argument("--units", nargs="+", type=int, default=None, help="maximise: channels of the layer")
    p.add_argument("--units-for", action="append", default=None, metavar="TAP=U[,U...]",
                   help="maximise: the channels of one tap instead of --units (e.g. ImageNet classes of the "
                        "logits); every tap maximises the same number of units (repeatable)")
    p.add_argument("--position", default="mean", help="maximise: 'mean' (channel), 'center' or 'i,j' (one unit)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="maximise: image size (default: the shard's, else 227)")
    p.add_argument("--window", type=positive_int, default=None, help="mask: keep a central KxK window of the layer")
    p.add_argument("--window-center", default=None, help="mask: window centre 'i,j' (default: the map centre)")
    p.add_argument("--mask-channels", default=None, help="mask: channels 'a:b', 'g/G' (filter group) or 'i,j,k'")
    p.add_argument("--out", help="HDF5 store of the pre-images (float16 pixels, (N, 3, H, W))")
    p.add_argument("--grid", help="PNG grid of the results")
    p.add_argument("--caption", default="", help="caption of the PNG grid")
    p.add_argument("--preset", choices=PRESETS, default="ijcv",
                   help="ijcv: Mahendran & Vedaldi 2016's code (nnpreimage: bounded range, bound 160, jitter, "
                        "momentum with AdaGrad scaling); cvpr: the 2015 paper's energy and descent")
    p.add_argument("--range", dest="range_", choices=RANGES, default=None,
                   help="range regulariser (default: bounded; cvpr: alpha for invert, bounded otherwise)")
    p.add_argument("--lambda-alpha", type=float, default=None,
                   help=f"cvpr: alpha-norm weight at 227x227 (default {LAMBDA_ALPHA:g})")
    p.add_argument("--lambda-range", type=float, default=None,
                   help="range weight (ijcv: of the per-pixel mean, default (1/80)^6; cvpr: at 227x227)")
    p.add_argument("--lambda-tv", type=float, default=None,
                   help="TV weight (ijcv: of the per-pixel mean, default (6.5/80)^2; cvpr: at 227x227, "
                        "default Mahendran & Vedaldi 2015's)")
    p.add_argument("--objective-weight", type=positive_float, default=20.0,
                   help="multiplier C of the data term (nnpreimage's objectiveWeight, default 1; the authors also "
                        "ran 20, 100, 300). Default 20: at 1 the ijcv preset's inversions fit barely better than a "
                        "flat image (README). The 2015 energy (--preset cvpr) is C = 1")
    p.add_argument("--alpha", type=float, default=ALPHA, help="exponent of the alpha-norm regulariser")
    p.add_argument("--beta", type=float, default=BETA, help="exponent of the total-variation regulariser")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="learning-rate schedule (default: ijcv nnpreimage's; cvpr: cnn for AlexNet, shallow "
                        "otherwise)")
    p.add_argument("--iterations", type=positive_int, default=100, help="total iterations (rescales the schedule)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (default: the schedule's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="default: adagrad (nnpreimage's momentum with AdaGrad scaling) for ijcv; cvpr: momentum "
                        "for invert, adam otherwise")
    p.add_argument("--clamp", type=nonnegative_float, default=None,
                   help="range bound in units of 128 grey levels (0: off; default 1.25 = 160 for ijcv)")
    p.add_argument("--jitter", type=nonnegative_int, default=None,
                   help="max translation in pixels per iteration (default: ijcv round(stride / 4) - 1)")
    p.add_argument("--init", choices=("noise", "image"), default=None,
                   help="start from noise or from the target image (default: noise; caricature: image)")
    p.add_argument("--restarts", type=positive_int, default=1, help="random restarts per target (best kept)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="targets optimised together")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--stores", nargs="+", default=None, help="mask mode: input feature stores")
    p.add_argument("--out-stores", nargs="+", default=None, help="mask mode: output stores, one per input")


def plain_layer_name(tap: str) -> str:
    """A layer's name for a reader (grid labels): AlexNet's pre-ReLU taps ``conv5_raw`` ->
    "conv5 (before ReLU)", ``fc8_raw`` -> "fc8" (AlexNet's last layer has no ReLU); others as given."""
    base, sep, rest = str(tap).rpartition("_raw")
    if not sep or rest or not base:
        return str(tap)
    return base if base == "fc8" else f"{base} (before ReLU)"


def _units_for(items, layers) -> dict:
    """``--units-for TAP=U,U`` -> {tap: [units]}; every tap must be one of ``layers``."""
    out = {}
    for it in items or []:
        tap, sep, rest = it.partition("=")
        try:
            units = [int(u) for u in rest.split(",")] if sep and rest else None
        except ValueError:
            units = None
        if not units or tap not in layers:
            raise ValueError(f"--units-for {it!r}: expected TAP=U[,U...] with TAP one of --layers {layers}")
        out[tap] = units
    return out


def _pair(text: str | None, what: str):
    if text is None:
        return None
    try:
        i, j = (int(t) for t in text.split(","))
    except ValueError:
        raise SystemExit(f"{what} must be 'i,j', got {text!r}") from None
    return i, j


def _mask_from_args(args, shape) -> torch.Tensor | None:
    if args.window is None and args.mask_channels is None:
        return None
    return feature_mask(shape, window=args.window, center=_pair(args.window_center, "--window-center"),
                        channels=args.mask_channels)


def _run_mask(args) -> int:
    if not args.stores or not args.out_stores or len(args.stores) != len(args.out_stores):
        raise SystemExit("--mode mask needs --stores IN... and as many --out-stores OUT...")
    for src, dst in zip(args.stores, args.out_stores):
        with FeatureStore(src) as s:
            shape = s.shape[1:]
        mask = _mask_from_args(args, shape)
        if mask is None:
            raise SystemExit("--mode mask needs --window and/or --mask-channels")
        mask_store(src, dst, mask)
        print(f"wrote {dst}: {float(mask.mean()):.3f} of {tuple(shape)} kept", file=sys.stderr)
    return 0


def _run_empty(args, params: dict) -> int:
    """``--mode invert|caricature`` on a shard without images: an empty store, a blank grid."""
    layers = args.layers or [params.get("layer")]
    one = layers[0] if len(layers) == 1 else None
    if args.out:
        write_reconstructions(
            args.out, [], np.zeros((0, 3, 0, 0), np.float32), method=f"preimage-{args.mode}",
            representation=args.feature if one is None else f"{args.feature}_{one}",
            feature=args.feature, feature_params=params if one is None else dict(params, layer=one),
            image_shard=args.shard, image_shard_sha256=sha256_file(args.shard),
            details={"mode": args.mode, "layers": layers, "runs": []},
        )
    if args.grid:
        caption = args.caption or f"Natural pre-images (Mahendran & Vedaldi 2016), {args.mode}: {args.feature}"
        image_grid(args.grid, [[None]], caption=f"{caption} (the shard {args.shard} holds no images)")
    print(f"{args.shard}: no images; wrote an empty result", file=sys.stderr)
    return 0


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "mask":
        return _run_mask(args)
    if not args.feature:
        raise SystemExit("--feature is required")
    if not args.out and not args.grid:
        raise SystemExit("give --out and/or --grid")
    params = parse_json_params(args.params)
    device = parse_device(args.device)
    keys_img, images = None, None
    if args.shard:
        keys_img, arr, _ = load_shard_arrays(args.shard)
        if args.max_images is not None:
            keys_img, arr = keys_img[: args.max_images], arr[: args.max_images]
        images = torch.from_numpy(arr.transpose(0, 3, 1, 2).astype(np.float32)) if len(keys_img) else None
    if args.mode in ("invert", "caricature") and images is None:
        if args.shard:
            return _run_empty(args, params)
        raise SystemExit(f"--mode {args.mode} needs --shard (the target images)")
    layers = args.layers or [params.get("layer")]
    units_for = _units_for(args.units_for, layers)
    if args.mode == "maximise":
        missing = [str(l) for l in layers if not units_for.get(l, args.units)]
        if missing:
            raise SystemExit(f"--mode maximise needs --units (channels of the layer) for {', '.join(missing)}")
        counts = {len(units_for.get(l, args.units)) for l in layers}
        if len(counts) > 1:
            raise ValueError(f"--units/--units-for: every tap maximises the same number of units, got {sorted(counts)}")
    position = args.position if args.position in ("mean", "center") else _pair(args.position, "--position")
    size = args.size or (images.shape[-1] if images is not None else 227)
    t0 = time.perf_counter()
    all_keys, all_imgs, grid_rows, labels, settings, trained = [], [], [], [], [], True
    for layer in layers:
        p = dict(params) if layer is None else dict(params, layer=layer)
        feature = get_feature(args.feature, **p).to(device).eval()
        trained = trained and bool(getattr(feature, "trained", True))
        tag = str(layer) if layer is not None else args.feature
        common = dict(preset=args.preset, range_=args.range_, alpha=args.alpha, beta=args.beta,
                      lambda_alpha=args.lambda_alpha, lambda_range=args.lambda_range, lambda_tv=args.lambda_tv, schedule=args.schedule,
                      lr=args.lr, iterations=args.iterations, optimizer=args.optimizer,
                      clamp=args.clamp, jitter=args.jitter, init=args.init, restarts=args.restarts,
                      objective_weight=args.objective_weight,
                      seed=args.seed, device=device)
        outs, keys = [], []
        if args.mode == "maximise":
            Z = activation_scale(feature, images, (size, size), seed=args.seed,
                                 channels=1 if is_gray_feature(feature) else 3)
            layer_units = units_for.get(layer, args.units)
            for s in range(0, len(layer_units), args.batch_size):
                u = layer_units[s: s + args.batch_size]
                res, log = preimage(feature, "maximise", units=u, position=position, image_size=(size, size),
                                    scale=Z, **common)
                check_finite_inversion(f"{tag} (maximise)", [f"{tag}/{k}" for k in log.keys], res,
                             {c: log.final(c) for c in ("energy", "objective")})
                outs.append(res)
                keys += [f"{tag}/{k}" for k in log.keys]
                print(f"{tag}: units {u}: objective/Z {np.round(log.first('objective') / Z, 2).tolist()} -> "
                      f"{np.round(log.final('objective') / Z, 2).tolist()}", file=sys.stderr)
            grid_rows.append([o for r in outs for o in r])
            labels.append(tag if layer not in units_for else f"{tag}: {', '.join(map(str, layer_units))}")
        else:
            shape = feature.output_shape(*images.shape[-2:])
            mask = _mask_from_args(args, shape)
            for s in range(0, len(images), args.batch_size):
                k = keys_img[s: s + args.batch_size]
                res, log = preimage(feature, args.mode, images=images[s: s + args.batch_size], keys=k, mask=mask,
                                    **common)
                check_finite_inversion(f"{args.shard} ({tag}, {args.mode})", [f"{tag}/{kk}" for kk in k], res,
                             {c: log.final(c) for c in ("energy", "objective")})
                outs.append(res)
                keys += [f"{tag}/{kk}" for kk in k]
                print(f"{tag}: {s + len(k)}/{len(images)} images, objective {np.mean(log.first('objective')):.4g}"
                      f" -> {np.mean(log.final('objective')):.4g}", file=sys.stderr)
            labels.append(tag)
        res_all = torch.cat(outs).to("cpu", torch.float32)
        if res_all.shape[1] == 1:
            res_all = res_all.expand(-1, 3, -1, -1)
        all_imgs.append(res_all)
        all_keys += keys
        settings.append(dict(log.settings, layer=layer, feature_params=dict(getattr(feature, "params", p))))
        if args.mode != "maximise":
            grid_rows.append(list(res_all))
    out_imgs = torch.cat(all_imgs).numpy()
    if not args.out:  # write_reconstructions checks what it writes
        check_finite(args.grid, all_keys, out_imgs, f"pre-images ({args.mode})", "nothing was written")
    if args.out:
        one = layers[0] if len(layers) == 1 else None  # the representation, when one layer was inverted
        write_reconstructions(
            args.out, all_keys, out_imgs, method=f"preimage-{args.mode}",
            representation=args.feature if one is None else f"{args.feature}_{one}",
            feature=args.feature, feature_params=params if one is None else dict(params, layer=one),
            image_shard=args.shard, image_shard_sha256=sha256_file(args.shard) if args.shard else None,
            details={"mode": args.mode, "layers": layers, "runs": settings},
        )
        print(f"wrote {args.out}: {len(all_keys)} pre-images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if args.grid:
        caption = args.caption or (f"Natural pre-images (Mahendran & Vedaldi 2016), {args.mode}: {args.feature}"
                                   + ("" if trained else ", random weights (untrained)"))
        names = [plain_layer_name(t) for t in labels]
        if args.mode == "maximise":
            rows, row_labels = grid_rows, names
            col_labels = ([f"channel {u}" for u in args.units] if not units_for
                          else [f"unit {i + 1}" for i in range(len(grid_rows[0]))])
        else:  # rows: images; columns: input, then each layer's result
            rows = [[images[i]] + [grid_rows[L][i] for L in range(len(layers))] for i in range(len(images))]
            row_labels, col_labels = None, ["Image"] + names
        image_grid(args.grid, rows, row_labels=row_labels, col_labels=col_labels, caption=caption)
        print(f"wrote {args.grid}", file=sys.stderr)
    return 0
