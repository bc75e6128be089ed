"""The settings of Mahendran & Vedaldi 2016 (IJCV, "Visualizing deep
convolutional neural networks using natural pre-images") as their code runs
them (nnpreimage: ``core/get_defaults.m``, ``core/nnpreimage.m``,
``experiments/get_preimage_opts.m``, ``layers/l2.m``, ``layers/tv.m``): the
default of :func:`pipeline.preimage.optimise.preimage` (``preset="ijcv"``).

In pixel units (the image minus the mean colour, grey levels; no
normalisation by the mean image norm as in the 2015 paper), with
``x0_sigma = 80``:

* energy ``l(Phi) + lambda_r / P sum_{u,v} ||x(u,v)||^alpha + lambda_V / P sum_{c,u,v}
  (dx^2 + dy^2)^(beta/2)``, ``P`` the number of pixels of the optimised
  canvas (``l2.m``, ``tv.m`` divide by it), ``alpha = 6``, ``beta = 2``,
  ``lambda_r = (1 / x0_sigma)^alpha`` (:data:`LAMBDA_RANGE`: a pixel of
  colour norm 80 costs 1), ``lambda_V = (6.5 / x0_sigma)^beta``
  (:data:`LAMBDA_TV`); the range term is the bounded range of the colour
  vector (:class:`pipeline.preimage.objectives.BoundedRange`);
* the box constraint ``||x(u,v)|| <= x0_max = 160`` grey levels (projection
  after every step; :data:`BOUND`);
* jitter also when inverting: the image is a canvas ``J - 1`` pixels larger
  than the input, the network sees a random ``H x W`` crop at every
  iteration (offsets 0..J-1), ``J = max(round(stride / 4), 1)`` with
  ``stride`` the layer's receptive-field stride (:func:`jitter_amount`); the
  result is the central crop;
* momentum 0.9 with AdaGrad-like scaling (``optimizer="adagrad"`` of
  :func:`pipeline.baselines.descent.descend`) at rate ``P_img * LR``, ``LR =
  0.05 x0_sigma^2 / alpha`` (:data:`LR`), ``P_img`` the image's pixels;
* schedule: 300 iterations at ``LR`` (:data:`SCHEDULE`); inversion continues
  from the central crop for 50 iterations at ``0.1 LR`` without jitter and
  with fresh optimiser state (:data:`SCHEDULE_INVERT`, nnpreimage's second
  call);
* initialisation: uniform noise in [-1, 1], scaled so that its 95% quantile
  is ``x0_sigma / sqrt(3)`` (:func:`uniform_init`).

Not taken from nnpreimage (README): the maximisation's data term keeps this
package's scale (the RMS activation; the authors weight one unit by
``10000 / rf^2`` over the channel's maximum on ImageNet), and the caricature's
target is the code itself (theirs clips it at 0 first, the same for ReLU
layers).
"""
from __future__ import annotations

import hashlib
import math

import torch

from pipeline.baselines.terms import CNN_A_LAYERS, cnn_a_layer_index

X0_SIGMA = 80.0
#: Box constraint on a pixel's colour norm, grey levels (nnpreimage's ``x0_max``).
BOUND = 160.0
ALPHA = 6.0
BETA = 2.0
LAMBDA_RANGE = (1.0 / X0_SIGMA) ** ALPHA
LAMBDA_TV = (6.5 / X0_SIGMA) ** BETA
#: Base rate (times the image's pixel count): ``0.05 x0_sigma^2 / alpha``.
LR = 0.05 * X0_SIGMA ** 2 / ALPHA
MOMENTUM = 0.9
#: (iterations, rate factor): ``fastLR`` (maximisation, caricatures) ...
SCHEDULE = ((300, 1.0),)
#: ... and inversion's two calls: ``fastLR`` with jitter, then ``slowLR`` without.
SCHEDULE_INVERT = ((300, 1.0), (50, 0.1))


def _alexnet_stride(layer: str, arch: str) -> int:
    """Receptive-field stride of an AlexNet tap (CNN-A layers 1-20, Mahendran & Vedaldi 2015 Table 2)."""
    idx = cnn_a_layer_index(layer, arch)
    name = CNN_A_LAYERS[idx - 1]
    if idx <= 2:  # conv1, relu1
        return 4
    if idx <= 6:  # pool1, norm1, conv2, relu2
        return 8
    if name in ("pool5",) or idx >= 16:  # pool5, fc6..fc8
        return 32
    return 16  # pool2 .. relu5


def layer_stride(feature: torch.nn.Module, image_size: tuple[int, int]) -> int:
    """The receptive-field stride of ``feature``'s output: from the AlexNet layer table, otherwise
    measured from ``output_shape`` at two sizes (1 when the map does not grow with the image)."""
    name = str(getattr(feature, "name", ""))
    params = dict(getattr(feature, "params", {}) or {})
    if name in ("alexnet", "caffenet") and "layer" in params:
        return _alexnet_stride(str(params["layer"]), str(params.get("arch", "caffenet")))
    H, W = image_size
    try:
        _, h1, _ = feature.output_shape(H, W)
        _, h2, _ = feature.output_shape(H + 64, W)
    except Exception:  # noqa: BLE001 - a fixed-size network: no stride to measure
        return 1
    return max(1, round(64 / (h2 - h1))) if h2 > h1 else 1


def jitter_amount(feature: torch.nn.Module, image_size: tuple[int, int]) -> int:
    """nnpreimage's ``jitterAmount = max(round(stride / 4), 1)``: crops at offsets 0..J-1 (J = 1: none)."""
    return max(math.floor(layer_stride(feature, image_size) / 4.0 + 0.5), 1)  # MATLAB's round


def uniform_init(seed: int, key: str, restart: int, shape: tuple[int, ...]) -> torch.Tensor:
    """nnpreimage's initial image: ``t = 2 rand - 1``, ``t / quantile(t, 0.95) * x0_sigma / sqrt(3)``
    (grey levels around the mean), from a generator seeded by (seed, key, restart) (CPU, float64)."""
    h = hashlib.sha256(f"uniform/{int(seed)}/{key}/{int(restart)}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    t = 2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1
    return t / torch.quantile(t.flatten(), 0.95) * X0_SIGMA / math.sqrt(3.0)
