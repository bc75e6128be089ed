"""Dense SIFT (``dsift``, differentiable torch) and sparse SIFT keypoints on a
grid (``sift``, VLFeat or OpenCV on the CPU).

Dense SIFT equals VLFeat's ``vl_dsift_new_basic(W, H, step, bin_size)`` +
``vl_dsift_process`` (Gaussian window, windowSize 2, 4 x 4 x 8 bins, bounds =
whole image) to about 1e-6; the tests check 1e-4 (see ``DSIFT``).

Sparse SIFT is the paper's arrangement of VLFeat's ``vl_sift`` keypoints
(Dosovitskiy & Brox 2016, section 2.2): cells of d = 4 pixels, each holding zeros or, for
one keypoint in the cell, ``(descriptor, x mod d, y mod d, sin a, cos a,
log s)`` (128 + 5 = 133 channels).
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import vlfeat
from pipeline.features import register
from pipeline.features.hog import _Magnitude, as_float_image, check_input, chunks

VL_EPSILON_F = 1.19209290e-07
TWO_PI_F = float(np.float32(2 * math.pi))
#: Whether this process has already warned that sparse SIFT fell back to OpenCV.
_warned_opencv_fallback = False


# ----------------------------------------------------------------------------
# dense SIFT


def fast_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """VLFeat's ``vl_fast_atan2_f`` (a cubic in r, max error ~0.005 rad):
    ``r = (x - |y|)/(x + |y|)``, angle ``pi/4 - r (c1 - c3 r^2)`` for x >= 0,
    ``r = (x + |y|)/(|y| - x)``, ``3 pi/4 - ...`` for x < 0, negated for
    y < 0; ``|y|`` is offset by ``FLT_EPSILON``.  Replicated (rather than
    using atan2) so that the orientation binning equals vl_dsift's; the
    polynomial is smooth away from the axes, so gradients flow through it."""
    c3, c1 = 0.1821, 0.9675
    ay = y.abs() + VL_EPSILON_F
    pos = x >= 0
    # one division with a denominator >= |y| + eps on both branches: dividing
    # both ways and selecting with torch.where gives a NaN gradient where the
    # unused branch's denominator is zero (x = +-(|y| + eps))
    r = torch.where(pos, x - ay, x + ay) / torch.where(pos, x + ay, ay - x)
    base = torch.where(pos, torch.full_like(x, math.pi / 4), torch.full_like(x, 3 * math.pi / 4))
    angle = base + (c3 * r * r - c1) * r
    return torch.where(y < 0, -angle, angle)


def _dsift_gradients(g: torch.Tensor):
    """vl_dsift's gradient: central differences x 0.5 inside, one-sided at the
    border rows/columns."""
    gy = torch.cat([g[:, 1:2] - g[:, 0:1], 0.5 * (g[:, 2:] - g[:, :-2]), g[:, -1:] - g[:, -2:-1]], 1)
    gx = torch.cat([g[:, :, 1:2] - g[:, :, 0:1], 0.5 * (g[:, :, 2:] - g[:, :, :-2]),
                    g[:, :, -1:] - g[:, :, -2:-1]], 2)
    return gx, gy


@functools.lru_cache(maxsize=16)
def _dsift_kernels(bin_size: int, num_bins: int, window_size: float, dtype, device):
    """(num_bins, L) correlation kernels, L = (num_bins + 1) * bin_size - 1: row b
    holds bin b's weights over a frame's padded support.  Bin b's weight on a
    pixel at offset j from the bin centre is the bilinear (triangular) weight
    ``1 - |j|/bin_size`` times the Gaussian window ``exp(-(j + delta_b)^2 /
    (2 sigma^2))``, ``delta_b = bin_size (b - (num_bins - 1)/2)`` (the bin
    centre relative to the frame centre), ``sigma = bin_size * window_size``:
    VLFeat's ``_vl_dsift_new_kernel`` (a true convolution there)."""
    bs = bin_size
    L = (num_bins + 1) * bs - 1
    k = torch.zeros(num_bins, L, dtype=torch.float64)
    j = torch.arange(-bs + 1, bs, dtype=torch.float64)
    sigma = float(np.float32(bs) * np.float32(window_size))
    for b in range(num_bins):
        delta = bs * (b - 0.5 * (num_bins - 1))
        k[b, b * bs:b * bs + 2 * bs - 1] = (1 - j.abs() / bs) * torch.exp(-0.5 * ((j + delta) / sigma) ** 2)
    return k.to(device=device, dtype=dtype)


