"""HOGgles (Vondrick, Khosla, Malisiewicz & Torralba, ICCV 2013): paired dictionaries.

The baseline that Mahendran & Vedaldi 2015 (Table 1, 66.2 % error) compare with.  Following
the authors' code (``ihog``: ``learnpairdict.m``, ``invertHOG.m``):

Training (:func:`train_paired_dictionary`)
    Windows of ``ny x nx`` HOG cells (5 x 5) and the grey image patch under
    them *plus one cell on every side* (``(ny+2) x (nx+2)`` cells of
    ``cell x cell`` pixels) are sampled from training images.  Each half is
    made zero-mean and unit-norm separately (``x - mean; x / sqrt(|x|^2 +
    eps)``), the two are concatenated, and one dictionary of K atoms (1024) is
    learned on the concatenation by sparse coding with a non-negative LASSO,
    ``min_{D, a >= 0} 1/2 |[g; h] - D a|^2 + lambda |a|_1`` (``lambda`` =
    0.02; SPAMS ``mexTrainDL`` mode 2 with ``posAlpha``, atoms of norm <= 1).
    Here: scikit-learn's :class:`~sklearn.decomposition.MiniBatchDictionaryLearning`
    with ``positive_code=True`` and the same objective (its ``alpha`` is
    SPAMS's ``lambda``), initialised with K training pairs as SPAMS does.
    The rows of the dictionary split into a grey dictionary ``U`` and a HOG
    dictionary ``V``: a pair of dictionaries with shared codes.

Inversion (:func:`invert_hoggles`)
    The HOG map is padded with 5 cells of zeros (``par = 5``); every window of
    ``ny x nx`` cells (stride one cell) is made zero-mean and unit-norm and
    coded on ``V`` with the same non-negative LASSO (``mexLasso`` mode 2,
    ``pos``); ``U a`` is its grey patch.  Patches are weighted by a Gaussian
    (``fspecial('gaussian', patch size, 9)``, normalised to sum 1), summed
    where they overlap and divided by the *number* of patches covering each
    pixel; the result is scaled to [0, 1] by its min and max (over the padded
    canvas, as ``invertHOG.m`` does before cropping) and cropped to the image.
    We return it times 255.

Grey.  HOG is computed on grey images, so HOGgles reconstructs grey; the
stores hold that grey image replicated to 3 channels (what the authors'
evaluation did: ``repmat(invertHOG(hog), [1 1 3])``).

Differences from ``ihog``: the HOG is this package's ``hog`` (VLFeat's
UoCTTI, 31 dimensions, no dropped border cell and no 32nd truncation
dimension, as DPM's ``features.cc`` has); the window at HOG cell ``i`` is
paired with pixels ``[(i - 1) cell, (i + ny + 1) cell)`` (one cell of margin,
as ``ihog`` pairs DPM's cells), the training image padded by edge
replication where that runs past the border.  Sizes are configurable (atoms,
window cells, lambda, number of training windows) so the sample
configuration stays small.

Sparse coding: scikit-learn's coordinate-descent LASSO (``solver="sklearn"``,
``sparse_encode(..., algorithm="lasso_cd", positive=True)``) by default.
Measured here on 227x227 HOG windows (1156 per image): with 256 atoms it
codes an image in about 0.3 s; with 1024 atoms about 10 s on a shared CPU.
``lasso_lars`` (the homotopy that SPAMS's ``mexLasso`` uses) reached the
same objective to 1e-9 but was 1.3x (1024 atoms) to 10x (256 atoms) slower,
and a hand-written active-set solver was only 2x faster than LARS, so CD
stays.  ``solver="fista"`` solves the same problem in batched PyTorch
(accelerated projected gradient with adaptive restart, to a KKT tolerance):
meant for GPUs, where all windows of a batch of images are one matrix
product; on the CPU it is slower than CD.  The tests check that both give the
same objective.  Dictionary learning uses scikit-learn's
``MiniBatchDictionaryLearning`` with its default early stopping; with 1024
atoms one mini-batch of 400 costs about 20 s here (coding and the atom-by-atom
dictionary update), so the full ihog setting (1000 mini-batches) takes hours
on a CPU; the sample configuration uses 256 atoms.

The command ``python -m pipeline invert-hoggles {train, invert}`` is in
:mod:`pipeline.baselines.hoggles_cli`.
"""
from __future__ import annotations

