"""Metrics of the evaluation: normalised errors in image and feature space,
PSNR, SSIM, their spread, and the mean-image floor (Dosovitskiy & Brox 2016,
sections 2.2 and 4; Mahendran & Vedaldi 2015 (CVPR), section 4).

Images are ``x_i`` (N, H, W, 3) uint8 as read from the image shards;
reconstructions ``r_i = f(Phi(x_i))`` are (N, 3, H', W') floats in [0, 255]
as read from reconstruction stores.  Before any metric a reconstruction is
resized **bilinearly** to the input size (Dosovitskiy & Brox 2016, section
4.1: "before computing the error we up-sample reconstructions to input image
size with bilinear interpolation"; antialiased when it has to shrink
instead) and clipped to [0, 255] (reconstructions of this package already
are).

* **Image-space normalised error** (Dosovitskiy & Brox 2016, section 2.2,
  Table 2, Figure 7)::

      e_i = ||x_i - r_i||_2 / N,   N = mean_{i != j} ||x_i - x_j||_2

  the norm over all pixels and the 3 channels in grey levels; ``N`` is the
  average Euclidean distance between the images of the test set, over all
  ordered pairs i != j of the *same set the errors are reported on* (the
  images given with ``--images``).  The table reports the mean of ``e_i``.
  ``N`` is exact, in float64, and streamed: by pairs of blocks of images
  read back from disk (:func:`mean_pairwise_distance_streamed`), so that
  memory does not grow with the number of images; ``--norm-max-images K``
  computes it instead from a fixed random subset of K images (seeded by
  ``--seed``), an unbiased estimate.
* **Feature-space normalised error** (Mahendran & Vedaldi 2015 (CVPR),
  section 4, Table 1)::

      e_i = ||Phi(x*_i) - Phi(x_i)||_2 / N_Phi,
      N_Phi = mean_{i != j} ||Phi(x_i) - Phi(x_j)||_2

  "the normalised reconstruction error averaged over the 100 images [...]
  N_Phi is the average pairwise Euclidean distance between the Phi(x_i)
  across the 100 images" (Mahendran & Vedaldi 2015, section 4).  ``Phi(x*)``
  is computed with ``pipeline.features.get_feature`` on the (resized,
  clipped) reconstruction.  Reported in percent, like Table 1; its ``+-``
  is, as there, "the standard deviation of the error, not of the mean
  error".
* **Feature-space error as the authors computed Table 1**
  (deep-goggle's ``experiment_shallow_quantitative.m``, ``my_meanstd``)::

      e_i = ||Phi(x*_i) - Phi(x_i)||_2^2 / N2_Phi,
      N2_Phi = mean(pdist2(Phi0, Phi0)(:).^2) = (1/N^2) sum_{i,j} ||Phi(x_i) - Phi(x_j)||_2^2

  squared, over the mean *squared* pairwise distance of all N^2 ordered
  pairs (the zero diagonal i = j included, as ``mean`` over the full
  ``pdist2`` matrix), with Phi the representation the authors measured (their
  CNN-HOG, CNN-HOGb, CNN-DSIFT; the 27-D UoCTTI HOG for HOGgles); ``+-`` the
  standard deviation (MATLAB's ``std``, ddof = 1) of the per-image values.
  The paper's text describes the unsquared ratio above; the numbers of its
  Table 1 come from this script.
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.shards import read_shard
from pipeline.features.perturbations import _as_tensor

# --------------------------------------------------------------------------- image helpers


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


#: bytes of float64 data the streamed normaliser holds at once (two blocks of items)
NORM_MEMORY = 512 * 2**20
#: largest block of items (its distance matrix is block² float64)
NORM_BLOCK = 1024


def mean_pairwise_distance_streamed(read: Callable[[np.ndarray], "np.ndarray | torch.Tensor"], n: int, *,
                                    max_items: int | None = None, seed: int = 0,
                                    memory: int = NORM_MEMORY, read_rows: Callable | None = None) -> float:
    """:func:`mean_pairwise_distance` of ``n`` items that are read a block at a time.

    ``read(indices)`` returns the items ``indices`` (ascending) as an
    (k, ...) array.  ``max_items`` picks the same random subset as
    :func:`mean_pairwise_distance`.  When the (subset of) items fit in one
    block (at most ``NORM_BLOCK`` items and ``memory / 2`` bytes as float64)
    this *is* :func:`mean_pairwise_distance` on them; otherwise it is the
    same exact all-pairs mean, by pairs of blocks (i <= j) of centred float64
    items (the mean is computed in a first pass), so memory is about
    ``memory`` bytes whatever ``n``, and each block is read once per block
    before it.  Sums come in another order: the two ways agree to float64
    rounding (about 1e-12 relative).  ``read_rows`` reads the blocks instead
    of ``read``, in any fixed layout of an item (e.g. images as stored,
    without the transpose to channels first).
    """
    if n < 2:
        raise ValueError(f"the mean pairwise distance needs at least 2 items, got {n}")
    items = np.arange(n)
    if max_items is not None and n > max_items:
        if max_items < 2:
            raise ValueError(f"max_items must be >= 2, got {max_items}")
        items = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    m = len(items)
    first = _as_tensor(read(items[:1]))
    dim = int(first[0].numel())
    block = max(2, min(NORM_BLOCK, memory // (16 * dim)))
    if m <= block:
        return mean_pairwise_distance(read(items))
    starts = list(range(0, m, block))
    read_rows = read_rows or read
    # buffers allocated once and filled in place: memory stays flat however many blocks pass
    bufs = [torch.empty(block, dim, dtype=torch.float64) for _ in range(2)]
    gram = torch.empty(block, block, dtype=torch.float64)

    def rows(s: int, buf: torch.Tensor, mean=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = _as_tensor(read_rows(items[s:s + block]))
        out = buf[:len(x)]
        out.copy_(x.reshape(len(x), dim))
        if mean is not None:
            out.sub_(mean)
        return out, torch.linalg.vector_norm(out, dim=1).square_()

    mean = torch.zeros(dim, dtype=torch.float64)
    for s in starts:
        mean += rows(s, bufs[0])[0].sum(dim=0)
    mean /= m
    total = 0.0
    for i, si in enumerate(starts):
        a, sa = rows(si, bufs[0], mean)
        for sj in starts[i:]:
            b, sb = (a, sa) if sj == si else rows(sj, bufs[1], mean)
            d = torch.mm(a, b.T, out=gram[:len(a), :len(b)])
            d.mul_(-2.0).add_(sa[:, None]).add_(sb[None, :]).clamp_min_(0.0).sqrt_()
            if sj == si:
                d.fill_diagonal_(0.0)  # i == j
                total += float(d.sum())
            else:
                total += 2.0 * float(d.sum())
    return total / (m * (m - 1))


def _per_item_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    diff = a.reshape(a.shape[0], -1).double() - b.reshape(b.shape[0], -1).double()
    return diff.norm(dim=1).cpu().numpy()


def normalized_errors(images, recs, norm: float | None = None) -> tuple[np.ndarray, float]:
    """Dosovitskiy & Brox 2016's per-image error ``||x_i - r_i||_2 / N`` and ``N``.

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
    """Mahendran & Vedaldi 2015's per-image error ``||Phi(x*_i) - Phi(x_i)||_2 / N_Phi`` (a fraction; x100 for %).

    ``norm`` defaults to the mean pairwise distance of ``feats_ref``.
    """
    dist, norm = _feature_distances(feats_rec, feats_ref, norm, mean_pairwise_distance)
    return dist / norm, norm