def _normalize(d: torch.Tensor, dim: int) -> torch.Tensor:
    """VLFeat's ``_vl_dsift_normalize_histogram``: d / (fast_sqrt(|d|^2) + eps),
    with fast_sqrt(x) = 0 for x < 1e-8 (exact sqrt otherwise; VLFeat's
    two-Newton-step approximation differs by < 5e-6 relative)."""
    sq = (d * d).sum(dim, keepdim=True)
    small = sq < 1e-8
    norm = torch.sqrt(torch.where(small, torch.ones_like(sq), sq))
    norm = torch.where(small, torch.zeros_like(sq), norm) + VL_EPSILON_F
    return d / norm


class DSIFT(torch.nn.Module):
    """VLFeat dense SIFT: (B, C, H, W) in [0, 255] -> (B, 128, ny, nx).

    Frames (descriptor centres) lie at ``x = fx + 1.5 bin_size`` for
    ``fx = 0, step, 2 step, ... <= W - 1 - 3 bin_size`` (likewise y), i.e.
    ``nx = (W - 1 - 3 bin_size) // step + 1``; channel ``32 by + 8 bx + t``
    holds spatial bin (by, bx) and orientation t (angle ``2 pi t / 8``
    clockwise from the x axis, y down) -- VLFeat's descriptor layout.

    Pipeline (``vl/dsift.c``): gradients (central differences / 2,
    one-sided at the border), angle by VLFeat's fast atan2, magnitude split
    linearly between the two nearest of 8 orientations, separable
    Gaussian-windowed triangular pooling (replicate padding, a strided
    convolution per axis), then per descriptor: L2-normalise, clamp at 0.2,
    L2-normalise.

    Tolerance against ``vl_dsift``: 1e-4 absolute (measured: ~1e-6).  The
    orientation binning and window are replicated exactly; what remains is
    (i) VLFeat's fast square roots (2 Newton steps, relative error < 5e-6)
    for the gradient magnitude and the descriptor norms, against exact ones
    here, and (ii) float32 summation order in the pooling; both move the
    unit-norm descriptor entries (<= 0.2 before the last normalisation) by a
    few 1e-6.  The 0.2 clamp is continuous, so no threshold amplifies them.

    Differentiable almost everywhere (``gradcheck`` passes on random double
    images): the orientation split is continuous in the angle; kinks at the
    0.2 clamp and on the axes of fast atan2's |y| and branch.  The magnitude's
    derivative is taken as 0 at flat pixels.
    """

    def __init__(self, step: int = 8, bin_size: int = 8, window_size: float = 2.0):
        super().__init__()
        for n, v in (("step", step), ("bin_size", bin_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"dsift: {n} must be a positive integer, got {v!r}")
        if not window_size > 0:
            raise ValueError(f"dsift: window_size must be > 0, got {window_size!r}")
        self.step, self.bin_size, self.window_size = step, bin_size, float(window_size)
        self.name = "dsift"
        # get_feature("dsift", **params) rebuilds it
        self.params = {"step": step, "bin_size": bin_size, "window_size": self.window_size}

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        ny, nx = vlfeat.dsift_grid(H, W, self.step, self.bin_size)
        return (128, ny, nx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W = check_input(x, "dsift")
        _, ny, nx = self.output_shape(H, W)
        if ny < 1 or nx < 1 or H < 2 or W < 2:
            raise ValueError(f"dsift: image {H}x{W} smaller than a descriptor "
                             f"(3 * bin_size + 1 = {3 * self.bin_size + 1} pixels)")
        outs = [self._forward(as_float_image(x[s], "dsift"), ny, nx) for s in chunks(B, H * W, x.device)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def _forward(self, g: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
        B, H, W = g.shape
        bs, nb, nt = self.bin_size, 4, 8
        gx, gy = _dsift_gradients(g)
        if torch.is_grad_enabled() and g.requires_grad:
            mod = _Magnitude.apply(gx, gy, False)
        else:
            mod = torch.sqrt(gx * gx + gy * gy)
        mod = torch.where(gx * gx + gy * gy < 1e-8, torch.zeros_like(mod), mod)  # vl_fast_sqrt_f
        angle = fast_atan2(gy, gx)
        angle = torch.where(angle < 0, angle + TWO_PI_F, angle)  # vl_mod_2pi_f
        nt_ = angle * (nt / (2 * math.pi))
        with torch.no_grad():
            b0 = torch.floor(nt_)
        r = nt_ - b0
        b0 = b0.long()
        # (B, 8, H, W) orientation maps: (1 - r) m to bin b0, r m to b0 + 1
        maps = torch.zeros(B, nt, H, W, dtype=g.dtype, device=g.device)
        maps = maps.scatter_add(1, (b0 % nt).unsqueeze(1), ((1 - r) * mod).unsqueeze(1))
        maps = maps.scatter_add(1, ((b0 + 1) % nt).unsqueeze(1), (r * mod).unsqueeze(1))
        # separable pooling: replicate pad bs-1, strided correlation per axis
        k = _dsift_kernels(bs, nb, self.window_size, g.dtype, g.device)  # (4, L)
        L = k.shape[1]
        # (index_select rather than F.pad(mode="replicate"), whose OpenMP kernel
        # is slow on small tensors on a busy machine)
        iy = torch.arange(-(bs - 1), H + bs - 1, device=g.device).clamp_(0, H - 1)
        ix = torch.arange(-(bs - 1), W + bs - 1, device=g.device).clamp_(0, W - 1)
        p = maps.reshape(B * nt, 1, H, W).index_select(2, iy).index_select(3, ix)
        v = F.conv2d(p, k.view(nb, 1, L, 1), stride=(self.step, 1))  # (B*8, 4[by], ny, W')
        v = v.reshape(B * nt * nb, 1, ny, -1)
        d = F.conv2d(v, k.view(nb, 1, 1, L), stride=(1, self.step))  # (B*8*4, 4[bx], ny, nx)
        d = d.reshape(B, nt, nb, nb, ny, nx).permute(0, 2, 3, 1, 4, 5).reshape(B, 128, ny, nx)
        d = _normalize(d, 1)
        d = torch.clamp(d, max=0.2)
        return _normalize(d, 1)

    def extra_repr(self) -> str:
        return f"step={self.step}, bin_size={self.bin_size}, window_size={self.window_size}"


@register("dsift", grey=True, decoder="sift")
def dsift(step: int = 8, bin_size: int = 8, window_size: float = 2.0) -> DSIFT:
    """VLFeat dense SIFT (``vl_dsift``), step and bin size in pixels.  The
    defaults (bin 8, step 8) give HOG's cell size and sampling, as in
    Mahendran & Vedaldi's DSIFT/HOG comparison."""
    return DSIFT(step=step, bin_size=bin_size, window_size=window_size)


# ----------------------------------------------------------------------------
# sparse SIFT on a grid

SIFT_CHANNELS = 128 + 5


def opencv_sift(gray: np.ndarray):
    """OpenCV's SIFT (``cv2.SIFT_create()`` defaults: first octave -1, 3
    levels, contrast threshold 0.04, edge threshold 10) as VLFeat-style
    frames ``(x, y, sigma, angle)`` and descriptors.

    Conventions mapped to VLFeat's: ``sigma = size / 2``; OpenCV's angle (degrees,
    measured with y up then mirrored) equals VLFeat's clockwise angle, so
    ``a = radians(angle)``; descriptors are divided by 512 (OpenCV stores
    ``min(512 d, 255)``).  The bin order inside OpenCV's descriptor is not
    VLFeat's: this backend is a fallback, not an equivalent.
    """
    import cv2

    img = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    kps, desc = cv2.SIFT_create().detectAndCompute(img, None)
    if not kps:
        return np.zeros((0, 4)), np.zeros((0, 128), np.float32)
    frames = np.array([(k.pt[0], k.pt[1], k.size / 2, math.radians(k.angle)) for k in kps])
    return frames, (desc / 512.0).astype(np.float32)


def arrange_on_grid(frames: np.ndarray, descr: np.ndarray, H: int, W: int, cell: int = 4,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The paper's grid: ``(133, ceil(H/cell), ceil(W/cell))`` float32.

    A keypoint at (x, y) (0-based pixel coordinates, pixel centres at
    integers) lands in cell ``(floor(y / cell), floor(x / cell))``; with
    ``ceil`` every keypoint of the image has a cell.  Where several frames
    (distinct keypoints, or one keypoint with several orientations) share a
    cell, one is chosen uniformly at random with ``rng``.  Channels:
    0..127 descriptor, 128 ``x mod cell``, 129 ``y mod cell``, 130 ``sin a``,
    131 ``cos a``, 132 ``log sigma``; empty cells are all zero.
    """
    hc, wc = -(-H // cell), -(-W // cell)
    out = np.zeros((SIFT_CHANNELS, hc, wc), dtype=np.float32)
    if len(frames) == 0:
        return out
    x, y, s, a = (frames[:, i] for i in range(4))
    cy = np.clip(np.floor(y / cell).astype(np.int64), 0, hc - 1)
    cx = np.clip(np.floor(x / cell).astype(np.int64), 0, wc - 1)
    flat = cy * wc + cx
    prio = (rng or np.random.default_rng(0)).random(len(frames))
    order = np.lexsort((prio, flat))  # by cell, then priority
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    pick = order[last]  # highest priority frame of every occupied cell
    feats = np.concatenate([descr[pick].T, np.stack([
        np.mod(x[pick], cell), np.mod(y[pick], cell), np.sin(a[pick]), np.cos(a[pick]),
        np.log(s[pick])])], 0).astype(np.float32)
    out.reshape(SIFT_CHANNELS, -1)[:, flat[pick]] = feats
    return out


def _warn_opencv_fallback() -> None:
    """Warn, once per process, that sparse SIFT uses OpenCV because VLFeat is missing."""
    global _warned_opencv_fallback
    if _warned_opencv_fallback:
        return
    _warned_opencv_fallback = True
    warnings.warn(
        f"sift: VLFeat is not available ({vlfeat.unavailable_reason()}); using OpenCV's SIFT instead, whose "
        "keypoints differ from the paper's VLFeat ones (install libvlfeat-dev, or conda-forge's vlfeat)",
        RuntimeWarning, stacklevel=3)


class SparseSIFT(torch.nn.Module):
    """Sparse SIFT keypoints arranged on a grid: (B, C, H, W) in [0, 255] ->
    (B, 133, ceil(H / 4), ceil(W / 4)) (the paper's ceil; = H // 4 when H is a
    multiple of 4).

    ``backend="vlfeat"`` (default when libvl loads): VLFeat's ``vl_sift`` with
    the paper's settings -- first octave 0, 3 levels per octave, octaves
    automatic, peak threshold 0, edge threshold 10, magnification 3, up to
    four orientations per keypoint (one frame each); descriptors as VLFeat's
    C API returns them (unit norm after clamping at 0.2; the MATLAB toolbox
    scales these by 512).  ``backend="opencv"``: the declared fallback
    (:func:`opencv_sift`), chosen when libvl does not load, with a
    ``RuntimeWarning`` (once per process).  The random choice among frames sharing a cell
    uses ``numpy.random.default_rng(seed)`` afresh for every image, so an
    image's features do not depend on its batch.

    Not differentiable: detection runs in numpy on the CPU (``.cpu()`` of
    the grey image) and the result is moved to the input's device.
    """

    def __init__(self, backend: str | None = None, cell: int = 4, seed: int = 0,
                 first_octave: int = 0, num_levels: int = 3, peak_thresh: float = 0.0,
                 edge_thresh: float = 10.0, magnif: float = 3.0):
        super().__init__()
        if backend is None:
            backend = "vlfeat" if vlfeat.available() else "opencv"
            if backend == "opencv":
                _warn_opencv_fallback()
        if backend not in ("vlfeat", "opencv"):
            raise ValueError(f"sift: backend must be 'vlfeat' or 'opencv', got {backend!r}")
        if backend == "vlfeat" and not vlfeat.available():
            raise RuntimeError(f"sift: backend 'vlfeat' requested but {vlfeat.unavailable_reason()}")
        if not isinstance(cell, int) or cell < 1:
            raise ValueError(f"sift: cell must be a positive integer, got {cell!r}")
        self.backend, self.cell, self.seed = backend, cell, int(seed)
        self.vl_params = dict(first_octave=first_octave, num_levels=num_levels,
                              peak_thresh=peak_thresh, edge_thresh=edge_thresh, magnif=magnif)
        self.name = "sift"
        self.params = {"backend": backend, "cell": cell, "seed": self.seed}
        if backend == "vlfeat":
            self.params.update(self.vl_params)

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        return (SIFT_CHANNELS, -(-H // self.cell), -(-W // self.cell))

    def detect(self, gray: np.ndarray):
        """Frames (N, 4) ``(x, y, sigma, angle)`` and descriptors (N, 128) of one
        (H, W) grey image."""
        if self.backend == "vlfeat":
            return vlfeat.sift(gray, **self.vl_params)
        return opencv_sift(gray)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = as_float_image(x, "sift")
        B, H, W = g.shape
        if H < 8 or W < 8:
            raise ValueError(f"sift: image {H}x{W} too small (at least 8x8)")
        gn = g.float().cpu().numpy()
        out = np.stack([arrange_on_grid(*self.detect(np.ascontiguousarray(gn[i])), H, W, self.cell,
                                        np.random.default_rng(self.seed)) for i in range(B)])
        return torch.from_numpy(out).to(device=x.device)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, cell={self.cell}, seed={self.seed}"


@register("sift", grey=True, decoder="sift", cpu_only=True)
def sift(backend: str | None = None, cell: int = 4, seed: int = 0, **vl_params) -> SparseSIFT:
    """Sparse SIFT keypoints on the paper's d = 4 grid (133 channels)."""
    return SparseSIFT(backend=backend, cell=cell, seed=seed, **vl_params)