import json
import math
import tarfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning

from pipeline.features import get_feature, to_gray
from pipeline.io import atomic_path
from pipeline.data.shards import IMAGE_EXTS, read_shard

EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, as in ihog

#: ihog's defaults (learnpairdict.m / invertHOG.m).
ATOMS = 1024
WINDOW = 5
LAMBDA = 0.02
PAD_CELLS = 5
BLEND_SIGMA = 9.0
BATCH = 400


@dataclass
class PairedDictionary:
    """``gray`` (K, (ny+2)*cell * (nx+2)*cell) and ``hog`` (K, D*ny*nx): shared-code atoms.

    Grey atoms are row-major patches; HOG atoms are ``(D, ny, nx)`` windows
    flattened in that order.
    """

    gray: np.ndarray
    hog: np.ndarray
    ny: int
    nx: int
    cell: int
    lam: float
    feature: str = "hog"
    feature_params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def atoms(self) -> int:
        return self.gray.shape[0]

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (self.ny + 2) * self.cell, (self.nx + 2) * self.cell

    def save(self, path) -> None:
        """Write an ``.npz`` atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f, gray=self.gray.astype(np.float32), hog=self.hog.astype(np.float32),
                    config=np.array(json.dumps({
                        "ny": self.ny, "nx": self.nx, "cell": self.cell, "lam": self.lam,
                        "feature": self.feature, "feature_params": self.feature_params, "meta": self.meta,
                    }, sort_keys=True)),
                )

    @classmethod
    def load(cls, path) -> "PairedDictionary":
        try:
            with np.load(path, allow_pickle=False) as z:  # data only: a pickled object is refused
                cfg = json.loads(str(z["config"]))
                pd = cls(gray=z["gray"], hog=z["hog"], ny=cfg["ny"], nx=cfg["nx"], cell=cfg["cell"],
                         lam=cfg["lam"], feature=cfg["feature"], feature_params=cfg["feature_params"],
                         meta=cfg.get("meta", {}))
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: not a HOGgles paired dictionary ({e}); delete it and rerun "
                             "`invert-hoggles train`") from None
        if not (np.isfinite(pd.gray).all() and np.isfinite(pd.hog).all()):
            raise ValueError(f"{path}: the HOGgles dictionary holds NaN or Inf; delete it and rerun "
                             "`invert-hoggles train`")
        return pd


# --------------------------------------------------------------------------
# Windows and patches
# --------------------------------------------------------------------------


def cell_size(feature: torch.nn.Module) -> int:
    """The cell size of a cell-grid representation, from ``output_shape``."""
    for key in ("cell", "cell_size", "bin_size", "sbin"):
        v = (getattr(feature, "params", None) or {}).get(key)
        if isinstance(v, (int, np.integer)) and v > 0:
            return int(v)
    _, h, _ = feature.output_shape(512, 512)
    return int(round(512 / h))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``x - mean; x / sqrt(|x|^2 + eps)`` per row (ihog)."""
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True) + EPS)


