"""Natural pre-images by optimisation: :func:`preimage` (inversion,
activation maximisation, caricatures).

Mahendran & Vedaldi 2016 (IJCV, "Visualizing deep convolutional neural
networks using natural pre-images") pose three visualisations as one
regularised energy minimisation over an image,

    E(x) = l(Phi(tau(sigma x + m))) + lambda_r R_range(x) + lambda_V R_TV^beta(x),

``m`` the ImageNet mean colour (128 for grey representations), ``tau``
jitter.  Two presets (``preset``):

* ``ijcv`` (default): the authors' pre-image code (nnpreimage), see
  :mod:`pipeline.preimage.ijcv`: pixel units (``sigma = 1``), the bounded
  range and TV^beta as per-pixel means with ``lambda_r = (1/80)^6``,
  ``lambda_V = (6.5/80)^2``, the colour-norm bound 160, jitter for every mode
  (also inversion) by random crops of a larger canvas, ``J = max(round(stride
  / 4), 1)``, momentum with AdaGrad-like scaling, 300 iterations (inversion:
  then 50 at a tenth of the rate without jitter), uniform noise
  initialisation;
* ``cvpr``: the energy and descent of Mahendran & Vedaldi 2015 (CVPR) in
  :mod:`pipeline.baselines.terms`: ``x`` normalised (pixels ``sigma x + m``,
  ``sigma = sigma_for(H, W)``), multipliers at 227x227 scaled to the image
  size, as described below.

Common to both:

* ``tau`` is redrawn at every iteration from a generator seeded by ``seed``
  (the same shift for every target of a batch, so a target's result does not
  depend on its batch); ``jitter`` is the largest shift in pixels.
  ``cvpr``: a circular translation by up to ``J`` pixels in each direction;
  ``J = 0`` for inversion, 4 pixels at 227x227 for maximisation and
  caricatures, scaled to the image size (``max(1, round(4 min(H, W) / 227))``).
* Data terms ``l`` (``M`` a 0/1 mask on the representation, see
  :mod:`pipeline.preimage.masks`):

  - ``invert``:     ``||M (Phi - Phi0)||^2 / ||M Phi0||^2``
    (:class:`pipeline.baselines.terms.FeatureLoss`, Mahendran & Vedaldi
    2015 (CVPR), eq. 3; nnpreimage's ``objectiveWeight = 1 / ||M Phi0||^2``);
  - ``maximise``:   ``-<e, Phi> / Z``
    (:class:`pipeline.preimage.objectives.InnerProduct`) with ``e``
    selecting one channel ``k`` of the layer: the unit at one position
    (``e = 1`` there), or the channel mean (``e = 1 / (h w)`` on channel
    ``k``).  ``Z`` is the RMS of the
    layer's activations over reference images (the given natural images, or
    8 seeded noise images as the initialisation draws them), so the data term
    is in units of the layer's typical activation whatever the network's
    scale;
  - ``caricature``: ``-<M Phi0, Phi> / ||M Phi0||^2`` with ``Phi0 = Phi(x0)``
    the image's own code: at ``x = x0`` the term is -1; lower values
    exaggerate what the (masked) layer sees.  Initialised from the image.

* Range regulariser (``range``):

  - ``alpha`` (Mahendran & Vedaldi 2015,
    :class:`pipeline.baselines.terms.AlphaNorm`):
    ``sum_{c,u,v} |x_c(u,v)|^alpha``, iterate clamped to ``|x_c| <= clamp B``
    (default clamp 4, B = 128 grey levels);
  - ``bounded`` (the bounded range of Mahendran & Vedaldi 2016,
    :class:`pipeline.preimage.objectives.BoundedRange`): the alpha-norm of
    each pixel's colour vector, ``sum_{u,v} (sum_c x_c(u,v)^2)^(alpha/2)``, and the hard
    constraint ``||x(u,v)|| <= clamp B`` enforced by projection (``ijcv``:
    clamp 1.25, the authors' 160 grey levels; ``cvpr``: sqrt(3), the
    half-diagonal of the RGB cube, so every in-range colour is feasible).
    ``cvpr``: its multiplier defaults to ``lambda_alpha / 3^(alpha/2 - 1)``,
    so a grey pixel costs the same under both.  Default for every mode with
    ``ijcv``; with ``cvpr`` for ``maximise`` and ``caricature`` (``alpha``
    for ``invert``).

* ``R_TV^beta`` is :class:`pipeline.baselines.terms.TVNorm`.  ``cvpr``:
  ``lambda_alpha`` and ``lambda_tv`` are 227x227 values scaled to the image
  size as in :mod:`pipeline.baselines.terms`; ``lambda_tv`` defaults to
  Mahendran & Vedaldi 2015's value for the layer
  (:func:`pipeline.baselines.terms.default_lambda_tv`).

Optimisation, ``cvpr``: the schedules of :mod:`pipeline.baselines.descent`
(gradient descent with momentum, reset at each rate change) or Adam with the
step in grey levels (default for ``maximise``/``caricature``, whose linear
data terms have an arbitrary gradient scale: :data:`PREIMAGE_SCHEDULE`, 300
iterations at 8 grey levels then 100 at 0.8).  ``iterations`` rescales any
schedule.  Noise initialisation per (seed, key, restart) as in
:func:`pipeline.baselines.mv.invert`; several restarts per target run side by
side and the one with the lowest final energy (without jitter) is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pipeline.baselines.descent import (
    ADAM_LR,
    MOMENTUM,
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
from pipeline.features import to_gray
from pipeline.preimage import ijcv as ijcv_settings
from pipeline.preimage.objectives import BoundedRange, InnerProduct, activation_scale, unit_direction

MODES = ("invert", "maximise", "caricature")
RANGES = ("alpha", "bounded")
#: ``ijcv``: Mahendran & Vedaldi 2016's code (default); ``cvpr``: the 2015 paper's energy and descent.
PRESETS = ("ijcv", "cvpr")
OPTIMIZERS = ("momentum", "adam", "adagrad")
#: Default jitter at 227x227 (pixels) per mode; scaled to the image size (at least 1 where nonzero).
JITTER = {"invert": 0, "maximise": 4, "caricature": 4}
#: Clamp of the bounded range, in units of B: the half-diagonal of the RGB cube.
CLAMP_BOUNDED = math.sqrt(3.0)
#: Schedule of maximise/caricature (with Adam): a flat rate, then a tenth of it for the last quarter.
PREIMAGE_SCHEDULE = ((300, 1.0), (100, 0.1))
#: Adam step of maximise/caricature, grey levels per iteration.
PREIMAGE_ADAM_LR = 8.0
LOG_COLUMNS = ("energy", "data", "range_term", "tv_term", "objective")


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
    preset: str = "ijcv",
    range_: str | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    lambda_alpha: float | None = None,
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
    objective_weight: float = 1.0,
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
    restricts the data term (invert, caricature).  ``objective_weight``: the data
    term's multiplier (nnpreimage's ``C``; 1 by default, the authors' inversions
    also ran 20, 100 and 300).  ``init``: "noise"
    (default) or "image" (caricature's default).  ``preset``: ``ijcv``
    (Mahendran & Vedaldi 2016's code, :mod:`pipeline.preimage.ijcv`) or
    ``cvpr`` (the 2015 paper's energy and descent); ``range_``,
    ``optimizer``, ``jitter`` (the largest shift, pixels), ``clamp`` (units
    of 128 grey levels), the multipliers and the schedule default per
    preset and mode (module docstring).  Returns the best restart of each
    target, ``(N, channels, H, W)`` in [0, 255] on ``device``, and a
    :class:`PreimageLog`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    ijcv = preset == "ijcv"
    device = torch.device(device) if device is not None else next(
        (t.device for t in list(feature.parameters()) + list(feature.buffers())), torch.device("cpu"))
    feature = feature.to(device=device, dtype=dtype).eval()
    fname = str(getattr(feature, "name", type(feature).__name__))
    fparams = dict(getattr(feature, "params", {}) or {})
    if ijcv and lambda_alpha is not None:
        raise ValueError("lambda_alpha is the 2015 energy's multiplier: with preset='ijcv' give lambda_range")
    range_ = range_ or ("bounded" if ijcv or mode != "invert" else "alpha")
    if range_ not in RANGES:
        raise ValueError(f"range must be one of {RANGES}, got {range_!r}")
    optimizer = optimizer or ("adagrad" if ijcv else "momentum" if mode == "invert" else "adam")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    jitter_default = jitter is None
    if jitter is not None and int(jitter) < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    jitter = 0 if jitter is None else int(jitter)
    init = init or ("image" if mode == "caricature" else "noise")
    if init not in ("noise", "image"):
        raise ValueError(f"init must be 'noise' or 'image', got {init!r}")
    if clamp is None:
        clamp = ijcv_settings.BOUND / B_RANGE if ijcv else CLAMP if range_ == "alpha" else CLAMP_BOUNDED
    if restarts < 1 or log_every < 1:
        raise ValueError(f"restarts and log_every must be >= 1, got {restarts}, {log_every}")
    if not objective_weight > 0:
        raise ValueError(f"objective_weight must be > 0, got {objective_weight!r}")
    if channels is None:
        channels = 1 if is_gray_feature(feature) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    imgs = None if images is None else as_images(images).to(device=device, dtype=dtype)
    if imgs is not None and imgs.shape[1] != channels:
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

    R = restarts
    mean = torch.tensor([GRAY_MEAN] if channels == 1 else list(RGB_MEAN), device=device, dtype=dtype).view(1, -1, 1, 1)
    if ijcv:  # pixel units; multipliers of per-pixel means; rate x pixels (nnpreimage)
        if jitter_default:
            jitter = ijcv_settings.jitter_amount(feature, (H, W)) - 1
        sigma = 1.0
        lambda_range = ijcv_settings.LAMBDA_RANGE if lambda_range is None else lambda_range
        lambda_tv = ijcv_settings.LAMBDA_TV if lambda_tv is None else lambda_tv
        if schedule is None:
            schedule = ijcv_settings.SCHEDULE_INVERT if mode == "invert" else ijcv_settings.SCHEDULE
        lr = ijcv_settings.LR if lr is None else lr
        segments = make_schedule(schedule, lr=lr, iterations=iterations)
        if optimizer == "adagrad":
            segments = [(n, r * H * W) for n, r in segments]
        lam_r = lam_v = None  # per stage: divided by the canvas's pixels
    else:
        if jitter_default and JITTER[mode]:
            jitter = max(1, round(JITTER[mode] * min(H, W) / REF_SIZE))
        sigma = sigma_for(H, W)
        if lambda_tv is None:
            lambda_tv, _ = default_lambda_tv(fname, fparams)
        lambda_alpha = LAMBDA_ALPHA if lambda_alpha is None else lambda_alpha
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
        data: Term = FeatureLoss(rep(phi0), mask=m, weight=objective_weight)
    elif mode == "caricature":
        d = phi0 if mask is None else phi0 * mask
        data = InnerProduct(rep(d), rep((d * d).flatten(1).sum(1)) / objective_weight)
    else:
        data = InnerProduct(rep(direction), data_scale / objective_weight)

    def make_terms(pixels: int) -> list[Term]:
        lr_, lv_ = (lambda_range / pixels, lambda_tv / pixels) if ijcv else (lam_r, lam_v)
        rng_term: Term = AlphaNorm(lr_, alpha) if range_ == "alpha" else BoundedRange(lr_, alpha)
        return [data, rng_term, TVNorm(lv_, beta)]

    # the 2015 settings jitter by circular shifts of the image; nnpreimage crops a canvas
    # `jitter` pixels larger at offsets 0..jitter (the result: its central crop)
    pad = jitter if ijcv else 0
    centre = pad // 2
    bound = clamp * B_RANGE / sigma if clamp else None
    shape0 = (channels, H + pad, W + pad)
    if init == "image":
        x0 = torch.zeros(N * R, *shape0, dtype=dtype, device=device)
        x0[..., centre:centre + H, centre:centre + W] = rep((imgs - mean) / sigma)
    elif ijcv:
        x0 = torch.stack([ijcv_settings.uniform_init(seed, k, r, shape0) for k in keys for r in range(R)])
    else:
        x0 = torch.stack([noise_init(seed, k, r, shape0) for k in keys for r in range(R)])
    x = x0.to(device=device, dtype=dtype).clone()
    if bound is not None:
        _project(x, bound, range_)
    x.requires_grad_(True)
    gen = torch.Generator().manual_seed(int(seed))

    def evaluate(x, grad: bool, terms, shift=None):
        image = sigma * x + mean
        if ijcv:
            oy, ox = shift if shift else ((x.shape[-2] - H) // 2, (x.shape[-1] - W) // 2)
            seen = image[..., oy:oy + H, ox:ox + W]
        else:
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
        lo = 0 if ijcv else -jitter
        s = torch.randint(lo, jitter + 1, (2,), generator=gen)
        return (int(s[0]), int(s[1]))

    project = None if bound is None else (lambda v: _project(v, bound, range_))
    # nnpreimage inverts in two calls: the last segment without jitter, from the central crop
    stages = [(segments[:-1], True), (segments[-1:], False)] if ijcv and mode == "invert" and len(segments) > 1 \
        else [(segments, True)]
    rows, its, done = [], [], 0
    for segs, jittered in stages:
        if not jittered and pad:
            x = x.detach()[..., centre:centre + H, centre:centre + W].clone().requires_grad_(True)
        terms = make_terms(x.shape[-2] * x.shape[-1])
        r_, i_, _ = descend(x, lambda v: evaluate(v, True, terms, shift() if jittered else None), segs,
                            optimizer=optimizer, momentum=momentum, sigma=sigma, project=project,
                            log_every=log_every)
        rows += r_
        its += [i + done for i in i_]
        done += sum(n for n, _ in segs)
    it = done
    with torch.no_grad():
        _, row = evaluate(x, False, terms)
    rows.append(row)
    its.append(it + 1)

    table = torch.stack(rows).to("cpu", torch.float64).numpy().reshape(len(rows), N, R, len(LOG_COLUMNS))
    values = {c: table[..., i] for i, c in enumerate(LOG_COLUMNS)}
    best = np.nan_to_num(values["energy"][-1], nan=np.inf).argmin(axis=1)
    with torch.no_grad():
        cy, cx = (x.shape[-2] - H) // 2, (x.shape[-1] - W) // 2
        xc = x.detach()[..., cy:cy + H, cx:cx + W]
        out = (sigma * xc + mean).clamp(0, 255).view(N, R, channels, H, W)
        out = out[torch.arange(N, device=device), torch.as_tensor(best, device=device)]
    settings_ = {
        "method": f"preimage-{mode}", "mode": mode, "preset": preset, "feature": fname,
        "feature_params": fparams, "range": range_, "alpha": alpha, "beta": beta, "lambda_range": lambda_range,
        "lambda_tv": lambda_tv, "lambda_range_scaled": lam_r, "lambda_tv_scaled": lam_v, "sigma": sigma,
        "schedule": schedule if isinstance(schedule, str) else [list(s) for s in schedule],
        "segments": [[n, r] for n, r in segments], "iterations": it, "optimizer": optimizer,
        "momentum": momentum, "clamp": clamp, "jitter": jitter, "init": init, "objective_weight": objective_weight,
        "restarts": R, "seed": seed,
        "channels": channels, "mean": mean.flatten().tolist(),
        "masked": mask is not None,
    }
    if mode == "maximise":
        settings_.update(units=[int(u) for u in units], position=position if isinstance(position, str)
                         else [int(p) for p in position], activation_scale=float(scale))
    log = PreimageLog(keys=keys, iteration=np.asarray(its), values=values, best=best, settings=settings_)
    return out, log
