"""ctypes bindings to VLFeat (``libvl.so.1``, Debian's ``libvlfeat-dev`` 0.9.21).

These are the *reference* implementations the torch features in
:mod:`pipeline.features` are tested against (and the sparse-SIFT backend).
Only what the project needs is bound: HOG, LBP, SIFT and dense SIFT.

Memory layout.  VLFeat's C API indexes an image as ``image[x + width * y]``
(x fastest), which is exactly a C-contiguous numpy array of shape
``(height, width)``; we always create the objects with ``transposed = false``
(the MATLAB toolbox passes column-major data with ``transposed = true``
instead).  Multi-channel HOG input is ``(channels, height, width)``.  HOG and
LBP write ``features[x + w * y + (w * h) * k]``: a C-contiguous ``(D, h, w)``
array, the feature dimension slowest.  Keypoint coordinates are 0-based
pixel coordinates (pixel centres at integers), x horizontal to the right,
y downwards; angles are measured from the x axis towards the y axis
(clockwise on screen), in radians.

All functions take float images with values in [0, 255] (VLFeat's thresholds,
e.g. HOG's 1e-4 block-norm epsilon, assume that range).

``available()`` tells whether the library could be loaded;
``unavailable_reason()`` says why not.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

__all__ = [
    "available",
    "unavailable_reason",
    "hog",
    "hog_permutation",
    "lbp",
    "sift",
    "dsift",
    "VLFeatUnavailable",
]

_LIB_NAMES = ("libvl.so.1", "libvl.so")
VL_ERR_EOF = 5
VL_HOG_VARIANT = {"dalaltriggs": 0, "uoctti": 1}

c_size = ctypes.c_uint64  # vl_size on LP64
c_index = ctypes.c_int64  # vl_index
c_bool = ctypes.c_int  # vl_bool
c_float_p = ctypes.POINTER(ctypes.c_float)


class VLFeatUnavailable(RuntimeError):
    """Raised when libvl cannot be loaded."""


class VlSiftKeypoint(ctypes.Structure):
    _fields_ = [
        ("o", ctypes.c_int),
        ("ix", ctypes.c_int),
        ("iy", ctypes.c_int),
        ("is_", ctypes.c_int),
        ("x", ctypes.c_float),
        ("y", ctypes.c_float),
        ("s", ctypes.c_float),
        ("sigma", ctypes.c_float),
    ]


class VlSiftFilt(ctypes.Structure):
    """Mirror of ``struct _VlSiftFilt`` in vl/sift.h (0.9.21): needed because
    the getters/setters (keypoints, thresholds) are inline functions that
    the shared library does not export."""

    _fields_ = [
        ("sigman", ctypes.c_double),
        ("sigma0", ctypes.c_double),
        ("sigmak", ctypes.c_double),
        ("dsigma0", ctypes.c_double),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("O", ctypes.c_int),
        ("S", ctypes.c_int),
        ("o_min", ctypes.c_int),
        ("s_min", ctypes.c_int),
        ("s_max", ctypes.c_int),
        ("o_cur", ctypes.c_int),
        ("temp", c_float_p),
        ("octave", c_float_p),
        ("dog", c_float_p),
        ("octave_width", ctypes.c_int),
        ("octave_height", ctypes.c_int),
        ("gaussFilter", c_float_p),
        ("gaussFilterSigma", ctypes.c_double),
        ("gaussFilterWidth", c_size),
        ("keys", ctypes.POINTER(VlSiftKeypoint)),
        ("nkeys", ctypes.c_int),
        ("keys_res", ctypes.c_int),
        ("peak_thresh", ctypes.c_double),
        ("edge_thresh", ctypes.c_double),
        ("norm_thresh", ctypes.c_double),
        ("magnif", ctypes.c_double),
        ("windowSize", ctypes.c_double),
        ("grad", c_float_p),
        ("grad_o", ctypes.c_int),
    ]


class VlDsiftKeypoint(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_double),
        ("y", ctypes.c_double),
        ("s", ctypes.c_double),
        ("norm", ctypes.c_double),
    ]


class VlDsiftDescriptorGeometry(ctypes.Structure):
    _fields_ = [
        ("numBinT", ctypes.c_int),
        ("numBinX", ctypes.c_int),
        ("numBinY", ctypes.c_int),
        ("binSizeX", ctypes.c_int),
        ("binSizeY", ctypes.c_int),
    ]


class VlDsiftFilter(ctypes.Structure):
    """Mirror of ``struct VlDsiftFilter_`` in vl/dsift.h (inline getters)."""

    _fields_ = [
        ("imWidth", ctypes.c_int),
        ("imHeight", ctypes.c_int),
        ("stepX", ctypes.c_int),
        ("stepY", ctypes.c_int),
        ("boundMinX", ctypes.c_int),
        ("boundMinY", ctypes.c_int),
        ("boundMaxX", ctypes.c_int),
        ("boundMaxY", ctypes.c_int),
        ("geom", VlDsiftDescriptorGeometry),
        ("useFlatWindow", ctypes.c_int),
        ("windowSize", ctypes.c_double),
        ("numFrames", ctypes.c_int),
        ("descrSize", ctypes.c_int),
        ("frames", ctypes.POINTER(VlDsiftKeypoint)),
        ("descrs", c_float_p),
        ("numBinAlloc", ctypes.c_int),
        ("numFrameAlloc", ctypes.c_int),
        ("numGradAlloc", ctypes.c_int),
        ("grads", ctypes.POINTER(c_float_p)),
        ("convTmp1", c_float_p),
        ("convTmp2", c_float_p),
    ]


_lib = None
_reason: str | None = None


def _load():
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    names = list(_LIB_NAMES)
    env = os.environ.get("VLFEAT_LIB")
    if env:
        names.insert(0, env)
    found = ctypes.util.find_library("vl")
    if found:
        names.append(found)
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(f"{name}: {e}")
    else:
        _reason = (
            "VLFeat shared library not found (install Debian's libvlfeat-dev, "
            "or set VLFEAT_LIB): " + "; ".join(errors)
        )
        return None
    _declare(lib)
    _lib = lib
    return lib


def _declare(lib) -> None:
    vp = ctypes.c_void_p
    # HOG
    lib.vl_hog_new.restype = vp
    lib.vl_hog_new.argtypes = [ctypes.c_int, c_size, c_bool]
    lib.vl_hog_delete.argtypes = [vp]
    lib.vl_hog_put_image.argtypes = [vp, c_float_p, c_size, c_size, c_size, c_size]
    lib.vl_hog_extract.argtypes = [vp, c_float_p]
    lib.vl_hog_get_width.restype = c_size
    lib.vl_hog_get_width.argtypes = [vp]
    lib.vl_hog_get_height.restype = c_size
    lib.vl_hog_get_height.argtypes = [vp]
    lib.vl_hog_get_dimension.restype = c_size
    lib.vl_hog_get_dimension.argtypes = [vp]
    lib.vl_hog_get_permutation.restype = ctypes.POINTER(c_index)
    lib.vl_hog_get_permutation.argtypes = [vp]
    lib.vl_hog_set_use_bilinear_orientation_assignments.argtypes = [vp, c_bool]
    # LBP
    lib.vl_lbp_new.restype = vp
    lib.vl_lbp_new.argtypes = [ctypes.c_int, c_bool]
    lib.vl_lbp_delete.argtypes = [vp]
    lib.vl_lbp_get_dimension.restype = c_size
    lib.vl_lbp_get_dimension.argtypes = [vp]
    lib.vl_lbp_process.argtypes = [vp, c_float_p, c_float_p, c_size, c_size, c_size]
    # SIFT
    sp = ctypes.POINTER(VlSiftFilt)
    kp = ctypes.POINTER(VlSiftKeypoint)
    lib.vl_sift_new.restype = sp
    lib.vl_sift_new.argtypes = [ctypes.c_int] * 5
    lib.vl_sift_delete.argtypes = [sp]
    lib.vl_sift_process_first_octave.restype = ctypes.c_int
    lib.vl_sift_process_first_octave.argtypes = [sp, c_float_p]
    lib.vl_sift_process_next_octave.restype = ctypes.c_int
    lib.vl_sift_process_next_octave.argtypes = [sp]
    lib.vl_sift_detect.argtypes = [sp]
    lib.vl_sift_calc_keypoint_orientations.restype = ctypes.c_int
    lib.vl_sift_calc_keypoint_orientations.argtypes = [
        sp, ctypes.POINTER(ctypes.c_double), kp]
    lib.vl_sift_calc_keypoint_descriptor.argtypes = [sp, c_float_p, kp, ctypes.c_double]
    # DSIFT
    dp = ctypes.POINTER(VlDsiftFilter)
    lib.vl_dsift_new_basic.restype = dp
    lib.vl_dsift_new_basic.argtypes = [ctypes.c_int] * 4
    lib.vl_dsift_delete.argtypes = [dp]
    lib.vl_dsift_process.argtypes = [dp, c_float_p]
    lib._vl_dsift_update_buffers.argtypes = [dp]


def available() -> bool:
    """True when libvl could be loaded."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why libvl could not be loaded (None when it could)."""
    _load()
    return _reason


