"""CNN-HOG, CNN-HOGb and CNN-DSIFT as Mahendran & Vedaldi 2015 (CVPR,
section 3.1) built them, and the 27-D UoCTTI HOG their Table 1 measures
HOGgles with.

Mahendran & Vedaldi invert HOG and dense SIFT written as small convolutional
networks (their code: deep-goggle's ``experiments/networks/hog_net.m`` and
``dsift_net.m``, run by ``experiment_run.m``); Table 1's errors are measured
on these networks' outputs.  They are close to, not equal to, VLFeat's
``vl_hog`` / ``vl_dsift`` (``hog``, ``hogb``, ``dsift`` in this registry, which
stay as they are).  Input: the grey image minus 128 (the authors'
``255 * rgb2gray(im2single(x)) - 128``; colour input goes through
:func:`pipeline.features.to_gray`).  Every filter is built as the MATLAB code
builds it, in double precision and rounded to single (``single(...)``).

``cnn_hog`` / ``cnn_hogb`` (``hog_net(8)``, ``hog_net(8, 'bilinearOrientations', true)``), O = 9:

1. directional derivatives: 2O filters ``cos(t) dx + sin(t) dy``,
   ``t = 2 pi i / 2O``, ``dx = [-1 0 1] / 2`` along x, zero padding 1;
2. binning: ``n = sqrt(sum_i p_i^2 / O)`` (the gradient norm); hard: ``n``
   to the first maximal projection; bilinear: ``n max(0, 1 - (2O / 2 pi)
   acos(p_i / max(n, 1e-10)))`` to every direction;
3. spatial pooling: the separable triangle ``a_k = 1 - |k - (2c + 1)/2| / c``
   (k = 1..2c) as a 2c x 2c filter, stride c, zero padding c/2;
4. 2x2 blocks of cells (column-major, no padding): per cell its 2O directed
   bins and O undirected ones (``h_k + h_{k+O}``): 4 x 3O channels;
5. block normalisation by ``max(||undirected part of the block||, 1e-6)``
   (no epsilon inside the root, unlike VLFeat's 1e-4), then ``min(., 0.2)``;
6. blocks back to cells: the mean of a cell's (up to) four normalised block
   copies times two, i.e. ``0.5 sum`` (zero padding 1: border cells have
   fewer blocks, VLFeat replicates them).

27 = 3O channels: 18 directed, 9 undirected; the 4 texture components of
UoCTTI HOG are left out ("for simplicity", section 3.1).

``cnn_dsift`` (``dsift_net(5)``), 4 undirected orientations (8 directed):

1. directional derivatives as above, no padding;
2. bilinear binning as above with 8 directions;
3. spatial pooling over 5-pixel cells (2c x 2c triangle, stride c, no padding);
4. 4x4 blocks of cells every 3 cells, each cell weighted by a Gaussian over
   *cells* (``exp(-((i - 2.5)^2 + (j - 2.5)^2) / (2 * 1.5^2))``, VLFeat's
   "fast" approximation, weighting cells instead of pixels): 128 channels,
   ``32 by + 8 bx + t`` like VLFeat;
5. ``x / sqrt(1e-6 + ||x||^2)`` (MatConvNet's ``normalize`` with
   ``[256, 1e-6, 1, 0.5]``), then ``min(., 0.2)``, no renormalisation.

Differentiable: the derivative filters, pooling and stacking are
convolutions; the binning's backward pass is the authors'
(``hog_binning_backward``: ``1 / sqrt(1.0000001 - cs^2)`` for acos), with
``max(n, 1e-10)`` where they divide by ``n`` (theirs is NaN at a pixel with
an exactly zero gradient); the block norms' square roots are floored at
their clamp value so that their gradient is finite.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from pipeline.features import register
from pipeline.features.hog import HOG, as_float_image, check_input

#: The authors' input normalisation: grey level minus 128.
MEAN = 128.0


# ----------------------------------------------------------------------------
# the authors' filters (built as in hog_net.m / dsift_net.m, rounded to single)


def _single(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


@functools.lru_cache(maxsize=8)
def derivative_filters(num_orientations: int) -> torch.Tensor:
    """(2O, 1, 3, 3): ``cos(t) dx + sin(t) dy``, ``t = 2 pi i / 2O``, ``dx = [0 0 0; -1 0 1; 0 0 0] / 2``."""
    dx = torch.zeros(3, 3, dtype=torch.float64)
    dx[1, 0], dx[1, 2] = -0.5, 0.5
    dy = dx.T
    n = 2 * num_orientations
    f = [math.cos(2 * math.pi / n * i) * dx + math.sin(2 * math.pi / n * i) * dy for i in range(n)]
    return _single(torch.stack(f)[:, None])


@functools.lru_cache(maxsize=8)
def triangle_filter(cell: int) -> torch.Tensor:
    """(2c, 2c): ``a' a`` with ``a_k = 1 - |k - (2c + 1)/2| / c``, k = 1..2c (spatial bilinear binning)."""
    k = torch.arange(1, 2 * cell + 1, dtype=torch.float64)
    a = 1 - ((k - (2 * cell + 1) / 2) / cell).abs()
    return _single(a[:, None] * a[None, :])


