"""AlexNet representations: every layer of torchvision's AlexNet and of CaffeNet.

``get_feature("alexnet", layer="conv5", arch="caffenet", weights="random", seed=0)``
returns an :class:`AlexNetFeature`, a module mapping ``(B, 3|1, H, W)`` RGB (or
grey, repeated to 3 channels) with values in [0, 255] to ``(B, D, h, w)``.
Fully connected layers give ``(B, D, 1, 1)``.

Architectures (``arch``)
------------------------
``caffenet``
    The network of Dosovitskiy & Brox 2016 (supplementary Table 3) and of
    Mahendran & Vedaldi 2015's CNN-A (Table 2): BVLC's
    ``bvlc_reference_caffenet``, i.e. AlexNet with pooling *before* LRN::

        conv1 96@11x11 s4        -> relu1 -> pool1 3x3 s2 -> norm1 LRN(5, 1e-4, 0.75, k=1)
        conv2 256@5x5 p2 groups2 -> relu2 -> pool2 3x3 s2 -> norm2 LRN
        conv3 384@3x3 p1         -> relu3
        conv4 384@3x3 p1 groups2 -> relu4
        conv5 256@3x3 p1 groups2 -> relu5 -> pool5 3x3 s2
        fc6 9216->4096 -> relu6 ; fc7 4096->4096 -> relu7 ; fc8 4096->1000

    Max pooling rounds the output size up (Caffe's convention, ``ceil_mode``);
    at 227x227 it makes no difference (55 -> 27 -> 13 -> 6).  LRN is Caffe's
    ACROSS_CHANNELS LRN, ``b_c = a_c / (k + alpha/n * sum_{c' in window(c)} a_c'^2)^beta``
    with n = 5 channels, alpha = 1e-4, beta = 0.75, k = 1 (the convention of
    ``torch.nn.LocalResponseNorm``).  Input: BGR, range 0..255, minus the
    per-channel ImageNet mean of Caffe's ``ilsvrc_2012_mean.npy``
    (B 104.0, G 116.7, R 122.7: :data:`CAFFE_MEAN_BGR`; the papers subtracted
    the full 256x256 mean image, whose channel averages these are).

    State-dict keys (our choice: Caffe's layer names):
    ``conv1.weight (96, 3, 11, 11)``, ``conv1.bias (96,)``,
    ``conv2.weight (256, 48, 5, 5)``, ``conv3.weight (384, 256, 3, 3)``,
    ``conv4.weight (384, 192, 3, 3)``, ``conv5.weight (256, 192, 3, 3)``,
    ``fc6.weight (4096, 9216)``, ``fc7.weight (4096, 4096)``,
    ``fc8.weight (1000, 4096)`` and the matching ``.bias`` vectors
    (:data:`~pipeline.features.alexnet_weights.CAFFENET_SHAPES`).  Caffe blobs
    have exactly these layouts (conv weights act on BGR input; fc6 reads pool5
    flattened in (C, H, W) order), so
    :func:`~pipeline.features.alexnet_weights.caffe_to_state_dict` only renames;
    :func:`~pipeline.features.alexnet_weights.read_caffemodel` reads the blobs
    of a ``.caffemodel`` file without Caffe or protobuf installed.

``torchvision``
    Exactly torchvision's ``AlexNet`` module layout (``features.{0,3,6,8,10}``
    convolutions 64/192/384/256/256, ``avgpool = AdaptiveAvgPool2d(6)``,
    ``classifier.{1,4,6}`` linear, dropouts ``classifier.{0,3}`` inactive), so
    ``alexnet-owt-7be5be79.pth`` loads with ``strict=True``.  Input:
    ``(x / 255 - mean) / std`` with the ImageNet RGB mean (0.485, 0.456, 0.406)
    and std (0.229, 0.224, 0.225).  (ReLUs are not in-place so that several taps
    can be read from one forward pass; this does not change any output.)

Layer names (``layer``)
-----------------------
The bare paper names ``conv1 .. conv5, fc6, fc7, fc8`` (:data:`PAPER_LAYERS`)
are the *outputs of the paper's layers*, "the output of the last processing
step of this layer" (Dosovitskiy & Brox 2016): ``conv1`` = after ReLU,
pooling and (CaffeNet) LRN, ``conv2`` likewise, ``conv3``/``conv4`` after ReLU,
``conv5`` after ReLU and pooling, ``fc6``/``fc7`` after ReLU, ``fc8`` before
the softmax (:data:`PAPER_OUTPUT` maps them to taps).

Every intermediate processing step is a *tap* named as in Table 2 of
Mahendran & Vedaldi 2015 (conv1 relu1 pool1 norm1 conv2 ... relu7 fc8), except
that the linear steps (convolutions and fully connected layers) carry the
suffix ``_raw``, because the bare name means the paper's output: ``conv1_raw`` is the convolution
before ReLU, ``fc6_raw`` the linear output before relu6, ``fc8_raw`` = ``fc8``.
``mpool1/2/5`` are accepted for ``pool1/2/5``.  :data:`LAYERS` lists the taps
of each arch in forward order; torchvision's net has no ``norm*`` taps and an
extra ``avgpool`` tap (its adaptive 6x6 pooling between pool5 and fc6; the
identity at 224 or 227 input).  :data:`TAP_MODULES` gives each tap's dotted
module name inside :attr:`AlexNetFeature.net` (``conv1_raw`` -> ``features.0``
for torchvision, ``conv1`` for CaffeNet), so a generic forward-hook capture on
that module sees the same tensor.

The forward pass stops at the requested tap.  Parameters are frozen
(``requires_grad=False``) but the features are differentiable w.r.t. the input,
and the network always stays in eval mode.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

from pipeline.torchfile import load_torch_file
from pipeline.vocabulary import ALEXNET_LAYERS

from . import register
from .alexnet_weights import check_arch, check_weights, how_to_get_weights

PAPER_LAYERS = ALEXNET_LAYERS  # the paper's names (pipeline.vocabulary)

CAFFENET_LAYERS = (
    "conv1_raw", "relu1", "pool1", "norm1",
    "conv2_raw", "relu2", "pool2", "norm2",
    "conv3_raw", "relu3",
    "conv4_raw", "relu4",
    "conv5_raw", "relu5", "pool5",
    "fc6_raw", "relu6",
    "fc7_raw", "relu7",
    "fc8_raw",
)
TORCHVISION_LAYERS = (
    "conv1_raw", "relu1", "pool1",
    "conv2_raw", "relu2", "pool2",
    "conv3_raw", "relu3",
    "conv4_raw", "relu4",
    "conv5_raw", "relu5", "pool5", "avgpool",
    "fc6_raw", "relu6",
    "fc7_raw", "relu7",
    "fc8_raw",
)
#: Taps of each arch, in forward order.
LAYERS = {"caffenet": CAFFENET_LAYERS, "torchvision": TORCHVISION_LAYERS}

#: Paper layer name -> tap holding that layer's output.
PAPER_OUTPUT = {
    "caffenet": {
        "conv1": "norm1", "conv2": "norm2", "conv3": "relu3", "conv4": "relu4",
        "conv5": "pool5", "fc6": "relu6", "fc7": "relu7", "fc8": "fc8_raw",
    },
    "torchvision": {
        "conv1": "pool1", "conv2": "pool2", "conv3": "relu3", "conv4": "relu4",
        "conv5": "pool5", "fc6": "relu6", "fc7": "relu7", "fc8": "fc8_raw",
    },
}

#: Tap -> dotted module name inside the network (for forward hooks).
TAP_MODULES = {
    "caffenet": {t: (t[:-4] if t.endswith("_raw") else t) for t in CAFFENET_LAYERS},
    "torchvision": dict(zip(TORCHVISION_LAYERS, (
        "features.0", "features.1", "features.2",
        "features.3", "features.4", "features.5",
        "features.6", "features.7",
        "features.8", "features.9",
        "features.10", "features.11", "features.12", "avgpool",
        "classifier.1", "classifier.2",
        "classifier.4", "classifier.5",
        "classifier.6",
    ))),
}

#: Caffe's ImageNet mean (channel averages of ilsvrc_2012_mean.npy), BGR order, 0..255.
CAFFE_MEAN_BGR = (104.0, 116.7, 122.7)
#: torchvision's ImageNet normalisation of [0, 1] RGB input.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def resolve_layer(arch: str, layer: str) -> str:
    """Tap name for ``layer`` (a paper layer, a tap, or ``mpoolN``) of ``arch``."""
    check_arch(arch)
    if not isinstance(layer, str):
        raise TypeError(f"alexnet: layer must be a string, got {layer!r}")
    name = layer.replace("mpool", "pool") if layer.startswith("mpool") else layer
    if name in PAPER_OUTPUT[arch]:
        return PAPER_OUTPUT[arch][name]
    if name in LAYERS[arch]:
        return name
    raise ValueError(
        f"alexnet: unknown layer {layer!r} for arch={arch!r}; paper layers {list(PAPER_LAYERS)} "
        f"or taps {list(LAYERS[arch])}"
    )


# --------------------------------------------------------------------------- networks


class _TappedNet(nn.Module):
    """A feed-forward net given as ordered taps ``(tap, module path, kind)``.

    ``kind`` is ``"fc"`` for linear layers: their input is flattened to (B, C*h*w)
    and their output is returned as (B, D, 1, 1), so every tap is 4-d.
    """

    TAPS: tuple = ()

    def _steps(self):
        return [(tap, self.get_submodule(path), kind) for tap, path, kind in self.TAPS]

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        """Normalised input -> the tap ``upto`` (4-d), or the logits (B, 1000) if None."""
        stop = upto or self.TAPS[-1][0]
        for tap, module, kind in self._steps():
            if kind == "fc":
                x = module(x.flatten(1))[:, :, None, None]
            else:
                x = module(x)
            if tap == stop:
                return x.flatten(1) if upto is None else x
        raise ValueError(f"unknown tap {upto!r}; taps: {[t for t, _, _ in self.TAPS]}")

    def forward_taps(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several taps from one pass, which stops at the deepest requested."""
        want = set(taps)
        unknown = want - {t for t, _, _ in self.TAPS}
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}")
        out = {}
        for tap, module, kind in self._steps():
            if not want - out.keys():
                break
            x = module(x.flatten(1))[:, :, None, None] if kind == "fc" else module(x)
            if tap in want:
                out[tap] = x
        return out