def _lib_or_raise():
    lib = _load()
    if lib is None:
        raise VLFeatUnavailable(_reason)
    return lib


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(c_float_p)


def _gray(image, what: str) -> np.ndarray:
    a = np.ascontiguousarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (height, width) image, got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------
# HOG


def hog(image, cell_size: int = 8, num_orientations: int = 9, bilinear: bool = False,
        variant: str = "uoctti") -> np.ndarray:
    """``vl_hog_put_image`` + ``vl_hog_extract`` on one image.

    ``image``: ``(H, W)`` or ``(C, H, W)`` float array in [0, 255].
    Returns ``(D, (H + cell/2) // cell, (W + cell/2) // cell)`` float32,
    D = 31 for UoCTTI with 9 orientations.
    """
    lib = _lib_or_raise()
    a = np.ascontiguousarray(image, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"hog: expected (H, W) or (C, H, W), got shape {a.shape}")
    c, h, w = a.shape
    if variant not in VL_HOG_VARIANT:
        raise ValueError(f"hog: variant must be one of {sorted(VL_HOG_VARIANT)}, got {variant!r}")
    if h <= 3 or w <= 3 or (w + cell_size // 2) // cell_size < 1 \
            or (h + cell_size // 2) // cell_size < 1:
        raise ValueError(f"hog: image {h}x{w} too small for cell_size {cell_size}")
    obj = lib.vl_hog_new(VL_HOG_VARIANT[variant], num_orientations, 0)
    try:
        lib.vl_hog_set_use_bilinear_orientation_assignments(obj, int(bool(bilinear)))
        lib.vl_hog_put_image(obj, _ptr(a), w, h, c, cell_size)
        hw, hh = lib.vl_hog_get_width(obj), lib.vl_hog_get_height(obj)
        d = lib.vl_hog_get_dimension(obj)
        out = np.zeros((d, hh, hw), dtype=np.float32)
        lib.vl_hog_extract(obj, _ptr(out))
    finally:
        lib.vl_hog_delete(obj)
    return out


def hog_permutation(num_orientations: int = 9, variant: str = "uoctti") -> np.ndarray:
    """``vl_hog_get_permutation``: ``flipped[..., i] = hog[..., perm[i]]`` for a
    left-right flipped image (cells flipped too)."""
    lib = _lib_or_raise()
    obj = lib.vl_hog_new(VL_HOG_VARIANT[variant], num_orientations, 0)
    try:
        d = lib.vl_hog_get_dimension(obj)
        p = lib.vl_hog_get_permutation(obj)
        return np.array([p[i] for i in range(d)], dtype=np.int64)
    finally:
        lib.vl_hog_delete(obj)


# ----------------------------------------------------------------------------
# LBP


def lbp(image, cell_size: int = 16) -> np.ndarray:
    """``vl_lbp_process`` (uniform, 58 bins) on a ``(H, W)`` image.
    Returns ``(58, H // cell, W // cell)`` float32."""
    lib = _lib_or_raise()
    a = _gray(image, "lbp")
    h, w = a.shape
    if h // cell_size < 1 or w // cell_size < 1:
        raise ValueError(f"lbp: image {h}x{w} smaller than cell_size {cell_size}")
    obj = lib.vl_lbp_new(0, 0)
    try:
        d = lib.vl_lbp_get_dimension(obj)
        out = np.zeros((d, h // cell_size, w // cell_size), dtype=np.float32)
        lib.vl_lbp_process(obj, _ptr(out), _ptr(a), w, h, cell_size)
    finally:
        lib.vl_lbp_delete(obj)
    return out


# ----------------------------------------------------------------------------
# SIFT


def sift(image, first_octave: int = 0, num_levels: int = 3, num_octaves: int = -1,
         peak_thresh: float = 0.0, edge_thresh: float = 10.0, magnif: float = 3.0,
         norm_thresh: float | None = None, descriptors: bool = True):
    """Sparse SIFT as ``vl_sift`` does it: octave by octave, detect, up to four
    orientations per keypoint (``vl_sift_calc_keypoint_orientations``), one
    descriptor per orientation.

    Returns ``frames`` ``(N, 4)`` float64 columns ``(x, y, sigma, angle)``
    (0-based pixel coordinates, angle in radians clockwise from the x axis)
    and ``descr`` ``(N, 128)`` float32 (unit norm after clamping at 0.2; the
    MATLAB toolbox multiplies these by 512), or None if ``descriptors`` is
    False.  Descriptor layout is VLFeat's C layout (orientation fastest, then
    x bin, then y bin).
    """
    lib = _lib_or_raise()
    a = _gray(image, "sift")
    h, w = a.shape
    f = lib.vl_sift_new(w, h, num_octaves, num_levels, first_octave)
    if not f:
        raise RuntimeError("vl_sift_new failed")
    try:
        fs = f.contents
        fs.peak_thresh = peak_thresh
        fs.edge_thresh = edge_thresh
        fs.magnif = magnif
        if norm_thresh is not None:
            fs.norm_thresh = norm_thresh
        frames, descrs = [], []
        angles = (ctypes.c_double * 4)()
        buf = np.zeros(128, dtype=np.float32)
        err = lib.vl_sift_process_first_octave(f, _ptr(a))
        while err != VL_ERR_EOF:
            if err:
                raise RuntimeError(f"vl_sift: error {err}")
            lib.vl_sift_detect(f)
            n = fs.nkeys
            keys = fs.keys
            for i in range(n):
                k = ctypes.pointer(keys[i])
                nang = lib.vl_sift_calc_keypoint_orientations(f, angles, k)
                kk = keys[i]
                for q in range(nang):
                    frames.append((kk.x, kk.y, kk.sigma, angles[q]))
                    if descriptors:
                        lib.vl_sift_calc_keypoint_descriptor(f, _ptr(buf), k, angles[q])
                        descrs.append(buf.copy())
            err = lib.vl_sift_process_next_octave(f)
    finally:
        lib.vl_sift_delete(f)
    frames = np.array(frames, dtype=np.float64).reshape(-1, 4)
    if not descriptors:
        return frames, None
    descr = np.array(descrs, dtype=np.float32).reshape(-1, 128)
    return frames, descr


# ----------------------------------------------------------------------------
# Dense SIFT


def dsift(image, step: int = 8, bin_size: int = 8, flat_window: bool = False):
    """``vl_dsift_new_basic(W, H, step, bin_size)`` + ``vl_dsift_process``.

    Returns ``frames`` ``(N, 2)`` (x, y of the descriptor centres, 0-based)
    and ``descr`` ``(N, 128)`` float32 in VLFeat's C layout (orientation
    fastest, then x bin, then y bin); frames are ordered y-major
    (``frames.reshape(ny, nx, 2)``).  Default Gaussian window
    (``windowSize`` 2), bounds = whole image.
    """
    lib = _lib_or_raise()
    a = _gray(image, "dsift")
    h, w = a.shape
    f = lib.vl_dsift_new_basic(w, h, step, bin_size)
    if not f:
        raise RuntimeError("vl_dsift_new_basic failed")
    try:
        fs = f.contents
        fs.useFlatWindow = int(bool(flat_window))
        lib.vl_dsift_process(f, _ptr(a))
        n, d = fs.numFrames, fs.descrSize
        if n == 0:
            return np.zeros((0, 2)), np.zeros((0, d), np.float32)
        descr = np.ctypeslib.as_array(fs.descrs, shape=(n * d,)).reshape(n, d).copy()
        frames = np.array([(fs.frames[i].x, fs.frames[i].y) for i in range(n)])
    finally:
        lib.vl_dsift_delete(f)
    return frames, descr


def dsift_grid(height: int, width: int, step: int, bin_size: int) -> tuple[int, int]:
    """Number of dense-SIFT frames (ny, nx) for an image, as VLFeat computes
    them: ``(size - 1 - 3 * bin_size) // step + 1`` (0 if negative)."""
    def n(size):
        r = size - 1 - 3 * bin_size
        return r // step + 1 if r >= 0 else 0
    return n(height), n(width)

