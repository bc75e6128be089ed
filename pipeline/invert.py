"""Mahendran & Vedaldi (CVPR 2015) inversion by regularised optimisation.

Seed 004, section 2, eq. 3: find the image that minimises

    E(x) = ||Phi(sigma x) - Phi0||^2 / ||Phi0||^2 + lambda_a R_a(x) + lambda_V R_V^b(x)

    R_a(x)   = sum_i |x_i|^a                                   (alpha-norm, a = 6)
    R_V^b(x) = sum_{c,i,j} ((x_{c,i,j+1} - x_{c,i,j})^2
                            + (x_{c,i+1,j} - x_{c,i,j})^2)^(b/2)   (TV^beta, b = 2)

where ``x`` is the *normalised, mean-subtracted* image: the pixels are
``sigma * x + m`` (``m`` the mean image).  The TV^beta sum runs over each
colour channel separately ("both regularisers are applied to each colour
channel"); forward differences, the difference past the last row/column is 0
(the authors' ``tv()`` in ``invert_nn.m`` replicates the last row/column).

sigma and B (seed 004, section 2, "Balancing the different terms")
-----------------------------------------------------------------
* The loss is normalised by ``||Phi0||^2`` so that its dynamic range is
  about [0, 1].
* The image is scaled so that the solution ``x`` has roughly unit Euclidean
  norm: ``Phi`` is evaluated at ``sigma x`` where **sigma is the average
  Euclidean norm of (mean-subtracted) natural images** in a training set.
* **B** is the half-width of the natural pixel range ``[-B, B]`` of the
  mean-subtracted image (``B = 128`` in most CNN implementations).  It is not
  a normaliser: it only enters the paper's *rule of thumb* for the
  multipliers, ``lambda_a ~ sigma^a / (H W B^a)`` and
  ``lambda_V ~ sigma^b / (H W (a_g B)^b)`` with ``a_g`` a small fraction
  (1 %) of the dynamic range (:func:`paper_rule_lambdas`).  The experiments
  then use the tuned values ``lambda_a = 2.16e8`` (sections 4 and 5; the
  Chinese text of section 5 prints ``2.16 x 10^-8``, a sign slip: the
  authors' code, ``lambdaL2 = 8e-10`` on pixel units, is ``2.16e8`` in the
  normalised units, see below), ``lambda_V = 5`` for HOG/HOGb/DSIFT
  (section 4) and, for CNN-A, ``lambda_V = 0.5`` for layers 1-6, ``5`` for
  layers 7-12 and ``50`` for layers 13-20 (section 5, the bold rows of
  Table 3).  (The brief of issue 6 paraphrased B as "the mean image norm";
  the paper's sigma is that norm and B is the pixel range.)

The authors' code (deep-goggle ``invert_nn.m``) works on pixels
``x_pix = sigma x`` with ``sigma = x0_sigma = 2.7098e4`` (``x0_sigma.mat``:
the mean norm of mean-subtracted 227x227x3 ImageNet images, also used for
their grey HOG/DSIFT inputs), costs ``lambdaL2/2 * sum(x_pix^6) / sigma^2``
and ``lambdaTV/2 * TV(x_pix) / sigma^2`` and steps ``x_pix -= lr sigma^2
grad_pix E``.  That is exactly gradient descent on eq. 3 in the normalised
variable ``x`` with step ``lr``, ``lambda_a = lambdaL2/2 sigma^4`` (= 2.16e8
for their 8e-10) and ``lambda_V = lambdaTV/2`` (their 1, 10, 100 in
``experiment_cnn.m`` = Table 3's 0.5, 5, 50).  We implement it in that form.

Image size.  The constants are for 227x227.  For another size we keep
sigma "the average norm of natural images *of that size*":
``sigma(H, W) = 2.7098e4 * sqrt(H W) / 227`` (grey images use the same value
as colour ones, as the authors did), and scale the multipliers by the
paper's own rule (``lambda ~ sigma^p / (H W)``):
``lambda_a(H, W) = lambda_a * (HW / 227^2)^(a/2 - 1)`` and
``lambda_V(H, W) = lambda_V * (HW / 227^2)^(b/2 - 1)`` (= ``lambda_V`` for
b = 2).  At 227x227 everything is the authors' setting; at other sizes the
energy is the same per-pixel trade-off and the same learning rate gives the
same steps in grey levels.  The lambdas on the command line and in this API
are the 227x227 values.

Optimisation (seed 004, section 2.1): gradient descent with momentum
``mu <- m mu - eta_t grad E(x); x <- x + mu``, ``m = 0.9``, a learning rate
held fixed for a few hundred iterations and divided by ten, with the momentum
reset at each change (``invert_nn.m``).  No per-target gradient
normalisation: the paper normalises only the loss.  Schedules
(:data:`SCHEDULES`), all from deep-goggle:

* ``cnn`` (default for AlexNet layers): ``experiment_cnn.m``, the script that
  produced Table 3 / Fig. 6: lr 0.004 for 100, 200, 100 iterations at x1,
  x0.1, x0.01;
* ``shallow`` (default for HOG, HOGb, DSIFT and anything else):
  ``experiment_shallow_quantitative.m`` (Table 1): lr 0.004 for 4 x 200
  iterations at x1 ... x0.001;
* ``invert_nn``: the defaults of ``invert_nn.m``: lr 0.001 for 800, 500, 500,
  200, 100 iterations at x1 ... x1e-4.

``iterations`` rescales a schedule's segments proportionally (the sample
configuration and the tests use few).  ``optimizer="adam"`` is an option (the
experience in ``features.md`` was with Adam, which is less sensitive to the
gradient scale of a representation); there ``lr`` is the step in grey levels.

Initialisation: ``x`` is Gaussian noise scaled to unit norm (``invert_nn``:
``x = randn; x = x / norm(x) * x0_sigma`` in pixels), drawn per target and
restart from a generator seeded by ``(seed, key, restart)``, so a target's
result does not depend on the rest of its batch.  Several restarts per
target run side by side; the one with the lowest final energy is kept.

Safeguard (not in the paper or its code).  The alpha-norm's curvature
``lambda_a a (a-1) x^(a-2)`` grows as the 4th power of a pixel's distance
from the mean, so an explicit gradient step is unstable for pixels beyond
``(2 (1 + m) / (eta lambda_a a (a-1)))^(1/(a-2)) sigma`` -- about 530 grey
levels at the default lr 0.004 -- and such a pixel then diverges to
infinity within a few iterations.  The initial noise alone reaches that far
for grey images (sigma spread over one channel: 119 grey levels per pixel,
so a 4.5-sigma pixel appears in one image in three at 227x227; with the
authors' ``x0_sigma`` their code has the same hazard).  So the iterate (and
the initial noise) is clamped to ``mean +- clamp * B`` (default 4 B = 512
grey levels): a projection that is inactive in normal operation.
``clamp=None`` gives the unprotected method.

Outputs are the pixels ``sigma x + m`` clipped to [0, 255].  Representations
of grey images (HOG, HOGb, DSIFT, LBP, SIFT) are inverted in one channel with
``m = 128`` (the authors' ``255 * rgb2gray(x) - 128``); colour ones in RGB
with ``m`` the ImageNet mean colour.

The energy is a list of pluggable :class:`Term` objects (a data term and
regularisers), so activation maximisation and caricatures (seed 002) are
small additions: a term that reads ``state.features``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------
# Constants of the paper and of the authors' code
# --------------------------------------------------------------------------

REF_SIZE = 227
#: deep-goggle's x0_sigma.mat: mean norm of mean-subtracted 227x227x3 images.
SIGMA_REF = 2.7098e4
ALPHA = 6.0
BETA = 2.0
#: lambda_alpha at 227x227 (seed 004, sections 4 and 5).
LAMBDA_ALPHA = 2.16e8
#: lambda_V for HOG, HOGb, DSIFT (seed 004, section 4).
LAMBDA_TV_SHALLOW = 5.0
#: lambda_V for CNN-A layers 1-6, 7-12, 13-20 (seed 004, section 5, Table 3).
LAMBDA_TV_CNN = (0.5, 5.0, 50.0)
MOMENTUM = 0.9
#: Pixel range half-width of the paper's rule of thumb.
B_RANGE = 128.0
#: Safeguard (not in the paper): keep |pixel - mean| <= CLAMP * B during the descent.
CLAMP = 4.0
#: Mean of grey inputs (the authors' HOG/DSIFT normalisation ``x - 128``).
GRAY_MEAN = 128.0
#: ImageNet mean colour, RGB (Caffe's ilsvrc_2012_mean channel averages).
RGB_MEAN = (122.7, 116.7, 104.0)
#: Representations computed on grey images.
GRAY_FEATURES = frozenset({"hog", "hogb", "dsift", "lbp", "sift"})

#: name -> (base learning rate, ((iterations, lr factor), ...)).
SCHEDULES: dict[str, tuple[float, tuple[tuple[int, float], ...]]] = {
    "cnn": (0.004, ((100, 1.0), (200, 0.1), (100, 0.01))),
    "shallow": (0.004, ((200, 1.0), (200, 0.1), (200, 0.01), (200, 0.001))),
    "invert_nn": (0.001, ((800, 1.0), (500, 0.1), (500, 0.01), (200, 1e-3), (100, 1e-4))),
}
#: Default base step for Adam, grey levels per iteration.
ADAM_LR = 16.0

#: Seed 004 Table 2: the 20 layers of CNN-A, numbered 1..20.
CNN_A_LAYERS = (
    "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
    "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
    "fc6", "relu6", "fc7", "relu7", "fc8",
)


# --------------------------------------------------------------------------
# Scales, multipliers, schedules
# --------------------------------------------------------------------------


def sigma_for(height: int, width: int) -> float:
    """sigma(H, W) = 2.7098e4 * sqrt(H W) / 227: the mean norm of natural images of that size."""
    return SIGMA_REF * math.sqrt(height * width) / REF_SIZE


def scale_lambda(lam: float, power: float, height: int, width: int) -> float:
    """Multiplier of a ``sum |.|^power`` regulariser given at 227x227, at size H x W.

    The paper's rule ``lambda ~ sigma^p / (H W)`` with ``sigma ~ sqrt(H W)``
    gives ``lambda(H, W) = lambda * (H W / 227^2)^(p/2 - 1)``.
    """
    return lam * (height * width / REF_SIZE**2) ** (power / 2.0 - 1.0)


def paper_rule_lambdas(height: int = REF_SIZE, width: int = REF_SIZE, *, sigma: float | None = None,
                       alpha: float = ALPHA, beta: float = BETA, B: float = B_RANGE,
                       a: float = 0.01) -> tuple[float, float]:
    """The paper's starting point (section 2): ``sigma^a/(HW B^a)``, ``sigma^b/(HW (a B)^b)``.

    Only a rule of thumb: the experiments use the tuned values
    (:data:`LAMBDA_ALPHA`, :data:`LAMBDA_TV_SHALLOW`, :data:`LAMBDA_TV_CNN`).
    """
    s = sigma_for(height, width) if sigma is None else sigma
    hw = height * width
    return s**alpha / (hw * B**alpha), s**beta / (hw * (a * B) ** beta)


def cnn_a_layer_index(layer: str, arch: str = "caffenet") -> int:
    """Index 1..20 in seed 004's Table 2 of an AlexNet tap or paper layer name.

    Bare paper names mean the layer's output (as in ``pipeline.features.alexnet``):
    ``conv1`` = norm1 (4), ``conv2`` = norm2 (8), ``conv3`` = relu3 (10),
    ``conv4`` = relu4 (12), ``conv5`` = pool5 (15), ``fc6`` = relu6 (17),
    ``fc7`` = relu7 (19), ``fc8`` (20).  Torchvision's AlexNet has no LRN, so
    there ``conv1``/``conv2`` are pool1/pool2.  ``*_raw`` taps are the linear
    steps; ``mpool*`` = ``pool*``; ``avgpool`` counts as pool5.
    """
    name = layer.lower().replace("mpool", "pool")
    paper = {"conv1": "norm1", "conv2": "norm2", "conv3": "relu3", "conv4": "relu4",
             "conv5": "pool5", "fc6": "relu6", "fc7": "relu7", "fc8": "fc8"}
    if arch == "torchvision":
        paper.update(conv1="pool1", conv2="pool2")
    if name in paper:
        name = paper[name]
    elif name.endswith("_raw"):
        name = name[: -len("_raw")]
    elif name == "avgpool":
        name = "pool5"
    if name not in CNN_A_LAYERS:
        raise ValueError(f"layer {layer!r} is not an AlexNet layer (one of {', '.join(CNN_A_LAYERS)})")
    return CNN_A_LAYERS.index(name) + 1


def default_lambda_tv(name: str, params: dict | None = None) -> tuple[float, str]:
    """(lambda_V at 227x227, why) for a representation, from seed 004."""
    params = params or {}
    if name in ("alexnet", "caffenet") and "layer" in params:
        arch = str(params.get("arch", "caffenet"))
        idx = cnn_a_layer_index(str(params["layer"]), arch)
        group = 0 if idx <= 6 else (1 if idx <= 12 else 2)
        return LAMBDA_TV_CNN[group], f"seed 004 Table 3: CNN-A layer {idx} ({CNN_A_LAYERS[idx - 1]}), group {group + 1}"
    if name in ("hog", "hogb", "dsift"):
        return LAMBDA_TV_SHALLOW, "seed 004 section 4: HOG/HOGb/DSIFT"
    return LAMBDA_TV_SHALLOW, "no value in seed 004 for this representation: section 4's value"


def default_schedule(name: str) -> str:
    return "cnn" if name in ("alexnet", "caffenet") else "shallow"


def make_schedule(schedule: str | Sequence[tuple[int, float]] = "shallow", *, lr: float | None = None,
                  iterations: int | None = None) -> list[tuple[int, float]]:
    """A list of ``(iterations, learning rate)`` segments.

    ``schedule`` is a name in :data:`SCHEDULES` or explicit ``(iterations,
    factor)`` pairs; ``lr`` replaces the base learning rate; ``iterations``
    rescales the segment lengths proportionally (rounding the cumulative
    boundaries, dropping empty segments).
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        base, segs = SCHEDULES[schedule]
    else:
        base, segs = 1.0, tuple((int(n), float(f)) for n, f in schedule)
        if not segs or any(n < 0 for n, _ in segs):
            raise ValueError(f"schedule must be non-empty (iterations, factor) pairs, got {schedule!r}")
    if lr is not None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        base = lr
    total = sum(n for n, _ in segs)
    if iterations is not None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        cum, out, prev = 0, [], 0
        for n, f in segs:
            cum += n
            b = round(cum * iterations / total)
            out.append((b - prev, f))
            prev = b
        segs = tuple(out)
    return [(n, base * f) for n, f in segs if n > 0]