class TorchvisionAlexNet(_TappedNet):
    """torchvision's ``AlexNet`` layout (same module names, keys and shapes)."""

    TAPS = tuple(
        (tap, path, "fc" if path.startswith("classifier") and tap.endswith("_raw") else "op")
        for tap, path in TAP_MODULES["torchvision"].items()
    )

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, num_classes),
        )


class CaffeNet(_TappedNet):
    """BVLC reference CaffeNet; modules named as Caffe's layers (see module docstring)."""

    TAPS = tuple(
        (tap, path, "fc" if path.startswith("fc") else "op")
        for tap, path in TAP_MODULES["caffenet"].items()
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()

        def lrn():
            return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)

        def pool():
            return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)

        self.conv1 = nn.Conv2d(3, 96, kernel_size=11, stride=4)
        self.relu1 = nn.ReLU()
        self.pool1 = pool()
        self.norm1 = lrn()
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)
        self.relu2 = nn.ReLU()
        self.pool2 = pool()
        self.norm2 = lrn()
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)
        self.relu5 = nn.ReLU()
        self.pool5 = pool()
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Linear(4096, num_classes)


_NETS = {"caffenet": CaffeNet, "torchvision": TorchvisionAlexNet}


def random_init_(net: nn.Module, seed: int) -> nn.Module:
    """Deterministic init from ``seed`` (CPU generator, parameters in module order).

    Weights ~ N(0, gain^2 / fan_in) (He init, gain sqrt(2) before a ReLU, 1 for
    the last linear layer), biases 0: activation scales stay of order one
    through the depth, unlike Caffe's fixed std 0.01.
    """
    g = torch.Generator().manual_seed(int(seed))
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for i, m in enumerate(layers):
            fan_in = m.weight[0].numel()
            gain = 1.0 if i == len(layers) - 1 else math.sqrt(2.0)
            m.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=g)
            m.bias.zero_()
    return net