@functools.lru_cache(maxsize=8)
def hog_block_filters(num_orientations: int) -> torch.Tensor:
    """(4 * 3O, 2O, 2, 2): the 2x2 cells of a block, column-major, each with its 2O directed
    and O undirected bins (``hog_net.m``'s ``mask``)."""
    O = num_orientations
    out = []
    for j in range(2):
        for i in range(2):
            for o in range(2 * O):
                m = torch.zeros(2 * O, 2, 2, dtype=torch.float64)
                m[o, i, j] = 1
                out.append(m)
            for o in range(O):
                m = torch.zeros(2 * O, 2, 2, dtype=torch.float64)
                m[o, i, j] = 1
                m[o + O, i, j] = 1
                out.append(m)
    return torch.stack(out)


@functools.lru_cache(maxsize=8)
def hog_decompose_filters(num_orientations: int) -> torch.Tensor:
    """(3O, 4 * 3O, 2, 2): a cell collects 0.5 x its value in each of the four blocks
    around it (``hog_net.m``'s ``dec``, applied with padding 1)."""
    O3 = 3 * num_orientations
    dec = torch.zeros(O3, 4 * O3, 2, 2, dtype=torch.float64)
    for o in range(O3):
        for i in range(2):
            for j in range(2):
                u, v = 1 - i, 1 - j  # the MATLAB code's u = 3 - i, v = 3 - j, 0-based
                dec[o, (u + v * 2) * O3 + o, i, j] = 0.5
    return dec


@functools.lru_cache(maxsize=8)
def dsift_block_filters(num_orientations: int, sigma: float) -> torch.Tensor:
    """(16 * 2O, 2O, 4, 4): 4x4 cells per descriptor, cell (i, j) weighted by
    ``exp(-((i - 2.5)^2 + (j - 2.5)^2) / (2 sigma^2))`` (1-based), ``dsift_net.m``'s ``mask``."""
    n = 2 * num_orientations
    out = []
    for i in range(4):
        for j in range(4):
            for o in range(n):
                m = torch.zeros(n, 4, 4, dtype=torch.float64)
                m[o, i, j] = math.exp(-0.5 * ((i + 1 - 2.5) ** 2 + (j + 1 - 2.5) ** 2) / sigma ** 2)
                out.append(m)
    return _single(torch.stack(out))


# ----------------------------------------------------------------------------
# layers