# --------------------------------------------------------------------------
# Energy terms
# --------------------------------------------------------------------------


@dataclass
class State:
    """What terms see at one iteration.

    ``x``: the normalised mean-subtracted variable (B, C, H, W) (requires
    grad); ``image``: the pixels ``sigma x + m`` fed to the representation;
    ``features``: ``Phi(image)`` (None when no term needs it).
    """

    x: torch.Tensor
    image: torch.Tensor
    features: torch.Tensor | None = None


class Term:
    """One additive energy term; ``__call__(state) -> (B,)`` per-sample values.

    Per-sample values are summed over the batch only to take the gradient, so
    each target's gradient depends on that target alone.
    """

    name = "term"
    needs_features = False

    def __call__(self, state: State) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class FeatureLoss(Term):
    """``||Phi(sigma x) - Phi0||^2 / ||Phi0||^2`` per sample (eq. 3's data term).

    ``mask`` (broadcastable to the features) restricts the loss to a subset of
    the representation (the paper's neuron-field experiments, Fig. 9-10).
    """

    name = "feature_loss"
    needs_features = True

    def __init__(self, target: torch.Tensor, mask: torch.Tensor | None = None, weight: float = 1.0):
        self.target = target.detach()
        self.mask = None if mask is None else mask.to(target)
        t = self.target if self.mask is None else self.target * self.mask
        dims = tuple(range(1, t.dim()))
        self.norm2 = (t * t).sum(dim=dims).clamp_min(1e-12)
        self.weight = float(weight)

    def __call__(self, state: State) -> torch.Tensor:
        d = state.features - self.target
        if self.mask is not None:
            d = d * self.mask
        dims = tuple(range(1, d.dim()))
        return self.weight * (d * d).sum(dim=dims) / self.norm2


