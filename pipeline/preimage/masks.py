"""Masks on a representation (Mahendran & Vedaldi 2015 (CVPR), Figures 9
and 10): which neurons of a layer a pre-image must match or exaggerate, and
masked feature stores for the learned counterpart.

:func:`feature_mask` builds a 0/1 mask ``(1, D, h, w)`` on a layer: a spatial
window of neurons (e.g. the central 5x5) and/or a subset of channels (a range
``"a:b"``, a list, or filter group ``"g/G"`` of ``G`` equal contiguous groups:
AlexNet's two GPU groups are ``"1/2"`` and ``"2/2"``).  In the optimisation
(:func:`pipeline.preimage.optimise.preimage`) it enters the data term (only
the masked neurons are matched or exaggerated).  For the *learned*
inversion, a decoder is trained and applied on masked codes:
:func:`mask_store` writes a copy of a feature store with the mask applied
(zeros elsewhere; :func:`pipeline.store.derive_store`), which ``python -m
pipeline train --features`` and ``reconstruct --features`` read like any
store.  (``python -m pipeline preimage --mode mask`` does it from the command
line.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.store import FeatureStore, derive_store


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



def mask_store(src, dst, mask: torch.Tensor | np.ndarray, *, dtype: str | None = None) -> None:
    """Copy the feature store ``src`` to ``dst`` with ``mask`` (``(1, D, h, w)`` 0/1) applied.

    Keys, shard provenance and parameters are kept; ``params["mask"]``
    records the kept fraction and the mask's nonzero channel and position
    ranges.  Train a decoder on masked training stores and reconstruct from
    masked validation stores to get the learned counterpart of Mahendran &
    Vedaldi 2015's Figures 9 and 10.
    """
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    with FeatureStore(src) as s:
        shape = tuple(s.shape[1:])
    if m.ndim != 4 or m.shape[0] != 1 or m.shape[1:] != shape:
        raise ValueError(f"mask must be (1, {', '.join(map(str, shape))}), got {m.shape}")
    nz = np.nonzero(m[0])
    record = {
        "kept_fraction": float(m.mean()),
        "channels": [int(nz[0].min()), int(nz[0].max()) + 1] if len(nz[0]) else [],
        "rows": [int(nz[1].min()), int(nz[1].max()) + 1] if len(nz[0]) else [],
        "cols": [int(nz[2].min()), int(nz[2].max()) + 1] if len(nz[0]) else [],
    }
    derive_store(src, dst, lambda feats: feats * m, params={"mask": record}, dtype=dtype)
