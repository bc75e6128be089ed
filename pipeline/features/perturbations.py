"""Feature perturbations and random feature vectors (Dosovitskiy & Brox 2016,
sections 4.4 and 4.5): they produce the features that Figures 7-11 decode.

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

They are operations on features, so they live in the features' room: the
decoders' reconstruction jobs and the evaluation's figures both read them.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from pipeline.vocabulary import FEATURE_TRANSFORMS


# --------------------------------------------------------------------------- perturbations


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


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
    """Apply one named transform (:data:`pipeline.vocabulary.FEATURE_TRANSFORMS`) to a batch of feature vectors
    (an empty batch, the store of a shard without images, is returned as it is)."""
    if kind in FEATURE_TRANSFORMS and len(x) == 0:
        return _as_tensor(x)
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
    raise ValueError(f"unknown perturbation {kind!r}; choose from {', '.join(FEATURE_TRANSFORMS)}")


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
    """Random feature vectors, each dimension drawn independently (Dosovitskiy & Brox 2016, section 4.5).

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
    """One shifted Gaussian, truncated at zero, for all dimensions (Dosovitskiy & Brox 2016, suppl. Fig. 19).

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


def perturb_features(feats: torch.Tensor, keys, kind: str, seed: int = 0) -> torch.Tensor:
    """``feats`` (B, ...) perturbed by ``kind``, image by image, each seeded by ``(seed, key)``: the
    same draw for an image wherever it is perturbed (a feature store, an autoencoder's features)."""
    if len(feats) == 0:  # an empty shard's store
        return feats.clone()
    out = []
    for f, k in zip(feats, keys):
        h = hashlib.sha256(f"{int(seed)}/{k}".encode()).digest()
        out.append(perturb(f[None].float(), kind, seed=int.from_bytes(h[:8], "little") & ((1 << 63) - 1)))
    return torch.cat(out).to(feats.dtype)
