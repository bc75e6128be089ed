"""Uniform LBP (VLFeat's ``vl_lbp``, 58 dimensions) as a batched torch module.

Equals VLFeat 0.9.21 (``vl_lbp_new(VlLbpUniform, false)`` +
``vl_lbp_process``) to about 1e-7 on images in [0, 255]; the tests check 1e-4.

Definition (``vl/lbp.c``), for a grey image I (colour is converted first with
:func:`pipeline.features.to_gray`) and cell size c:

* at interior pixels (1 <= x <= W-2, 1 <= y <= H-2) an 8-bit code: bit k is
  set when neighbour k is *strictly* greater than the centre, neighbours in
  the order E, SE, S, SW, W, NW, N, NE (on screen, y down);
* 58 bins: codes 0x00 and 0xff -> 56; a single cyclic run of j ones
  (1 <= j <= 7) starting at bit i -> ``7 i + j - 1``; any other code -> 57;
* grid ``W // c`` by ``H // c`` (floor); each pixel's one-hot bin is spread
  bilinearly to four cells with cell coordinate ``(x + 0.5)/c - 0.5``;
  contributions outside the grid are dropped;
* each cell ``sqrt(h) / (sqrt(sum_k h_k) + 1e-10)``: unit L2 norm (a cell
  with no pixels stays 0).

Output ``(B, 58, H // c, W // c)``.  LBP is piecewise constant in the
image (comparisons), so it has no useful gradient: the module runs under
``torch.no_grad()`` and returns a tensor that does not require grad.

Implementation (speed).  The bin of every pixel comes from 4 signed
difference maps and a table (:func:`lbp_codes`).  The bilinear weights of a
pixel are exact binary fractions: with ``t = 2 c frac(hx)`` (an integer)
they are ``(2c - t)/(2c)`` and ``t/(2c)``, so ``4c^2`` times a corner weight
is an integer <= 4c^2, and the sum over the c x c pixels of a *span* (the
square between four cell centres) is an integer <= ``(sum_t (2c - t))^2``
(``c^4`` for even c).  One ``scatter_add_`` per pixel adds all four corner
weights of the pixel to its (span, bin) as packed integers, exact in any
summation order:

* default (c <= 16, odd c <= 17; :func:`packed_fits`): one int64 of four
  16-bit fields, ``(w - 1)/2`` for even c (corner weights are odd) or
  ``w/4`` for odd c (multiples of 4), whose sums stay below 2^15: no carry
  between fields, read back by viewing the int64 sums as int16.  For even c
  the pixel count n of a span (needed for ``w = 2 field + 1``) is the sum
  of its four fields over ``2 (c^2 - 1)``.  Combined into cells exactly in
  float32 (integers < 2^24);
* otherwise (or ``use_complex`` given): ``TL + 2^b TR`` and ``BL + 2^b BR``
  (``b = bitlength(4 c^4)``) as the two float64 lanes of a complex number
  (``use_complex=False``: two float64 scatters), unpacked with floor/subtract.

Span sums are combined into cells with four shifted additions.  The cell
norms do not depend on the image (every pixel spreads its whole weight over
the bins) and are cached.  CPU speed notes: float comparisons and int64
arithmetic are not vectorised in PyTorch (several times slower than float32
or int32 arithmetic), so codes come from float differences and indices are
int32 until the scatter; chunks of ~2^19 pixels keep temporaries in cache.
"""
from __future__ import annotations

import functools

import torch

from pipeline.features import register
from pipeline.features.hog import as_float_image, check_input, chunks, span_geometry

NUM_BINS = 58
# Neighbour offsets (dy, dx) for bits 0..7: E, SE, S, SW, W, NW, N, NE.
NEIGHBOURS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def uniform_mapping() -> list[int]:
    """VLFeat's 256 -> 58 uniform-pattern table (``_vl_lbp_init_uniform``)."""
    m = [57] * 256
    m[0x00] = m[0xFF] = 56
    for i in range(8):
        for j in range(1, 8):
            s = ((1 << j) - 1) << i
            s = (s | (s >> 8)) & 0xFF
            m[s] = 7 * i + j - 1
    return m


