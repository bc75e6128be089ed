"""``python -m pipeline evaluate <subcommand>``: the sub-commands that write
the papers' tables and figures (Dosovitskiy & Brox 2016, Table 2 and
Figures 3/5, 7-11; Mahendran & Vedaldi 2015 (CVPR), Table 1), the mean
training image, and perturbed feature stores.  :func:`configure_parser`
lists them; each has a ``run_*`` function.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from pipeline.evaluation import curves, figures
from pipeline.evaluation.figures import FIGURE7_COLUMNS, figure7
from pipeline.evaluation.metrics import compute_mean_image, images_nchw
from pipeline.features.perturbations import (
    HistogramSampler, TruncatedGaussianSampler, perturb, perturb_features,
)
from pipeline.evaluation.report import caption_text, markdown_page, weights_in, write_csv
from pipeline.evaluation.tables import (
    MV_TABLE1_COLUMNS, TABLE2_COLUMNS, _feature_module, compute_features,
    mv_table1, render_mv_table1_md, render_table2_md, table2,
)
from pipeline.evaluation.testset import TestSet, reconstructions_of
from pipeline.io import atomic_path, write_caption_sidecar, write_text
from pipeline.options import positive_int
from pipeline.store import derive_store
from pipeline.vocabulary import ALEXNET_LAYERS, FEATURE_TRANSFORMS, FIGURE7_CURVES, MV_TABLE1_ROWS, TABLE2_ROWS
from pipeline.decoders.modelfile import load_model
from pipeline.decoders.reconstruct import reconstruct_batch

# --------------------------------------------------------------------------- arguments


def _parse_assign(text: str, opt: str) -> tuple[str, list[str]]:
    """``NAME=a,b,c`` -> (NAME, [a, b, c])."""
    name, sep, rest = text.partition("=")
    paths = [p for p in rest.split(",") if p]
    if not sep or not name or not paths:
        raise ValueError(f"{opt} {text!r}: expected NAME=PATH[,PATH...]")
    return name.strip(), paths


def _parse_rows(items: Sequence[str] | None, opt: str, known: dict | None = None) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for it in items or []:
        name, paths = _parse_assign(it, opt)
        if known is not None and name not in known:
            raise ValueError(f"{opt} {name!r}: unknown row; choose from {', '.join(known)}")
        rows.setdefault(name, []).extend(paths)
    return rows


def _test_set_from_args(args) -> TestSet:
    if args.max_images is not None and args.max_images < 2:
        raise ValueError(f"--max-images must be >= 2, got {args.max_images}")
    ts = TestSet.load(args.images, args.max_images)
    if len(ts.keys) < 2:
        raise ValueError("--images: the normalised error needs at least 2 test images")
    return ts


# --------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="<subcommand>", required=True)

    def common(q, images_required=True):
        q.add_argument("--images", nargs="+", required=images_required, metavar="SHARD",
                       help="validation image shards (the test set)")
        q.add_argument("--max-images", type=int, help="evaluate only the first N test images")
        q.add_argument("--dataset", default="", help="dataset name for the caption and the dataset column")
        q.add_argument("--weights", help="AlexNet weights for the caption ('random' -> untrained)")
        q.add_argument("--network", help="the network for the caption (e.g. 'EfficientNet-Lite0, ImageNet weights')")
        q.add_argument("--caption", default="", help="extra caption text")
        q.add_argument("--ci", choices=("bootstrap", "t"), default="bootstrap", help="95%% interval method")
        q.add_argument("--seed", type=int, default=0, help="bootstrap / subsampling seed")

    q = sub.add_parser("table2", help="Dosovitskiy & Brox 2016, Table 2: image-space errors, PSNR, SSIM, mean-image floor")
    common(q)
    q.add_argument("--row", action="append", metavar="ROW=STORE[,STORE...]",
                   help=f"reconstruction stores of a row; ROW in {', '.join(TABLE2_ROWS)} (repeatable)")
    fl = q.add_mutually_exclusive_group()
    fl.add_argument("--mean-image", metavar="NPY", help="mean training image (H, W, 3) .npy (evaluate mean-image)")
    fl.add_argument("--train-shards", nargs="+", metavar="SHARD", help="compute the mean training image")
    fl.add_argument("--floor-from-val", action="store_true",
                    help="floor from the mean of the test images themselves (in-sample; labelled)")
    q.add_argument("--norm-max-images", type=positive_int, help="estimate N from a random subset of this many images")
    q.add_argument("--out", default="results/table2.csv", help="CSV path; the .md is written beside it")
    q.add_argument("--md", help="Markdown path (default: --out with .md)")
    q.add_argument("--html", help="optional HTML page of the table and the checks (for the Snakemake report)")
    q.add_argument("--per-image", help="optional CSV of per-image errors, PSNR and SSIM")

    q = sub.add_parser("mv-table1", help="Mahendran & Vedaldi 2015, Table 1: feature-space errors of inversions")
    common(q)
    q.add_argument("--row", action="append", metavar="ROW=STORE[,STORE...]",
                   help=f"reconstruction stores; ROW in {', '.join(MV_TABLE1_ROWS)} (repeatable)")
    q.add_argument("--features", action="append", metavar="ROW=STORE[,STORE...]",
                   help="feature stores of the test images for a row (default: computed)")
    q.add_argument("--feature", action="append", metavar="ROW=NAME", help="representation override for a row")
    q.add_argument("--params", action="append", metavar="ROW=JSON", help="representation parameters for a row")
    q.add_argument("--authors-feature", action="append", metavar="ROW=NAME",
                   help="representation of a row's authors'-metric column (default: the authors' CNN-HOG, "
                        "CNN-HOGb, CNN-DSIFT, 27-D HOG for HOGgles)")
    q.add_argument("--device", default="cpu", help="device that computes the features: cpu, cuda or cuda:N")
    q.add_argument("--batch-size", type=positive_int, default=32, help="images per feature batch")
    q.add_argument("--out", default="results/mv_table1.csv", help="CSV path; the .md is written beside it")
    q.add_argument("--md", help="Markdown path (default: --out with .md)")
    q.add_argument("--html", help="optional HTML page of the table (for the Snakemake report)")

    q = sub.add_parser("figure7", help="Dosovitskiy & Brox 2016, Figure 7: error per layer of the network")
    common(q)
    q.add_argument("--point", action="append", metavar="CURVE:LAYER=STORE[,STORE...]",
                   help=f"reconstructions of one curve at one layer; curves e.g. {', '.join(FIGURE7_CURVES)}")
    q.add_argument("--label", action="append", metavar="CURVE=TEXT", help="legend label of a curve")
    q.add_argument("--layers", nargs="+", metavar="LAYER", default=list(ALEXNET_LAYERS),
                   help="the x axis: the network's layers in order (default: AlexNet's); other layers of the "
                        "points follow in the order they are named")
    q.add_argument("--norm-max-images", type=positive_int, help="estimate N from a random subset of this many images")
    q.add_argument("--out", default="results/figure7.csv", help="CSV path; the .png is written beside it")
    q.add_argument("--png", help="PNG path (default: --out with .png)")

    q = sub.add_parser("grid", help="reconstruction grid PNG (Dosovitskiy & Brox 2016, Figures 3, 5)")
    common(q)
    q.add_argument("--column", action="append", required=True, metavar="LABEL=STORE[,STORE...]",
                   help="one column of reconstructions (repeatable, in order)")
    q.add_argument("--count", type=positive_int, default=8, help="number of images (rows)")
    q.add_argument("--keys", nargs="+", help="image keys to show (default: the first --count)")
    q.add_argument("--out", required=True, help="PNG path")

    q = sub.add_parser("mean-image",
                       help="mean image of shards -> .npy (the floor of Dosovitskiy & Brox 2016, Table 2)")
    q.add_argument("--shards", nargs="+", required=True, help="image shards whose images are averaged")
    q.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize images to H W first")
    q.add_argument("--out", required=True, help=".npy path")

    q = sub.add_parser("perturb",
                       help="perturb feature stores (binarise, dropout, ...): Dosovitskiy & Brox 2016, Figures 7 and 9")
    q.add_argument("--features", nargs="+", required=True, metavar="STORE", help="feature stores to perturb")
    q.add_argument("--kind", required=True, choices=FEATURE_TRANSFORMS,
                   help="the perturbation (Dosovitskiy & Brox 2016, section 5.2)")
    q.add_argument("--seed", type=int, default=0, help="seed of random perturbations (dropout); store i uses seed + i")
    q.add_argument("--out", nargs="+", required=True, metavar="STORE", help="one output store per input")

    q = sub.add_parser("fig8", help="Dosovitskiy & Brox 2016, Figure 8: fc8 all / top-5 only / without top-5")
    _figure_model_args(q)
    q.add_argument("--k", type=positive_int, default=5,
                   help="number of largest fc8 activations kept or removed (the paper: 5)")

    q = sub.add_parser("fig9", help="Dosovitskiy & Brox 2016, Figure 9: reconstructions from perturbed features per layer")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--kinds", nargs="+", default=["none", "binarize", "drop50"], choices=FEATURE_TRANSFORMS,
                   help="feature perturbations, one row each")

    q = sub.add_parser("fig10", help="Dosovitskiy & Brox 2016, Figure 10: interpolation between two images' features")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--pair", nargs=2, metavar=("KEY_A", "KEY_B"), help="the two image keys (default: first two)")
    q.add_argument("--steps", type=positive_int, default=8, help="interpolation steps between the two images")

    q = sub.add_parser("fig11", help="Dosovitskiy & Brox 2016, Figure 11: images from random feature vectors")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--sampler", choices=("histogram", "gaussian"), default="histogram",
                   help="random feature vectors from per-dimension histograms or a truncated Gaussian")
    q.add_argument("--contrast", type=float, help="alpha (default 2 for histogram, 1 for gaussian)")
    q.add_argument("--reference", type=positive_int, default=4096, help="reference images for fitting (paper: 4096)")

    q = sub.add_parser("training-curves", help="Dosovitskiy & Brox 2016 decoders: training loss against the step")
    q.add_argument("--run", action="append", required=True, metavar="LABEL=METRICS",
                   help="a decoder's metrics.csv (or its folder) and its legend label (repeatable, in order)")
    _caption_args(q)

    q = sub.add_parser("mv-energy", help="Mahendran & Vedaldi 2015 inversions: energy against the iteration")
    q.add_argument("--run", action="append", required=True, metavar="LABEL=LOG[,LOG...]",
                   help="per-iteration logs (invert-mv --log) of one representation and its label (repeatable)")
    _caption_args(q)


def _caption_args(q) -> None:
    q.add_argument("--out", required=True, help="PNG path (a PDF is written beside it)")
    q.add_argument("--dataset", default="", help="dataset name for the caption")
    q.add_argument("--weights", help="AlexNet weights for the caption ('random' -> untrained)")
    q.add_argument("--network", help="the network for the caption (e.g. 'EfficientNet-Lite0, ImageNet weights')")
    q.add_argument("--caption", default="", help="extra caption text")


def _figure_model_args(q, per_layer: bool = False) -> None:
    q.add_argument("--images", nargs="+", required=True, metavar="SHARD", help="validation image shards")
    if per_layer:
        q.add_argument("--model", action="append", required=True, metavar="LAYER=DIR",
                       help="trained decoder (decoder.pt or its folder) for a layer, in row order")
    else:
        q.add_argument("--model", required=True, help="trained fc8 decoder (decoder.pt or its folder)")
    q.add_argument("--count", type=positive_int, default=3, help="images / samples per row")
    q.add_argument("--keys", nargs="+", help="image keys (default: the first ones)")
    q.add_argument("--dataset", default="", help="dataset name for the caption")
    q.add_argument("--weights", help="AlexNet weights for the caption (default: from the model)")
    q.add_argument("--network", help="the network for the caption (e.g. 'EfficientNet-Lite0, ImageNet weights')")
    q.add_argument("--caption", default="", help="extra caption text")
    q.add_argument("--seed", type=int, default=0, help="seed of random choices (perturbations, samples)")
    q.add_argument("--device", default="cpu", help="device of the decoders and the encoder: cpu, cuda or cuda:N")
    q.add_argument("--out", required=True, help="PNG path")


def _caption(args, weights_seen: Iterable[str] = ()) -> str:
    weights = args.weights
    if not weights:
        seen = sorted(set(weights_seen))
        weights = ", ".join(seen) if seen else None
    return caption_text(args.dataset, weights, args.caption, network=getattr(args, "network", None))


def _md_path(args, ext: str = ".md") -> str:
    return str(Path(args.out).with_suffix(ext))


def run(args) -> int:
    try:
        return _RUNNERS[args.what](args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"evaluate {args.what}: {e}", file=sys.stderr)
        return 2


def run_table2(args) -> int:
    test = _test_set_from_args(args)
    rows = _parse_rows(args.row, "--row", TABLE2_ROWS)
    mean_image, label = None, "train"
    if args.mean_image:
        mean_image = _load_mean_image(args.mean_image)
    elif args.train_shards:
        mean_image, _ = compute_mean_image(args.train_shards, test.size)
    elif args.floor_from_val:
        mean_image, label = test.mean_image(), "val, in-sample"
    if not rows and mean_image is None:
        raise ValueError("nothing to evaluate: give --row and/or a floor (--mean-image, --train-shards, --floor-from-val)")
    per_image = [] if args.per_image else None
    records = table2(test, rows, dataset=args.dataset, mean_image=mean_image, floor_label=label, ci=args.ci,
                     seed=args.seed, norm_max_images=args.norm_max_images, per_image=per_image)
    caption = _caption(args)
    write_csv(args.out, records, TABLE2_COLUMNS)
    write_caption_sidecar(args.out, caption)
    md = render_table2_md(records, caption)
    write_text(args.md or _md_path(args), md)
    if args.html:
        write_text(args.html, markdown_page(md, "Table 2 (Dosovitskiy & Brox 2016)"))
    if per_image is not None:
        write_csv(args.per_image, per_image, ("row", "key", "error", "psnr", "ssim"))
    for r in records:
        print(f"{r['name']}: error {r['error_mean']:.3f} ± {r['error_std']:.3f} (n={r['n_images']})"
              + (f", paper {r['paper_error']}" if r["paper_error"] is not None else ""))
    return 0


def _load_mean_image(path) -> np.ndarray:
    """The (H, W, 3) mean image of ``evaluate mean-image`` (``allow_pickle=False``: data only)."""
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--mean-image {path}: not a mean image written by `evaluate mean-image` ({e}); "
                         "delete it and rerun the mean_image job") from None
    if m.ndim != 3 or m.shape[2] != 3 or not np.isfinite(m).all():
        raise ValueError(f"--mean-image {path}: expected a finite (H, W, 3) array, got {m.dtype} {m.shape}; "
                         "delete it and rerun the mean_image job")
    return m


def run_mv_table1(args) -> int:
    test = _test_set_from_args(args)
    rows = _parse_rows(args.row, "--row", MV_TABLE1_ROWS)
    if not rows:
        raise ValueError("nothing to evaluate: give --row ROW=STORE,...")
    feats = _parse_rows(args.features, "--features", MV_TABLE1_ROWS)
    names, authors = {}, {}
    for opt, items, into in (("--feature", args.feature, names), ("--authors-feature", args.authors_feature, authors)):
        for it in items or []:
            k, sep, v = it.partition("=")
            if not sep or k not in MV_TABLE1_ROWS or not v:
                raise ValueError(f"{opt} {it!r}: expected ROW=NAME with ROW in {', '.join(MV_TABLE1_ROWS)}")
            into[k] = v
    params = {}
    for it in args.params or []:
        k, sep, v = it.partition("=")
        if not sep or k not in MV_TABLE1_ROWS:
            raise ValueError(f"--params {it!r}: expected ROW=JSON with ROW in {', '.join(MV_TABLE1_ROWS)}")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"--params {k}: not valid JSON ({e})") from None
        if not isinstance(params[k], dict):
            raise ValueError(f"--params {k}: must be a JSON object, got {v!r}")
    records = mv_table1(test, rows, dataset=args.dataset, features=feats, feature_names=names,
                        feature_params=params, authors_features={k: (v, {}) for k, v in authors.items()},
                        device=args.device, batch_size=args.batch_size, ci=args.ci, seed=args.seed)
    caption = _caption(args)
    write_csv(args.out, records, MV_TABLE1_COLUMNS)
    write_caption_sidecar(args.out, caption)
    md = render_mv_table1_md(records, caption)
    write_text(args.md or _md_path(args), md)
    if args.html:
        write_text(args.html, markdown_page(md, "Table 1 (Mahendran & Vedaldi 2015)"))
    for r in records:
        print(f"{r['name']}: {r['authors_error_pct_mean']:.2f}% ± {r['authors_error_pct_std']:.2f} in the authors' "
              f"metric (paper {r['paper_error_pct']}%); {r['error_pct_mean']:.2f}% ± {r['error_pct_std']:.2f} "
              "unsquared")
    return 0


def _parse_points(items) -> dict[tuple[str, str], list[str]]:
    points: dict[tuple[str, str], list[str]] = {}
    for it in items or []:
        name, paths = _parse_assign(it, "--point")
        curve, sep, layer = name.partition(":")
        if not sep or not curve or not layer:
            raise ValueError(f"--point {it!r}: expected CURVE:LAYER=STORE[,STORE...]")
        points.setdefault((curve, layer), []).extend(paths)
    return points


def run_figure7(args) -> int:
    test = _test_set_from_args(args)
    points = _parse_points(args.point)
    if not points:
        raise ValueError("nothing to plot: give --point CURVE:LAYER=STORE,...")
    labels = dict(_parse_label(it) for it in args.label or [])
    records, weights = figure7(test, points, dataset=args.dataset, labels=labels, ci=args.ci, seed=args.seed,
                               norm_max_images=args.norm_max_images, layers=args.layers)
    caption = _caption(args, weights)
    write_csv(args.out, records, FIGURE7_COLUMNS)
    write_caption_sidecar(args.out, caption)
    png = args.png or _md_path(args, ".png")
    figures.plot_layer_errors(png, records, caption=caption, layers=figures.layer_order(points, args.layers))
    print(f"wrote {args.out} and {png}: {len(records)} points")
    return 0


def _parse_label(it: str) -> tuple[str, str]:
    k, sep, v = it.partition("=")
    if not sep or not k:
        raise ValueError(f"--label {it!r}: expected CURVE=TEXT")
    return k, v


def run_grid(args) -> int:
    test = _test_set_from_args(args)
    keys = args.keys or test.keys[: args.count]
    missing = [k for k in keys if k not in test.index]
    if missing:
        raise ValueError(f"--keys: not in the test images: {missing}")
    sel = [test.index[k] for k in keys]
    columns, weights = {}, set()
    for it in args.column:
        label, paths = _parse_assign(it, "--column")
        recs, meta = reconstructions_of(test, paths, sel)
        for m in meta:
            weights |= weights_in(m.params)
        columns[label] = [recs.get(i) for i in sel]
    caption = _caption(args, weights)
    figures.reconstruction_grid(args.out, test.take(sel), columns, caption=caption)
    print(f"wrote {args.out}: {len(sel)} images x {len(columns)} columns")
    return 0


def run_mean_image(args) -> int:
    m, n = compute_mean_image(args.shards, tuple(args.size) if args.size else None)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, m)
    print(f"wrote {args.out}: mean of {n} images, shape {m.shape}")
    return 0


def run_perturb(args) -> int:
    if len(args.out) != len(args.features):
        raise ValueError(f"--out: {len(args.out)} paths for {len(args.features)} --features stores")
    for src, dst in zip(args.features, args.out):  # each image's draw seeded by (seed, key)
        derive_store(src, dst, lambda f, keys: perturb_features(torch.from_numpy(f), keys, args.kind, args.seed).numpy(),
                     attrs={"perturbation": json.dumps({"kind": args.kind, "seed": args.seed, "per_image": "sha256(seed/key)"})},
                     dtype="float32", with_keys=True)
        print(f"wrote {dst}: {args.kind} of {src}")
    return 0


# ---- figures that need trained decoders


def load_decoder_callable(path, device="cpu", size=None):
    """(decoder callable features -> (B, 3, H, W) [0, 255], encoder module, payload) of a trained model."""
    decoder, encoder, payload = load_model(path, device)
    if encoder is None:
        feat = payload.get("feature") or {}
        if not feat.get("name"):
            raise ValueError(f"{path}: the model records no feature; cannot compute its input features")
        encoder = _feature_module(feat["name"], feat.get("params") or {}, device)
    return (lambda f: reconstruct_batch(decoder, f, size)), encoder, payload


def _figure_inputs(args):
    test = TestSet.load(args.images)
    keys = args.keys or test.keys[: args.count]
    missing = [k for k in keys if k not in test.index]
    if missing:
        raise ValueError(f"--keys: not in the test images: {missing}")
    return test, keys


def _models(args) -> dict[str, str]:
    out = {}
    for it in args.model:
        layer, sep, path = it.partition("=")
        if not sep or not layer or not path:
            raise ValueError(f"--model {it!r}: expected LAYER=PATH")
        out[layer] = path
    return out


def _model_weights(payloads) -> set[str]:
    seen = set()
    for p in payloads:
        seen |= weights_in(p.get("feature") or {})
    return seen


def run_fig8(args) -> int:
    test, keys = _figure_inputs(args)
    dec, enc, payload = load_decoder_callable(args.model, args.device, test.size)
    x = images_nchw(test.take([test.index[k] for k in keys]))
    feats = compute_features(enc, x, device=args.device)
    caption = _caption(args, _model_weights([payload]))
    figures.figure_topk(args.out, test.take([test.index[k] for k in keys]), feats, dec, k=args.k, caption=caption)
    print(f"wrote {args.out}")
    return 0


def _per_layer(args, test, keys):
    layers, payloads = {}, []
    x = images_nchw(test.take([test.index[k] for k in keys]))
    for layer, path in _models(args).items():
        dec, enc, payload = load_decoder_callable(path, args.device, test.size)
        payloads.append(payload)
        layers[layer] = (dec, enc, x)
    return layers, payloads


def run_fig9(args) -> int:
    test, keys = _figure_inputs(args)
    layers, payloads = _per_layer(args, test, keys)
    rows = {l: (compute_features(enc, x, device=args.device), dec) for l, (dec, enc, x) in layers.items()}
    caption = _caption(args, _model_weights(payloads))
    figures.figure_perturbed(args.out, test.take([test.index[k] for k in keys]), rows, kinds=args.kinds,
                             seed=args.seed, caption=caption)
    print(f"wrote {args.out}")
    return 0


def run_fig10(args) -> int:
    test = TestSet.load(args.images)
    pair = args.pair or test.keys[:2]
    missing = [k for k in pair if k not in test.index]
    if len(pair) < 2 or missing:
        raise ValueError(f"--pair: need two test image keys, missing {missing}")
    layers, payloads = _per_layer(args, test, list(pair))
    rows = {}
    for l, (dec, enc, x) in layers.items():
        f = compute_features(enc, x, device=args.device)
        rows[l] = (f[0], f[1], dec)
    caption = _caption(args, _model_weights(payloads))
    figures.figure_interpolation(args.out, rows, steps=args.steps, caption=caption,
                                 endpoints=test.take([test.index[k] for k in pair]))
    print(f"wrote {args.out}")
    return 0


def run_fig11(args) -> int:
    test = TestSet.load(args.images)
    ref_keys = test.keys[: args.reference]
    layers, payloads = _per_layer(args, test, ref_keys)
    rows = {}
    for l, (dec, enc, x) in layers.items():
        f = compute_features(enc, x, device=args.device)
        if args.sampler == "histogram":
            s = HistogramSampler(contrast=2.0 if args.contrast is None else args.contrast).fit(f)
        else:
            s = TruncatedGaussianSampler(contrast=1.0 if args.contrast is None else args.contrast).fit(f)
        rows[l] = (dec, s)
    caption = _caption(args, _model_weights(payloads))
    figures.figure_random(args.out, rows, count=args.count, seed=args.seed,
                          caption=f"{caption} Sampler: {args.sampler}.".strip())
    print(f"wrote {args.out}")
    return 0


def run_curves(args) -> int:
    """``training-curves`` and ``mv-energy``: read and drawn by :mod:`pipeline.evaluation.curves`."""
    runs = dict(_parse_assign(it, "--run") for it in args.run)
    what = curves.FIGURES[args.what](args.out, runs, caption_text(args.dataset, args.weights, args.caption,
                                                                   network=args.network))
    print(f"wrote {args.out}: {what}")
    return 0


_RUNNERS: dict[str, Callable] = {
    "table2": run_table2, "mv-table1": run_mv_table1, "figure7": run_figure7, "grid": run_grid,
    "mean-image": run_mean_image, "perturb": run_perturb, "fig8": run_fig8, "fig9": run_fig9,
    "fig10": run_fig10, "fig11": run_fig11, "training-curves": run_curves, "mv-energy": run_curves,
}