class AlphaNorm(Term):
    """``lambda * sum |x|^alpha`` on the normalised mean-subtracted image."""

    name = "alpha_norm"

    def __init__(self, lam: float, alpha: float = ALPHA):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.lam, self.alpha = float(lam), float(alpha)

    def __call__(self, state: State) -> torch.Tensor:
        x = state.x
        v = x.abs().pow(self.alpha) if self.alpha != round(self.alpha) or int(self.alpha) % 2 else x.pow(int(self.alpha))
        return self.lam * v.flatten(1).sum(1)


class TVNorm(Term):
    """``lambda * sum_{c,i,j} (du^2 + dv^2)^(beta/2)``, forward differences, 0 past the edge."""

    name = "tv_norm"

    def __init__(self, lam: float, beta: float = BETA):
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.lam, self.beta = float(lam), float(beta)

    def __call__(self, state: State) -> torch.Tensor:
        x = state.x
        du = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
        dv = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        v = du * du + dv * dv
        if self.beta != 2.0:
            # the authors' tv() floors the magnitude at 1e-5 in the derivative
            v = v.clamp_min(1e-10).pow(self.beta / 2.0)
        return self.lam * v.flatten(1).sum(1)


# --------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------


LOG_COLUMNS = ("energy", "feature_loss", "alpha_term", "tv_term", "pixel_rmse")