# Forward directions (dy, dx) E, SE, S, SW: bits 0..3; their opposites W, NW, N, NE
# are bits 4..7.
FORWARD = NEIGHBOURS[:4]


@functools.lru_cache(maxsize=8)
def _ternary_lut(device):
    """Table from the ternary code ``sum_i 3^i s_i + 3280`` (see
    :func:`lbp_codes`) to the 58 uniform bins."""
    m = uniform_mapping()
    lut = torch.empty(3 ** 8, dtype=torch.int32)
    for c3 in range(3 ** 8):
        digits, r = [], c3
        for _ in range(8):
            digits.append(r % 3 - 1)
            r //= 3
        bits = 0
        for i in range(4):
            bits |= (digits[i] > 0) << i  # neighbour p + d_i greater than p
            bits |= (digits[i + 4] < 0) << (i + 4)  # p - d_i greater than p
        lut[c3] = m[bits]
    return lut.to(device)


def lbp_codes(g: torch.Tensor) -> torch.Tensor:
    """Uniform-LBP bin (0..57) of every interior pixel of (B, H, W): (B, H-2, W-2) int32.

    For each forward direction d_i (E, SE, S, SW) one difference map gives
    ``s_i(q) = sign(I(q + d_i) - I(q))``: bit i of pixel p is ``s_i(p) > 0``
    and bit i + 4 (the opposite neighbour) is ``s_i(p - d_i) < 0``.  The 8
    signs form a ternary number (exact in float) mapped to the bin by a
    6561-entry table: 4 subtractions and 8 additions instead of 8
    comparisons and 8 additions (PyTorch's float comparisons are several
    times slower than its arithmetic on the CPU).  Indices are int32: int64
    element-wise arithmetic is not vectorised on the CPU (~6x slower).
    """
    B, H, W = g.shape
    acc = None
    buf = torch.empty(B * H * W, dtype=g.dtype, device=g.device)  # one buffer for the 4 maps
    for i, (dy, dx) in enumerate(FORWARD):
        x0 = max(0, -dx)
        # s[q] for q_y in [0, H - dy), q_x in [x0, W - max(0, dx))
        a = g[:, dy:H, x0 + dx:W - max(0, dx) + dx]
        s = torch.sub(a, g[:, 0:H - dy, x0:W - max(0, dx)], out=buf[:a.numel()].view(a.shape)).sign_()
        here = s[:, 1:H - 1, 1 - x0:W - 1 - x0]  # s(p)
        back = s[:, 1 - dy:H - 1 - dy, 1 - dx - x0:W - 1 - dx - x0]  # s(p - d)
        acc = here + 3280.0 if acc is None else acc.add_(here, alpha=float(3 ** i))
        acc.add_(back, alpha=float(3 ** (i + 4)))
    return _ternary_lut(g.device).index_select(0, acc.reshape(-1).int()).view(B, H - 2, W - 2)


@functools.lru_cache(maxsize=32)
def _lbp_geometry(B, H, W, cell, device):
    h, w = H // cell, W // cell
    sy, ty = span_geometry(H, cell, h)
    sx, tx = span_geometry(W, cell, w)
    Sy, Sx = h + 2, w + 2
    base = (sy[:, None] * Sx + sx[None, :]) * NUM_BINS
    base = (base[None] + torch.arange(B).view(B, 1, 1) * (Sy * Sx * NUM_BINS)).reshape(-1)
    c2 = 2 * cell
    ay, by = (c2 - ty).double()[:, None], ty.double()[:, None]
    ax, bx = (c2 - tx).double()[None, :], tx.double()[None, :]
    bits = (4 * cell ** 4).bit_length()
    shift = float(2 ** bits)
    lanes = torch.stack([ay * ax + shift * (ay * bx), by * ax + shift * (by * bx)], -1)
    lanes = lanes.expand(B, H - 2, W - 2, 2).reshape(-1, 2).contiguous()
    if B * Sy * Sx * NUM_BINS < 2 ** 31:  # int32 indices (scatter_add_ takes them)
        base = base.int()
    return h, w, Sy, Sx, base.to(device), lanes.to(device), shift


