"""The energy of Mahendran & Vedaldi (CVPR 2015) inversion: constants, scales, terms.

Mahendran & Vedaldi 2015, section 2, eq. 3: find the image that minimises

    E(x) = ||Phi(sigma x) - Phi0||^2 / ||Phi0||^2 + lambda_a R_a(x) + lambda_V R_V^b(x)

    R_a(x)   = sum_i |x_i|^a                                   (alpha-norm, a = 6)
    R_V^b(x) = sum_{c,i,j} ((x_{c,i,j+1} - x_{c,i,j})^2
                            + (x_{c,i+1,j} - x_{c,i,j})^2)^(b/2)   (TV^beta, b = 2)

where ``x`` is the *normalised, mean-subtracted* image: the pixels are
``sigma * x + m`` (``m`` the mean image).  The TV^beta sum runs over each
colour channel separately ("both regularisers are applied to each colour
channel"); forward differences, the difference past the last row/column is 0
(the authors' ``tv()`` in ``invert_nn.m`` replicates the last row/column).

sigma and B (Mahendran & Vedaldi 2015, section 2, "Balancing the different terms")
---------------------------------------------------------------------------------
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
  (section 4; the authors' Table 1 script ran 0.5, see below and
  :func:`default_lambda_tv`) and, for CNN-A, ``lambda_V = 0.5`` for layers 1-6, ``5`` for
  layers 7-12 and ``50`` for layers 13-20 (section 5, the bold rows of
  Table 3).  (B is easily paraphrased as "the mean image norm"; the paper's
  sigma is that norm and B is the pixel range.)

The authors' code (deep-goggle ``invert_nn.m``) works on pixels
``x_pix = sigma x`` with ``sigma = x0_sigma = 2.7098e4`` (``x0_sigma.mat``:
the mean norm of mean-subtracted 227x227x3 ImageNet images, also used for
their grey HOG/DSIFT inputs), costs ``lambdaL2/2 * sum(x_pix^6) / sigma^2``
and ``lambdaTV/2 * TV(x_pix) / sigma^2`` and steps ``x_pix -= lr sigma^2
grad_pix E``.  That is exactly gradient descent on eq. 3 in the normalised
variable ``x`` with step ``lr``, ``lambda_a = lambdaL2/2 sigma^4`` (= 2.16e8
for their 8e-10) and ``lambda_V = lambdaTV/2`` (their 1, 10, 100 in
``experiment_cnn.m`` = Table 3's 0.5, 5, 50).  We implement it in that form.
The Table 1 script (``experiment_shallow_quantitative.m``) inverts HOG, HOGb
and DSIFT with ``lambdaTV = 1``, i.e. ``lambda_V = 0.5``, not the text's 5:
both are available (``source`` of :func:`default_lambda_tv`, ``invert-mv
--tv-source``).

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

Safeguard (not in the paper or its code).  The alpha-norm's curvature
``lambda_a a (a-1) x^(a-2)`` grows as the 4th power of a pixel's distance
from the mean, so an explicit gradient step is unstable for pixels beyond
``(2 (1 + m) / (eta lambda_a a (a-1)))^(1/(a-2)) sigma`` -- about 530 grey
levels at the default lr 0.004 -- and such a pixel then diverges to
infinity within a few iterations.  The initial noise alone reaches that far
for grey images (sigma spread over one channel: 119 grey levels per pixel,
so a 4.5-sigma pixel appears in one image in three at 227x227; with the
authors' ``x0_sigma`` their code has the same hazard).  So the iterate (and
the initial noise) is clamped to ``mean +- clamp * B`` (:data:`CLAMP`,
default 4 B = 512 grey levels): a projection that is inactive in normal
operation.

Representations of grey images (registry trait ``grey``: HOG, HOGb, DSIFT,
LBP, SIFT) are inverted in one channel with ``m = 128`` (the authors'
``255 * rgb2gray(x) - 128``); colour ones in RGB with ``m`` the ImageNet mean
colour.

The energy is a list of pluggable :class:`Term` objects (a data term and
regularisers), so activation maximisation and caricatures (Mahendran &
Vedaldi 2016) are small additions: a term that reads ``state.features``.
The descent that minimises it is :mod:`pipeline.baselines.descent`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.features import available, traits

# --------------------------------------------------------------------------
# Constants of the paper and of the authors' code
# --------------------------------------------------------------------------

REF_SIZE = 227
#: deep-goggle's x0_sigma.mat: mean norm of mean-subtracted 227x227x3 images.
SIGMA_REF = 2.7098e4
ALPHA = 6.0
BETA = 2.0
#: lambda_alpha at 227x227 (Mahendran & Vedaldi 2015, sections 4 and 5).
LAMBDA_ALPHA = 2.16e8
#: lambda_V for HOG, HOGb, DSIFT: the text of Mahendran & Vedaldi 2015, section 4 ...
LAMBDA_TV_SHALLOW = 5.0
#: ... and what the authors' Table 1 script ran (``experiment_shallow_quantitative.m``:
#: ``lambdaTV = 1``, i.e. ``lambda_V = lambdaTV / 2 = 0.5`` in eq. 3's units).
LAMBDA_TV_SHALLOW_SCRIPT = 0.5
#: Which of the two the shallow representations get: ``paper`` (5) or ``script`` (0.5).
TV_SOURCES = ("paper", "script")
#: The representations of Mahendran & Vedaldi 2015, section 4 (VLFeat's and the authors' CNN versions).
SHALLOW_FEATURES = ("hog", "hogb", "dsift", "cnn_hog", "cnn_hogb", "cnn_dsift")
#: lambda_V for CNN-A layers 1-6, 7-12, 13-20 (Mahendran & Vedaldi 2015, section 5, Table 3).
LAMBDA_TV_CNN = (0.5, 5.0, 50.0)
#: Pixel range half-width of the paper's rule of thumb.
B_RANGE = 128.0
#: Safeguard (not in the paper): keep |pixel - mean| <= CLAMP * B during the descent.
CLAMP = 4.0
#: Mean of grey inputs (the authors' HOG/DSIFT normalisation ``x - 128``).
GRAY_MEAN = 128.0
#: ImageNet mean colour, RGB (Caffe's ilsvrc_2012_mean channel averages).
RGB_MEAN = (122.7, 116.7, 104.0)
#: Representations computed on grey images.

#: Mahendran & Vedaldi 2015 Table 2: the 20 layers of CNN-A, numbered 1..20.
CNN_A_LAYERS = (
    "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
    "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
    "fc6", "relu6", "fc7", "relu7", "fc8",
)


# --------------------------------------------------------------------------
# Scales and multipliers
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
    """Index 1..20 in Mahendran & Vedaldi 2015's Table 2 of an AlexNet tap or paper layer name.

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