class _Binning(torch.autograd.Function):
    """``hog_binning_forward`` / ``hog_binning_backward`` of the authors' networks.

    x: (B, 2O, H, W) directional derivatives.  Forward: ``n w`` with
    ``n = sqrt(sum x^2 / O)``; ``w`` one-hot at the first maximum (hard) or
    ``max(0, 1 - (2O / 2 pi) acos(clamp(x / max(n, 1e-10), -1, 1)))``.
    Backward: the authors' formulas, with ``max(n, 1e-10)`` for their ``n``
    in divisions.
    """

    @staticmethod
    def forward(ctx, x, O, bilinear):
        n = torch.linalg.vector_norm(x, dim=1, keepdim=True) / math.sqrt(O)
        ctx.O, ctx.bilinear = O, bilinear
        if bilinear:
            cs = (x / n.clamp_min(1e-10)).clamp(-1, 1)
            w = (1 - (2 * O) / (2 * math.pi) * torch.acos(cs)).clamp_min(0)
            ctx.save_for_backward(x, n, w, cs)
            return n * w
        # first maximum (MATLAB's max); argmax over the last, contiguous dimension is fast
        best = x.permute(0, 2, 3, 1).contiguous().argmax(-1).unsqueeze(1)
        ctx.save_for_backward(x, n, best)
        return torch.zeros_like(x).scatter_(1, best, n)

    @staticmethod
    def backward(ctx, dz):
        O = ctx.O
        if not ctx.bilinear:
            x, n, best = ctx.saved_tensors
            return dz.gather(1, best) / (O * n.clamp_min(1e-10)) * x, None, None
        x, n, w, cs = ctx.saved_tensors
        ns = n.clamp_min(1e-10)
        dx = (dz * w).sum(1, keepdim=True) * (x / (O * ns))
        dwdcs = ((2 * O) / (2 * math.pi)) * torch.rsqrt(1.0000001 - cs * cs) * (w > 0) * dz
        dw = dwdcs / ns - (dwdcs * x).sum(1, keepdim=True) / (O * ns * ns * ns) * x
        return dx + n * dw, None, None


def _floored_norm(sq: torch.Tensor, floor: float) -> torch.Tensor:
    """``max(sqrt(sq), floor)`` as ``sqrt(max(sq, floor^2))``: equal values, finite gradient at 0."""
    return sq.clamp_min(floor * floor).sqrt()


def _grey(x: torch.Tensor, what: str) -> torch.Tensor:
    """(B, 1, H, W) grey minus 128, float32 (float64 input stays float64)."""
    return (as_float_image(x, what) - MEAN).unsqueeze(1)


def _conv(x, weight, **kw):
    return F.conv2d(x, weight.to(device=x.device, dtype=x.dtype), **kw)