def packed_fits(cell: int) -> bool:
    """Whether the corner sums of :func:`_packed_histograms` fit in int16.  A
    span's corner-weight sum is at most ``(sum_t (2c - t))^2``: ``c^4`` for even c
    (fields ``(c^4 - c^2)/2``), ``(c (c + 1))^2`` for odd c (fields a quarter
    of it): c <= 16 and odd c <= 17."""
    if cell % 2 == 0:
        return (cell ** 4 - cell ** 2) // 2 < 2 ** 15
    return (cell * (cell + 1)) ** 2 // 4 < 2 ** 15


@functools.lru_cache(maxsize=32)
def _packed_geometry(H, W, cell, device):
    """Span index (x 58) of every interior pixel, (P,) int32, and its packed
    int64 weight (four 16-bit fields, see :func:`lbp_histograms`)."""
    h, w = H // cell, W // cell
    sy, ty = span_geometry(H, cell, h)
    sx, tx = span_geometry(W, cell, w)
    Sy, Sx = h + 2, w + 2
    base = ((sy[:, None] * Sx + sx[None, :]) * NUM_BINS).reshape(-1)
    c2 = 2 * cell
    ay, by = (c2 - ty)[:, None], ty[:, None]
    ax, bx = (c2 - tx)[None, :], tx[None, :]
    # corner weights: odd products for even c -> (w - 1)/2; multiples of 4 for odd c -> w/4
    if cell % 2 == 0:
        f = [(ay * ax - 1) // 2, (ay * bx - 1) // 2, (by * ax - 1) // 2, (by * bx - 1) // 2]
    else:
        f = [ay * ax // 4, ay * bx // 4, by * ax // 4, by * bx // 4]
    packed = (f[0] + (f[1] << 16) + (f[2] << 32) + (f[3] << 48)).reshape(-1)
    return h, w, Sy, Sx, base.int().to(device), packed.to(device)


def _packed_histograms(g: torch.Tensor, cell: int) -> torch.Tensor:
    B, H, W = g.shape
    h, w, Sy, Sx, base, packed = _packed_geometry(H, W, cell, g.device)
    S = Sy * Sx * NUM_BINS  # per image: < 2^31 for any image that fits in memory
    idx = lbp_codes(g).view(B, -1).add_(base)  # int32 arithmetic (int64's is not vectorised)
    acc = torch.zeros(B, S, dtype=torch.int64, device=g.device)
    acc.scatter_add_(1, idx.long(), packed.expand(B, -1))  # one scatter per pixel
    lanes = acc.view(torch.int16).view(B, Sy, Sx, NUM_BINS, 4).to(torch.float32)
    i1, i0, j1, j0 = slice(1, h + 1), slice(0, h), slice(1, w + 1), slice(0, w)
    # cell (y, x) <- TL of span (y+1, x+1), TR of (y+1, x), BL of (y, x+1), BR of (y, x)
    hist = ((lanes[:, i1, j1, :, 0] + lanes[:, i1, j0, :, 1])
            + (lanes[:, i0, j1, :, 2] + lanes[:, i0, j0, :, 3]))
    if cell % 2:
        return hist.mul_(4.0 / (4 * cell * cell)).permute(0, 3, 1, 2)
    # even c: corner = 2 field + n, and the four fields of a span sum to 2 (c^2 - 1) n
    s = (lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])
    n4 = ((s[:, i1, j1] + s[:, i1, j0]) + (s[:, i0, j1] + s[:, i0, j0])).div_(2.0 * (cell * cell - 1))
    return n4.add_(hist, alpha=2.0).mul_(1.0 / (4 * cell * cell)).permute(0, 3, 1, 2)


def lbp_histograms(g: torch.Tensor, cell_size: int = 16, use_complex: bool | None = None) -> torch.Tensor:
    """Bilinearly binned uniform-LBP counts (B, 58, H//c, W//c), before the
    square-root normalisation.  ``g``: (B, H, W) grey.

    ``use_complex=None`` (default): where :func:`packed_fits` (c <= 16, odd
    c <= 17), one int64 ``scatter_add_`` per pixel of its four corner weights
    packed in 16-bit fields (module docstring); float32 result, exact up to
    the final scaling by ``1/(4c^2)`` (exact for c a power of 2).
    ``True``/``False`` (and larger cells): the float64 complex / two-lane
    scatter described in the module docstring; float64 result.
    """
    B, H, W = g.shape
    if use_complex is None:
        if packed_fits(cell_size):
            return _packed_histograms(g, cell_size)
        use_complex = g.device.type == "cpu"
    h, w, Sy, Sx, base, lanes, shift = _lbp_geometry(B, H, W, cell_size, g.device)
    idx = lbp_codes(g).view(-1)
    # int32 add, then int64 for scatter_add_ (which converts int32 indices itself, slowly)
    idx = idx.add_(base).long() if base.dtype == idx.dtype else idx.long().add_(base)
    size = B * Sy * Sx * NUM_BINS
    if use_complex:
        acc = torch.zeros(size, dtype=torch.complex128, device=g.device)
        acc = torch.view_as_real(acc.scatter_add_(0, idx, torch.view_as_complex(lanes)))
    else:
        acc = torch.stack([torch.zeros(size, dtype=torch.float64, device=g.device)
                           .scatter_add_(0, idx, lanes[:, i]) for i in range(2)], -1)
    acc = acc.view(B, Sy, Sx, NUM_BINS, 2)
    hi = torch.floor(acc * (1.0 / shift))
    lo = acc - hi * shift
    # cell (y, x) <- TL of span (y+1, x+1), TR of (y+1, x), BL of (y, x+1), BR of (y, x)
    hist = ((lo[:, 1:h + 1, 1:w + 1, :, 0] + hi[:, 1:h + 1, 0:w, :, 0])
            + (lo[:, 0:h, 1:w + 1, :, 1] + hi[:, 0:h, 0:w, :, 1]))
    return (hist * (1.0 / (4 * cell_size * cell_size))).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=32)