def default_lambda_tv(name: str, params: dict | None = None, source: str = "paper") -> tuple[float, str]:
    """(lambda_V at 227x227, why) for a representation, from Mahendran & Vedaldi 2015.

    ``source`` chooses, for the shallow representations (:data:`SHALLOW_FEATURES`),
    between the paper's text (``paper``: 5) and the authors' Table 1 script
    (``script``: 0.5); the two disagree (README, "Where we differ from the papers").
    """
    if source not in TV_SOURCES:
        raise ValueError(f"source must be one of {TV_SOURCES}, got {source!r}")
    params = params or {}
    if name in ("alexnet", "caffenet") and "layer" in params:
        arch = str(params.get("arch", "caffenet"))
        idx = cnn_a_layer_index(str(params["layer"]), arch)
        group = 0 if idx <= 6 else (1 if idx <= 12 else 2)
        return LAMBDA_TV_CNN[group], (f"Mahendran & Vedaldi 2015 Table 3: CNN-A layer {idx} "
                                      f"({CNN_A_LAYERS[idx - 1]}), group {group + 1}")
    if name in SHALLOW_FEATURES:
        if source == "script":
            return LAMBDA_TV_SHALLOW_SCRIPT, ("Mahendran & Vedaldi 2015, Table 1 script "
                                              "(experiment_shallow_quantitative.m): HOG/HOGb/DSIFT")
        return LAMBDA_TV_SHALLOW, "Mahendran & Vedaldi 2015 section 4: HOG/HOGb/DSIFT"
    return LAMBDA_TV_SHALLOW, "no value in Mahendran & Vedaldi 2015 for this representation: section 4's value"


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
# Images: grey or colour, array layouts
# --------------------------------------------------------------------------


def is_gray_feature(feature: torch.nn.Module) -> bool:
    """Whether ``feature`` reads grey images: its registry traits, or a ``grayscale`` attribute."""
    if getattr(feature, "grayscale", False):
        return True
    name = getattr(feature, "name", None)
    return name in available() and traits(name).grey


def as_images(x) -> torch.Tensor:
    """(N, C, H, W) float tensor from a tensor, or from an (N, H, W, C) uint8 array."""
    if isinstance(x, np.ndarray):
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W) or (N, H, W, 1|3), got shape {tuple(x.shape)}")
    return x.float() if not x.is_floating_point() else x