def mean_squared_pairwise_distance(X) -> float:
    """Mahendran & Vedaldi's Table 1 normaliser (deep-goggle ``my_meanstd``):
    ``mean(pdist2(X, X)(:).^2)``, the mean squared Euclidean distance over all
    N^2 ordered pairs, i = j included; exactly ``(2 / N) sum_i ||x_i - mean||^2``
    (float64, rows of ``X`` flattened)."""
    X = _as_tensor(X)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"the mean squared pairwise distance needs at least 2 items, got {n}")
    X = X.reshape(n, -1).to(torch.float64)
    X = X - X.mean(dim=0, keepdim=True)
    return float(2.0 * (X * X).sum() / n)


def mean_squared_pairwise_distance_streamed(read: Callable[[np.ndarray], "np.ndarray | torch.Tensor"], n: int, *,
                                            memory: int = NORM_MEMORY) -> float:
    """:func:`mean_squared_pairwise_distance` of ``n`` items read a block at a time
    (``read(indices)`` as for :func:`mean_pairwise_distance_streamed`): two passes, the
    mean, then ``(2 / n) sum_i ||x_i - mean||^2`` in float64."""
    if n < 2:
        raise ValueError(f"the mean squared pairwise distance needs at least 2 items, got {n}")
    dim = int(_as_tensor(read(np.arange(1)))[0].numel())
    block = max(2, min(NORM_BLOCK, memory // (16 * dim)))
    starts = range(0, n, block)

    def rows(s: int) -> torch.Tensor:
        return _as_tensor(read(np.arange(s, min(s + block, n)))).to(torch.float64).reshape(-1, dim)

    mean = torch.zeros(dim, dtype=torch.float64)
    for s in starts:
        mean += rows(s).sum(dim=0)
    mean /= n
    total = 0.0
    for s in starts:
        c = rows(s) - mean
        total += float((c * c).sum())
    return 2.0 * total / n


def squared_feature_errors(feats_rec, feats_ref, norm: float | None = None) -> tuple[np.ndarray, float]:
    """The per-image error of Mahendran & Vedaldi's Table 1 script, ``||Phi(x*_i) - Phi(x_i)||^2 / N2_Phi``
    (a fraction; x100 for %), and ``N2_Phi`` (:func:`mean_squared_pairwise_distance` of ``feats_ref``
    by default)."""
    dist, norm = _feature_distances(feats_rec, feats_ref, norm, mean_squared_pairwise_distance)
    return dist ** 2 / norm, norm


def _feature_distances(feats_rec, feats_ref, norm, default_norm) -> tuple[np.ndarray, float]:
    """Per-image ``||Phi(x*_i) - Phi(x_i)||_2`` of two same-shaped feature batches, and the
    normaliser (``default_norm`` of ``feats_ref`` when ``norm`` is None; it must be > 0)."""
    a, b = _as_tensor(feats_rec), _as_tensor(feats_ref)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: reconstructions {tuple(a.shape)}, images {tuple(b.shape)}")
    if norm is None:
        norm = default_norm(b)
    if not norm > 0:
        raise ValueError(f"the feature normaliser must be > 0, got {norm!r}")
    return _per_item_l2(a, b), float(norm)


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