@dataclass
class InversionLog:
    """Per-iteration values, arrays of shape (T, N, R) (iteration, target, restart).

    ``iteration[t]`` is the iteration number (1-based) of row t, ``lr[t]`` its
    learning rate; values are those of the iterate *before* that update.  The
    last row (``lr`` NaN) is the final iterate.  ``pixel_rmse`` is the RMS
    error in grey levels of the clipped image against the reference image
    (its grey version for grey reconstructions; NaN without a reference).
    ``best[n]`` is the restart kept for target n.
    """

    keys: list[str]
    iteration: np.ndarray
    lr: np.ndarray
    values: dict[str, np.ndarray]
    best: np.ndarray
    settings: dict = field(default_factory=dict)

    def final(self, column: str) -> np.ndarray:
        """(N,) value of ``column`` at the end, for the kept restart."""
        v = self.values[column][-1]
        return v[np.arange(len(self.best)), self.best]

    def rows(self):
        T, N, R = self.values["energy"].shape
        for n in range(N):
            for r in range(R):
                for t in range(T):
                    yield {
                        "key": self.keys[n], "restart": r, "iteration": int(self.iteration[t]),
                        "lr": float(self.lr[t]), "best": int(self.best[n] == r),
                        **{c: float(self.values[c][t, n, r]) for c in LOG_COLUMNS},
                    }

    def write_csv(self, path, append: bool = False) -> None:
        path = Path(path)
        new = not (append and path.exists())
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["key", "restart", "iteration", "lr", "best", *LOG_COLUMNS])
            if new:
                w.writeheader()
            for row in self.rows():
                w.writerow(row)


