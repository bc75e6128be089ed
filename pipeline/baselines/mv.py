"""Mahendran & Vedaldi (CVPR 2015) inversion by regularised optimisation.

:func:`invert` minimises the energy of Mahendran & Vedaldi 2015, eq. 3
(:mod:`pipeline.baselines.terms`: the feature loss normalised by
``||Phi0||^2``, the alpha-norm and TV^beta regularisers, ``sigma`` and the
multipliers scaled to the image size) by the descent of
:mod:`pipeline.baselines.descent` (momentum schedules from the authors'
deep-goggle code, or Adam).

Each target and restart starts from unit-norm Gaussian noise seeded by
``(seed, key, restart)``, so a target's result does not depend on the rest
of its batch.  Several restarts per target run side by side; the one with
the lowest final energy is kept.  The iterate is clamped to
``mean +- clamp * B`` (a safeguard against the alpha-norm's step
instability, see :mod:`pipeline.baselines.terms`); ``clamp=None`` gives the
unprotected method.

Outputs are the pixels ``sigma x + m`` clipped to [0, 255].  Representations
of grey images (HOG, HOGb, DSIFT, LBP, SIFT) are inverted in one channel with
``m = 128`` (the authors' ``255 * rgb2gray(x) - 128``); colour ones in RGB
with ``m`` the ImageNet mean colour.

Command line: ``python -m pipeline invert-mv`` inverts the images of image
shards and writes one reconstruction store per shard
(:func:`pipeline.store.write_reconstructions`, method ``mahendran-vedaldi``)
and optionally a per-iteration CSV log.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.baselines.descent import (
    ADAM_LR,
    LOG_COLUMNS,
    MOMENTUM,
    SCHEDULES,
    InversionLog,
    check_finite,
    default_schedule,
    descend,
    make_schedule,
    noise_init,
)
from pipeline.baselines.terms import (
    ALPHA,
    B_RANGE,
    BETA,
    CLAMP,
    GRAY_MEAN,
    LAMBDA_ALPHA,
    RGB_MEAN,
    TV_SOURCES,
    AlphaNorm,
    FeatureLoss,
    State,
    Term,
    TVNorm,
    as_images,
    default_lambda_tv,
    is_gray_feature,
    scale_lambda,
    sigma_for,
)
from pipeline.features import get_feature, to_gray
from pipeline.io import atomic_path, sha256_file
from pipeline.data.commands import FirstImages
from pipeline.options import nonnegative_float, parse_device, parse_json_params, positive_float, positive_int
from pipeline.store import write_reconstructions


def invert(
    feature: torch.nn.Module,
    target: torch.Tensor | np.ndarray,
    *,
    image_size: tuple[int, int] | None = None,
    reference: torch.Tensor | np.ndarray | None = None,
    keys: Sequence[str] | None = None,
    channels: int | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    lambda_alpha: float = LAMBDA_ALPHA,
    lambda_tv: float | None = None,
    tv_source: str = "paper",
    schedule: str | Sequence[tuple[int, float]] | None = None,
    lr: float | None = None,
    iterations: int | None = None,
    momentum: float = MOMENTUM,
    clamp: float | None = CLAMP,
    optimizer: str = "momentum",
    restarts: int = 1,
    seed: int = 0,
    extra_terms: Sequence[Term] = (),
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    log_every: int = 1,
) -> tuple[torch.Tensor, InversionLog]:
    """Invert ``feature`` for a batch of targets; return ``(images, log)``.

    ``target``: images ``(N, C, H, W)`` (or ``(N, H, W, C)`` uint8 arrays) with
    values in [0, 255] when ``image_size`` is None (their features are
    computed here, and they are the pixel-space reference unless ``reference``
    is given); otherwise features ``(N, D, h, w)`` of images of size
    ``image_size = (H, W)``.  ``keys`` name the targets in the noise seeds
    (default ``"0" .. "N-1"``: pass the real keys to make a target's result
    independent of its position in the batch).  ``channels``: 1 (grey) or 3;
    default 1 for representations of grey images.  ``lambda_alpha`` and
    ``lambda_tv`` are the 227x227 values (see the module docstring);
    ``lambda_tv`` defaults to :func:`default_lambda_tv` (``tv_source``: the
    paper's text or the authors' Table 1 script for the shallow representations).  ``schedule`` defaults
    to :func:`default_schedule`.  ``extra_terms`` are added to the energy.
    ``clamp``: after every step, pixels are kept within ``clamp * B`` grey
    levels of the mean (None: never; see the module docstring).

    Returns the best restart of each target, pixels clipped to [0, 255],
    ``(N, channels, H, W)`` on ``device``, and the :class:`InversionLog`.
    ``feature`` is moved to ``device``/``dtype`` (in place, as ``Module.to``)
    and put in eval mode.
    """
    device = torch.device(device) if device is not None else _module_device(feature)
    feature = feature.to(device=device, dtype=dtype).eval()
    fname = str(getattr(feature, "name", type(feature).__name__))
    fparams = dict(getattr(feature, "params", {}) or {})

    target = as_images(target) if image_size is None else torch.as_tensor(target)
    target = target.to(device=device, dtype=dtype)
    if reference is None and image_size is None:
        reference = target
    if reference is not None:
        reference = as_images(reference).to(device=device, dtype=dtype)
    if image_size is None:
        H, W = target.shape[-2:]
        with torch.no_grad():
            phi0 = feature(target)
    else:
        H, W = int(image_size[0]), int(image_size[1])
        phi0 = target
    N = phi0.shape[0]
    if keys is None:
        keys = [str(i) for i in range(N)]
    keys = [str(k) for k in keys]
    if len(keys) != N:
        raise ValueError(f"keys: {len(keys)} keys for {N} targets")
    if channels is None:
        channels = 1 if is_gray_feature(feature) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if optimizer not in ("momentum", "adam"):
        raise ValueError(f"optimizer must be 'momentum' or 'adam', got {optimizer!r}")
    if lambda_tv is None:
        lambda_tv, _ = default_lambda_tv(fname, fparams, tv_source)
    if schedule is None:
        schedule = default_schedule(fname)
    if optimizer == "adam" and lr is None:
        lr = ADAM_LR
    segments = make_schedule(schedule, lr=lr, iterations=iterations)

    R = restarts
    B = N * R
    sigma = sigma_for(H, W)
    lam_a = scale_lambda(lambda_alpha, alpha, H, W)
    lam_v = scale_lambda(lambda_tv, beta, H, W)
    mean = torch.tensor([GRAY_MEAN] if channels == 1 else list(RGB_MEAN), device=device, dtype=dtype).view(1, -1, 1, 1)

    data = FeatureLoss(phi0.repeat_interleave(R, dim=0))
    terms: list[Term] = [data, AlphaNorm(lam_a, alpha), TVNorm(lam_v, beta), *extra_terms]
    need_phi = any(t.needs_features for t in terms)
    ref = None
    if reference is not None:
        ref = reference if reference.shape[1] == channels else _match_channels(reference, channels)
        ref = ref.repeat_interleave(R, dim=0)

    x0 = torch.stack([noise_init(seed, k, r, (channels, H, W)) for k in keys for r in range(R)])
    bound = None if clamp is None else clamp * B_RANGE / sigma
    if bound is not None:
        if not bound > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp}")
        x0 = x0.clamp(-bound, bound)
    x = x0.to(device=device, dtype=dtype).requires_grad_(True)

    def evaluate(x, grad: bool):
        image = sigma * x + mean
        phi = feature(image) if need_phi else None
        st = State(x=x, image=image, features=phi)
        vals = [t(st) for t in terms]
        energy = torch.stack(vals).sum(0)
        g = torch.autograd.grad(energy.sum(), x)[0] if grad else None
        with torch.no_grad():
            pix = (((image.clamp(0, 255) - ref) ** 2).flatten(1).mean(1).sqrt()
                   if ref is not None else torch.full_like(energy, float("nan")))
            row = torch.stack([energy, vals[0], vals[1], vals[2], pix], dim=1).detach()
        return g, row

    project = None if bound is None else (lambda v: v.clamp_(-bound, bound))
    rows, its, lrs = descend(x, lambda v: evaluate(v, True), segments, optimizer=optimizer,
                             momentum=momentum, sigma=sigma, project=project, log_every=log_every)
    it = sum(n for n, _ in segments)
    with torch.no_grad():
        _, row = evaluate(x, False)
    rows.append(row)
    its.append(it + 1)
    lrs.append(float("nan"))

    table = torch.stack(rows).to("cpu", torch.float64).numpy().reshape(len(rows), N, R, len(LOG_COLUMNS))
    values = {c: table[..., i] for i, c in enumerate(LOG_COLUMNS)}
    final_energy = values["energy"][-1]
    best = np.nan_to_num(final_energy, nan=np.inf).argmin(axis=1)
    with torch.no_grad():
        images = (sigma * x.detach() + mean).clamp(0, 255).view(N, R, channels, H, W)
        images = images[torch.arange(N, device=device), torch.as_tensor(best, device=device)]
    settings = {
        "method": "mahendran-vedaldi", "feature": fname, "feature_params": fparams,
        "alpha": alpha, "beta": beta, "lambda_alpha": lambda_alpha, "lambda_tv": lambda_tv, "tv_source": tv_source,
        "lambda_alpha_scaled": lam_a, "lambda_tv_scaled": lam_v, "sigma": sigma,
        "schedule": schedule if isinstance(schedule, str) else [list(s) for s in schedule],
        "segments": [[n, r] for n, r in segments], "iterations": it, "momentum": momentum,
        "optimizer": optimizer, "clamp": clamp, "restarts": R, "seed": seed, "channels": channels,
        "mean": mean.flatten().tolist(),
    }
    log = InversionLog(keys=keys, iteration=np.asarray(its), lr=np.asarray(lrs, dtype=np.float64),
                       values=values, best=best, settings=settings)
    return images, log


def _module_device(m: torch.nn.Module) -> torch.device:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return torch.device("cpu")


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return to_gray(x)
    return x.expand(-1, 3, -1, -1)


# --------------------------------------------------------------------------
# Command line: python -m pipeline invert-mv
# --------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", nargs="+", required=True, help="image shard(s) (.tar) whose images are the targets")
    p.add_argument("--out", nargs="+", required=True, help="output HDF5 store per shard")
    p.add_argument("--log", nargs="+", default=None, help="per-iteration CSV log per shard")
    p.add_argument("--feature", required=True, help="representation name (pipeline.features registry)")
    p.add_argument("--params", default="{}", help="representation parameters, JSON object")
    p.add_argument("--representation", default=None,
                   help="label recorded in the store (default: feature name, plus _layer for a layer)")
    p.add_argument("--iterations", type=positive_int, default=None, help="total iterations (rescales the schedule)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="learning-rate schedule (default: cnn for AlexNet, shallow otherwise)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (default: the schedule's)")
    p.add_argument("--lambda-alpha", type=float, default=LAMBDA_ALPHA, help="alpha-norm weight at 227x227")
    p.add_argument("--lambda-tv", type=float, default=None,
                   help="TV^beta weight at 227x227 (default: Mahendran & Vedaldi 2015's, see --tv-source)")
    p.add_argument("--tv-source", choices=TV_SOURCES, default="paper",
                   help="default TV weight of HOG/HOGb/DSIFT: the paper's text (lambda_V = 5) or the authors' "
                        "Table 1 script (0.5)")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help="exponent of the alpha-norm regulariser (Mahendran & Vedaldi 2015: 6)")
    p.add_argument("--beta", type=float, default=BETA,
                   help="exponent of the total-variation regulariser (Mahendran & Vedaldi 2015: 2)")
    p.add_argument("--restarts", type=positive_int, default=1, help="random restarts per target (best kept)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="targets optimised together")
    p.add_argument("--optimizer", choices=("momentum", "adam"), default="momentum",
                   help="gradient descent with momentum (the paper's) or Adam")
    p.add_argument("--clamp", type=nonnegative_float, default=CLAMP,
                   help="keep pixels within CLAMP*128 grey levels of the mean during the descent "
                        "(safeguard against the alpha-norm's step instability; 0: off)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, ... or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (per target and restart)")
    p.add_argument("--max-images", type=positive_int, default=None,
                   help="invert only the first N images of each shard (of the split, with --preceding)")
    p.add_argument("--preceding", nargs="*", metavar="MANIFEST",
                   help="per-shard manifests of the split's shards before --shard: --max-images counts the "
                        "split's first N images")
    p.add_argument("--log-every", type=positive_int, default=1, help="log every k-th iteration")
    p.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                   help="reconstruct grey (1) or colour (3); auto: grey for representations of grey images")


def run(args) -> int:
    if len(args.out) != len(args.shard):
        raise ValueError(f"--out: {len(args.out)} paths for {len(args.shard)} shards")
    if args.log is not None and len(args.log) != len(args.shard):
        raise ValueError(f"--log: {len(args.log)} paths for {len(args.shard)} shards")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    params = parse_json_params(args.params)
    device = parse_device(args.device)
    feature = get_feature(args.feature, **params).to(device).eval()
    channels = None if args.channels == "auto" else int(args.channels)
    representation = args.representation or (
        f"{args.feature}_{params['layer']}" if "layer" in params else args.feature)
    first = FirstImages(args.max_images, args.preceding)
    for i, (shard, out) in enumerate(zip(args.shard, args.out)):
        t0 = time.perf_counter()
        keys, images = first.images(shard)
        recs, logs = [], []
        for s in range(0, len(keys), args.batch_size):
            batch = torch.from_numpy(images[s: s + args.batch_size].transpose(0, 3, 1, 2).astype(np.float32))
            rec, log = invert(
                feature, batch, keys=keys[s: s + args.batch_size], channels=channels,
                alpha=args.alpha, beta=args.beta, lambda_alpha=args.lambda_alpha, lambda_tv=args.lambda_tv,
                tv_source=args.tv_source,
                schedule=args.schedule, lr=args.lr, iterations=args.iterations, optimizer=args.optimizer,
                clamp=args.clamp if args.clamp > 0 else None,
                restarts=args.restarts, seed=args.seed, device=device, log_every=args.log_every,
            )
            check_finite(str(shard), log.keys, rec, {c: log.final(c) for c in ("energy", "feature_loss")})
            rec = rec.expand(-1, 3, -1, -1) if rec.shape[1] == 1 else rec
            recs.append(rec.to("cpu", torch.float32).numpy())
            logs.append(log)
            fl = log.final("feature_loss")
            print(f"{Path(shard).name}: {s + len(log.keys)}/{len(keys)} images, "
                  f"feature loss {np.mean(fl):.4f}, pixel RMSE {np.nanmean(log.final('pixel_rmse')):.2f}",
                  file=sys.stderr)
        H, W = images.shape[1:3] if len(keys) else (0, 0)
        rec_all = np.concatenate(recs) if recs else np.zeros((0, 3, H, W), np.float32)
        settings = dict(logs[0].settings) if logs else {}
        fparams = dict(getattr(feature, "params", params))
        write_reconstructions(
            out, keys, rec_all, method="mahendran-vedaldi", representation=representation,
            feature=args.feature, feature_params=fparams,
            image_shard=str(shard), image_shard_sha256=sha256_file(shard), details={"inversion": settings},
            extra_attrs={
                "final_feature_loss": json.dumps([float(v) for lg in logs for v in lg.final("feature_loss")]),
            },
        )
        if args.log is not None:
            with atomic_path(args.log[i]) as tmp:
                for j, lg in enumerate(logs):
                    lg.write_csv(tmp, append=j > 0)
                if not logs:
                    InversionLog([], np.zeros(0), np.zeros(0), {c: np.zeros((0, 0, 0)) for c in LOG_COLUMNS},
                                 np.zeros(0, int)).write_csv(tmp)
        print(f"wrote {out}: {len(keys)} reconstructions in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
