"""Evaluation: metrics, Table 2, Mahendran & Vedaldi's Table 1, Figure 7,
feature perturbations and random feature vectors (seed 000 sections 3-4,
seed 004 section 4).

Metrics
-------
Images are ``x_i`` (N, H, W, 3) uint8 as read from the image shards;
reconstructions ``r_i = f(Phi(x_i))`` are (N, 3, H', W') floats in [0, 255]
as read from reconstruction stores.  Before any metric a reconstruction is
resized **bilinearly** to the input size (seed 000 section 4.1: "before
computing the error we up-sample reconstructions to input image size with
bilinear interpolation"; antialiased when it has to shrink instead) and
clipped to [0, 255] (reconstructions of this package already are).

* **Image-space normalised error** (seed 000 section 2.2, Table 2, Figure 7)::

      e_i = ||x_i - r_i||_2 / N,   N = mean_{i != j} ||x_i - x_j||_2

  the norm over all pixels and the 3 channels in grey levels; ``N`` is the
  average Euclidean distance between the images of the test set, over all
  ordered pairs i != j of the *same set the errors are reported on* (the
  images given with ``--images``).  The table reports the mean of ``e_i``.
* **Feature-space normalised error** (seed 004 section 4, Table 1)::

      e_i = ||Phi(x*_i) - Phi(x_i)||_2 / N_Phi,
      N_Phi = mean_{i != j} ||Phi(x_i) - Phi(x_j)||_2

  "the normalised reconstruction error averaged over the 100 images [...]
  N_Phi is the average pairwise Euclidean distance between the Phi(x_i)
  across the 100 images" (seed 004, section 4).  ``Phi(x*)`` is computed
  with ``pipeline.features.get_feature`` on the (resized, clipped)
  reconstruction.  Reported in percent, like Table 1; its ``+-`` is, as
  there, "the standard deviation of the error, not of the mean error".
* **PSNR** and **SSIM**: ``skimage.metrics`` with ``data_range=255`` on the
  (H, W, 3) float images, SSIM with ``channel_axis=-1`` (default 7x7
  window, needs images of at least 7x7), per image, then averaged.
* **Spread**: ``std`` is the sample standard deviation (ddof=1) of the
  per-image values; the 95% interval is for the *mean* over images, by the
  percentile bootstrap over images (10,000 resamples, fixed seed, so tables
  are reproducible), with the normaliser held fixed (it is a constant of the
  test set in the paper).  ``ci="t"`` gives Student's t interval instead.
* **Mean-image floor**: the predictor that outputs the mean *training*
  image for every input (``--mean-image`` or ``--train-shards``); with
  ``--floor-from-val`` the mean of the test images themselves is used and
  the row is labelled "(val, in-sample)".  For many high-dimensional images
  its error is close to ``1/sqrt(2) ~ 0.71`` since
  ``E||x_i - x_j||^2 = 2 E||x_i - mean||^2``.

Perturbations (seed 000 section 4.4)
------------------------------------
A "feature vector" is all of one image's features (every non-batch
dimension).  :func:`binarize` keeps the signs and sets every non-zero entry
to one magnitude ``||v||_2 / sqrt(nnz(v))``, which keeps the Euclidean norm
(for ReLU layers: non-zero -> one positive constant).  :func:`dropout` sets
a random 50% of the entries to zero and rescales the rest by
``||v|| / ||v_kept||``; :func:`drop_smallest` does the same to the 50% of
the *non-zero* entries smallest in absolute value.  ``"+binarize"`` kinds
drop first then binarize (the paper's combined study).  Figure 8:
:func:`top_k_only` / :func:`without_top_k` (5 largest fc8 activations; no
renormalisation, as in the paper).  Figure 10: :func:`interpolate`.
Figure 11: :class:`HistogramSampler` (per-dimension histograms, matched
sparsity, contrast alpha = 2) and :class:`TruncatedGaussianSampler`.

Command line: ``python -m pipeline evaluate <subcommand>``; see
:func:`configure_parser`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.io import atomic_path, write_text

# --------------------------------------------------------------------------- constants

#: Table 2 of seed 000: row id -> (display name, method, representation, paper error).
TABLE2_ROWS: dict[str, tuple[str, str, str, float]] = {
    "hoggles": ("HOGgles [Vondrick et al.]", "hoggles", "hog", 0.61),
    "mv-hog": ("HOG⁻¹ [Mahendran & Vedaldi]", "mahendran-vedaldi", "hog", 0.63),
    "ours-hog": ("HOG ours", "ours", "hog", 0.24),
    "ours-sift": ("SIFT ours", "ours", "sift", 0.28),
    "ours-lbp": ("LBP ours", "ours", "lbp", 0.38),
}
FLOOR_ROW = "mean-image"

#: Table 1 of seed 004: row id -> (name, method, representation, paper error %, paper std %).
MV_TABLE1_ROWS: dict[str, tuple[str, str, str, float, float]] = {
    "hoggles": ("HOGgles [Vondrick et al.] (HOG)", "hoggles", "hog", 66.20, 13.7),
    "hog": ("HOG (Mahendran & Vedaldi)", "mahendran-vedaldi", "hog", 28.10, 7.9),
    "hogb": ("HOGb (Mahendran & Vedaldi)", "mahendran-vedaldi", "hogb", 10.67, 5.2),
    "dsift": ("DSIFT (Mahendran & Vedaldi)", "mahendran-vedaldi", "dsift", 10.89, 7.5),
}

#: AlexNet layers in network order (the x axis of Figure 7).
ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

#: Figure 7 curve ids -> legend labels; other ids are allowed and labelled by themselves.
FIGURE7_CURVES: dict[str, str] = {
    "ours": "Our (fixed AlexNet)",
    "mv": "Mahendran & Vedaldi [19]",
    "ae": "Autoencoder",
    "ours-bin": "Our, binarised",
    "ours-drop50": "Our, 50% dropout",
    "ours-drop50-smallest": "Our, dropout of the 50% smallest",
    "ours-drop50+bin": "Our, 50% dropout + binarised",
    "ours-drop50-smallest+bin": "Our, 50% smallest dropped + binarised",
    "ae-bin": "Autoencoder, binarised",
    "ae-drop50": "Autoencoder, 50% dropout",
}

PERTURBATIONS = (
    "none", "binarize", "drop50", "drop50-smallest", "drop50+binarize",
    "drop50-smallest+binarize", "top5", "notop5",
)

# --------------------------------------------------------------------------- image helpers


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def images_nchw(images) -> torch.Tensor:
    """(N, H, W, 3) uint8/float images -> (N, 3, H, W) float32 tensor in [0, 255]."""
    x = _as_tensor(images)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images: expected (N, H, W, 3), got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float()


def resize_bilinear(x, size) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) float32: bilinear (``align_corners=False``).

    Up-sampling is plain bilinear interpolation (the paper's evaluation);
    down-sampling is antialiased.  No-op when the size already matches.
    """
    x = _as_tensor(x).float()
    if x.dim() != 4:
        raise ValueError(f"reconstructions: expected (N, C, H, W), got shape {tuple(x.shape)}")
    H, W = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == (H, W):
        return x
    down = H < x.shape[-2] or W < x.shape[-1]
    return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=down)


def prepare_reconstructions(recs, size) -> torch.Tensor:
    """Reconstructions (N, 3|1, h, w) -> (N, 3, H, W) float32, resized and clipped to [0, 255]."""
    r = resize_bilinear(recs, size)
    if r.shape[1] == 1:
        r = r.expand(-1, 3, -1, -1)
    if r.shape[1] != 3:
        raise ValueError(f"reconstructions: expected 1 or 3 channels, got {r.shape[1]}")
    return r.clamp(0.0, 255.0)


