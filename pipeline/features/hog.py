"""HOG (UoCTTI variant, as VLFeat's ``vl_hog``) as a batched torch module.

``hog``: hard orientation assignment (the papers' "HOG"); ``hogb``: the same
with VLFeat's bilinear orientation assignment ("HOGb").  Both equal VLFeat
0.9.21 (``vl_hog_put_image`` + ``vl_hog_extract``, ``numOrientations`` 9)
to about 1e-7 on images in [0, 255]; the tests check 1e-4.

Definition (``vl/hog.c``), for a grey image I (colour is converted first
with :func:`pipeline.features.to_gray`), cell size c, O orientations:

* gradient at interior pixels only (1 <= x <= W-2, 1 <= y <= H-2):
  ``gx = I[y, x+1] - I[y, x-1]``, ``gy = I[y+1, x] - I[y-1, x]`` (no 1/2),
  ``m = sqrt(gx^2 + gy^2)``;
* 2O directed bins at angles ``k pi / O``.  Hard assignment: the bin whose
  direction is nearest to the gradient's, i.e.
  ``d = ceil(atan2(gy, gx) O / pi - 1/2) mod 2O``.  Exact ties go to the
  first maximum of VLFeat's arg-max over ``|<g, u_k>|``: for O = 9 the only
  one is a purely vertical gradient (gx = 0), which the ``ceil`` rule already
  sends to the lower bin; for other O, gradients at multiples of 45 degrees
  are re-binned with VLFeat's projections (:func:`_fix_exact_ties`).
  Bilinear ("HOGb"): weight
  ``w1 = acos(min(|<g, u_k0>| / max(m, 1e-10), 1)) / (pi / O)`` to the second
  nearest directed bin and ``1 - w1`` to the nearest one, computed with
  VLFeat's float32 constants and operations and a correctly rounded square
  root (see :func:`magnitude`) for float32 input; for float64 input the same
  quantity as ``|theta - theta_k0| / (pi / O)``, without the ill-conditioned
  ``acos``;
* spatial bilinear binning into ``h = (H + c/2) // c`` by
  ``w = (W + c/2) // c`` cells with cell coordinate ``(x + 0.5)/c - 0.5``;
  contributions falling outside the grid are dropped;
* block normalisation: ``n = sum_k (h_k + h_{k+O})^2`` per cell, the four
  2x2 blocks around a cell (neighbour indices clamped at the border),
  ``f_i = 1 / sqrt(sum of the block's four n + 1e-4)``;
* output (3O + 4 channels): ``0.5 sum_i min(0.2, f_i h_d)`` for the 2O directed
  bins, the same for the O undirected bins ``h_k + h_{k+O}``, then for each
  block i ``(1/sqrt(18)) sum_k min(0.2, f_i (h_k + h_{k+O}))``.
  Channel layout is VLFeat's: dims slowest, ``(B, 3O+4, h, w)``.

Implementation (speed).  A pixel's orientation is found from one ``atan2``
instead of 2O projections; the pixel's four bilinear cell weights are
scattered in one pass: every pixel lies in a *span* (the c x c square between
four cell centres) and adds ``(m wTL, m wTR)`` and ``(m wBL, m wBR)`` as two
complex numbers to its span's histogram bin (a complex ``scatter_add_`` adds
two float lanes at once); span histograms are then combined into cell
histograms with four shifted additions.  The batch is processed in chunks
of about 0.5 M pixels on the CPU so that temporaries stay in cache.  On
other devices the same sums use four real ``scatter_add_`` calls.

Differentiability.  ``hog`` is piecewise differentiable in the image: the
hard orientation assignment is piecewise constant (gradients flow through
the magnitudes only) and ``min(0.2, .)`` has kinks; ``gradcheck`` passes on
inputs where no finite-difference step crosses an orientation boundary or
a clamp.  ``hogb`` is continuous in the gradient direction; its weight is
computed with ``acos`` for VLFeat equality, but differentiated through
``atan2`` (d theta = (gx dgy - gy dgx) / m^2), because ``acos``'s derivative
is infinite where a gradient is aligned with a bin (clamping the argument
below 1 is the other cure, see features.md).  The magnitude's derivative
``(gx, gy)/m`` is taken as 0 where m = 0 (flat regions), so gradients never
contain NaN.
"""
from __future__ import annotations

import functools
import math

import torch

from pipeline.features import register, to_gray

# Pixels per processing chunk on the CPU (keeps temporaries in L2 cache).
CPU_CHUNK_PIXELS = 1 << 19


# ----------------------------------------------------------------------------
# helpers shared with lbp.py