def _cell_norm(H, W, cell, device, dtype):
    """``sqrt(sum_k h_k) + 1e-10`` per cell, (1, 1, h, w): every pixel spreads its
    whole bilinear weight over the bins, so the sum does not depend on the
    image (computed on a flat one, where all of it lands in bin 56)."""
    hist = lbp_histograms(torch.zeros(1, H, W, dtype=dtype, device=device), cell).to(dtype)
    return hist.sum(1, keepdim=True).sqrt_().add_(1e-10)


class LBP(torch.nn.Module):
    """VLFeat uniform LBP: (B, C, H, W) in [0, 255] -> (B, 58, H // c, W // c)."""

    def __init__(self, cell_size: int = 16):
        super().__init__()
        if not isinstance(cell_size, int) or not 2 <= cell_size <= 63:
            raise ValueError(f"lbp: cell_size must be an integer in [2, 63], got {cell_size!r}")
        self.cell_size = cell_size
        self.name = "lbp"
        self.params = {"cell_size": cell_size}  # get_feature("lbp", **params) rebuilds it

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        return (NUM_BINS, H // self.cell_size, W // self.cell_size)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W = check_input(x, "lbp")
        c = self.cell_size
        if H // c < 1 or W // c < 1:
            raise ValueError(f"lbp: image {H}x{W} smaller than cell_size {c}")
        outs = []
        for s in chunks(B, H * W, x.device):
            g = as_float_image(x[s], "lbp")  # grey per chunk: temporaries stay in cache
            hist = lbp_histograms(g, c).to(g.dtype)
            outs.append(hist.sqrt_().div_(_cell_norm(H, W, c, g.device, g.dtype)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def extra_repr(self) -> str:
        return f"cell_size={self.cell_size}"


@register("lbp", grey=True, decoder="lbp")
def lbp(cell_size: int = 16) -> LBP:
    """VLFeat's uniform LBP (58-D, cell 16)."""
    return LBP(cell_size=cell_size)