def _read_state(path: str, arch: str) -> dict:
    """The state dict saved at ``path`` (``weights_only=True``), all of its values finite tensors."""
    state = load_torch_file(path, what=f"AlexNet weights file (arch={arch!r})", fix=how_to_get_weights(arch))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"alexnet: {path!r} does not hold a state dict (got {type(state).__name__})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"alexnet: weights {path!r} hold NaN or Inf in {bad[:3]}; {how_to_get_weights(arch)}")
    return state


def load_weights_(net: nn.Module, path: str, arch: str, assign: bool = False) -> nn.Module:
    """Strictly load the state dict saved at ``path`` into ``net`` (``assign``: as
    ``Module.load_state_dict``, for a network on the meta device)."""
    state = _read_state(path, arch)
    try:
        net.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        hint = ""
        other = "caffenet" if arch == "torchvision" else "torchvision"
        if set(state) == set(_NETS[other]().state_dict()):
            hint = f" (its keys are those of arch={other!r})"
        raise ValueError(
            f"alexnet: weights {path!r} do not match arch={arch!r}{hint}: {e}\n"
            f"expected keys and shapes: {expected}"
        ) from None
    return net


def verify_weights_file(layer: str = "conv5", arch: str = "caffenet", weights="random", seed: int = 0) -> None:
    """Check the weights file of an ``alexnet`` representation without building it:
    loaded with ``weights_only=True`` into ``arch``'s network on the meta device
    (names and shapes compared, values finite).  ``weights="torchvision"`` is
    checked in torchvision's cache and not downloaded."""
    check_arch(arch)
    path = check_weights(arch, weights, download=False)
    if path == "random":
        return
    with torch.device("meta"):
        net = _NETS[arch]()
    load_weights_(net, path, arch, assign=True)