def check_input(x: torch.Tensor, what: str) -> tuple[int, int, int]:
    """Validate a (B, C, H, W) input with C = 1 or 3; return (B, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected 1 or 3 channels, got {x.shape[1]}")
    return x.shape[0], x.shape[2], x.shape[3]


def as_float_image(x: torch.Tensor, what: str) -> torch.Tensor:
    """Check a (B, C, H, W) input and return it as float32/float64 grey (B, H, W)
    (:func:`pipeline.features.to_gray`)."""
    check_input(x, what)
    if x.dtype != torch.float64:
        x = x.float()
    return to_gray(x)[:, 0]


def span_geometry(n: int, cell: int, ncell: int):
    """Bilinear cell assignment of the interior pixels 1..n-2 along one axis.

    With ``hx = (x + 0.5)/cell - 0.5``, a pixel lies in span
    ``s = floor(hx) + 1`` (0..ncell; larger values are clamped to the dump
    span ncell + 1) and gives weight ``1 - frac(hx)`` to the cell before
    (padded index s) and ``frac(hx)`` to the cell after.  Returns the span
    index (long) and the integer ``t = 2 cell frac(hx)`` (exact), so that
    the weights are ``(2 cell - t) / (2 cell)`` and ``t / (2 cell)``.
    """
    x = torch.arange(1, n - 1, dtype=torch.long)
    t_all = 2 * x + 1 - cell  # = 2 cell hx
    f = torch.div(t_all, 2 * cell, rounding_mode="floor")
    t = t_all - 2 * cell * f
    return (f + 1).clamp(max=ncell + 1), t


def chunks(batch: int, pixels: int, device: torch.device, limit: int | None = None):
    """Batch slices: ~CPU_CHUNK_PIXELS per chunk on the CPU, all at once
    elsewhere; never more than ``limit`` images."""
    if device.type == "cpu":
        step = max(1, CPU_CHUNK_PIXELS // max(pixels, 1))
    else:
        step = batch
    if limit is not None:
        step = max(1, min(step, limit))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


# ----------------------------------------------------------------------------
# autograd helpers


def magnitude(gx: torch.Tensor, gy: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """``sqrt(gx*gx + gy*gy)`` with VLFeat's float operations.

    ``exact``: correctly rounded float32 square root (VLFeat's ``sqrtf``).
    PyTorch's vectorised float32 ``sqrt`` is not correctly rounded on every
    CPU (one ulp off for ~15% of inputs on the AMD EPYC used here); that is
    harmless for HOG but not for HOGb, whose ``acos(p/m)`` turns one ulp of
    a ratio near 1 into ~1e-3 of bin weight.
    """
    u = gx * gx + gy * gy
    if exact and u.dtype == torch.float32:
        return torch.sqrt(u.double()).float()
    return torch.sqrt(u)


class _Magnitude(torch.autograd.Function):
    """m = sqrt(gx^2 + gy^2) (VLFeat's float ops); dm = (gx, gy)/m, 0 where m = 0."""

    @staticmethod
    def forward(ctx, gx, gy, exact):
        m = magnitude(gx, gy, exact)
        ctx.save_for_backward(gx, gy, m)
        return m

    @staticmethod
    def backward(ctx, grad):
        gx, gy, m = ctx.saved_tensors
        inv = torch.where(m > 0, grad / m.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
        return inv * gx, inv * gy, None


class _Angle(torch.autograd.Function):
    """theta = atan2(gy, gx); d theta = (gx dgy - gy dgx)/m^2, 0 where m = 0."""

    @staticmethod
    def forward(ctx, gx, gy):
        ctx.save_for_backward(gx, gy)
        return torch.atan2(gy, gx)

    @staticmethod
    def backward(ctx, grad):
        gx, gy = ctx.saved_tensors
        m2 = gx * gx + gy * gy
        inv = torch.where(m2 > 0, grad / m2.clamp_min(torch.finfo(m2.dtype).tiny), torch.zeros_like(m2))
        return -inv * gy, inv * gx


# ----------------------------------------------------------------------------
# HOG


@functools.lru_cache(maxsize=32)
def _hog_geometry(B, H, W, cell, nslots, dtype, device):
    h = (H + cell // 2) // cell
    w = (W + cell // 2) // cell
    sy, ty = span_geometry(H, cell, h)
    sx, tx = span_geometry(W, cell, w)
    Sy, Sx = h + 2, w + 2
    # flat index of (image, span y, span x, slot 0), slot fastest
    base = (sy[:, None] * Sx + sx[None, :]) * nslots
    base = base[None] + torch.arange(B).view(B, 1, 1) * (Sy * Sx * nslots)
    # VLFeat computes hx in double and stores it in a float
    c2 = 2.0 * cell
    wy2 = (ty.double() / c2).float()
    wx2 = (tx.double() / c2).float()
    wy1, wx1 = 1.0 - wy2, 1.0 - wx2
    # corner weights TL, TR, BL, BR: (4, 1, H-2, W-2) for four real scatters and
    # complex (2, 1, H-2, W-2) = pairs TL + i TR, BL + i BR for two complex ones
    P = torch.stack([wy1[:, None] * wx1[None, :], wy1[:, None] * wx2[None, :],
                     wy2[:, None] * wx1[None, :], wy2[:, None] * wx2[None, :]])
    P = P.to(device=device, dtype=dtype)
    Pc = torch.view_as_complex(P.view(2, 2, H - 2, W - 2).permute(0, 2, 3, 1).contiguous())
    return (h, w, Sy, Sx, base.to(device=device, dtype=dtype), P.unsqueeze(1), Pc.unsqueeze(1))


@functools.lru_cache(maxsize=8)
def _orientation_tables(num_orientations, dtype, device):
    """float32 cos/sin of k pi / O as VLFeat stores them (``(float) cos(angle)``)."""
    k = torch.arange(num_orientations, dtype=torch.float64) * (math.pi / num_orientations)
    cos = torch.cos(k).float().to(dtype)
    sin = torch.sin(k).float().to(dtype)
    return cos.to(device), sin.to(device)


def _fix_exact_ties(gx, gy, d0, d1, O):
    """VLFeat's own arg-max at gradients with an exactly representable angle
    (gx = 0, gy = 0 or |gx| = |gy|: multiples of 45 degrees).

    There two bins can tie exactly (e.g. 45 degrees for O = 6); VLFeat keeps
    the first maximum of ``|<g, u_k>|`` (k = 0..O-1, float32 constants), and
    for HOGb the first maximum among the others as second bin, while
    ``atan2``'s rounding decides arbitrarily.  For O = 9 the only such tie
    (90 degrees) is already resolved as VLFeat does by ``ceil(z - 1/2)``, so
    this is used for other O only.  Updates ``d0`` (and ``d1``) in place,
    directed bins represented in [-O, O].
    """
    tie = (gx == 0) | (gy == 0) | (gx.abs() == gy.abs())
    sel = tie.nonzero(as_tuple=True)
    if sel[0].numel() == 0:
        return
    cos, sin = _orientation_tables(O, gx.dtype, gx.device)
    p = gx[sel][:, None] * cos + gy[sel][:, None] * sin  # (n, O), VLFeat's float ops
    a = p.abs()

    def directed(k):
        b = k + O * (p.gather(1, k[:, None])[:, 0] < 0)
        return torch.where(b > O, b - 2 * O, b).to(d0.dtype)

    k0 = a.argmax(1)  # first maximum, as VLFeat's strict '>'
    d0[sel] = directed(k0)
    if d1 is not None:
        d1[sel] = directed(a.scatter(1, k0[:, None], -1.0).argmax(1))


def _scatter_corners(idx, m, geom, size, use_complex):
    """Sum over pixels of m * (corner weight) into ``size`` bins for each of
    the four corners; returns [TL, TR, BL, BR], each of length ``size``."""
    P, Pc = geom
    idx = idx.reshape(-1)
    if use_complex:
        wts = m.to(Pc.dtype).unsqueeze(0) * Pc  # (2, B, H-2, W-2) complex
        out = []
        for pair in range(2):
            acc = torch.zeros(size, dtype=wts.dtype, device=m.device)
            acc = torch.view_as_real(acc.scatter_add(0, idx, wts[pair].reshape(-1)))
            out += [acc[:, 0], acc[:, 1]]
        return out
    wts = m.unsqueeze(0) * P  # (4, B, H-2, W-2)
    return [torch.zeros(size, dtype=m.dtype, device=m.device).scatter_add(0, idx, wts[a].reshape(-1))
            for a in range(4)]


def _spans_to_cells(corners, B, Sy, Sx, nslots, h, w):
    """Span sums [TL, TR, BL, BR] -> (B, nslots, h, w) cell histograms.
    Cell (y, x) receives TL of span (y+1, x+1), TR of (y+1, x), BL of
    (y, x+1) and BR of (y, x)."""
    tl, tr, bl, br = (c.view(B, Sy, Sx, nslots) for c in corners)
    cells = (tl[:, 1:h + 1, 1:w + 1] + tr[:, 1:h + 1, 0:w]) + (bl[:, 0:h, 1:w + 1] + br[:, 0:h, 0:w])
    return cells.permute(0, 3, 1, 2)


def hog_histograms(g: torch.Tensor, cell_size: int = 8, num_orientations: int = 9,
                   bilinear: bool = False, use_complex: bool | None = None) -> torch.Tensor:
    """Cell histograms of directed orientations, (B, 2O, h, w), before
    block normalisation (VLFeat's ``self->hog``).  ``g``: (B, H, W) grey."""
    B, H, W = g.shape
    O = num_orientations
    if use_complex is None:
        use_complex = g.device.type == "cpu"
    nslots = 2 * O + 3 if bilinear else 2 * O + 1
    off = O + 1 if bilinear else O  # slot = directed index (in [-O-1, O+1]) + off
    h, w, Sy, Sx, base, P, Pc = _hog_geometry(B, H, W, cell_size, nslots, g.dtype, g.device)
    gx = g[:, 1:-1, 2:] - g[:, 1:-1, :-2]
    gy = g[:, 2:, 1:-1] - g[:, :-2, 1:-1]
    need_grad = torch.is_grad_enabled() and g.requires_grad
    if need_grad:
        m = _Magnitude.apply(gx, gy, bilinear)
    else:
        m = magnitude(gx, gy, bilinear)
    scale = O / math.pi
    with torch.no_grad():
        z = torch.atan2(gy, gx).mul_(scale)  # directed angle in bin units, [-O, O]
        d0 = torch.ceil(z - 0.5)  # nearest directed bin, ties to the lower one
        if bilinear:
            # second nearest directed bin (on the side of the gradient)
            frac = z - d0
            d1 = d0 + (frac >= 0).to(d0.dtype).mul_(2).sub_(1)
        else:
            d1 = None
        if O != 9:
            _fix_exact_ties(gx.detach(), gy.detach(), d0, d1, O)
        if not bilinear:
            idx = d0.add_(off).add_(base).long()
    if not bilinear:
        corners = _scatter_corners(idx, m, (P, Pc), B * Sy * Sx * nslots, use_complex)
        slots = _spans_to_cells(corners, B, Sy, Sx, nslots, h, w)
    else:
        with torch.no_grad():
            if g.dtype == torch.float32:
                # VLFeat's weight and float32 rounding:
                # acos(min(|<g, u_k0>| / max(m, 1e-10), 1)) / (pi / O)
                cos, sin = _orientation_tables(O, g.dtype, g.device)
                k0 = torch.remainder(d0, O).long()
                p0 = (gx.detach() * cos[k0] + gy.detach() * sin[k0]).abs_()
                ratio = (p0 / m.detach().clamp_min(1e-10)).clamp_(max=1.0)
                w1_exact = torch.acos(ratio).div_(math.pi / O)
            else:
                # the same quantity, |theta - theta_k0| / (pi / O), without the
                # ill-conditioned acos (float64 inputs: gradcheck, optimisation)
                w1_exact = (z - d0).abs()
            i0 = (d0 + off).add_(base).long()
            i1 = (d1 + off).add_(base).long()
        if need_grad:
            # same value, differentiated through atan2 (finite everywhere)
            zs = _Angle.apply(gx, gy) * scale
            w1s = (zs - d0).abs()
            w1 = w1s + (w1_exact - w1s).detach()
        else:
            w1 = w1_exact
        w0 = 1.0 - w1
        size = B * Sy * Sx * nslots
        corners = [a + b for a, b in zip(_scatter_corners(i0, m * w0, (P, Pc), size, use_complex),
                                         _scatter_corners(i1, m * w1, (P, Pc), size, use_complex))]
        slots = _spans_to_cells(corners, B, Sy, Sx, nslots, h, w)
    # fold slots into the 2O directed bins: slot j holds bin (j - off) mod 2O
    fold = (torch.arange(nslots, device=g.device) - off) % (2 * O)
    hist = torch.zeros(B, 2 * O, h, w, dtype=slots.dtype, device=g.device)
    return hist.index_add(1, fold, slots)


def hog_normalize(hist: torch.Tensor) -> torch.Tensor:
    """UoCTTI block normalisation: (B, 2O, h, w) -> (B, 3O + 4, h, w)."""
    O = hist.shape[1] // 2
    h, w = hist.shape[-2:]
    hu = hist[:, :O] + hist[:, O:]
    n = (hu * hu).sum(1, keepdim=True)
    # replicate-pad by one cell (VLFeat clamps neighbour indices), then 2x2 sums:
    # s[y, x] = energy of the block whose top-left cell is (y-1, x-1)
    iy = torch.arange(-1, h + 1, device=n.device).clamp_(0, h - 1)
    ix = torch.arange(-1, w + 1, device=n.device).clamp_(0, w - 1)
    npd = n.index_select(2, iy).index_select(3, ix)
    s = (npd[..., :-1, :-1] + npd[..., 1:, :-1]) + (npd[..., :-1, 1:] + npd[..., 1:, 1:])
    f = torch.rsqrt(s + 1e-4)
    full = torch.cat([hist, hu], 1)
    main = 0
    tex = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        c = torch.clamp(full * f[..., dy:dy + h, dx:dx + w], max=0.2)
        main = main + c
        tex.append(c[:, 2 * O:].sum(1, keepdim=True))
    # VLFeat hard-codes 1/sqrtf(18) for the texture dimensions
    return torch.cat([0.5 * main, torch.cat(tex, 1) * (1.0 / math.sqrt(18.0))], 1)


class HOG(torch.nn.Module):
    """VLFeat UoCTTI HOG: (B, C, H, W) in [0, 255] -> (B, 3O+4, (H+c/2)//c, (W+c/2)//c).

    Args:
        cell_size: cell side c in pixels (8 in the papers).
        num_orientations: O undirected orientations (9: 31 dimensions).
        bilinear: VLFeat's bilinear orientation assignment ("HOGb").
    """

    def __init__(self, cell_size: int = 8, num_orientations: int = 9, bilinear: bool = False):
        super().__init__()
        if not isinstance(cell_size, int) or cell_size < 2:
            raise ValueError(f"hog: cell_size must be an integer >= 2, got {cell_size!r}")
        if not isinstance(num_orientations, int) or num_orientations < 1:
            raise ValueError(f"hog: num_orientations must be an integer >= 1, got {num_orientations!r}")
        self.cell_size = cell_size
        self.num_orientations = num_orientations
        self.bilinear = bool(bilinear)
        self.name = "hogb" if self.bilinear else "hog"
        # exactly the registry factory's arguments: get_feature(name, **params) rebuilds it
        self.params = {"cell_size": cell_size, "num_orientations": num_orientations}

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        c = self.cell_size
        return (3 * self.num_orientations + 4, (H + c // 2) // c, (W + c // 2) // c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W = check_input(x, self.name)
        c = self.cell_size
        if H <= 3 or W <= 3 or (H + c // 2) // c < 1 or (W + c // 2) // c < 1:
            raise ValueError(f"{self.name}: image {H}x{W} too small for cell_size {c}")
        O = self.num_orientations
        h, w = (H + c // 2) // c, (W + c // 2) // c
        # flat float indices must stay exact: < 2^24 in float32
        per_image = (h + 2) * (w + 2) * (2 * O + 3)
        limit = max(1, (1 << 24) // per_image) if x.dtype != torch.float64 else None
        # grey conversion per chunk too: temporaries stay in cache
        outs = [hog_normalize(hog_histograms(as_float_image(x[s], self.name), c, O,
                                             self.bilinear))
                for s in chunks(B, H * W, x.device, limit)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def extra_repr(self) -> str:
        return (f"cell_size={self.cell_size}, num_orientations={self.num_orientations}, "
                f"bilinear={self.bilinear}")


@register("hog", grey=True, decoder="hog")
def hog(cell_size: int = 8, num_orientations: int = 9) -> HOG:
    """VLFeat's UoCTTI HOG with hard orientation assignment (31-D, cell 8)."""
    return HOG(cell_size=cell_size, num_orientations=num_orientations, bilinear=False)


@register("hogb", grey=True, decoder="hog")
def hogb(cell_size: int = 8, num_orientations: int = 9) -> HOG:
    """VLFeat's UoCTTI HOG with bilinear orientation assignment ("HOGb")."""
    return HOG(cell_size=cell_size, num_orientations=num_orientations, bilinear=True)


def hog_permutation(num_orientations: int = 9) -> list[int]:
    """Left-right flip permutation of the UoCTTI channels (VLFeat's
    ``vl_hog_get_permutation``): HOG of the mirrored image equals
    ``hog[:, perm].flip(-1)`` when the width is a multiple of the cell."""
    O = num_orientations
    perm = [0] * (3 * O + 4)
    for o in range(O):
        op = O - o
        perm[o] = op
        perm[o + O] = (op + O) % (2 * O)
        perm[o + 2 * O] = (op % O) + 2 * O
    for k in range(4):
        bx, by = k % 2, k // 2
        perm[k + 3 * O] = (1 - bx) + 2 * by + 3 * O
    return perm