def hog_windows(phi: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    """(N, D, h, w) -> (N, L, D*ny*nx): every ny x nx window, stride 1, row-major positions."""
    return F.unfold(phi, (ny, nx)).transpose(1, 2)


def gray_patches(gray: torch.Tensor, cell: int, h: int, w: int, ny: int, nx: int) -> torch.Tensor:
    """(N, 1, H, W) grey -> (N, L, P): for the window at cell (i, j), pixels
    ``[(i-1) cell, (i+ny+1) cell) x [(j-1) cell, (j+nx+1) cell)``, edge-padded."""
    H, W = gray.shape[-2:]
    pb, pr = (h + 1) * cell - H, (w + 1) * cell - W
    if pb < 0 or pr < 0:
        raise ValueError(f"a {h}x{w} cell grid of {cell} px does not cover a {H}x{W} image")
    g = F.pad(gray, (cell, pr, cell, pb), mode="replicate")
    return F.unfold(g, ((ny + 2) * cell, (nx + 2) * cell), stride=cell).transpose(1, 2)


def _gray_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 or (N, C, H, W) [0, 255] -> (N, 1, H, W) float grey."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.transpose(0, 3, 1, 2)
        images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return to_gray(images.float())


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _shard_image_count(path, max_images: int | None) -> int:
    """Images in a shard, from the tar's member names (no decoding)."""
    try:
        with tarfile.open(path, "r") as tar:
            n = sum(1 for m in tar if m.isfile() and m.name.rpartition(".")[2] in IMAGE_EXTS)
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard ({e})") from None
    return n if max_images is None else min(n, max_images)


def _image_source(images, max_images: int | None = None, batch: int = 16):
    """(count, (H, W), factory of an iterator over (b, 1, H, W) grey float batches).

    ``images``: an array ((N, H, W, 3) uint8 or (N, C, H, W)) or a list of image
    shard paths, streamed (never all in memory); ``max_images`` per shard.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        gray = _gray_tensor(images)

        def it():
            for s in range(0, len(gray), batch):
                yield gray[s: s + batch]

        return len(gray), tuple(gray.shape[-2:]), it
    paths = [str(p) for p in images]
    counts = [_shard_image_count(p, max_images) for p in paths]
    first = next((smp.image for p, c in zip(paths, counts) if c for smp in read_shard(p)), None)
    if first is None:
        raise ValueError(f"no images in {paths}")
    size = first.shape[:2]

    def it():
        buf = []
        for p, c in zip(paths, counts):
            for i, smp in enumerate(read_shard(p)):
                if i >= c:
                    break
                if smp.image.shape[:2] != size:
                    raise ValueError(f"{p}: image {smp.key} is {smp.image.shape[:2]}, expected {size} like the rest")
                buf.append(smp.image)
                if len(buf) == batch:
                    yield _gray_tensor(np.stack(buf))
                    buf = []
        if buf:
            yield _gray_tensor(np.stack(buf))

    return sum(counts), size, it


def sample_pairs(images, feature: torch.nn.Module, n_windows: int, ny: int = WINDOW, nx: int = WINDOW,
                 seed: int = 0, batch: int = 16, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n_windows`` (grey patch, HOG window) pairs uniformly, normalised.

    ``images``: an image array or a list of shard paths (streamed).  Returns
    float32 arrays (n, P) and (n, D*ny*nx), rows zero-mean and unit-norm.
    """
    N, (H, W), batches = _image_source(images, max_images, batch)
    cell = cell_size(feature)
    _, h, w = feature.output_shape(H, W)
    L = (h - ny + 1) * (w - nx + 1)
    if L < 1:
        raise ValueError(f"window of {ny}x{nx} cells does not fit a {h}x{w} cell grid ({H}x{W} images)")
    total = N * L
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(total, size=min(n_windows, total), replace=False))
    gs, hs = [], []
    s = 0
    with torch.no_grad():
        for g in batches():
            b = len(g)
            sel = take[(take >= s * L) & (take < (s + b) * L)] - s * L
            s += b
            if not len(sel):
                continue
            phi = feature(g).float()
            if phi.shape[-2:] != (h, w):
                raise ValueError(f"{feature}: output {tuple(phi.shape)} but output_shape says {(h, w)}")
            hw = hog_windows(phi, ny, nx).reshape(-1, phi.shape[1] * ny * nx)
            gp = gray_patches(g, cell, h, w, ny, nx).reshape(-1, (ny + 2) * (nx + 2) * cell * cell)
            idx = torch.from_numpy(sel)
            gs.append(normalize_rows(gp[idx].double().numpy()).astype(np.float32))
            hs.append(normalize_rows(hw[idx].double().numpy()).astype(np.float32))
    return np.concatenate(gs), np.concatenate(hs)