# --------------------------------------------------------------------------- metrics


def mean_pairwise_distance(X, *, block: int = 256, max_items: int | None = None, seed: int = 0) -> float:
    """Mean Euclidean distance over all ordered pairs i != j of the rows of ``X``.

    ``X``: (N, ...) array or tensor, flattened per item.  Exact, in float64,
    by blocks of ``block`` rows through the Gram matrix of the *centred* data
    (distances do not change under translation; centring avoids
    cancellation).  ``max_items`` estimates it from a random subset of that
    many items (an unbiased estimate of the all-pairs mean).
    """
    X = _as_tensor(X)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"the mean pairwise distance needs at least 2 items, got {n}")
    if max_items is not None and n > max_items:
        if max_items < 2:
            raise ValueError(f"max_items must be >= 2, got {max_items}")
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
        X = X[torch.from_numpy(idx).to(X.device)]
        n = max_items
    X = X.reshape(n, -1).to(torch.float64)
    X = X - X.mean(dim=0, keepdim=True)
    sq = (X * X).sum(dim=1)
    total = 0.0
    for s in range(0, n, block):
        xb = X[s:s + block]
        d2 = sq[s:s + block, None] + sq[None, :] - 2.0 * (xb @ X.T)
        d = d2.clamp_min(0.0).sqrt()
        rows = torch.arange(s, s + xb.shape[0], device=X.device)
        d[torch.arange(xb.shape[0], device=X.device), rows] = 0.0  # i == j
        total += float(d.sum())
    return total / (n * (n - 1))


def _per_item_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    diff = a.reshape(a.shape[0], -1).double() - b.reshape(b.shape[0], -1).double()
    return diff.norm(dim=1).cpu().numpy()


def normalized_errors(images, recs, norm: float | None = None) -> tuple[np.ndarray, float]:
    """Seed 000's per-image error ``||x_i - r_i||_2 / N`` and ``N``.

    ``images`` (N, H, W, 3) uint8 in [0, 255]; ``recs`` (N, 3, h, w) floats,
    resized bilinearly to H x W and clipped first.  ``norm`` defaults to the
    mean pairwise distance of ``images`` (:func:`mean_pairwise_distance`).
    """
    x = images_nchw(images)
    if len(recs) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {len(recs)} reconstructions")
    r = prepare_reconstructions(recs, x.shape[-2:])
    if norm is None:
        norm = mean_pairwise_distance(x)
    if not norm > 0:
        raise ValueError(f"the normaliser must be > 0, got {norm!r}")
    return _per_item_l2(x, r) / norm, float(norm)


def feature_errors(feats_rec, feats_ref, norm: float | None = None) -> tuple[np.ndarray, float]:
    """Seed 004's per-image error ``||Phi(x*_i) - Phi(x_i)||_2 / N_Phi`` (a fraction; x100 for %).

    ``norm`` defaults to the mean pairwise distance of ``feats_ref``.
    """
    a, b = _as_tensor(feats_rec), _as_tensor(feats_ref)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: reconstructions {tuple(a.shape)}, images {tuple(b.shape)}")
    if norm is None:
        norm = mean_pairwise_distance(b)
    if not norm > 0:
        raise ValueError(f"the feature normaliser must be > 0, got {norm!r}")
    return _per_item_l2(a, b) / norm, float(norm)


def _hwc_float(images, recs) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, dtype=np.float64)
    r = prepare_reconstructions(recs, x.shape[1:3]).permute(0, 2, 3, 1).double().cpu().numpy()
    return x, r


def psnr_per_image(images, recs) -> np.ndarray:
    """PSNR in dB per image (``skimage.metrics.peak_signal_noise_ratio``, data_range 255)."""
    from skimage.metrics import peak_signal_noise_ratio

    x, r = _hwc_float(images, recs)
    out = np.empty(len(x))
    for i in range(len(x)):
        if np.array_equal(x[i], r[i]):
            out[i] = np.inf
        else:
            out[i] = peak_signal_noise_ratio(x[i], r[i], data_range=255)
    return out


def ssim_per_image(images, recs) -> np.ndarray:
    """SSIM per image (``skimage.metrics.structural_similarity``, data_range 255, channel_axis -1)."""
    from skimage.metrics import structural_similarity

    x, r = _hwc_float(images, recs)
    if min(x.shape[1:3]) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {x.shape[1:3]}")
    return np.array([structural_similarity(x[i], r[i], data_range=255, channel_axis=-1) for i in range(len(x))])