class CNNHOG(torch.nn.Module):
    """CNN-HOG (``bilinear=False``) or CNN-HOGb: (B, C, H, W) in [0, 255] -> (B, 3O, h, w),
    ``h = (H + c - 2c) // c + 1 = H // c`` for an even cell size c (module docstring)."""

    def __init__(self, cell_size: int = 8, num_orientations: int = 9, bilinear: bool = False):
        super().__init__()
        if not isinstance(cell_size, int) or cell_size < 2 or cell_size % 2:
            raise ValueError(f"cnn_hog: cell_size must be an even integer >= 2, got {cell_size!r}")
        if not isinstance(num_orientations, int) or num_orientations < 2:
            raise ValueError(f"cnn_hog: num_orientations must be an integer >= 2, got {num_orientations!r}")
        self.cell_size, self.num_orientations, self.bilinear = cell_size, num_orientations, bool(bilinear)
        self.name = "cnn_hogb" if self.bilinear else "cnn_hog"
        self.params = {"cell_size": cell_size, "num_orientations": num_orientations}

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        c = self.cell_size
        return (3 * self.num_orientations, (H + c - 2 * c) // c + 1, (W + c - 2 * c) // c + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W = check_input(x, self.name)
        D, h, w = self.output_shape(H, W)
        if h < 2 or w < 2:
            raise ValueError(f"{self.name}: image {H}x{W} gives fewer than 2x2 cells of {self.cell_size} pixels")
        O, c = self.num_orientations, self.cell_size
        g = _conv(_grey(x, self.name), derivative_filters(O), padding=1)
        g = _Binning.apply(g, O, self.bilinear)
        g = _conv(g, triangle_filter(c).expand(2 * O, 1, 2 * c, 2 * c), stride=c, padding=c // 2, groups=2 * O)
        blocks = _conv(g, hog_block_filters(O))  # (B, 4 * 3O, h - 1, w - 1)
        sel = torch.tensor([2 * O + k + 3 * O * i for i in range(4) for k in range(O)], device=x.device)
        n = _floored_norm((blocks.index_select(1, sel) ** 2).sum(1, keepdim=True), 1e-6)
        blocks = torch.clamp(blocks / n, max=0.2)
        return _conv(blocks, hog_decompose_filters(O), padding=1)

    def extra_repr(self) -> str:
        return f"cell_size={self.cell_size}, num_orientations={self.num_orientations}, bilinear={self.bilinear}"


class CNNDSIFT(torch.nn.Module):
    """CNN-DSIFT: (B, C, H, W) in [0, 255] -> (B, 16 * 2O, ny, nx), with
    ``cells = (H - 2 - 2 bin_size) // bin_size + 1`` and ``ny = (cells - 4) // step + 1``."""

    def __init__(self, bin_size: int = 5, step: int = 3, sigma: float = 1.5, num_orientations: int = 4):
        super().__init__()
        for n, v in (("bin_size", bin_size), ("step", step), ("num_orientations", num_orientations)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"cnn_dsift: {n} must be a positive integer, got {v!r}")
        if not sigma > 0:
            raise ValueError(f"cnn_dsift: sigma must be > 0, got {sigma!r}")
        self.bin_size, self.step, self.sigma, self.num_orientations = bin_size, step, float(sigma), num_orientations
        self.name = "cnn_dsift"
        self.params = {"bin_size": bin_size, "step": step, "sigma": self.sigma,
                       "num_orientations": num_orientations}

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        b = self.bin_size

        def n(size):
            cells = (size - 2 - 2 * b) // b + 1
            return (cells - 4) // self.step + 1

        return (32 * self.num_orientations, n(H), n(W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W = check_input(x, "cnn_dsift")
        _, ny, nx = self.output_shape(H, W)
        if ny < 1 or nx < 1:
            raise ValueError(f"cnn_dsift: image {H}x{W} smaller than one descriptor "
                             f"(4 cells of {self.bin_size} pixels plus 2 at least)")
        O, b = self.num_orientations, self.bin_size
        g = _conv(_grey(x, "cnn_dsift"), derivative_filters(O))
        g = _Binning.apply(g, O, True)
        g = _conv(g, triangle_filter(b).expand(2 * O, 1, 2 * b, 2 * b), stride=b, groups=2 * O)
        d = _conv(g, dsift_block_filters(O, self.sigma), stride=self.step)
        d = d / (1e-6 + (d * d).sum(1, keepdim=True)).sqrt()
        return torch.clamp(d, max=0.2)

    def extra_repr(self) -> str:
        return f"bin_size={self.bin_size}, step={self.step}, sigma={self.sigma}"


class HOG27(HOG):
    """VLFeat's UoCTTI HOG without the 4 texture components: (B, 3O, h, w).

    Mahendran & Vedaldi's Table 1 script measures HOGgles' reconstructions on
    the first 27 UoCTTI dimensions (``features(...)(:, :, 1:27)``: 18 directed,
    9 undirected)."""

    def __init__(self, cell_size: int = 8, num_orientations: int = 9):
        super().__init__(cell_size=cell_size, num_orientations=num_orientations, bilinear=False)
        self.name = "hog27"

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        _, h, w = super().output_shape(H, W)
        return (3 * self.num_orientations, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, : 3 * self.num_orientations]


@register("cnn_hog", grey=True, decoder="hog")
def cnn_hog(cell_size: int = 8, num_orientations: int = 9) -> CNNHOG:
    """Mahendran & Vedaldi's CNN-HOG (27-D, hard orientation binning, cell 8)."""
    return CNNHOG(cell_size=cell_size, num_orientations=num_orientations, bilinear=False)


@register("cnn_hogb", grey=True, decoder="hog")
def cnn_hogb(cell_size: int = 8, num_orientations: int = 9) -> CNNHOG:
    """Mahendran & Vedaldi's CNN-HOGb (27-D, bilinear orientation binning, cell 8)."""
    return CNNHOG(cell_size=cell_size, num_orientations=num_orientations, bilinear=True)


@register("cnn_dsift", grey=True, decoder="sift")
def cnn_dsift(bin_size: int = 5, step: int = 3, sigma: float = 1.5, num_orientations: int = 4) -> CNNDSIFT:
    """Mahendran & Vedaldi's CNN-DSIFT (128-D, 5-pixel bins, a descriptor every 3 cells)."""
    return CNNDSIFT(bin_size=bin_size, step=step, sigma=sigma, num_orientations=num_orientations)


@register("hog27", grey=True, decoder="hog")
def hog27(cell_size: int = 8, num_orientations: int = 9) -> HOG27:
    """VLFeat's UoCTTI HOG, first 27 dimensions (no texture components)."""
    return HOG27(cell_size=cell_size, num_orientations=num_orientations)
