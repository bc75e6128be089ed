"""Up-convolutional decoders of Dosovitskiy & Brox (2016), generalised by size.

Every decoder maps a feature tensor ``(B, D, h, w)`` to an image
``(B, 3, H_n, W_n)`` in *normalised pixel units* ``t = x / 127.5 - 1`` (so
``t`` lies in [-1, 1] for pixels ``x`` in [0, 255]; :meth:`Decoder.to_image`
inverts it).  ``(H_n, W_n)`` is the decoder's *native* size, the size its
up-convolutions reach by doubling the feature grid; it can differ from the
requested image size ``out_size``: as in the paper ("in some cases we
predicted downsampled images"; Table 1 predicts 128x128 from a 227x227 image,
Table 7 192x192), training targets are the images resized to the native
size, and reconstructions are resized bilinearly to the image size before
evaluation ("we up-sample reconstructions to input image size with bilinear
interpolation");
:func:`pipeline.decoders.reconstruct.reconstruct_batch` does the latter.

Architectures (Dosovitskiy & Brox 2016, Table 1 and supplementary Tables
4-8).  Leaky ReLU ``r(x) = max(x, 0.2 x)`` after every layer but the last,
which is linear.

* ``fc`` (Tables 1/8, AlexNet fc6/fc7/fc8): the flattened input goes through
  three fully connected layers (4096, 4096, 4096 = 4*4*256), is reshaped to
  4x4x256 and up-sampled by 5x5 stride-2 up-convolutions.  The number of
  up-convolutions is the largest ``n`` with ``4 * 2**n <= out_size`` (227 ->
  5 -> 128, as in Table 1).
* ``conv`` (Table 7, AlexNet conv1..conv5 and their pool/norm/relu taps):
  three 3x3 stride-1 convolutions with 256 channels (Table 7 gives K=3 for
  them; the text's "5x5 in all layers" holds for the up-convolutions), then
  ``n`` 5x5 stride-2 up-convolutions, ``n`` set by the layer's stride
  relative to the image (conv5 6x6 -> 5 -> 192; conv1 27x27 -> 3 -> 216).
* ``hog`` / ``lbp`` (Tables 4 and 6): two streams.  Stream A: three
  convolutions (5x5/256, 5x5/512, 3x3/1024), the first ``n_A`` of stride 2,
  then ``n_A`` 4x4 up-convolutions back to the feature grid.  Stream B: 5x5
  and 3x3 stride-1 convolutions with 128 channels.  Joint: concatenation,
  3x3 convolutions with 256 and 128 channels, then 4x4 stride-2
  up-convolutions to the image.  ``n_A`` brings stream A to a map 64 times
  smaller than the image (HOG, cell 8: 3; LBP, cell 16: 2), as the paper's
  text says, limited by the grid size.
* ``sift`` (Table 5): convolutions 5x5/256, 3x3/512, 3x3/1024, 3x3/2048 (the
  first ``n_down`` of stride 2, again down to 1/64 of the image, but not
  below a 4x4 map), 3x3/2048, 3x3/1024, then 4x4 stride-2 up-convolutions to
  the image.  At the paper's 256 px the two rules agree (64x64 -> 4x4).  On
  smaller images 1/64 would leave 2x2 or 1x1, and unlike the two-stream
  decoders, whose stream B keeps the full grid, this bottleneck is the SIFT
  decoder's only path: at 128 px, a 4x4 instead of a 2x2 bottleneck took the
  sample decoder from 1.05 to 1.00 of the mean-image floor on a development
  split of the training photographs (README).

Channel rule (it reproduces every up-convolution of Tables 1, 4-8): an
up-convolution whose output is ``2**k`` times smaller than the native image
has ``16 * 2**k`` channels (32 at half size, 64 at a quarter, ...), capped at
256 for the AlexNet decoders and 512 for the others; the last one has 3.
``width`` multiplies every hidden channel count (1.0 = the paper).

Up-convolution.  The paper up-samples by a factor 2 putting each value in
the top-left corner of a 2x2 block of zeros, then convolves.  That is
exactly ``nn.ConvTranspose2d(stride=2)``: with kernel ``k`` and padding
``p`` it equals zero insertion followed by a cross-correlation with the
spatially flipped kernel and padding ``k - 1 - p`` before the data.  We use
``p = (k - 1) // 2`` and ``output_padding = 2 + 2p - k`` (k=4: p=1, op=0;
k=5: p=2, op=1), so each up-convolution doubles the size exactly.
Stride-2 convolutions use padding ``k // 2`` and give ``ceil(n / 2)``; when
a grid is not a power of two the up-sampled maps are cropped (top-left,
which keeps pixel alignment) back to the sizes of the contracting path, so
the native size is always ``grid * 2**n``.

Number of doublings of a feature grid (conv, hog, lbp, sift): the ``n``
that brings the grid nearest the image size on a log scale,
``n = round(log2(out / grid))`` (geometric mean over both axes): 32 -> 256
and 28 -> 227 give 3 for HOG, 57 -> 227 gives 2 for SIFT's ceil grid.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import traits

LEAK = 0.2
KINDS = ("fc", "conv", "hog", "lbp", "sift")
FC_GRID = 4  # Table 1: fc3 (4096) reshaped to 4x4x256
SIFT_MIN_GRID = 4  # Table 5 at 256 px: 64x64 -> 4x4; smaller images stop there too


def _size2(size, what: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what} must be a positive int or (H, W), got {size!r}")
    return size


def _ch(c: int, width: float) -> int:
    """Hidden channel count ``c`` scaled by the width multiplier (at least 1)."""
    return max(1, int(round(c * width)))


def up_channels(k: int, cap: int) -> int:
    """Channels of an up-convolution whose output is 2**k times smaller than
    the native image: ``min(16 * 2**k, cap)`` (k >= 1)."""
    return min(16 * 2**k, cap)


def grid_doublings(grid: tuple[int, int], out: tuple[int, int]) -> int:
    """``round(log2(out / grid))`` on the geometric mean of both axes (>= 0)."""
    r = math.log2(math.sqrt(out[0] * out[1] / (grid[0] * grid[1])))
    return max(0, int(math.floor(r + 0.5)))


class Block(nn.Module):
    """One table row: a layer followed by leaky ReLU (0.2) unless it is the last."""

    def __init__(self, layer: nn.Module, act: bool = True):
        super().__init__()
        self.layer = layer
        self.act = nn.LeakyReLU(LEAK) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.layer(x))


def _halvings(size: int, floor: int) -> int:
    """How many stride-2 convolutions (``ceil(n / 2)`` each) keep a map of ``size`` at least ``floor`` wide."""
    n = 0
    while -(-size // 2) >= floor:
        size, n = -(-size // 2), n + 1
    return n


def conv(cin: int, cout: int, k: int, s: int = 1, act: bool = True) -> Block:
    """k x k convolution, stride ``s``, padding ``k // 2`` (ceil(n / s) outputs)."""
    return Block(nn.Conv2d(cin, cout, k, stride=s, padding=k // 2), act)


def upconv(cin: int, cout: int, k: int, act: bool = True) -> Block:
    """Stride-2 up-convolution that doubles the size exactly (see module doc)."""
    p = (k - 1) // 2
    return Block(nn.ConvTranspose2d(cin, cout, k, stride=2, padding=p, output_padding=2 + 2 * p - k), act)


def _crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Top-left crop of an up-sampled map to the size of the contracting path."""
    h, w = size
    if x.shape[-2] < h or x.shape[-1] < w:
        raise RuntimeError(f"up-sampled map {tuple(x.shape[-2:])} smaller than {size}")
    return x[..., :h, :w]


class Decoder(nn.Module):
    """Base class: input scaling, native/output sizes, pixel conversion.

    ``in_scale`` (a buffer, set by training to 1 / RMS of the training
    features) multiplies the input features; the output is in normalised
    pixel units ``t = x / 127.5 - 1``.
    """

    kind = "?"
    PIXEL_OFFSET = 127.5
    PIXEL_SCALE = 127.5

    def __init__(self, in_shape, out_size, width: float):
        super().__init__()
        if len(in_shape) != 3 or min(int(v) for v in in_shape) < 1:
            raise ValueError(f"in_shape must be (D, h, w) with positive entries, got {in_shape!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        self.in_shape = tuple(int(v) for v in in_shape)
        self.out_size = _size2(out_size, "out_size")
        self.width = float(width)
        self.register_buffer("in_scale", torch.ones(()))
        self.native_size: tuple[int, int] = (0, 0)

    @property
    def build_args(self) -> dict:
        return {"kind": self.kind, "in_shape": list(self.in_shape),
                "out_size": list(self.out_size), "width": self.width}

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (B, D) vectors for 1x1 feature maps
            x = x[:, :, None, None]
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (B, {', '.join(map(str, self.in_shape))}),"
                f" got {tuple(x.shape)}"
            )
        return x * self.in_scale.to(x.dtype)

    @classmethod
    def to_image(cls, y: torch.Tensor) -> torch.Tensor:
        """Normalised output -> pixels in [0, 255] (float, clamped)."""
        return (y.float() * cls.PIXEL_SCALE + cls.PIXEL_OFFSET).clamp(0.0, 255.0)

    @classmethod
    def to_target(cls, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 255] -> normalised units ``x / 127.5 - 1``."""
        return (x.float() - cls.PIXEL_OFFSET) / cls.PIXEL_SCALE

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, out_size={self.out_size}, "
                f"native_size={self.native_size}, width={self.width}")


class FCDecoder(Decoder):
    """Tables 1/8: fc1-fc3 (4096), reshape 4x4x256, 5x5 up-convolutions."""

    kind = "fc"

    def __init__(self, in_shape, out_size, width: float = 1.0):
        super().__init__(in_shape, out_size, width)
        d = self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        n = min(int(math.floor(math.log2(s / FC_GRID) + 1e-9)) if s >= FC_GRID else -1 for s in self.out_size)
        if n < 1:
            raise ValueError(f"out_size {self.out_size} too small for the fc decoder (needs >= {2 * FC_GRID})")
        hidden, c0 = _ch(4096, width), _ch(256, width)
        layers = OrderedDict(
            fc1=Block(nn.Linear(d, hidden)),
            fc2=Block(nn.Linear(hidden, hidden)),
            fc3=Block(nn.Linear(hidden, c0 * FC_GRID * FC_GRID)),
            reshape=Block(nn.Unflatten(1, (c0, FC_GRID, FC_GRID)), act=False),
        )
        cin = c0
        for i in range(n):
            k = n - 1 - i
            cout = 3 if k == 0 else _ch(up_channels(k, 256), width)
            layers[f"upconv{i + 1}"] = upconv(cin, cout, 5, act=k > 0)
            cin = cout
        self.layers = nn.Sequential(layers)
        self.native_size = (FC_GRID << n, FC_GRID << n)

    def forward(self, x):
        x = self._check_input(x)
        return self.layers(x.flatten(1))


class ConvDecoder(Decoder):
    """Table 7: three 3x3 convolutions (256), then 5x5 up-convolutions."""

    kind = "conv"

    def __init__(self, in_shape, out_size, width: float = 1.0):
        super().__init__(in_shape, out_size, width)
        d, h, w = self.in_shape
        n = grid_doublings((h, w), self.out_size)
        c = _ch(256, width)
        layers = OrderedDict(conv1=conv(d, c, 3), conv2=conv(c, c, 3), conv3=conv(c, c, 3))
        cin = c
        for i in range(n):
            k = n - 1 - i
            cout = 3 if k == 0 else _ch(up_channels(k, 256), width)
            layers[f"upconv{i + 1}"] = upconv(cin, cout, 5, act=k > 0)
            cin = cout
        if n == 0:
            layers["conv4"] = conv(cin, 3, 3, act=False)
        self.layers = nn.Sequential(layers)
        self.native_size = (h << n, w << n)

    def forward(self, x):
        return self.layers(self._check_input(x))


class TwoStreamDecoder(Decoder):
    """Tables 4 (HOG) and 6 (LBP): contracting stream A, local stream B, joint part."""

    kind = "hog"

    def __init__(self, in_shape, out_size, width: float = 1.0, kind: str = "hog"):
        super().__init__(in_shape, out_size, width)
        self.kind = kind
        d, h, w = self.in_shape
        n_up = grid_doublings((h, w), self.out_size)
        max_down = int(math.floor(math.log2(min(h, w))))
        self.n_down = n_down = max(0, min(3, 6 - n_up, max_down))
        self.n_up = n_up

        a = OrderedDict()
        cin = d
        for i, (c, k) in enumerate(((256, 5), (512, 5), (1024, 3))):
            a[f"convA{i + 1}"] = conv(cin, _ch(c, width), k, 2 if i < n_down else 1)
            cin = _ch(c, width)
        self.stream_a_down = nn.Sequential(a)
        up = OrderedDict()
        for j in range(n_down):
            cout = _ch(up_channels(n_up + n_down - 1 - j, 512), width)
            up[f"upconvA{j + 1}"] = upconv(cin, cout, 4)
            cin = cout
        self.stream_a_up = nn.ModuleDict(up)
        c_a = cin
        cb = _ch(128, width)
        self.stream_b = nn.Sequential(OrderedDict(convB1=conv(d, cb, 5), convB2=conv(cb, cb, 3)))
        j_layers = OrderedDict(convJ1=conv(c_a + cb, _ch(256, width), 3),
                               convJ2=conv(_ch(256, width), _ch(128, width), 3))
        cin = _ch(128, width)
        first = max(3, 7 - n_up)  # the paper numbers the last up-convolution J6
        for i in range(n_up):
            k = n_up - 1 - i
            cout = 3 if k == 0 else _ch(up_channels(k, 512), width)
            j_layers[f"upconvJ{first + i}"] = upconv(cin, cout, 4, act=k > 0)
            cin = cout
        if n_up == 0:
            j_layers["convJ3"] = conv(cin, 3, 3, act=False)
        self.joint = nn.Sequential(j_layers)
        self.native_size = (h << n_up, w << n_up)

    def forward(self, x):
        x = self._check_input(x)
        sizes = []
        a = x
        for block in self.stream_a_down:
            if block.layer.stride[0] == 2:
                sizes.append(a.shape[-2:])
            a = block(a)
        for block, size in zip(self.stream_a_up.values(), reversed(sizes)):
            a = _crop(block(a), size)
        b = self.stream_b(x)
        return self.joint(torch.cat([a, b], dim=1))


class SiftDecoder(Decoder):
    """Table 5: six convolutions (four may be stride 2), then 4x4 up-convolutions."""

    kind = "sift"

    def __init__(self, in_shape, out_size, width: float = 1.0):
        super().__init__(in_shape, out_size, width)
        d, h, w = self.in_shape
        n_j = grid_doublings((h, w), self.out_size)
        self.n_down = n_down = max(0, min(4, 6 - n_j, _halvings(min(h, w), SIFT_MIN_GRID)))
        down = OrderedDict()
        cin = d
        spec = ((256, 5), (512, 3), (1024, 3), (2048, 3), (2048, 3), (1024, 3))
        for i, (c, k) in enumerate(spec):
            down[f"conv{i + 1}"] = conv(cin, _ch(c, width), k, 2 if i < n_down else 1)
            cin = _ch(c, width)
        self.down = nn.Sequential(down)
        n = n_down + n_j
        up = OrderedDict()
        for i in range(n):
            k = n - 1 - i
            cout = 3 if k == 0 else _ch(up_channels(k, 512), width)
            up[f"upconv{i + 1}"] = upconv(cin, cout, 4, act=k > 0)
            cin = cout
        if n == 0:
            up["conv7"] = conv(cin, 3, 3, act=False)
        self.up = nn.ModuleDict(up)
        self.native_size = (h << n_j, w << n_j)

    def forward(self, x):
        x = self._check_input(x)
        sizes = []
        for block in self.down:
            if block.layer.stride[0] == 2:
                sizes.append(x.shape[-2:])
            x = block(x)
        sizes = sizes[::-1]
        for i, block in enumerate(self.up.values()):
            x = block(x)
            if i < len(sizes):
                x = _crop(x, sizes[i])
        return x


def build_decoder(kind: str, in_shape, out_size, width: float = 1.0) -> Decoder:
    """Build a decoder: ``kind`` in :data:`KINDS`, features ``in_shape = (D, h, w)``,
    image ``out_size`` (int or (H, W)), channel ``width`` multiplier (1.0 = paper)."""
    if kind == "fc":
        return FCDecoder(in_shape, out_size, width)
    if kind == "conv":
        return ConvDecoder(in_shape, out_size, width)
    if kind in ("hog", "lbp"):
        return TwoStreamDecoder(in_shape, out_size, width, kind=kind)
    if kind == "sift":
        return SiftDecoder(in_shape, out_size, width)
    raise ValueError(f"decoder kind must be one of {', '.join(KINDS)}, got {kind!r}")


def decoder_from_args(args: dict) -> Decoder:
    """Rebuild from :attr:`Decoder.build_args`."""
    return build_decoder(args["kind"], tuple(args["in_shape"]), tuple(args["out_size"]), args["width"])


def decoder_kind(feature: str, params: dict, in_shape) -> str:
    """The decoder family that inverts the registered representation ``feature``
    (its registry traits, :func:`pipeline.features.traits`): ``by-shape`` gives
    ``fc`` for a 1x1 feature map and ``conv`` otherwise."""
    try:
        kind = traits(feature).decoder
    except KeyError as e:
        raise ValueError(f"{e.args[0]}: give the decoder family with --kind ({', '.join(KINDS)})") from None
    if callable(kind):
        kind = kind(params or {})
    if kind == "by-shape":
        return "fc" if int(in_shape[1]) * int(in_shape[2]) == 1 else "conv"
    if kind not in KINDS:
        raise ValueError(f"feature {feature!r}: decoder family {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def layer_shapes(decoder: Decoder, batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Shape trace: ``[(layer name, output shape without batch)]`` in execution order.

    Runs one forward pass on the decoder's device; build the decoder under
    ``torch.device("meta")`` to trace paper-sized networks without computing.
    Names are the table rows' (``convA1``, ``upconvJ6``, ``fc3``, ...).
    """
    param = next(decoder.parameters())
    names = {m: n.rsplit(".", 1)[-1] for n, m in decoder.named_modules() if isinstance(m, Block)}
    trace: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: trace.append((names[m], tuple(o.shape[1:]))))
             for m in names]
    try:
        with torch.no_grad():
            decoder(torch.zeros((batch, *decoder.in_shape), device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return trace


def resize_images(x: torch.Tensor, size, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) float images to ``size`` (no-op when equal).

    Down-sampling uses the antialiased filter (training targets at the native
    size); up-sampling is plain bilinear, as in the paper's evaluation.
    """
    size = _size2(size, "size")
    if tuple(x.shape[-2:]) == size:
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias and down)