def noise_init(seed: int, key: str, restart: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Unit-norm Gaussian noise from a generator seeded by (seed, key, restart) (CPU, float64)."""
    h = hashlib.sha256(f"{int(seed)}/{key}/{int(restart)}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    return z / z.norm()


def is_gray_feature(feature: torch.nn.Module) -> bool:
    return bool(getattr(feature, "grayscale", False)) or getattr(feature, "name", None) in GRAY_FEATURES


def descend(x: torch.Tensor, step_eval, segments, *, optimizer: str = "momentum", momentum: float = MOMENTUM,
            sigma: float = 1.0, project=None, log_every: int = 1) -> tuple[list, list[int], list[float]]:
    """Minimise an energy over ``x`` (in place) following the schedule ``segments``.

    ``step_eval(x) -> (grad, row)`` gives the gradient at ``x`` and a log row
    (values of the iterate before the update).  ``segments`` are
    ``(iterations, rate)`` pairs (:func:`make_schedule`).  ``momentum``:
    gradient descent with momentum, reset when the rate changes (the authors'
    ``invert_nn.m``); ``adam``: Adam with the rate in grey levels (divided by
    ``sigma`` into normalised units).  ``project(x)``, if given, runs under
    ``no_grad`` after every update (clamping, projection on a constraint).
    Returns the logged rows (every ``log_every``-th iteration, from the
    first), their 1-based iteration numbers and their rates.
    """
    rows, its, lrs = [], [], []
    it = 0
    if optimizer == "adam":
        opt = torch.optim.Adam([x], lr=1.0)
    else:
        mom = torch.zeros_like(x)
    for n_it, rate in segments:
        if optimizer == "adam":
            for grp in opt.param_groups:
                grp["lr"] = rate / sigma  # grey levels -> normalised units
        else:
            mom.zero_()
        for _ in range(n_it):
            g, row = step_eval(x)
            it += 1
            if (it - 1) % log_every == 0:
                rows.append(row)
                its.append(it)
                lrs.append(rate)
            if optimizer == "adam":
                x.grad = g
                opt.step()
            else:
                with torch.no_grad():
                    mom.mul_(momentum).sub_(g, alpha=rate)
                    x.add_(mom)
            if project is not None:
                with torch.no_grad():
                    project(x)
    return rows, its, lrs


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
    ``lambda_tv`` defaults to :func:`default_lambda_tv`.  ``schedule`` defaults
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
        lambda_tv, _ = default_lambda_tv(fname, fparams)
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
        "alpha": alpha, "beta": beta, "lambda_alpha": lambda_alpha, "lambda_tv": lambda_tv,
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


def as_images(x) -> torch.Tensor:
    """(N, C, H, W) float tensor from a tensor, or from an (N, H, W, C) uint8 array."""
    if isinstance(x, np.ndarray):
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W) or (N, H, W, 1|3), got shape {tuple(x.shape)}")
    return x.float() if not x.is_floating_point() else x


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    from pipeline.features import to_gray

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
    p.add_argument("--iterations", type=int, default=None, help="total iterations (rescales the schedule)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="learning-rate schedule (default: cnn for AlexNet, shallow otherwise)")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: the schedule's)")
    p.add_argument("--lambda-alpha", type=float, default=LAMBDA_ALPHA, help="alpha-norm weight at 227x227")
    p.add_argument("--lambda-tv", type=float, default=None, help="TV^beta weight at 227x227 (default: seed 004's)")
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--beta", type=float, default=BETA)
    p.add_argument("--restarts", type=int, default=1, help="random restarts per target (best kept)")
    p.add_argument("--batch-size", type=int, default=16, help="targets optimised together")
    p.add_argument("--optimizer", choices=("momentum", "adam"), default="momentum")
    p.add_argument("--clamp", type=float, default=CLAMP,
                   help="keep pixels within CLAMP*128 grey levels of the mean during the descent "
                        "(safeguard against the alpha-norm's step instability; 0: off)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=None, help="invert only the first N images of each shard")
    p.add_argument("--log-every", type=int, default=1, help="log every k-th iteration")
    p.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                   help="reconstruct grey (1) or colour (3); auto: grey for representations of grey images")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return d


def run(args) -> int:
    from pipeline.features import get_feature
    from pipeline.io import atomic_path, sha256_file
    from pipeline.shards import load_shard_arrays
    from pipeline.store import write_store

    if len(args.out) != len(args.shard):
        raise SystemExit(f"--out: {len(args.out)} paths for {len(args.shard)} shards")
    if args.log is not None and len(args.log) != len(args.shard):
        raise SystemExit(f"--log: {len(args.log)} paths for {len(args.shard)} shards")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {args.params!r}")
    device = _device(args.device)
    feature = get_feature(args.feature, **params).to(device).eval()
    channels = None if args.channels == "auto" else int(args.channels)
    representation = args.representation or (
        f"{args.feature}_{params['layer']}" if "layer" in params else args.feature)
    for i, (shard, out) in enumerate(zip(args.shard, args.out)):
        t0 = time.perf_counter()
        keys, images, _ = load_shard_arrays(shard)
        if args.max_images is not None:
            keys, images = keys[: args.max_images], images[: args.max_images]
        recs, logs = [], []
        for s in range(0, len(keys), args.batch_size):
            batch = torch.from_numpy(images[s: s + args.batch_size].transpose(0, 3, 1, 2).astype(np.float32))
            rec, log = invert(
                feature, batch, keys=keys[s: s + args.batch_size], channels=channels,
                alpha=args.alpha, beta=args.beta, lambda_alpha=args.lambda_alpha, lambda_tv=args.lambda_tv,
                schedule=args.schedule, lr=args.lr, iterations=args.iterations, optimizer=args.optimizer,
                clamp=args.clamp if args.clamp > 0 else None,
                restarts=args.restarts, seed=args.seed, device=device, log_every=args.log_every,
            )
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
        # the layout of the decoders' ``reconstruct`` stores (pipeline.decoders.reconstruct)
        write_store(
            out, keys, rec_all, feature="reconstruction",
            params={"representation": representation, "method": "mahendran-vedaldi",
                    "feature": {"name": args.feature, "params": fparams}, "inversion": settings},
            image_shard=str(shard), image_shard_sha256=sha256_file(shard), dtype="float16",
            extra_attrs={
                "pixel_range": "0-255",
                "method": "mahendran-vedaldi",
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


# --------------------------------------------------------------------------
# Benchmark: python -m pipeline bench invert
# --------------------------------------------------------------------------


def bench_invert(argv: list[str]) -> int:
    """Seconds per image of M&V inversion at 227x227 (AlexNet conv3, HOG), batch 1 vs 32."""
    from pipeline.features import available, get_feature

    p = argparse.ArgumentParser(prog="python -m pipeline bench invert", description=bench_invert.__doc__)
    p.add_argument("--iterations", type=int, default=10, help="iterations timed (after 2 warm-up)")
    p.add_argument("--size", type=int, default=REF_SIZE)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--features", nargs="+", default=["alexnet:conv3", "hog"],
                   help="name or name:layer (AlexNet layer)")
    p.add_argument("--weights", default=None, help="AlexNet weights file (default: random weights)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--hoggles-atoms", type=int, nargs="*", default=[256, 1024],
                   help="also time HOGgles inversion with dictionaries of these sizes (none: skip)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"M&V inversion benchmark, {a.size}x{a.size}, {a.iterations} timed iterations, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "cuda" not in devices:
        print("GPU: not available on this machine (CPU only)")
    results = []
    for spec in a.features:
        name, _, layer = spec.partition(":")
        if name not in available():
            print(f"{spec}: not in the registry ({', '.join(available())}), skipped")
            continue
        params = {"layer": layer} if layer else {}
        if name == "alexnet" and a.weights:
            params["weights"] = a.weights
        try:
            feat = get_feature(name, **params)
        except Exception as e:  # a representation still being written
            print(f"{spec}: cannot build ({e}), skipped")
            continue
        sched = default_schedule(name)
        paper_its = sum(n for n, _ in make_schedule(sched))
        for dev in devices:
            for bs in a.batches:
                rng = np.random.default_rng(0)
                imgs = torch.from_numpy(rng.uniform(0, 255, (bs, 3, a.size, a.size)).astype(np.float32))
                try:
                    invert(feat, imgs, iterations=2, device=dev)  # warm-up
                    if dev.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    invert(feat, imgs, iterations=a.iterations, device=dev, log_every=a.iterations)
                    if dev.startswith("cuda"):
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                except RuntimeError as e:
                    print(f"{spec} {dev} batch {bs}: failed ({e})")
                    continue
                per_it = dt / a.iterations / bs
                results.append((spec, dev, bs, per_it))  # seconds per iteration per image
                print(f"{spec:>14} {dev:>5} batch {bs:>3}: {per_it * 1e3:8.1f} ms/iteration/image -> "
                      f"{per_it * paper_its:7.1f} s/image at {paper_its} it ({sched} schedule), "
                      f"{per_it * 2100:7.1f} s/image at 2100 it (invert_nn.m)")
        for dev in devices:
            r = {bs: t for s, d, bs, t in results if s == spec and d == dev}
            if 1 in r and len(r) > 1:
                for bs, t in sorted(r.items()):
                    if bs != 1:
                        print(f"{spec:>14} {dev:>5}: batch {bs} is {r[1] / t:.2f}x faster per image than batch 1")
    if a.hoggles_atoms and "hog" in available():
        results += _bench_hoggles(a.size, a.hoggles_atoms, devices)
    mv_hog = {d: t for s, d, bs, t in results if s == "hog" and bs == 1}
    for s, d, bs, t in results:
        if s.startswith("hoggles") and "cpu" in mv_hog and d == "cpu":
            its = sum(n for n, _ in make_schedule("shallow"))
            print(f"{s}: {t:.2f} s/image on the CPU; M&V on HOG at {its} iterations, batch 1: "
                  f"{mv_hog['cpu'] * its:.1f} s/image, {mv_hog['cpu'] * its / t:.0f}x slower "
                  f"(seed 004: 60 s vs 2-3 s, 20-30x)")
    print("references: seed 000: 'the authors report 6s per image on a GPU' (M&V, 2015 GPU); "
          "seed 004 section 4: HOGgles 2-3 s vs 60 s for M&V on HOG, same CPU")
    return 0


def _bench_hoggles(size: int, atoms_list, devices) -> list[tuple[str, str, int, float]]:
    """Seconds per image of HOGgles inversion at size x size (ihog's 'fast' dictionaries:
    random training pairs as atoms, which code like learned ones)."""
    from pipeline import hoggles as hg
    from pipeline.data import load_sample_photo, SAMPLE_PHOTOS
    from pipeline.features import get_feature

    hog = get_feature("hog")
    photos = []
    for name in list(SAMPLE_PHOTOS)[:6]:
        im = load_sample_photo(name)
        s = min(im.shape[:2])
        im = im[(im.shape[0] - s) // 2:][:s, (im.shape[1] - s) // 2:][:, :s]
        photos.append(np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(im.transpose(2, 0, 1)[None].astype(np.float32)), size=(size, size),
            mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 255).byte()))
    photos = np.stack(photos)
    out = []
    for atoms in atoms_list:
        g, h = hg.sample_pairs(photos[1:], hog, max(atoms, 2000), seed=0)
        rng = np.random.default_rng(0)
        d = np.concatenate([g, h], 1)[rng.choice(len(g), atoms, replace=atoms > len(g))]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pd = hg.PairedDictionary(gray=d[:, : g.shape[1]].astype(np.float32), hog=d[:, g.shape[1]:].astype(np.float32),
                                 ny=hg.WINDOW, nx=hg.WINDOW, cell=hg.cell_size(hog), lam=hg.LAMBDA)
        for dev in devices:
            solver = "sklearn" if dev == "cpu" else "fista"
            t0 = time.perf_counter()
            hg.invert_images(pd, photos[:1], feature=hog, solver=solver, device=dev)
            dt = time.perf_counter() - t0
            name = f"hoggles-{atoms}"
            out.append((name, dev, 1, dt))
            print(f"{name:>14} {dev:>5} batch   1: {dt:8.2f} s/image ({solver} solver, "
                  f"{((size + 4) // 8 + 2 * hg.PAD_CELLS - hg.WINDOW + 1) ** 2} windows)")
    return out
