"""Natural pre-images (seed 002): inversion, activation maximisation, caricatures.

Mahendran & Vedaldi (IJCV 2016) pose three visualisations as one regularised
energy minimisation over an image.  We use the variables of
:mod:`pipeline.baselines.terms`: ``x`` is the normalised, mean-subtracted image, the
pixels are ``sigma x + m`` (``sigma = sigma_for(H, W)``, ``m`` the ImageNet
mean colour, or 128 for grey representations), and

    E(x) = l(Phi(tau(sigma x + m))) + lambda_r R_range(x) + lambda_V R_TV^beta(x)

* ``tau`` is *jitter*: a random circular translation of the image by up to
  ``J`` pixels in each direction, redrawn at every iteration from a generator
  seeded by ``seed`` (the same shifts for every target of a batch, so a
  target's result does not depend on its batch).  ``J = 0`` (no jitter) for
  inversion; for maximisation and caricatures 4 pixels at 227x227, scaled to
  the image size (``max(1, round(4 min(H, W) / 227))``) by default.
* Data terms ``l`` (``M`` a 0/1 mask on the representation, see masks below):

  - ``invert``:     ``||M (Phi - Phi0)||^2 / ||M Phi0||^2``
    (:class:`pipeline.baselines.terms.FeatureLoss`, seed 004 eq. 3);
  - ``maximise``:   ``-<e, Phi> / Z`` with ``e`` selecting one channel ``k``
    of the layer: the unit at one position (``e = 1`` there), or the channel
    mean (``e = 1 / (h w)`` on channel ``k``).  ``Z`` is the RMS of the
    layer's activations over reference images (the given natural images, or
    8 seeded noise images as the initialisation draws them), so the data term
    is in units of the layer's typical activation whatever the network's
    scale;
  - ``caricature``: ``-<M Phi0, Phi> / ||M Phi0||^2`` with ``Phi0 = Phi(x0)``
    the image's own code: at ``x = x0`` the term is -1; lower values
    exaggerate what the (masked) layer sees.  Initialised from the image.

* Range regulariser (``range``):

  - ``alpha`` (seed 004, :class:`pipeline.baselines.terms.AlphaNorm`):
    ``sum_{c,u,v} |x_c(u,v)|^alpha``, iterate clamped to ``|x_c| <= clamp B``
    (default clamp 4, B = 128 grey levels);
  - ``bounded`` (seed 002's bounded range): the alpha-norm of each pixel's
    colour vector, ``sum_{u,v} (sum_c x_c(u,v)^2)^(alpha/2)``, and the hard
    constraint ``||x(u,v)|| <= clamp B`` enforced by projection (default
    clamp sqrt(3): the half-diagonal of the RGB cube, so every in-range
    colour is feasible).  Its multiplier defaults to
    ``lambda_alpha / 3^(alpha/2 - 1)``, so a grey pixel costs the same under
    both.  Default for ``maximise`` and ``caricature``; ``alpha`` for ``invert``.

* ``R_TV^beta`` is :class:`pipeline.baselines.terms.TVNorm`.  ``lambda_alpha`` and
  ``lambda_tv`` are 227x227 values scaled to the image size as in
  :mod:`pipeline.baselines.terms`; ``lambda_tv`` defaults to seed 004's value for the
  layer (:func:`pipeline.baselines.terms.default_lambda_tv`).

Optimisation: the schedules of :mod:`pipeline.baselines.descent` (gradient descent with
momentum, reset at each rate change) or Adam with the step in grey levels
(default for ``maximise``/``caricature``, whose linear data terms have an
arbitrary gradient scale: :data:`PREIMAGE_SCHEDULE`, 300 iterations at 8 grey
levels then 100 at 0.8, rescaled by ``iterations``).  Noise initialisation per (seed, key, restart) as
in :func:`pipeline.baselines.mv.invert`; several restarts per target run side by
side and the one with the lowest final energy (without jitter) is kept.

Masks (seed 004, Figures 9 and 10)
----------------------------------
:func:`feature_mask` builds a 0/1 mask ``(1, D, h, w)`` on a layer: a spatial
window of neurons (e.g. the central 5x5) and/or a subset of channels (a range
``"a:b"``, a list, or filter group ``"g/G"`` of ``G`` equal contiguous groups:
AlexNet's two GPU groups are ``"1/2"`` and ``"2/2"``).  In the optimisation
it enters the data term (only the masked neurons are matched or
exaggerated).  For the *learned* inversion, a decoder is trained and applied
on masked codes: :func:`mask_store` writes a copy of a feature store with the
mask applied (zeros elsewhere), which ``python -m pipeline train --features``
and ``reconstruct --features`` read like any store.  (``python -m pipeline
preimage --mode mask`` does it from the command line.)

Command line: ``python -m pipeline preimage --mode invert|maximise|caricature``
writes an HDF5 store of the pre-images (float16 pixels in [0, 255],
``(N, 3, H, W)``, :func:`pipeline.store.write_store`, attribute ``method =
preimage-<mode>``) and a PNG grid, over one or several layers (``--layers``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pipeline.baselines.descent import (
    ADAM_LR,
    MOMENTUM,
    SCHEDULES,
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
    REF_SIZE,
    RGB_MEAN,
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

MODES = ("invert", "maximise", "caricature")
RANGES = ("alpha", "bounded")
#: Default jitter at 227x227 (pixels) per mode; scaled to the image size (at least 1 where nonzero).
JITTER = {"invert": 0, "maximise": 4, "caricature": 4}
#: Clamp of the bounded range, in units of B: the half-diagonal of the RGB cube.
CLAMP_BOUNDED = math.sqrt(3.0)
#: Schedule of maximise/caricature (with Adam): a flat rate, then a tenth of it for the last quarter.
PREIMAGE_SCHEDULE = ((300, 1.0), (100, 0.1))
#: Adam step of maximise/caricature, grey levels per iteration.
PREIMAGE_ADAM_LR = 8.0
#: Noise images for the activation scale Z when no natural images are given.
SCALE_SAMPLES = 8
LOG_COLUMNS = ("energy", "data", "range_term", "tv_term", "objective")


# --------------------------------------------------------------------------
# Energy terms
# --------------------------------------------------------------------------


class BoundedRange(Term):
    """``lambda * sum_{u,v} (sum_c x_c(u,v)^2)^(alpha/2)``: alpha-norm of the pixels' colour vectors."""

    name = "range_term"

    def __init__(self, lam: float, alpha: float = ALPHA):
        if alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {alpha}")
        self.lam, self.alpha = float(lam), float(alpha)

    def __call__(self, state: State) -> torch.Tensor:
        n2 = (state.x * state.x).sum(1)
        v = n2 ** int(self.alpha // 2) if self.alpha % 2 == 0 else n2.clamp_min(1e-20).pow(self.alpha / 2)
        return self.lam * v.flatten(1).sum(1)


class InnerProduct(Term):
    """``-<d, Phi> / Z`` per sample: activation maximisation (``d`` one unit or channel) and
    caricatures (``d = M Phi0``, ``Z = ||M Phi0||^2``)."""

    name = "inner_product"
    needs_features = True

    def __init__(self, direction: torch.Tensor, scale: torch.Tensor | float):
        self.direction = direction.detach()
        s = torch.as_tensor(scale, dtype=direction.dtype, device=direction.device)
        self.scale = s.expand(direction.shape[0]).clamp_min(1e-12)

    def objective(self, features: torch.Tensor) -> torch.Tensor:
        """``<d, Phi>`` (unnormalised), (B,)."""
        return (features * self.direction).flatten(1).sum(1)

    def __call__(self, state: State) -> torch.Tensor:
        return -self.objective(state.features) / self.scale


# --------------------------------------------------------------------------
# Masks and targets
# --------------------------------------------------------------------------


def parse_channels(spec, depth: int) -> list[int]:
    """Channel indices from ``"a:b"`` (a slice), ``"g/G"`` (group g of G, 1-based) or a list of ints."""
    if isinstance(spec, str):
        s = spec.strip()
        if "/" in s:
            g, _, n = s.partition("/")
            g, n = int(g), int(n)
            if n < 1 or not 1 <= g <= n or depth % n:
                raise ValueError(f"channels {spec!r}: group g/G needs 1 <= g <= G and G dividing {depth} channels")
            size = depth // n
            return list(range((g - 1) * size, g * size))
        if ":" in s:
            a, _, b = s.partition(":")
            idx = list(range(depth))[slice(int(a) if a else None, int(b) if b else None)]
        else:
            idx = [int(t) for t in s.split(",") if t.strip()]
    else:
        idx = [int(t) for t in spec]
    if not idx or min(idx) < 0 or max(idx) >= depth:
        raise ValueError(f"channels {spec!r}: need indices in [0, {depth}), got {idx[:8]}")
    return idx


def feature_mask(shape: Sequence[int], *, window: int | Sequence[int] | None = None,
                 center: Sequence[int] | None = None, channels=None) -> torch.Tensor:
    """0/1 mask ``(1, D, h, w)`` on a representation of shape ``(D, h, w)``.

    ``window``: keep only a ``k x k`` (or ``(kh, kw)``) window of positions,
    centred at ``center = (i, j)`` (default the map's centre ``(h // 2, w // 2)``),
    cut at the borders.  ``channels``: keep only these channels
    (:func:`parse_channels`).  Both: their intersection.  Neither: all ones.
    """
    D, h, w = (int(v) for v in shape)
    m = torch.ones(1, D, h, w)
    if window is not None:
        kh, kw = (int(window), int(window)) if np.isscalar(window) else (int(window[0]), int(window[1]))
        if kh < 1 or kw < 1:
            raise ValueError(f"window must be positive, got {window!r}")
        ci, cj = (h // 2, w // 2) if center is None else (int(center[0]), int(center[1]))
        if not (0 <= ci < h and 0 <= cj < w):
            raise ValueError(f"center {center!r} is outside the {h}x{w} map")
        i0, j0 = ci - (kh - 1) // 2, cj - (kw - 1) // 2
        sp = torch.zeros(h, w)
        sp[max(i0, 0):max(i0 + kh, 0), max(j0, 0):max(j0 + kw, 0)] = 1
        m = m * sp
    if channels is not None:
        ch = torch.zeros(D)
        ch[parse_channels(channels, D)] = 1
        m = m * ch.view(1, D, 1, 1)
    return m


def unit_direction(shape: Sequence[int], channel: int, position="mean") -> torch.Tensor:
    """``e`` of the maximisation objective ``<e, Phi>``, shape ``(D, h, w)``.

    ``position``: ``"mean"`` (the channel's mean over the map), ``"center"``
    (the unit at ``(h // 2, w // 2)``) or ``(i, j)``.
    """
    D, h, w = (int(v) for v in shape)
    if not 0 <= int(channel) < D:
        raise ValueError(f"unit channel {channel} is outside [0, {D})")
    e = torch.zeros(D, h, w)
    if position == "mean":
        e[int(channel)] = 1.0 / (h * w)
    else:
        i, j = (h // 2, w // 2) if position == "center" else (int(position[0]), int(position[1]))
        if not (0 <= i < h and 0 <= j < w):
            raise ValueError(f"unit position {position!r} is outside the {h}x{w} map")
        e[int(channel), i, j] = 1.0
    return e


def activation_scale(feature: torch.nn.Module, images: torch.Tensor | None, image_size=None, *,
                     channels: int = 3, seed: int = 0, batch: int = 8) -> float:
    """``Z``: RMS of the layer's activations over ``images`` ([0, 255], (N, C, H, W)),
    or over :data:`SCALE_SAMPLES` noise images drawn like the initialisation when None."""
    dev = next((t.device for t in list(feature.parameters()) + list(feature.buffers())), torch.device("cpu"))
    if images is None:
        H, W = image_size
        sigma = sigma_for(H, W)
        mean = torch.tensor([GRAY_MEAN] if channels == 1 else list(RGB_MEAN)).view(1, -1, 1, 1)
        x = torch.stack([noise_init(seed, "activation-scale", i, (channels, H, W)) for i in range(SCALE_SAMPLES)])
        images = (sigma * x.float() + mean).clamp(0, 255)
    s2, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            y = feature(images[i:i + batch].to(dev, torch.float32)).double()
            s2 += float((y * y).sum())
            n += y.numel()
    return math.sqrt(s2 / max(n, 1))


# --------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------


@dataclass
class PreimageLog:
    """Per-iteration values, arrays (T, N, R): :data:`LOG_COLUMNS`; ``best[n]`` the restart kept.

    ``objective`` is ``<d, Phi>`` (maximise, caricature) or the feature loss
    (invert).  The last row is the final iterate, evaluated without jitter.
    """

    keys: list[str]
    iteration: np.ndarray
    values: dict[str, np.ndarray]
    best: np.ndarray
    settings: dict = field(default_factory=dict)

    def final(self, column: str) -> np.ndarray:
        v = self.values[column][-1]
        return v[np.arange(len(self.best)), self.best]

    def first(self, column: str) -> np.ndarray:
        v = self.values[column][0]
        return v[np.arange(len(self.best)), self.best]


def _project(x: torch.Tensor, bound: float, range_: str) -> None:
    with torch.no_grad():
        if range_ == "alpha":
            x.clamp_(-bound, bound)
        else:
            n = x.norm(dim=1, keepdim=True)
            x.mul_((bound / n.clamp_min(1e-20)).clamp(max=1.0))


def preimage(
    feature: torch.nn.Module,
    mode: str,
    *,
    images: torch.Tensor | np.ndarray | None = None,
    units: Sequence[int] | None = None,
    position="mean",
    image_size: tuple[int, int] | None = None,
    mask: torch.Tensor | None = None,
    keys: Sequence[str] | None = None,
    channels: int | None = None,
    range_: str | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    lambda_alpha: float = LAMBDA_ALPHA,
    lambda_range: float | None = None,
    lambda_tv: float | None = None,
    schedule: str | Sequence[tuple[int, float]] | None = None,
    lr: float | None = None,
    iterations: int | None = None,
    optimizer: str | None = None,
    momentum: float = MOMENTUM,
    clamp: float | None = None,
    jitter: int | None = None,
    init: str | None = None,
    scale: float | None = None,
    restarts: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    log_every: int = 1,
) -> tuple[torch.Tensor, PreimageLog]:
    """Natural pre-images of ``feature`` (see the module docstring); returns ``(images, log)``.

    ``invert`` / ``caricature``: ``images`` are the targets ``(N, C, H, W)`` in
    [0, 255] (or ``(N, H, W, C)`` arrays).  ``maximise``: ``units`` are channel
    indices of the layer (one target each) at ``position`` ("mean", "center"
    or ``(i, j)``) in images of ``image_size``; ``images``, if given, only set
    the activation scale ``Z`` (or give ``scale``).  ``mask`` ``(1|N, D, h, w)``
    restricts the data term (invert, caricature).  ``init``: "noise"
    (default) or "image" (caricature's default).  ``range_``, ``optimizer``,
    ``jitter``, ``clamp``: defaults per mode (module docstring).  Returns the
    best restart of each target, ``(N, channels, H, W)`` in [0, 255] on
    ``device``, and a :class:`PreimageLog`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = torch.device(device) if device is not None else next(
        (t.device for t in list(feature.parameters()) + list(feature.buffers())), torch.device("cpu"))
    feature = feature.to(device=device, dtype=dtype).eval()
    fname = str(getattr(feature, "name", type(feature).__name__))
    fparams = dict(getattr(feature, "params", {}) or {})
    range_ = range_ or ("alpha" if mode == "invert" else "bounded")
    if range_ not in RANGES:
        raise ValueError(f"range must be one of {RANGES}, got {range_!r}")
    optimizer = optimizer or ("momentum" if mode == "invert" else "adam")
    if optimizer not in ("momentum", "adam"):
        raise ValueError(f"optimizer must be 'momentum' or 'adam', got {optimizer!r}")
    jitter_default = jitter is None
    if jitter is not None and int(jitter) < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    jitter = 0 if jitter is None else int(jitter)
    init = init or ("image" if mode == "caricature" else "noise")
    if init not in ("noise", "image"):
        raise ValueError(f"init must be 'noise' or 'image', got {init!r}")
    if clamp is None:
        clamp = CLAMP if range_ == "alpha" else CLAMP_BOUNDED
    if restarts < 1 or log_every < 1:
        raise ValueError(f"restarts and log_every must be >= 1, got {restarts}, {log_every}")
    if channels is None:
        channels = 1 if is_gray_feature(feature) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    imgs = None if images is None else as_images(images).to(device=device, dtype=dtype)
    if imgs is not None and imgs.shape[1] != channels:
        from pipeline.features import to_gray

        imgs = to_gray(imgs) if channels == 1 else imgs.expand(-1, 3, -1, -1)
    if mode == "maximise":
        if not units:
            raise ValueError("maximise: give units (channel indices of the layer)")
        if image_size is None:
            if imgs is None:
                raise ValueError("maximise: give image_size (H, W)")
            image_size = tuple(imgs.shape[-2:])
        H, W = int(image_size[0]), int(image_size[1])
        if mask is not None:
            raise ValueError("maximise: a mask applies to invert and caricature targets, not to units")
        if init == "image":
            raise ValueError("maximise: init must be 'noise'")
        shape = feature.output_shape(H, W)
        N = len(units)
        direction = torch.stack([unit_direction(shape, u, position) for u in units]).to(device, dtype)
        if scale is None:
            scale = activation_scale(feature, imgs, (H, W), channels=channels, seed=seed)
        data_scale = torch.tensor(float(scale), device=device, dtype=dtype)
        default_keys = [f"c{int(u):04d}" for u in units]
    else:
        if imgs is None:
            raise ValueError(f"{mode}: give the target images")
        H, W = imgs.shape[-2:]
        N = imgs.shape[0]
        with torch.no_grad():
            phi0 = feature(imgs)
        if mask is not None:
            mask = mask.to(device, dtype)
            if mask.dim() != 4 or mask.shape[1:] != phi0.shape[1:] or mask.shape[0] not in (1, N):
                raise ValueError(f"mask must be (1|N, {', '.join(map(str, phi0.shape[1:]))}), "
                                 f"got {tuple(mask.shape)}")
        default_keys = [str(i) for i in range(N)]
    keys = default_keys if keys is None else [str(k) for k in keys]
    if len(keys) != N:
        raise ValueError(f"keys: {len(keys)} keys for {N} targets")

    if jitter_default and JITTER[mode]:
        jitter = max(1, round(JITTER[mode] * min(H, W) / REF_SIZE))
    R = restarts
    sigma = sigma_for(H, W)
    mean = torch.tensor([GRAY_MEAN] if channels == 1 else list(RGB_MEAN), device=device, dtype=dtype).view(1, -1, 1, 1)
    if lambda_tv is None:
        lambda_tv, _ = default_lambda_tv(fname, fparams)
    if lambda_range is None:
        lambda_range = lambda_alpha if range_ == "alpha" else lambda_alpha / 3.0 ** (alpha / 2.0 - 1.0)
    lam_r = scale_lambda(lambda_range, alpha, H, W)
    lam_v = scale_lambda(lambda_tv, beta, H, W)
    if schedule is None:
        schedule = default_schedule(fname) if mode == "invert" else PREIMAGE_SCHEDULE
    if optimizer == "adam" and lr is None:
        lr = ADAM_LR if mode == "invert" else PREIMAGE_ADAM_LR
    segments = make_schedule(schedule, lr=lr, iterations=iterations)

    rep = lambda t: t.repeat_interleave(R, dim=0)  # noqa: E731
    if mode == "invert":
        m = None if mask is None else rep(mask.expand(N, -1, -1, -1))
        data: Term = FeatureLoss(rep(phi0), mask=m)
    elif mode == "caricature":
        d = phi0 if mask is None else phi0 * mask
        data = InnerProduct(rep(d), rep((d * d).flatten(1).sum(1)))
    else:
        data = InnerProduct(rep(direction), data_scale)
    rng_term: Term = AlphaNorm(lam_r, alpha) if range_ == "alpha" else BoundedRange(lam_r, alpha)
    terms: list[Term] = [data, rng_term, TVNorm(lam_v, beta)]

    bound = clamp * B_RANGE / sigma if clamp else None
    if init == "image":
        x0 = rep((imgs - mean) / sigma)
    else:
        x0 = torch.stack([noise_init(seed, k, r, (channels, H, W)) for k in keys for r in range(R)])
    x = x0.to(device=device, dtype=dtype).clone()
    if bound is not None:
        _project(x, bound, range_)
    x.requires_grad_(True)
    gen = torch.Generator().manual_seed(int(seed))

    def evaluate(x, grad: bool, shift=None):
        image = sigma * x + mean
        seen = torch.roll(image, shifts=shift, dims=(2, 3)) if shift else image
        phi = feature(seen)
        st = State(x=x, image=image, features=phi)
        vals = [t(st) for t in terms]
        energy = torch.stack(vals).sum(0)
        g = torch.autograd.grad(energy.sum(), x)[0] if grad else None
        with torch.no_grad():
            obj = data.objective(phi) if isinstance(data, InnerProduct) else vals[0]
            row = torch.stack([energy, *vals, obj], dim=1).detach()
        return g, row

    def shift():
        if not jitter:
            return None
        s = torch.randint(-jitter, jitter + 1, (2,), generator=gen)
        return (int(s[0]), int(s[1]))

    project = None if bound is None else (lambda v: _project(v, bound, range_))
    rows, its, _ = descend(x, lambda v: evaluate(v, True, shift()), segments, optimizer=optimizer,
                           momentum=momentum, sigma=sigma, project=project, log_every=log_every)
    it = sum(n for n, _ in segments)
    with torch.no_grad():
        _, row = evaluate(x, False)
    rows.append(row)
    its.append(it + 1)

    table = torch.stack(rows).to("cpu", torch.float64).numpy().reshape(len(rows), N, R, len(LOG_COLUMNS))
    values = {c: table[..., i] for i, c in enumerate(LOG_COLUMNS)}
    best = np.nan_to_num(values["energy"][-1], nan=np.inf).argmin(axis=1)
    with torch.no_grad():
        out = (sigma * x.detach() + mean).clamp(0, 255).view(N, R, channels, H, W)
        out = out[torch.arange(N, device=device), torch.as_tensor(best, device=device)]
    settings = {
        "method": f"preimage-{mode}", "mode": mode, "feature": fname, "feature_params": fparams,
        "range": range_, "alpha": alpha, "beta": beta, "lambda_range": lambda_range, "lambda_tv": lambda_tv,
        "lambda_range_scaled": lam_r, "lambda_tv_scaled": lam_v, "sigma": sigma,
        "schedule": schedule if isinstance(schedule, str) else [list(s) for s in schedule],
        "segments": [[n, r] for n, r in segments], "iterations": it, "optimizer": optimizer,
        "momentum": momentum, "clamp": clamp, "jitter": jitter, "init": init, "restarts": R, "seed": seed,
        "channels": channels, "mean": mean.flatten().tolist(),
        "masked": mask is not None,
    }
    if mode == "maximise":
        settings.update(units=[int(u) for u in units], position=position if isinstance(position, str)
                        else [int(p) for p in position], activation_scale=float(scale))
    log = PreimageLog(keys=keys, iteration=np.asarray(its), values=values, best=best, settings=settings)
    return out, log


# --------------------------------------------------------------------------
# Masked feature stores (learned inversion from part of a representation)
# --------------------------------------------------------------------------


def mask_store(src, dst, mask: torch.Tensor | np.ndarray, *, dtype: str | None = None) -> None:
    """Copy the feature store ``src`` to ``dst`` with ``mask`` (``(1, D, h, w)`` 0/1) applied.

    Keys, shard provenance and parameters are kept; ``params["mask"]``
    records the kept fraction and the mask's nonzero channel and position
    ranges.  Train a decoder on masked training stores and reconstruct from
    masked validation stores to get the learned counterpart of seed 004's
    Figures 9 and 10.
    """
    from pipeline.store import FeatureStore, write_store

    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    with FeatureStore(src) as s:
        feats = s.all()
        keys = list(s.keys)
        attrs = dict(s.attrs)
        params = dict(s.params)
        store_dtype = dtype or ("float16" if s.dtype == np.float16 else "float32")
    if m.ndim != 4 or m.shape[0] != 1 or m.shape[1:] != feats.shape[1:]:
        raise ValueError(f"mask must be (1, {', '.join(map(str, feats.shape[1:]))}), got {m.shape}")
    nz = np.nonzero(m[0])
    params["mask"] = {
        "kept_fraction": float(m.mean()),
        "channels": [int(nz[0].min()), int(nz[0].max()) + 1] if len(nz[0]) else [],
        "rows": [int(nz[1].min()), int(nz[1].max()) + 1] if len(nz[0]) else [],
        "cols": [int(nz[2].min()), int(nz[2].max()) + 1] if len(nz[0]) else [],
    }
    extra = {k: v for k, v in attrs.items() if k not in ("feature", "params", "code_version",
                                                           "image_shard", "image_shard_sha256")}
    write_store(dst, keys, feats * m, feature=str(attrs.get("feature", "")), params=params,
                image_shard=str(attrs.get("image_shard", "")) or None,
                image_shard_sha256=str(attrs.get("image_shard_sha256", "")) or None,
                dtype=store_dtype, extra_attrs=extra)


# --------------------------------------------------------------------------
# Command line: python -m pipeline preimage
# --------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", required=True, choices=MODES + ("mask",),
                   help="invert, maximise, caricature; mask: write masked copies of feature stores")
    p.add_argument("--feature", help="representation name (pipeline.features registry)")
    p.add_argument("--params", default="{}", help="representation parameters, JSON object")
    p.add_argument("--layers", nargs="+", default=None,
                   help="run for each of these layers (sets params['layer']); default: params as given")
    p.add_argument("--shard", help="image shard: targets (invert, caricature) or the activation scale (maximise)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images of the shard")
    p.add_argument("--units", nargs="+", type=int, default=None, help="maximise: channels of the layer")
    p.add_argument("--position", default="mean", help="maximise: 'mean' (channel), 'center' or 'i,j' (one unit)")
    p.add_argument("--size", type=int, default=None, help="maximise: image size (default: the shard's, else 227)")
    p.add_argument("--window", type=int, default=None, help="mask: keep a central KxK window of the layer")
    p.add_argument("--window-center", default=None, help="mask: window centre 'i,j' (default: the map centre)")
    p.add_argument("--mask-channels", default=None, help="mask: channels 'a:b', 'g/G' (filter group) or 'i,j,k'")
    p.add_argument("--out", help="HDF5 store of the pre-images (float16 pixels, (N, 3, H, W))")
    p.add_argument("--grid", help="PNG grid of the results")
    p.add_argument("--caption", default="", help="caption of the PNG grid")
    p.add_argument("--range", dest="range_", choices=RANGES, default=None,
                   help="range regulariser (default: alpha for invert, bounded otherwise)")
    p.add_argument("--lambda-alpha", type=float, default=LAMBDA_ALPHA, help="alpha-norm weight at 227x227")
    p.add_argument("--lambda-range", type=float, default=None, help="range weight at 227x227 (overrides)")
    p.add_argument("--lambda-tv", type=float, default=None, help="TV weight at 227x227 (default: seed 004's)")
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--beta", type=float, default=BETA)
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None)
    p.add_argument("--iterations", type=int, default=None, help="total iterations (rescales the schedule)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("momentum", "adam"), default=None)
    p.add_argument("--clamp", type=float, default=None, help="range bound in units of 128 grey levels (0: off)")
    p.add_argument("--jitter", type=int, default=None, help="max translation in pixels per iteration")
    p.add_argument("--init", choices=("noise", "image"), default=None)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16, help="targets optimised together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--stores", nargs="+", default=None, help="mask mode: input feature stores")
    p.add_argument("--out-stores", nargs="+", default=None, help="mask mode: output stores, one per input")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available")
    return d


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
    from pipeline.store import FeatureStore

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


def run(args) -> int:
    from pipeline.features import get_feature
    from pipeline.io import sha256_file
    from pipeline.data.shards import load_shard_arrays
    from pipeline.store import write_store

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "mask":
        return _run_mask(args)
    if not args.feature:
        raise SystemExit("--feature is required")
    if not args.out and not args.grid:
        raise SystemExit("give --out and/or --grid")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {args.params!r}")
    device = _device(args.device)
    keys_img, images = None, None
    if args.shard:
        keys_img, arr, _ = load_shard_arrays(args.shard)
        if args.max_images is not None:
            keys_img, arr = keys_img[: args.max_images], arr[: args.max_images]
        images = torch.from_numpy(arr.transpose(0, 3, 1, 2).astype(np.float32))
    if args.mode in ("invert", "caricature") and images is None:
        raise SystemExit(f"--mode {args.mode} needs --shard (the target images)")
    if args.mode == "maximise" and not args.units:
        raise SystemExit("--mode maximise needs --units (channels of the layer)")
    position = args.position if args.position in ("mean", "center") else _pair(args.position, "--position")
    size = args.size or (images.shape[-1] if images is not None else 227)
    layers = args.layers or [params.get("layer")]
    t0 = time.perf_counter()
    all_keys, all_imgs, grid_rows, labels, settings, trained = [], [], [], [], [], True
    for layer in layers:
        p = dict(params) if layer is None else dict(params, layer=layer)
        feature = get_feature(args.feature, **p).to(device).eval()
        trained = trained and bool(getattr(feature, "trained", True))
        tag = str(layer) if layer is not None else args.feature
        common = dict(range_=args.range_, alpha=args.alpha, beta=args.beta, lambda_alpha=args.lambda_alpha,
                      lambda_range=args.lambda_range, lambda_tv=args.lambda_tv, schedule=args.schedule,
                      lr=args.lr, iterations=args.iterations, optimizer=args.optimizer,
                      clamp=args.clamp, jitter=args.jitter, init=args.init, restarts=args.restarts,
                      seed=args.seed, device=device)
        outs, keys = [], []
        if args.mode == "maximise":
            Z = activation_scale(feature, images, (size, size), seed=args.seed,
                                 channels=1 if is_gray_feature(feature) else 3)
            for s in range(0, len(args.units), args.batch_size):
                u = args.units[s: s + args.batch_size]
                res, log = preimage(feature, "maximise", units=u, position=position, image_size=(size, size),
                                    scale=Z, **common)
                outs.append(res)
                keys += [f"{tag}/{k}" for k in log.keys]
                print(f"{tag}: units {u}: objective/Z {np.round(log.first('objective') / Z, 2).tolist()} -> "
                      f"{np.round(log.final('objective') / Z, 2).tolist()}", file=sys.stderr)
            grid_rows.append([o for r in outs for o in r])
            labels.append(tag)
        else:
            shape = feature.output_shape(*images.shape[-2:])
            mask = _mask_from_args(args, shape)
            for s in range(0, len(images), args.batch_size):
                k = keys_img[s: s + args.batch_size]
                res, log = preimage(feature, args.mode, images=images[s: s + args.batch_size], keys=k, mask=mask,
                                    **common)
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
    if args.out:
        write_store(
            args.out, all_keys, out_imgs, feature="preimage",
            params={"mode": args.mode, "method": f"preimage-{args.mode}",
                    "feature": {"name": args.feature, "params": params}, "layers": layers, "runs": settings},
            image_shard=args.shard, image_shard_sha256=sha256_file(args.shard) if args.shard else None,
            dtype="float16", extra_attrs={"pixel_range": "0-255", "method": f"preimage-{args.mode}"},
        )
        print(f"wrote {args.out}: {len(all_keys)} pre-images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if args.grid:
        from pipeline.evaluation.figures import image_grid

        caption = args.caption or (f"Natural pre-images ({args.mode}), {args.feature}"
                                   + ("" if trained else ", random weights (untrained)"))
        if args.mode == "maximise":
            rows, row_labels = grid_rows, labels
            col_labels = [f"c{u}" for u in args.units]
        else:  # rows: images; columns: input, then each layer's result
            rows = [[images[i]] + [grid_rows[L][i] for L in range(len(layers))] for i in range(len(images))]
            row_labels, col_labels = None, ["image"] + labels
        image_grid(args.grid, rows, row_labels=row_labels, col_labels=col_labels, caption=caption)
        print(f"wrote {args.grid}", file=sys.stderr)
    return 0