def train_paired_dictionary(images, feature: torch.nn.Module, *, atoms: int = ATOMS, ny: int = WINDOW,
                            nx: int = WINDOW, lam: float = LAMBDA, n_windows: int = 100_000,
                            epochs: int = 10, batch_size: int = BATCH, seed: int = 0,
                            feature_name: str | None = None, feature_params: dict | None = None,
                            max_images: int | None = None, verbose: bool = False) -> PairedDictionary:
    """Learn a paired dictionary on windows of ``images``.

    ``images``: (N, H, W, 3) uint8 or (N, C, H, W) array, or a list of image
    shard paths (streamed; ``max_images`` per shard).
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    for name, v in (("atoms", atoms), ("ny", ny), ("nx", nx), ("n_windows", n_windows), ("epochs", epochs),
                    ("batch_size", batch_size)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not lam > 0:
        raise ValueError(f"lam must be positive, got {lam}")
    t0 = time.perf_counter()
    g, h = sample_pairs(images, feature, n_windows, ny, nx, seed, max_images=max_images)
    data = np.concatenate([g, h], axis=1)
    del g
    n = len(data)
    rng = np.random.default_rng(seed + 1)
    init = data[rng.choice(n, size=atoms, replace=atoms > n)]
    init = init / np.maximum(np.linalg.norm(init, axis=1, keepdims=True), 1e-12)
    dl = MiniBatchDictionaryLearning(
        n_components=atoms, alpha=lam, max_iter=epochs, fit_algorithm="cd", batch_size=min(batch_size, n),
        dict_init=init, positive_code=True, transform_algorithm="lasso_cd", transform_alpha=lam,
        random_state=seed, verbose=verbose,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        dl.fit(data)
    D = dl.components_
    P = (ny + 2) * (nx + 2) * cell_size(feature) ** 2
    meta = {"n_windows": n, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "seconds": round(time.perf_counter() - t0, 2), "steps": int(getattr(dl, "n_steps_", 0)),
            "unconverged_codes": sum(issubclass(w.category, ConvergenceWarning) for w in caught)}
    return PairedDictionary(
        gray=D[:, :P].astype(np.float32), hog=D[:, P:].astype(np.float32), ny=ny, nx=nx,
        cell=cell_size(feature), lam=float(lam),
        feature=feature_name or str(getattr(feature, "name", "hog")),
        feature_params=dict(feature_params if feature_params is not None else getattr(feature, "params", {}) or {}),
        meta=meta,
    )


# --------------------------------------------------------------------------
# Sparse coding
# --------------------------------------------------------------------------


def lasso_objective(y: np.ndarray, D: np.ndarray, a: np.ndarray, lam: float) -> np.ndarray:
    """Per row: ``1/2 |y - a D|^2 + lam |a|_1``."""
    r = y - a @ D
    return 0.5 * (r * r).sum(1) + lam * np.abs(a).sum(1)


def sparse_code(y: np.ndarray, D: np.ndarray, lam: float, *, solver: str = "sklearn",
                device: str | torch.device = "cpu", tol: float = 1e-4, max_iter: int | None = None) -> np.ndarray:
    """Non-negative LASSO codes ``argmin_{a >= 0} 1/2 |y - a D|^2 + lam |a|_1`` per row of ``y``.

    ``D``: (K, M) atoms as rows; ``y``: (n, M).  ``sklearn``: coordinate
    descent (``sparse_encode``, ``lasso_cd``, ``positive=True``; its alpha is
    this ``lam``).  ``fista``: batched FISTA with the projection on a >= 0,
    step ``1 / |D D^T|_2`` and adaptive restart, until the largest violation
    of the optimality (KKT) conditions -- gradient 0 where a > 0, >= 0 where
    a = 0 -- is below ``tol`` (rows of ``y`` have unit norm), or ``max_iter``.
    """
    if solver == "sklearn":
        from sklearn.decomposition import sparse_encode

        with warnings.catch_warnings():
            # coordinate descent may stop at max_iter with a duality gap above sklearn's
            # strict tolerance (1e-4 |y|^2 on the 1/n_features-scaled objective): silenced
            warnings.simplefilter("ignore", ConvergenceWarning)
            return sparse_encode(y.astype(np.float64), D.astype(np.float64), algorithm="lasso_cd", alpha=lam,
                                 positive=True, max_iter=max_iter or 1000)
    if solver != "fista":
        raise ValueError(f"solver must be 'sklearn' or 'fista', got {solver!r}")
    dev = torch.device(device)
    dt = torch.float64 if dev.type == "cpu" else torch.float32
    Dt = torch.as_tensor(D, dtype=dt, device=dev)
    Y = torch.as_tensor(y, dtype=dt, device=dev)
    G = Dt @ Dt.T
    L = float(torch.linalg.eigvalsh(G)[-1].clamp_min(1e-12))
    C = Y @ Dt.T - lam  # (n, K): the gradient of the objective is a G - C
    a = torch.zeros_like(C)
    z, t = a.clone(), 1.0
    for it in range(max_iter or 20000):
        a_new = (z - (z @ G - C) / L).clamp_min(0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        step = a_new - a
        z = a_new + ((t - 1) / t_new) * step
        a, t = a_new, t_new
        if it % 10 == 9:
            g = a @ G - C
            # KKT: gradient 0 where a > 0, >= 0 where a = 0
            if float(torch.where(a > 0, g.abs(), (-g).clamp_min(0)).max()) <= tol:
                break
            # adaptive restart (O'Donoghue & Candes 2015): momentum against the gradient
            if float((g * step).sum()) > 0:
                z, t = a.clone(), 1.0
    return a.to("cpu", torch.float64).numpy()


# --------------------------------------------------------------------------
# Inversion
# --------------------------------------------------------------------------


def gaussian_window(height: int, width: int, sigma: float = BLEND_SIGMA) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', [height width], sigma)``: centred, summing to 1."""
    y = np.arange(height) - (height - 1) / 2
    x = np.arange(width) - (width - 1) / 2
    g = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(float).eps * g.max()] = 0
    return g / g.sum()