# --------------------------------------------------------------------------- feature


def decoder_family(params: dict) -> str:
    """Dosovitskiy & Brox 2016: fully connected layers (fc6..fc8 and their relu/drop
    taps) get the fc decoder (Table 8), the convolutional part the conv one (Table 7)."""
    layer = str(params.get("layer", "conv5"))
    return "fc" if any(layer.startswith(p) for p in ("fc", "relu6", "relu7", "drop")) else "conv"


@register("alexnet", decoder=decoder_family, weights_check=verify_weights_file)
class AlexNetFeature(nn.Module):
    """One layer of AlexNet as a representation of [0, 255] RGB images.

    ``forward(x)``: (B, 3|1, H, W) in [0, 255] -> (B, D, h, w); grey input is
    repeated to 3 channels; normalisation for ``arch`` is done inside.
    ``trained`` is False for ``weights='random'`` (say "untrained" in outputs).
    """

    name = "alexnet"

    def __init__(self, layer: str = "conv5", arch: str = "caffenet", weights="random", seed: int = 0) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = arch
        self.layer = layer.replace("mpool", "pool") if isinstance(layer, str) else layer
        self.tap = resolve_layer(arch, layer)
        self.layers = LAYERS[arch]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"alexnet: seed must be an int, got {seed!r}")
        self.seed = int(seed)
        self.weights = check_weights(arch, weights)
        self.trained = self.weights != "random"
        with torch.device("meta"):  # skip torch's default init: we overwrite every parameter
            net = _NETS[arch]()
        self.net = net.to_empty(device="cpu")
        if self.trained:
            load_weights_(self.net, self.weights, arch)
        else:
            random_init_(self.net, self.seed)
        self.net.requires_grad_(False)
        self.net.eval()
        if arch == "caffenet":
            mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
            std = torch.ones(1, 3, 1, 1)
        else:
            mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def params(self) -> dict:
        return {"layer": self.layer, "arch": self.arch, "weights": self.weights, "seed": self.seed}

    def train(self, mode: bool = True):
        """Sets ``self.training``; the network itself always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 255] RGB/grey (B, C, H, W) -> the network's input.

        caffenet: BGR, 0..255, minus :data:`CAFFE_MEAN_BGR`;
        torchvision: ``(x / 255 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB``.
        """
        if x.dim() != 4:
            raise ValueError(f"alexnet: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        elif c != 3:
            raise ValueError(f"alexnet: expected 1 or 3 channels, got {c}")
        x = x.to(self.mean.dtype)
        if self.arch == "caffenet":
            return x.flip(1) - self.mean
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x), upto=self.tap)

    def forward_taps(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several layers (paper names or taps) from one truncated pass, keyed as given."""
        layers = list(layers)
        taps = {l: resolve_layer(self.arch, l) for l in layers}
        got = self.net.forward_taps(self.normalize(x), set(taps.values()))
        return {l: got[t] for l, t in taps.items()}

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        return layer_shape(self.arch, self.tap, H, W)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r} (tap {self.tap}), arch={self.arch!r}, weights={self.weights!r}, trained={self.trained}"


def layer_shape(arch: str, layer: str, H: int, W: int) -> tuple[int, int, int]:
    """(D, h, w) of ``layer`` of ``arch`` for an H x W input, without running the net."""
    tap = resolve_layer(arch, layer)
    net = _shape_net(arch)
    c, h, w = 3, int(H), int(W)
    for t, module, kind in net._steps():
        if isinstance(module, nn.Conv2d):
            k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
            c, h, w = module.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif isinstance(module, nn.MaxPool2d):
            k, s = module.kernel_size, module.stride
            rnd = math.ceil if module.ceil_mode else math.floor
            h, w = rnd((h - k) / s) + 1, rnd((w - k) / s) + 1
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            h, w = module.output_size
        elif isinstance(module, nn.Linear):
            if c * h * w != module.in_features:
                raise ValueError(
                    f"alexnet: {t} of arch={arch!r} needs {module.in_features} inputs but a "
                    f"{H}x{W} image gives {c}x{h}x{w}; use 227x227 input"
                )
            c, h, w = module.out_features, 1, 1
        if h < 1 or w < 1:
            raise ValueError(f"alexnet: a {H}x{W} input is too small for {t} of arch={arch!r}")
        if t == tap:
            return c, h, w
    raise AssertionError(tap)


_SHAPE_NETS: dict[str, nn.Module] = {}


def _shape_net(arch: str) -> nn.Module:
    if arch not in _SHAPE_NETS:
        with torch.device("meta"):
            _SHAPE_NETS[arch] = _NETS[arch]()
    return _SHAPE_NETS[arch]