@dataclass
class Summary:
    """Mean, sample std (ddof=1) and a 95% interval for the mean of per-image values."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    method: str = "bootstrap"


def summarize(values, *, ci: str = "bootstrap", level: float = 0.95, n_boot: int = 10_000,
              seed: int = 0) -> Summary:
    """Summarise per-image values.

    ``ci="bootstrap"``: percentile bootstrap of the mean (``n_boot`` resamples
    of the images with replacement, ``numpy.random.default_rng(seed)``).
    ``ci="t"``: ``mean +- t_{(1+level)/2, n-1} std / sqrt(n)``.  With one
    value the interval is that value and std is NaN.  Infinite values (PSNR
    of a perfect reconstruction) give an infinite mean and NaN spread.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("summarize: no values")
    if ci not in ("bootstrap", "t"):
        raise ValueError(f"ci must be 'bootstrap' or 't', got {ci!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    mean = float(v.mean())
    if n == 1 or not np.all(np.isfinite(v)):
        std = float(v.std(ddof=1)) if n > 1 and np.all(np.isfinite(v)) else float("nan")
        lo = hi = mean if n == 1 else float("nan")
        return Summary(mean, std, lo, hi, n, ci)
    std = float(v.std(ddof=1))
    if ci == "t":
        from scipy import stats

        h = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
        return Summary(mean, std, mean - h, mean + h, n, ci)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        means[s:s + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Summary(mean, std, float(lo), float(hi), n, ci)


def mean_image_errors(images, mean_image, norm: float | None = None) -> tuple[np.ndarray, float]:
    """Errors of the predictor that always outputs ``mean_image`` ((H, W, 3), resized if needed)."""
    m = np.asarray(mean_image, dtype=np.float32)
    if m.ndim != 3 or m.shape[2] != 3:
        raise ValueError(f"mean image: expected (H, W, 3), got shape {m.shape}")
    rec = torch.from_numpy(m.transpose(2, 0, 1).copy())[None].expand(len(images), -1, -1, -1)
    return normalized_errors(images, rec, norm)


def compute_mean_image(shards: Sequence, size=None) -> tuple[np.ndarray, int]:
    """Mean (H, W, 3) float64 of all images of ``shards`` and their count.

    Images of another size than ``size`` ((H, W); default: the first image's)
    are resized bilinearly (antialiased) first.  Streams the shards.
    """
    from pipeline.data.shards import read_shard

    acc, n = None, 0
    for path in shards:
        for s in read_shard(path):
            im = s.image
            if size is None:
                size = im.shape[:2]
            if tuple(im.shape[:2]) != tuple(size):
                t = resize_bilinear(torch.from_numpy(im.transpose(2, 0, 1).copy())[None].float(), size)
                im = t[0].permute(1, 2, 0).numpy()
            acc = im.astype(np.float64) if acc is None else acc + im
            n += 1
    if n == 0:
        raise ValueError(f"no images in {list(map(str, shards))}")
    return acc / n, n


# --------------------------------------------------------------------------- perturbations


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _flat(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2:
        raise ValueError(f"features: expected a batch (B, ...), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _keep_norm(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Rescale each row of ``new`` to the L2 norm of the same row of ``old`` (zero rows stay zero)."""
    n_old = old.norm(dim=1, keepdim=True)
    n_new = new.norm(dim=1, keepdim=True)
    scale = torch.where(n_new > 0, n_old / n_new.clamp_min(torch.finfo(new.dtype).tiny), torch.zeros_like(n_new))
    return new * scale


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Keep signs, set every non-zero entry's magnitude to ``||v|| / sqrt(nnz)`` (norm kept)."""
    x = _as_tensor(x)
    v = _flat(x).float()
    nnz = (v != 0).sum(dim=1, keepdim=True).clamp_min(1)
    c = v.norm(dim=1, keepdim=True) / nnz.float().sqrt()
    return (torch.sign(v) * c).reshape(x.shape).to(x.dtype)


def dropout(x: torch.Tensor, p: float = 0.5, seed: int | None = 0) -> torch.Tensor:
    """Zero ``round(p * n)`` entries per vector, chosen uniformly at random, then restore the norm."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout fraction p must be in [0, 1), got {p!r}")
    x = _as_tensor(x)
    v = _flat(x).float()
    B, n = v.shape
    k = int(round(p * n))
    ranks = torch.rand(B, n, generator=_generator(seed)).argsort(dim=1).argsort(dim=1).to(v.device)
    kept = torch.where(ranks >= k, v, torch.zeros_like(v))
    return _keep_norm(kept, v).reshape(x.shape).to(x.dtype)


def drop_smallest(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Zero the ``floor(p * nnz)`` non-zero entries smallest in |value| per vector, restore the norm."""
    if not 0 <= p < 1:
        raise ValueError(f"drop fraction p must be in [0, 1), got {p!r}")
    x = _as_tensor(x)
    v = _flat(x).float()
    a = v.abs()
    nz = a > 0
    k = torch.floor(p * nz.sum(dim=1, keepdim=True).float()).long()
    key = torch.where(nz, a, torch.full_like(a, float("inf")))
    ranks = key.argsort(dim=1, stable=True).argsort(dim=1)
    kept = torch.where(ranks >= k, v, torch.zeros_like(v))
    return _keep_norm(kept, v).reshape(x.shape).to(x.dtype)


def _topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    v = _flat(x)
    if not 0 < k <= v.shape[1]:
        raise ValueError(f"k must be in 1..{v.shape[1]}, got {k!r}")
    idx = v.topk(k, dim=1).indices
    return torch.zeros_like(v, dtype=torch.bool).scatter_(1, idx, True)


def top_k_only(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Keep only the ``k`` largest activations of each vector (Figure 8 "top5")."""
    x = _as_tensor(x)
    m = _topk_mask(x, k)
    return torch.where(m, _flat(x), torch.zeros_like(_flat(x))).reshape(x.shape)


def without_top_k(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Set the ``k`` largest activations of each vector to zero (Figure 8 "notop5")."""
    x = _as_tensor(x)
    m = _topk_mask(x, k)
    return torch.where(m, torch.zeros_like(_flat(x)), _flat(x)).reshape(x.shape)


def perturb(x: torch.Tensor, kind: str, seed: int | None = 0) -> torch.Tensor:
    """Apply one named perturbation (:data:`PERTURBATIONS`) to a batch of feature vectors."""
    if kind == "none":
        return _as_tensor(x)
    if kind == "binarize":
        return binarize(x)
    if kind == "drop50":
        return dropout(x, 0.5, seed)
    if kind == "drop50-smallest":
        return drop_smallest(x, 0.5)
    if kind == "drop50+binarize":
        return binarize(dropout(x, 0.5, seed))
    if kind == "drop50-smallest+binarize":
        return binarize(drop_smallest(x, 0.5))
    if kind == "top5":
        return top_k_only(x, 5)
    if kind == "notop5":
        return without_top_k(x, 5)
    raise ValueError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")


def interpolate(a, b, steps: int = 8) -> torch.Tensor:
    """``(1 - t) a + t b`` for ``t`` in ``linspace(0, 1, steps)``: (steps, *a.shape) (Figure 10)."""
    a, b = _as_tensor(a).float(), _as_tensor(b).float()
    if a.shape != b.shape:
        raise ValueError(f"interpolate: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = torch.linspace(0, 1, steps, device=a.device).view(-1, *([1] * a.dim()))
    return (1 - t) * a[None] + t * b[None]


class HistogramSampler:
    """Random feature vectors, each dimension drawn independently (seed 000 section 4.5).

    ``fit(features)`` on (M, ...) reference vectors (the paper: 4096 images)
    records, per dimension ``d``, the probability ``p_d`` that it is non-zero
    and a ``bins``-bin histogram of its non-zero values.  ``sample(n)`` draws
    each dimension non-zero with probability ``p_d`` (so the expected
    fraction of non-zeros equals the reference vectors' mean sparsity) and
    its value uniformly within a bin picked by the histogram, then multiplies
    by ``contrast`` (alpha = 2 in the paper, to counter the low contrast).
    """

    def __init__(self, bins: int = 64, contrast: float = 2.0):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins, self.contrast = int(bins), float(contrast)
        self.shape: tuple[int, ...] | None = None

    def fit(self, features) -> "HistogramSampler":
        f = _as_tensor(features).detach().float().cpu()
        self.shape = tuple(f.shape[1:])
        v = f.reshape(f.shape[0], -1).numpy()
        M, D = v.shape
        if M < 1:
            raise ValueError("HistogramSampler.fit: no reference vectors")
        nz = v != 0
        self.p_nonzero = nz.mean(axis=0)
        seen = nz.any(axis=0)
        lo = np.where(seen, np.where(nz, v, np.inf).min(axis=0), 0.0)
        hi = np.where(seen, np.where(nz, v, -np.inf).max(axis=0), 0.0)
        self.lo, self.width = lo, (hi - lo) / self.bins
        # bin of every non-zero value; counts per (dimension, bin) by one bincount
        safe = np.where(self.width > 0, self.width, 1.0)
        b = np.clip(((v - lo) / safe).astype(np.int64), 0, self.bins - 1)
        flat = (np.broadcast_to(np.arange(D), (M, D)) * self.bins + b)[nz]
        counts = np.bincount(flat, minlength=D * self.bins).reshape(D, self.bins).astype(np.float64)
        tot = counts.sum(axis=1, keepdims=True)
        self.cdf = np.cumsum(counts / np.where(tot > 0, tot, 1), axis=1)
        self.cdf[:, -1] = 1.0
        self.reference_sparsity = float(nz.mean())
        return self

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        if self.shape is None:
            raise RuntimeError("HistogramSampler: call fit() first")
        rng = np.random.default_rng(seed)
        D = self.cdf.shape[0]
        on = rng.random((n, D)) < self.p_nonzero
        u = rng.random((n, D))
        b = np.empty((n, D), dtype=np.int64)
        for d in range(0, D, 4096):  # searchsorted per dimension, in blocks
            cdf = self.cdf[d:d + 4096]
            b[:, d:d + 4096] = (u[:, d:d + 4096, None] > cdf[None]).sum(axis=2)
        b = np.minimum(b, self.bins - 1)
        vals = self.lo + (b + rng.random((n, D))) * self.width
        out = np.where(on, vals, 0.0) * self.contrast
        return torch.from_numpy(out.astype(np.float32)).reshape(n, *self.shape)


class TruncatedGaussianSampler:
    """One shifted Gaussian, truncated at zero, for all dimensions (seed 000 supplementary Fig. 19).

    Reading of "fitting a single shifted truncated Gaussian to all feature
    dimensions": samples are ``max(0, z)``, ``z ~ N(mu, sigma^2)``, the mass
    below zero giving the zeros.  ``fit`` pools all values of all dimensions
    and matches the fraction of zeros ``p0 = Phi(-mu / sigma)`` and the mean
    ``E max(0, z) = mu Phi(mu/sigma) + sigma phi(mu/sigma)``.  Features with
    negative values (fc8) or no zeros get a plain Gaussian with the pooled
    mean and std.  ``contrast`` multiplies the samples (default 1).
    """

    def __init__(self, contrast: float = 1.0):
        self.contrast = float(contrast)
        self.shape: tuple[int, ...] | None = None

    def fit(self, features) -> "TruncatedGaussianSampler":
        from scipy import stats

        f = _as_tensor(features).detach().float().cpu()
        self.shape = tuple(f.shape[1:])
        v = f.numpy().ravel().astype(np.float64)
        if v.size == 0:
            raise ValueError("TruncatedGaussianSampler.fit: no reference values")
        p0 = float((v == 0).mean())
        self.rectified = bool(v.min() >= 0 and 0 < p0 < 1)
        if self.rectified:
            r = -stats.norm.ppf(p0)  # mu / sigma
            self.sigma = float(v.mean() / (r * stats.norm.cdf(r) + stats.norm.pdf(r)))
            self.mu = float(r * self.sigma)
        else:
            self.mu, self.sigma = float(v.mean()), float(v.std())
        return self

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        if self.shape is None:
            raise RuntimeError("TruncatedGaussianSampler: call fit() first")
        z = np.random.default_rng(seed).normal(self.mu, self.sigma, size=(n, *self.shape))
        if self.rectified:
            z = np.maximum(z, 0.0)
        return torch.from_numpy((z * self.contrast).astype(np.float32))


# --------------------------------------------------------------------------- captions


def caption_text(dataset: str | None = None, weights: str | None = None, extra: str | None = None) -> str:
    """One caption line: the dataset, the AlexNet weights, "untrained" when they were random."""
    parts = []
    if dataset:
        parts.append(f"Dataset: {dataset}.")
    if weights:
        if str(weights) == "random":
            parts.append("AlexNet weights: random (untrained encoder).")
        else:
            parts.append(f"AlexNet weights: {weights}.")
    if extra:
        parts.append(extra.strip())
    return " ".join(parts)


def weights_in(params) -> set[str]:
    """All values under a ``weights`` key anywhere in a nested params dict (store provenance)."""
    found: set[str] = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "weights" and isinstance(v, (str, int, float)):
                    found.add(str(v))
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(params)
    return found


def write_caption_sidecar(path, caption: str) -> None:
    """``<path>.caption.txt`` beside an output file (read by the Snakemake report)."""
    write_text(f"{path}.caption.txt", (caption or "").strip() + "\n")


# --------------------------------------------------------------------------- tables


def write_csv(path, rows: list[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- inputs


@dataclass
class TestSet:
    """The evaluation images: keys, (N, H, W, 3) uint8, and key -> index."""

    keys: list[str]
    images: np.ndarray
    index: dict[str, int] = field(default_factory=dict)
    skipped: set = field(default_factory=set)  # keys left out by max_images (ignored in stores)

    @classmethod
    def load(cls, shards: Sequence, max_images: int | None = None) -> "TestSet":
        from pipeline.data.shards import load_shard_arrays

        keys, arrays = [], []
        for s in shards:
            k, im, _ = load_shard_arrays(s)
            if len(k):
                keys += k
                arrays.append(im)
        if not keys:
            raise ValueError(f"--images: no images in {list(map(str, shards))}")
        sizes = {a.shape[1:3] for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"--images: shards hold images of different sizes {sorted(sizes)}")
        images = np.concatenate(arrays)
        if len(set(keys)) != len(keys):
            raise ValueError("--images: duplicate image keys across shards")
        skipped = set()
        if max_images is not None:
            if max_images < 1:
                raise ValueError(f"max_images must be >= 1, got {max_images}")
            skipped = set(keys[max_images:])
            keys, images = keys[:max_images], images[:max_images]
        return cls(keys, images, {k: i for i, k in enumerate(keys)}, skipped)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])


def read_reconstructions(test: TestSet, stores: Sequence) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Indices into ``test`` and reconstructions (M, 3, h, w) of ``stores``, matched by key.

    Stores may cover a subset of the test images (e.g. ``--max-images``);
    keys unknown to the test set, or present twice, are errors.  Images
    outside the evaluated subset (``--max-images`` on the test set) are
    skipped.  Returns also each store's attributes and parameters.
    """
    from pipeline.store import FeatureStore

    idx, recs, meta, seen = [], [], [], set()
    for path in stores:
        with FeatureStore(path) as st:
            feats = st.all()
            if feats.ndim != 4 or feats.shape[1] not in (1, 3):
                raise ValueError(f"{path}: expected reconstructions (N, 3, H, W), got shape {feats.shape}")
            unknown = [k for k in st.keys if k not in test.index and k not in test.skipped]
            if unknown:
                raise ValueError(f"{path}: {len(unknown)} keys not in the --images shards, e.g. {unknown[0]!r}")
            for j, k in enumerate(st.keys):
                if k not in test.index:
                    continue
                if k in seen:
                    raise ValueError(f"{path}: image {k!r} reconstructed twice in the inputs of one row")
                seen.add(k)
                idx.append(test.index[k])
                recs.append(feats[j])
            meta.append({"path": str(path), "attrs": {k: v for k, v in st.attrs.items()}, "params": st.params})
    if not recs:
        raise ValueError(f"no reconstructions of the test images in {list(map(str, stores))}")
    return np.asarray(idx), np.stack(recs), meta


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


# --------------------------------------------------------------------------- row evaluation


def evaluate_image_row(test: TestSet, stores: Sequence, norm: float, *, ci: str = "bootstrap",
                       seed: int = 0, ssim: bool = True) -> dict:
    """Image-space metrics of one row: per-image arrays and summaries."""
    idx, recs, meta = read_reconstructions(test, stores)
    x = test.images[idx]
    err, _ = normalized_errors(x, recs, norm)
    out = {"keys": [test.keys[i] for i in idx], "error": err, "meta": meta,
           "error_summary": summarize(err, ci=ci, seed=seed)}
    ps = psnr_per_image(x, recs)
    out["psnr"], out["psnr_summary"] = ps, summarize(ps, ci=ci, seed=seed)
    if ssim:
        ss = ssim_per_image(x, recs)
        out["ssim"], out["ssim_summary"] = ss, summarize(ss, ci=ci, seed=seed)
    return out


def _row_record(row_id: str, name: str, method: str, rep: str, res: dict, *, dataset: str,
                norm: float, size, paper) -> dict:
    e = res["error_summary"]
    rec = {
        "row": row_id, "name": name, "method": method, "representation": rep,
        "dataset": dataset, "n_images": e.n,
        "error_mean": e.mean, "error_std": e.std, "error_ci95_low": e.ci_low, "error_ci95_high": e.ci_high,
        "normaliser": norm, "image_size": f"{size[0]}x{size[1]}", "ci_method": e.method, "paper_error": paper,
    }
    if "psnr_summary" in res:
        rec.update(psnr_mean=res["psnr_summary"].mean, psnr_std=res["psnr_summary"].std)
    if "ssim_summary" in res:
        rec.update(ssim_mean=res["ssim_summary"].mean, ssim_std=res["ssim_summary"].std)
    return rec


TABLE2_COLUMNS = (
    "row", "name", "method", "representation", "dataset", "n_images",
    "error_mean", "error_std", "error_ci95_low", "error_ci95_high",
    "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "rel_to_floor",
    "paper_error", "normaliser", "image_size", "ci_method",
)


def table2(test: TestSet, rows: dict[str, list[str]], *, dataset: str, mean_image=None,
           floor_label: str = "train", ci: str = "bootstrap", seed: int = 0,
           norm_max_images: int | None = None, per_image: list | None = None) -> list[dict]:
    """Table 2 records in the paper's row order (rows without inputs omitted), floor last."""
    unknown = [r for r in rows if r not in TABLE2_ROWS]
    if unknown:
        raise ValueError(f"unknown Table 2 rows {unknown}; choose from {', '.join(TABLE2_ROWS)}")
    norm = mean_pairwise_distance(images_nchw(test.images), max_items=norm_max_images, seed=seed)
    records = []
    for rid, (name, method, rep, paper) in TABLE2_ROWS.items():
        if rid not in rows:
            continue
        res = evaluate_image_row(test, rows[rid], norm, ci=ci, seed=seed)
        records.append(_row_record(rid, name, method, rep, res, dataset=dataset, norm=norm,
                                   size=test.size, paper=paper))
        if per_image is not None:
            per_image += [{"row": rid, "key": k, "error": e, "psnr": p, "ssim": s}
                          for k, e, p, s in zip(res["keys"], res["error"], res["psnr"], res["ssim"])]
    if mean_image is not None:
        rec = np.asarray(mean_image, dtype=np.float32).transpose(2, 0, 1)[None]
        recs = np.broadcast_to(rec, (len(test.keys),) + rec.shape[1:])
        err, _ = normalized_errors(test.images, recs, norm)
        ps, ss = psnr_per_image(test.images, recs), ssim_per_image(test.images, recs)
        res = {"error_summary": summarize(err, ci=ci, seed=seed), "psnr_summary": summarize(ps, ci=ci, seed=seed),
               "ssim_summary": summarize(ss, ci=ci, seed=seed)}
        name = "Mean image (floor)" if floor_label == "train" else f"Mean image (floor; {floor_label})"
        floor = _row_record(FLOOR_ROW, name, "mean-image", "-", res, dataset=dataset, norm=norm,
                            size=test.size, paper=None)
        for r in records:
            r["rel_to_floor"] = r["error_mean"] / floor["error_mean"]
        floor["rel_to_floor"] = 1.0
        records.append(floor)
        if per_image is not None:
            per_image += [{"row": FLOOR_ROW, "key": k, "error": e, "psnr": p, "ssim": s}
                          for k, e, p, s in zip(test.keys, err, ps, ss)]
    return records


def render_table2_md(records: list[dict], caption: str) -> str:
    body = []
    for r in records:
        body.append([
            r["name"], _fmt(r["error_mean"]), _fmt(r["error_std"]),
            f"[{_fmt(r['error_ci95_low'])}, {_fmt(r['error_ci95_high'])}]",
            _fmt(r.get("psnr_mean"), 2), _fmt(r.get("ssim_mean"), 3), _fmt(r.get("rel_to_floor"), 2),
            str(r["n_images"]), _fmt(r["paper_error"], 2) if r["paper_error"] is not None else "–",
        ])
    head = ["Method", "Error", "Std", "95% CI (mean)", "PSNR (dB)", "SSIM", "÷ floor", "Images", "Paper"]
    n0 = records[0] if records else {}
    checks = table2_checks(records)
    notes = (
        "Error: mean over images of ||x − f(Φ(x))||₂ / N, reconstructions resized bilinearly to the input size; "
        f"N = mean Euclidean distance between the test images (all pairs i ≠ j) = {_fmt(n0.get('normaliser'), 1)}; "
        f"images {n0.get('image_size', '?')}. Std: of the per-image errors. "
        f"95% CI: {'percentile bootstrap (10,000 resamples)' if n0.get('ci_method') == 'bootstrap' else 'Student t'}"
        " for the mean. ÷ floor: error relative to the mean-image predictor. "
        "Paper: seed 000 Table 2 (ImageNet validation subset)."
    )
    text = f"**Table 2.** Normalised reconstruction error. {caption}\n\n" + markdown_table(head, body) + "\n" + notes + "\n"
    if checks:
        text += "\nChecks against the paper's claims:\n\n" + "".join(f"- {c}\n" for c in checks)
    return text


def table2_checks(records: list[dict]) -> list[str]:
    """The paper's qualitative claims, checked on these numbers (text lines; empty when not applicable).

    HOG ours below both baselines (HOGgles, HOG^-1) where they are present,
    and every decoder ("ours" rows) at least 10% below the mean-image floor.
    """
    by = {r["row"]: r for r in records}
    out = []
    ours = by.get("ours-hog")
    base = [by[b] for b in ("hoggles", "mv-hog") if b in by]
    if ours and base:
        ok = all(ours["error_mean"] < b["error_mean"] for b in base)
        vs = ", ".join(f"{b['name']} {b['error_mean']:.3f}" for b in base)
        out.append(f"HOG ours ({ours['error_mean']:.3f}) below the baselines ({vs}): {'yes' if ok else 'NO'}")
    floor = by.get(FLOOR_ROW)
    dec = [r for r in records if r["method"] == "ours"]
    if floor and dec:
        ok = all(r["error_mean"] <= 0.9 * floor["error_mean"] for r in dec)
        vs = ", ".join(f"{r['name']} {r['error_mean'] / floor['error_mean']:.2f}" for r in dec)
        out.append(f"every decoder at least 10% below the mean-image floor ({floor['error_mean']:.3f}; "
                   f"ratios {vs}): {'yes' if ok else 'NO'}")
    return out


# --------------------------------------------------------------------------- feature-space errors


def _feature_module(name: str, params: dict, device):
    from pipeline.features import get_feature

    return get_feature(name, **params).to(device).eval()


def compute_features(module, images_or_recs: torch.Tensor, batch_size: int = 32, device="cpu") -> torch.Tensor:
    """Features of (N, 3, H, W) float [0, 255] images, in batches, returned on the CPU."""
    out = []
    with torch.no_grad():
        for s in range(0, images_or_recs.shape[0], batch_size):
            out.append(module(images_or_recs[s:s + batch_size].to(device)).float().cpu())
    return torch.cat(out)


def representation_of_store(meta: dict) -> tuple[str, dict]:
    """(feature name, params) a reconstruction store was made from, from its attributes.

    Inversion stores (``invert-mv``) carry ``feature``/``params`` directly;
    decoder reconstructions carry ``feature="reconstruction"`` and
    ``params["feature"] = {"name", "params"}``.
    """
    feat = str(meta["attrs"].get("feature", ""))
    params = meta["params"] or {}
    if feat and feat != "reconstruction":
        return feat, params
    inner = params.get("feature") if isinstance(params, dict) else None
    if isinstance(inner, dict) and inner.get("name"):
        return str(inner["name"]), dict(inner.get("params") or {})
    raise ValueError(f"{meta['path']}: the store does not record its representation; give --feature ROW=NAME")


MV_TABLE1_COLUMNS = (
    "row", "name", "method", "representation", "feature", "feature_params", "dataset", "n_images",
    "error_pct_mean", "error_pct_std", "error_pct_ci95_low", "error_pct_ci95_high",
    "normaliser", "paper_error_pct", "paper_std_pct", "ci_method",
)


def mv_table1(test: TestSet, rows: dict[str, list[str]], *, dataset: str, features: dict | None = None,
              feature_names: dict | None = None, feature_params: dict | None = None, device="cpu",
              batch_size: int = 32, ci: str = "bootstrap", seed: int = 0) -> list[dict]:
    """Seed 004 Table 1 records: feature-space errors (%) of each row's reconstructions.

    ``features``: optional row -> feature stores of the *test images*
    (Phi(x)), matched by key; otherwise Phi(x) is computed here.  The
    representation defaults to what the reconstruction stores record.
    """
    from pipeline.store import FeatureStore

    unknown = [r for r in rows if r not in MV_TABLE1_ROWS]
    if unknown:
        raise ValueError(f"unknown Table 1 rows {unknown}; choose from {', '.join(MV_TABLE1_ROWS)}")
    features, feature_names, feature_params = features or {}, feature_names or {}, feature_params or {}
    x_all = images_nchw(test.images)
    records = []
    for rid, (name, method, rep, paper, paper_std) in MV_TABLE1_ROWS.items():
        if rid not in rows:
            continue
        idx, recs, meta = read_reconstructions(test, rows[rid])
        fname, fparams = representation_of_store(meta[0]) if rid not in feature_names else (feature_names[rid], {})
        if rid in feature_params:
            fparams = feature_params[rid]
        if fname != rep and rid not in feature_names:
            print(f"mv-table1: row {rid!r} ({rep}) evaluated with the stores' representation {fname!r}",
                  file=sys.stderr)
        module = _feature_module(fname, fparams, device)
        if rid in features:
            ref = [None] * len(test.keys)
            for p in features[rid]:
                with FeatureStore(p) as st:
                    arr = st.all()
                    for j, k in enumerate(st.keys):
                        if k in test.index:
                            ref[test.index[k]] = torch.from_numpy(arr[j])
            missing = [test.keys[i] for i, r in enumerate(ref) if r is None]
            if missing:
                raise ValueError(f"--features {rid}: no features for {len(missing)} test images, e.g. {missing[0]!r}")
            phi_x = torch.stack(ref)
        else:
            phi_x = compute_features(module, x_all, batch_size, device)
        norm = mean_pairwise_distance(phi_x)
        r = prepare_reconstructions(recs, test.size)
        phi_r = compute_features(module, r, batch_size, device)
        if phi_r.shape[1:] != phi_x.shape[1:]:
            raise ValueError(f"row {rid}: features of reconstructions {tuple(phi_r.shape[1:])} and images "
                             f"{tuple(phi_x.shape[1:])} differ")
        err, _ = feature_errors(phi_r, phi_x[torch.from_numpy(idx)], norm)
        s = summarize(100.0 * err, ci=ci, seed=seed)
        records.append({
            "row": rid, "name": name, "method": method, "representation": rep, "feature": fname,
            "feature_params": json.dumps(getattr(module, "params", fparams), sort_keys=True),
            "dataset": dataset, "n_images": s.n, "error_pct_mean": s.mean, "error_pct_std": s.std,
            "error_pct_ci95_low": s.ci_low, "error_pct_ci95_high": s.ci_high, "normaliser": norm,
            "paper_error_pct": paper, "paper_std_pct": paper_std, "ci_method": s.method,
        })
    return records


def render_mv_table1_md(records: list[dict], caption: str) -> str:
    body = [[r["name"], f"{_fmt(r['error_pct_mean'], 2)} ±{_fmt(r['error_pct_std'], 1)}",
             f"[{_fmt(r['error_pct_ci95_low'], 2)}, {_fmt(r['error_pct_ci95_high'], 2)}]", str(r["n_images"]),
             f"{r['paper_error_pct']:.2f} ±{r['paper_std_pct']:.1f}"] for r in records]
    head = ["Representation / method", "Error % (± std)", "95% CI (mean)", "Images", "Paper (seed 004 Table 1)"]
    notes = ("Error: mean over images of ||Φ(x*) − Φ(x)||₂ / N_Φ × 100, N_Φ the mean pairwise Euclidean distance "
             "between the features Φ(x_i) of the test images; ± is the standard deviation of the per-image "
             "errors (as in the paper), the interval is for the mean.")
    return (f"**Mahendran & Vedaldi Table 1.** Feature-space reconstruction error. {caption}\n\n"
            + markdown_table(head, body) + "\n" + notes + "\n")


# --------------------------------------------------------------------------- Figure 7


FIGURE7_COLUMNS = (
    "curve", "label", "layer", "dataset", "n_images", "error_mean", "error_std",
    "error_ci95_low", "error_ci95_high", "normaliser", "ci_method",
)


def _layer_order(layer: str) -> tuple[int, str]:
    return (ALEXNET_LAYERS.index(layer), layer) if layer in ALEXNET_LAYERS else (len(ALEXNET_LAYERS), layer)


def figure7(test: TestSet, points: dict[tuple[str, str], list[str]], *, dataset: str, labels: dict | None = None,
            ci: str = "bootstrap", seed: int = 0, norm_max_images: int | None = None) -> tuple[list[dict], set]:
    """Figure 7 records, one per (curve, layer) given, and the encoder weights seen in the stores."""
    labels = {**FIGURE7_CURVES, **(labels or {})}
    norm = mean_pairwise_distance(images_nchw(test.images), max_items=norm_max_images, seed=seed)
    curves = list(dict.fromkeys(c for c, _ in points))
    records, weights = [], set()
    for c in curves:
        for layer in sorted((l for cc, l in points if cc == c), key=_layer_order):
            idx, recs, meta = read_reconstructions(test, points[(c, layer)])
            for m in meta:
                weights |= weights_in(m["params"])
            err, _ = normalized_errors(test.images[idx], recs, norm)
            s = summarize(err, ci=ci, seed=seed)
            records.append({"curve": c, "label": labels.get(c, c), "layer": layer, "dataset": dataset,
                            "n_images": s.n, "error_mean": s.mean, "error_std": s.std,
                            "error_ci95_low": s.ci_low, "error_ci95_high": s.ci_high,
                            "normaliser": norm, "ci_method": s.method})
    return records, weights


# --------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="<subcommand>", required=True)

    def common(q, images_required=True):
        q.add_argument("--images", nargs="+", required=images_required, metavar="SHARD",
                       help="validation image shards (the test set)")
        q.add_argument("--max-images", type=int, help="evaluate only the first N test images")
        q.add_argument("--dataset", default="", help="dataset name for the caption and the dataset column")
        q.add_argument("--weights", help="AlexNet weights for the caption ('random' -> untrained)")
        q.add_argument("--caption", default="", help="extra caption text")
        q.add_argument("--ci", choices=("bootstrap", "t"), default="bootstrap", help="95%% interval method")
        q.add_argument("--seed", type=int, default=0, help="bootstrap / subsampling seed")

    q = sub.add_parser("table2", help="seed 000 Table 2: image-space errors, PSNR, SSIM, mean-image floor")
    common(q)
    q.add_argument("--row", action="append", metavar="ROW=STORE[,STORE...]",
                   help=f"reconstruction stores of a row; ROW in {', '.join(TABLE2_ROWS)} (repeatable)")
    fl = q.add_mutually_exclusive_group()
    fl.add_argument("--mean-image", metavar="NPY", help="mean training image (H, W, 3) .npy (evaluate mean-image)")
    fl.add_argument("--train-shards", nargs="+", metavar="SHARD", help="compute the mean training image")
    fl.add_argument("--floor-from-val", action="store_true",
                    help="floor from the mean of the test images themselves (in-sample; labelled)")
    q.add_argument("--norm-max-images", type=int, help="estimate N from a random subset of this many images")
    q.add_argument("--out", default="results/table2.csv", help="CSV path; the .md is written beside it")
    q.add_argument("--md", help="Markdown path (default: --out with .md)")
    q.add_argument("--per-image", help="optional CSV of per-image errors, PSNR and SSIM")

    q = sub.add_parser("mv-table1", help="seed 004 Table 1: feature-space errors of inversions")
    common(q)
    q.add_argument("--row", action="append", metavar="ROW=STORE[,STORE...]",
                   help=f"reconstruction stores; ROW in {', '.join(MV_TABLE1_ROWS)} (repeatable)")
    q.add_argument("--features", action="append", metavar="ROW=STORE[,STORE...]",
                   help="feature stores of the test images for a row (default: computed)")
    q.add_argument("--feature", action="append", metavar="ROW=NAME", help="representation override for a row")
    q.add_argument("--params", action="append", metavar="ROW=JSON", help="representation parameters for a row")
    q.add_argument("--device", default="cpu")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--out", default="results/mv_table1.csv")
    q.add_argument("--md", help="Markdown path (default: --out with .md)")

    q = sub.add_parser("figure7", help="seed 000 Figure 7: error per AlexNet layer")
    common(q)
    q.add_argument("--point", action="append", metavar="CURVE:LAYER=STORE[,STORE...]",
                   help=f"reconstructions of one curve at one layer; curves e.g. {', '.join(FIGURE7_CURVES)}")
    q.add_argument("--label", action="append", metavar="CURVE=TEXT", help="legend label of a curve")
    q.add_argument("--norm-max-images", type=int)
    q.add_argument("--out", default="results/figure7.csv", help="CSV path; the .png is written beside it")
    q.add_argument("--png", help="PNG path (default: --out with .png)")

    q = sub.add_parser("grid", help="reconstruction grid PNG (seed 000 Figures 3, 5)")
    common(q)
    q.add_argument("--column", action="append", required=True, metavar="LABEL=STORE[,STORE...]",
                   help="one column of reconstructions (repeatable, in order)")
    q.add_argument("--count", type=int, default=6, help="number of images (rows)")
    q.add_argument("--keys", nargs="+", help="image keys to show (default: the first --count)")
    q.add_argument("--out", required=True, help="PNG path")

    q = sub.add_parser("mean-image", help="mean image of shards -> .npy (for the Table 2 floor)")
    q.add_argument("--shards", nargs="+", required=True)
    q.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H W first")
    q.add_argument("--out", required=True, help=".npy path")

    q = sub.add_parser("perturb", help="perturb feature stores (binarise, dropout, ...) for Figures 7 and 9")
    q.add_argument("--features", nargs="+", required=True, metavar="STORE")
    q.add_argument("--kind", required=True, choices=PERTURBATIONS)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", nargs="+", required=True, metavar="STORE", help="one output store per input")

    q = sub.add_parser("fig8", help="seed 000 Figure 8: fc8 all / top-5 only / without top-5")
    _figure_model_args(q)
    q.add_argument("--k", type=int, default=5)

    q = sub.add_parser("fig9", help="seed 000 Figure 9: reconstructions from perturbed features per layer")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--kinds", nargs="+", default=["none", "binarize", "drop50"], choices=PERTURBATIONS)

    q = sub.add_parser("fig10", help="seed 000 Figure 10: interpolation between two images' features")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--pair", nargs=2, metavar=("KEY_A", "KEY_B"), help="the two image keys (default: first two)")
    q.add_argument("--steps", type=int, default=8)

    q = sub.add_parser("fig11", help="seed 000 Figure 11: images from random feature vectors")
    _figure_model_args(q, per_layer=True)
    q.add_argument("--sampler", choices=("histogram", "gaussian"), default="histogram")
    q.add_argument("--contrast", type=float, help="alpha (default 2 for histogram, 1 for gaussian)")
    q.add_argument("--reference", type=int, default=4096, help="reference images for fitting (paper: 4096)")


def _figure_model_args(q, per_layer: bool = False) -> None:
    q.add_argument("--images", nargs="+", required=True, metavar="SHARD")
    if per_layer:
        q.add_argument("--model", action="append", required=True, metavar="LAYER=DIR",
                       help="trained decoder (decoder.pt or its folder) for a layer, in row order")
    else:
        q.add_argument("--model", required=True, help="trained fc8 decoder (decoder.pt or its folder)")
    q.add_argument("--count", type=int, default=3, help="images / samples per row")
    q.add_argument("--keys", nargs="+", help="image keys (default: the first ones)")
    q.add_argument("--dataset", default="")
    q.add_argument("--weights", help="AlexNet weights for the caption (default: from the model)")
    q.add_argument("--caption", default="")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", required=True, help="PNG path")


def _caption(args, weights_seen: Iterable[str] = ()) -> str:
    weights = args.weights
    if not weights:
        seen = sorted(set(weights_seen))
        weights = ", ".join(seen) if seen else None
    return caption_text(args.dataset, weights, args.caption)


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
        mean_image = np.load(args.mean_image)
    elif args.train_shards:
        mean_image, _ = compute_mean_image(args.train_shards, test.size)
    elif args.floor_from_val:
        mean_image, label = test.images.astype(np.float64).mean(axis=0), "val, in-sample"
    if not rows and mean_image is None:
        raise ValueError("nothing to evaluate: give --row and/or a floor (--mean-image, --train-shards, --floor-from-val)")
    per_image = [] if args.per_image else None
    records = table2(test, rows, dataset=args.dataset, mean_image=mean_image, floor_label=label, ci=args.ci,
                     seed=args.seed, norm_max_images=args.norm_max_images, per_image=per_image)
    caption = _caption(args)
    write_csv(args.out, records, TABLE2_COLUMNS)
    write_caption_sidecar(args.out, caption)
    write_text(args.md or _md_path(args), render_table2_md(records, caption))
    if per_image is not None:
        write_csv(args.per_image, per_image, ("row", "key", "error", "psnr", "ssim"))
    for r in records:
        print(f"{r['name']}: error {r['error_mean']:.3f} ± {r['error_std']:.3f} (n={r['n_images']})"
              + (f", paper {r['paper_error']}" if r["paper_error"] is not None else ""))
    return 0


def run_mv_table1(args) -> int:
    test = _test_set_from_args(args)
    rows = _parse_rows(args.row, "--row", MV_TABLE1_ROWS)
    if not rows:
        raise ValueError("nothing to evaluate: give --row ROW=STORE,...")
    feats = _parse_rows(args.features, "--features", MV_TABLE1_ROWS)
    names = {}
    for it in args.feature or []:
        k, sep, v = it.partition("=")
        if not sep or k not in MV_TABLE1_ROWS or not v:
            raise ValueError(f"--feature {it!r}: expected ROW=NAME with ROW in {', '.join(MV_TABLE1_ROWS)}")
        names[k] = v
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
                        feature_params=params, device=args.device, batch_size=args.batch_size,
                        ci=args.ci, seed=args.seed)
    caption = _caption(args)
    write_csv(args.out, records, MV_TABLE1_COLUMNS)
    write_caption_sidecar(args.out, caption)
    write_text(args.md or _md_path(args), render_mv_table1_md(records, caption))
    for r in records:
        print(f"{r['name']}: {r['error_pct_mean']:.2f}% ± {r['error_pct_std']:.2f} (paper {r['paper_error_pct']}%)")
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
    from pipeline import figures

    test = _test_set_from_args(args)
    points = _parse_points(args.point)
    if not points:
        raise ValueError("nothing to plot: give --point CURVE:LAYER=STORE,...")
    labels = dict(_parse_label(it) for it in args.label or [])
    records, weights = figure7(test, points, dataset=args.dataset, labels=labels, ci=args.ci, seed=args.seed,
                               norm_max_images=args.norm_max_images)
    caption = _caption(args, weights)
    write_csv(args.out, records, FIGURE7_COLUMNS)
    write_caption_sidecar(args.out, caption)
    png = args.png or _md_path(args, ".png")
    figures.plot_layer_errors(png, records, caption=caption)
    print(f"wrote {args.out} and {png}: {len(records)} points")
    return 0


def _parse_label(it: str) -> tuple[str, str]:
    k, sep, v = it.partition("=")
    if not sep or not k:
        raise ValueError(f"--label {it!r}: expected CURVE=TEXT")
    return k, v


def run_grid(args) -> int:
    from pipeline import figures

    test = _test_set_from_args(args)
    keys = args.keys or test.keys[: args.count]
    missing = [k for k in keys if k not in test.index]
    if missing:
        raise ValueError(f"--keys: not in the test images: {missing}")
    sel = [test.index[k] for k in keys]
    columns, weights = {}, set()
    for it in args.column:
        label, paths = _parse_assign(it, "--column")
        idx, recs, meta = read_reconstructions(test, paths)
        for m in meta:
            weights |= weights_in(m["params"])
        pos = {int(i): j for j, i in enumerate(idx)}
        columns[label] = [recs[pos[i]] if i in pos else None for i in sel]
    caption = _caption(args, weights)
    figures.reconstruction_grid(args.out, test.images[sel], columns, caption=caption)
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
    from pipeline.store import FeatureStore, write_store

    if len(args.out) != len(args.features):
        raise ValueError(f"--out: {len(args.out)} paths for {len(args.features)} --features stores")
    for i, (src, dst) in enumerate(zip(args.features, args.out)):
        with FeatureStore(src) as st:
            f = torch.from_numpy(st.all())
            attrs = {k: v for k, v in st.attrs.items()
                     if k not in ("feature", "params", "image_shard", "image_shard_sha256", "code_version")}
            g = perturb(f, args.kind, seed=args.seed + i)
            attrs["perturbation"] = json.dumps({"kind": args.kind, "seed": args.seed + i})
            write_store(dst, st.keys, g.numpy(), feature=str(st.attrs.get("feature", "")), params=st.params,
                        image_shard=str(st.attrs.get("image_shard", "")),
                        image_shard_sha256=str(st.attrs.get("image_shard_sha256", "")),
                        dtype="float32", extra_attrs=attrs)
        print(f"wrote {dst}: {args.kind} of {src}")
    return 0


# ---- figures that need trained decoders


def load_decoder_callable(path, device="cpu", size=None):
    """(decoder callable features -> (B, 3, H, W) [0, 255], encoder module, payload) of a trained model."""
    from pipeline.decoders.modelfile import load_model
    from pipeline.decoders.reconstruct import reconstruct_batch

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
    from pipeline import figures

    test, keys = _figure_inputs(args)
    dec, enc, payload = load_decoder_callable(args.model, args.device, test.size)
    x = images_nchw(test.images[[test.index[k] for k in keys]])
    feats = compute_features(enc, x, device=args.device)
    caption = _caption(args, _model_weights([payload]))
    figures.figure_topk(args.out, test.images[[test.index[k] for k in keys]], feats, dec, k=args.k, caption=caption)
    print(f"wrote {args.out}")
    return 0


def _per_layer(args, test, keys):
    layers, payloads = {}, []
    x = images_nchw(test.images[[test.index[k] for k in keys]])
    for layer, path in _models(args).items():
        dec, enc, payload = load_decoder_callable(path, args.device, test.size)
        payloads.append(payload)
        layers[layer] = (dec, enc, x)
    return layers, payloads


def run_fig9(args) -> int:
    from pipeline import figures

    test, keys = _figure_inputs(args)
    layers, payloads = _per_layer(args, test, keys)
    rows = {l: (compute_features(enc, x, device=args.device), dec) for l, (dec, enc, x) in layers.items()}
    caption = _caption(args, _model_weights(payloads))
    figures.figure_perturbed(args.out, test.images[[test.index[k] for k in keys]], rows, kinds=args.kinds,
                             seed=args.seed, caption=caption)
    print(f"wrote {args.out}")
    return 0


def run_fig10(args) -> int:
    from pipeline import figures

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
                                 endpoints=test.images[[test.index[k] for k in pair]])
    print(f"wrote {args.out}")
    return 0


def run_fig11(args) -> int:
    from pipeline import figures

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


_RUNNERS: dict[str, Callable] = {
    "table2": run_table2, "mv-table1": run_mv_table1, "figure7": run_figure7, "grid": run_grid,
    "mean-image": run_mean_image, "perturb": run_perturb, "fig8": run_fig8, "fig9": run_fig9,
    "fig10": run_fig10, "fig11": run_fig11,
}


# --------------------------------------------------------------------------- benchmark


def bench_evaluate(argv: list[str]) -> int:
    """``python -m pipeline bench evaluate``: throughput of the metrics on random images.

    Prints images/s for the normalised error (with N), PSNR, SSIM and the
    mean pairwise distance, and the ratio of SSIM time to a plain numpy
    squared-error pass over the same data (the reference, measured here).
    """
    import time

    ap = argparse.ArgumentParser(prog="python -m pipeline bench evaluate")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rec-size", type=int, default=None, help="reconstruction size (default: --size / 2)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rs = a.rec_size or max(8, a.size // 2)
    x = rng.integers(0, 256, (a.n, a.size, a.size, 3), dtype=np.uint8)
    r = rng.uniform(0, 255, (a.n, 3, rs, rs)).astype(np.float32)

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    normalized_errors(x[:4], r[:4]), psnr_per_image(x[:2], r[:2]), ssim_per_image(x[:2], r[:2])  # warm-up, imports
    t_ref = timed(lambda: ((x.astype(np.float32) - x.astype(np.float32)[::-1]) ** 2).sum())
    t_norm = timed(lambda: mean_pairwise_distance(images_nchw(x)))
    t_err = timed(lambda: normalized_errors(x, r))
    t_psnr = timed(lambda: psnr_per_image(x, r))
    t_ssim = timed(lambda: ssim_per_image(x, r))
    t_boot = timed(lambda: summarize(rng.random(a.n)))
    print(f"{a.n} images {a.size}x{a.size}, reconstructions {rs}x{rs}")
    for name, t in [("reference: numpy squared error", t_ref), ("mean pairwise distance (N)", t_norm),
                    ("normalised error incl. N", t_err), ("PSNR", t_psnr), ("SSIM", t_ssim),
                    ("bootstrap CI (10k)", t_boot)]:
        print(f"  {name:34s} {t * 1e3:9.1f} ms  {a.n / t:10.0f} images/s  x{t / t_ref:8.1f} reference")
    return 0