def invert_hoggles(pd: PairedDictionary, features, image_size: tuple[int, int], *, pad: int = PAD_CELLS,
                   blend_sigma: float = BLEND_SIGMA, solver: str = "sklearn",
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Grey reconstructions (N, 1, H, W) in [0, 255] from HOG maps (N, D, h, w)."""
    phi = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).double().cpu()
    if phi.dim() != 4:
        raise ValueError(f"features must be (N, D, h, w), got shape {tuple(phi.shape)}")
    N, D, h, w = phi.shape
    if D * pd.ny * pd.nx != pd.hog.shape[1]:
        raise ValueError(f"features have {D} dimensions per cell; the dictionary's HOG windows have "
                         f"{pd.hog.shape[1]} = {pd.ny}x{pd.nx}x{pd.hog.shape[1] // (pd.ny * pd.nx)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    H, W = image_size
    c = pd.cell
    phi = F.pad(phi, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    if hp < pd.ny or wp < pd.nx:
        raise ValueError(f"a {h}x{w} HOG map is smaller than the {pd.ny}x{pd.nx} window (pad more)")
    win = hog_windows(phi, pd.ny, pd.nx)  # (N, L, Dw)
    L = win.shape[1]
    y = normalize_rows(win.reshape(N * L, -1).numpy())
    a = sparse_code(y, pd.hog, pd.lam, solver=solver, device=device)
    ph, pw = pd.patch_shape
    patches = (a @ pd.gray.astype(np.float64)) * gaussian_window(ph, pw, blend_sigma).reshape(1, -1)
    patches = torch.from_numpy(patches.reshape(N, L, ph * pw)).transpose(1, 2)
    size = ((hp + 2) * c, (wp + 2) * c)
    canvas = F.fold(patches, size, (ph, pw), stride=c)
    weights = F.fold(torch.ones_like(patches), size, (ph, pw), stride=c)
    im = canvas / weights.clamp_min(1)
    lo = im.flatten(1).min(1).values.view(N, 1, 1, 1)
    hi = im.flatten(1).max(1).values.view(N, 1, 1, 1)
    im = (im - lo) / (hi - lo).clamp_min(1e-12)
    o = (pad + 1) * c
    if o + H > size[0] or o + W > size[1]:
        raise ValueError(f"image size {image_size} is larger than the {h}x{w} cell grid covers")
    return (255.0 * im[:, :, o:o + H, o:o + W]).float().numpy()


def invert_images(pd: PairedDictionary, images, *, feature: torch.nn.Module | None = None, **kw) -> np.ndarray:
    """Compute the dictionary's representation of ``images`` and invert it; (N, 1, H, W)."""
    if feature is None:
        feature = get_feature(pd.feature, **pd.feature_params)
    gray = _gray_tensor(images)
    with torch.no_grad():
        phi = feature.eval()(gray)
    return invert_hoggles(pd, phi, tuple(gray.shape[-2:]), **kw)
