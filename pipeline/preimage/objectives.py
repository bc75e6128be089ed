"""The energy terms that natural pre-images (Mahendran & Vedaldi 2016, IJCV,
"Visualizing deep convolutional neural networks using natural pre-images")
add to those of the inversion of Mahendran & Vedaldi 2015 (CVPR) in
:mod:`pipeline.baselines.terms`, and the parts of the maximisation target.

* :class:`BoundedRange`: the bounded range regulariser of Mahendran &
  Vedaldi 2016, the alpha-norm of each pixel's colour vector.
* :class:`InnerProduct`: the linear data term ``-<d, Phi> / Z`` of
  activation maximisation and caricatures.
* :func:`unit_direction`: ``d = e`` selecting one unit or one channel's mean.
* :func:`activation_scale`: ``Z`` of the maximisation, the RMS of a layer's
  activations over reference images (natural ones, or :data:`SCALE_SAMPLES`
  seeded noise images drawn like the initialisation).

How they enter the energy: :mod:`pipeline.preimage.optimise`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from pipeline.baselines.descent import noise_init
from pipeline.baselines.terms import ALPHA, GRAY_MEAN, RGB_MEAN, State, Term, sigma_for

#: Noise images for the activation scale Z when no natural images are given.
SCALE_SAMPLES = 8


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
