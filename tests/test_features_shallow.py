"""Shallow features (HOG, HOGb, LBP, dense and sparse SIFT) against VLFeat.

VLFeat 0.9.21 is called live through ``pipeline.vlfeat`` (ctypes); tests that
need it are skipped, with the loader's reason, only if libvl cannot be loaded.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch

from pipeline import vlfeat
from pipeline.features import get_feature, to_gray
from pipeline.features.hog import hog_histograms, hog_permutation

needs_vlfeat = pytest.mark.skipif(
    not vlfeat.available(), reason=f"VLFeat unavailable: {vlfeat.unavailable_reason()}")

TOL = 1e-4  # absolute, on images in [0, 255]


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a (1, C, H, W) float tensor in [0, 255]."""
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = a[None]
    else:
        a = a[..., :3].transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a)).float()[None]


def crop(x: torch.Tensor, h: int, w: int, y0: int = 0, x0: int = 0) -> torch.Tensor:
    return x[..., y0:y0 + h, x0:x0 + w].contiguous()


def gray_np(x: torch.Tensor) -> np.ndarray:
    """The grey image our modules see (to_gray), as VLFeat's input."""
    return to_gray(x)[0, 0].numpy().astype(np.float32)


@pytest.fixture(scope="module")
def photos():
    return {n: photo(n) for n in ("camera", "astronaut", "coffee", "coins")}


def random_images(seed=0):
    g = torch.Generator().manual_seed(seed)
    yield torch.rand(1, 1, 45, 61, generator=g) * 255  # continuous values
    yield torch.randint(0, 256, (1, 3, 40, 36), generator=g).float()  # integer RGB: many ties


# (height, width): multiples of the cell and not
SIZES = [(64, 64), (67, 93), (131, 77), (20, 13)]


# ----------------------------------------------------------------------------
# HOG / HOGb


@needs_vlfeat
@pytest.mark.parametrize("name", ["hog", "hogb"])
def test_hog_equals_vlfeat_on_photos(name, photos):
    f = get_feature(name)
    for pname, img in photos.items():
        for i, (h, w) in enumerate(SIZES):
            x = crop(img, h, w, 10 * i, 7 * i)
            ref = vlfeat.hog(gray_np(x), bilinear=(name == "hogb"))
            out = f(x)
            assert out.shape == (1,) + ref.shape == (1,) + f.output_shape(h, w)
            err = np.abs(out[0].numpy() - ref).max()
            assert err < TOL, f"{name} {pname} {h}x{w}: max abs error {err}"
    # a whole 256x256 photograph and the odd size 227x227
    for h, w in [(256, 256), (227, 227)]:
        x = crop(photos["astronaut"], h, w, 100, 150)
        ref = vlfeat.hog(gray_np(x), bilinear=(name == "hogb"))
        assert np.abs(f(x)[0].numpy() - ref).max() < TOL


@needs_vlfeat
@pytest.mark.parametrize("name", ["hog", "hogb"])
def test_hog_equals_vlfeat_on_random_and_special_images(name):
    f = get_feature(name)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    special = [
        (yy * 5.0 % 255)[None, None],  # gx = 0 everywhere: the 90/270 degree tie
        (xx * 3.0)[None, None],  # gy = 0: gradients on bin centres
        ((xx + yy) * 2.0)[None, None],  # 45 degrees
        ((7 * xx - 3 * yy) % 256.0)[None, None],
    ]
    for x in list(random_images()) + special:
        ref = vlfeat.hog(gray_np(x), bilinear=(name == "hogb"))
        err = np.abs(f(x)[0].numpy() - ref).max()
        assert err < TOL, f"{name} {tuple(x.shape)}: {err}"


@needs_vlfeat
@pytest.mark.parametrize("num_orientations,cell_size", [(4, 4), (6, 8), (12, 6)])
def test_hog_other_orientations_and_cells(num_orientations, cell_size, photos):
    """Other O and cell sizes, on images with many exactly tied gradients
    (integer values 0, 3, 6, 9: 45-degree ties for O = 6)."""
    ties = torch.randint(0, 4, (1, 1, 40, 45), generator=torch.Generator().manual_seed(1)).float() * 3
    for name in ("hog", "hogb"):
        f = get_feature(name, cell_size=cell_size, num_orientations=num_orientations)
        for x in (crop(photos["camera"], 80, 91, 100, 50), ties):
            ref = vlfeat.hog(gray_np(x), cell_size, num_orientations, bilinear=(name == "hogb"))
            assert f(x).shape[1:] == ref.shape == f.output_shape(*x.shape[-2:])
            assert np.abs(f(x)[0].numpy() - ref).max() < TOL, (name, tuple(x.shape))


@needs_vlfeat
def test_hog_batched_equals_single_and_both_scatter_paths(photos):
    """A batch gives each image's own HOG; the complex-lane scatter (CPU)
    and the four real scatters (other devices) give the same histograms."""
    f = get_feature("hog")
    xs = torch.cat([crop(p, 50, 70).expand(1, 3, 50, 70) for p in photos.values()], 0)
    out = f(xs)
    for i in range(xs.shape[0]):
        ref = vlfeat.hog(gray_np(xs[i:i + 1]))
        assert np.abs(out[i].numpy() - ref).max() < TOL
    g = to_gray(xs)[:, 0]
    for bilinear in (False, True):
        a = hog_histograms(g, bilinear=bilinear, use_complex=True)
        b = hog_histograms(g, bilinear=bilinear, use_complex=False)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-3)


def test_hog_chunking_is_invisible(monkeypatch):
    import pipeline.features.hog as hogmod
    x = next(random_images(3)).repeat(5, 1, 1, 1) * torch.linspace(0.2, 1, 5).view(5, 1, 1, 1)
    f = get_feature("hog")
    full = f(x)
    monkeypatch.setattr(hogmod, "CPU_CHUNK_PIXELS", 2 * 45 * 61)  # 2 images per chunk
    torch.testing.assert_close(f(x), full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["hog", "hogb"])
def test_hog_of_flat_image_is_zero(name):
    out = get_feature(name)(torch.full((2, 3, 33, 40), 117.0))
    assert out.shape == (2, 31, 4, 5)
    assert torch.count_nonzero(out) == 0


def test_hog_flip_permutation():
    """HOG of the mirrored image = permuted, mirrored HOG (width multiple of 8)."""
    perm = hog_permutation()
    if vlfeat.available():
        assert perm == vlfeat.hog_permutation().tolist()
    f = get_feature("hog")
    x = next(random_images(1))[..., :40, :56]
    a = f(x.flip(-1))
    b = f(x)[:, perm].flip(-1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert a.abs().sum() > 1  # not trivially zero


def test_hog_grid_and_params():
    f = get_feature("hog")
    assert f.name == "hog" and get_feature("hogb").name == "hogb"
    assert f.params["cell_size"] == 8 and f.params["num_orientations"] == 9
    for H, W, h, w in [(256, 256, 32, 32), (227, 227, 28, 28), (20, 13, 3, 2)]:
        assert f.output_shape(H, W) == (31, h, w)
    with pytest.raises(ValueError, match="cell_size"):
        get_feature("hog", cell_size=0)
    with pytest.raises(ValueError, match="too small"):
        f(torch.zeros(1, 1, 3, 20))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        f(torch.zeros(1, 20, 20))


# Jacobian entries are small (1e-3 .. 1e-7): tolerances must be tight for the
# check to bite (with atol 1e-8 a 1% error in one partial derivative fails).
GRADCHECK = dict(eps=1e-6, atol=1e-8, rtol=1e-4)


@pytest.mark.parametrize("name", ["hog", "hogb"])
def test_hog_gradcheck(name, one_thread):
    """Random double images: no finite-difference step (1e-6) crosses an
    orientation boundary or a 0.2 clamp, so the piecewise-smooth HOG passes."""
    f = get_feature(name)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 1, 12, 11, generator=g, dtype=torch.float64) * 255).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), **GRADCHECK)
    x = (torch.rand(2, 3, 19, 18, generator=g, dtype=torch.float64) * 255).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), fast_mode=True, **GRADCHECK)


@pytest.mark.parametrize("name", ["hog", "hogb"])
def test_hog_gradients_finite_on_flat_and_aligned_images(name):
    f = get_feature(name)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    for img in (torch.full((24, 24), 80.0), xx * 4, yy * 4, (xx + yy) * 2):
        for dtype in (torch.float32, torch.float64):
            x = img.to(dtype)[None, None].clone().requires_grad_()
            (f(x) * torch.rand(f.output_shape(24, 24), dtype=dtype)).sum().backward()
            assert torch.isfinite(x.grad).all()


def test_hogb_grad_path_has_same_values():
    """With requires_grad, HOGb's straight-through weight keeps VLFeat's value."""
    f = get_feature("hogb")
    x = next(random_images(2))
    a = f(x)
    b = f(x.clone().requires_grad_())
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# LBP


@needs_vlfeat
def test_lbp_equals_vlfeat(photos):
    f = get_feature("lbp")
    cases = [crop(img, h, w, 5 * i, 3 * i) for img in photos.values()
             for i, (h, w) in enumerate([(64, 64), (67, 93), (131, 77), (33, 40)])]
    cases += [crop(photos["camera"], 256, 256), crop(photos["astronaut"], 227, 227, 50, 60)]
    cases += list(random_images(4))
    for x in cases:
        ref = vlfeat.lbp(gray_np(x))
        out = f(x)
        assert out.shape == (1,) + ref.shape == (1,) + f.output_shape(*x.shape[-2:])
        err = np.abs(out[0].numpy() - ref).max()
        assert err < TOL, f"lbp {tuple(x.shape)}: {err}"


@needs_vlfeat
def test_lbp_batch_and_scatter_paths(photos):
    from pipeline.features.lbp import lbp_histograms
    xs = torch.cat([crop(p, 48, 80).expand(1, 3, 48, 80) for p in photos.values()], 0)
    out = get_feature("lbp")(xs)
    for i in range(xs.shape[0]):
        assert np.abs(out[i].numpy() - vlfeat.lbp(gray_np(xs[i:i + 1]))).max() < TOL
    g = to_gray(xs)[:, 0]
    assert torch.equal(lbp_histograms(g, 16, use_complex=True), lbp_histograms(g, 16, use_complex=False))


def test_lbp_codes_match_the_definition():
    """The ternary-sign shortcut gives the bin of the 8 strict comparisons,
    ties included (values in 0..3: many equal neighbours)."""
    from pipeline.features.lbp import NEIGHBOURS, lbp_codes, uniform_mapping
    g = torch.randint(0, 4, (2, 23, 31), generator=torch.Generator().manual_seed(0)).float()
    H, W = g.shape[1:]
    c = g[:, 1:-1, 1:-1]
    code = sum((g[:, 1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx] > c).long() << k
               for k, (dy, dx) in enumerate(NEIGHBOURS))
    assert torch.equal(lbp_codes(g), torch.tensor(uniform_mapping())[code])
    m = uniform_mapping()
    assert m[0] == m[255] == 56 and m[0b00000001] == 0 and m[0b00001110] == 9
    assert m[0b10000001] == 7 * 7 + 2 - 1 and m[0b00000101] == 57 and len(set(m)) == 58


def test_lbp_cells_have_unit_norm(photos):
    f = get_feature("lbp")
    for x in [crop(p, 100, 90) for p in photos.values()] + list(random_images(5)):
        norms = f(x).pow(2).sum(1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


def test_lbp_flat_image_and_known_patterns():
    f = get_feature("lbp")
    out = f(torch.full((1, 1, 40, 50), 9.0))
    assert out.shape == (1, 58, 2, 3)
    assert torch.all(out[:, 56] == 1) and out.sum() == 6  # all codes 0 -> bin 56
    # a vertical ramp increasing downwards: SE, S, SW greater -> run of 3 ones
    # starting at bit 1 -> bin 7*1 + 3 - 1 = 9
    yy = torch.arange(40.0).view(1, 1, 40, 1).expand(1, 1, 40, 50)
    torch.testing.assert_close(f(yy)[0, :, 0, 0], torch.eye(58)[9])


def test_lbp_params_and_no_grad():
    f = get_feature("lbp")
    assert f.name == "lbp" and f.params["cell_size"] == 16
    assert f.output_shape(256, 256) == (58, 16, 16) and f.output_shape(227, 227) == (58, 14, 14)
    x = torch.rand(1, 1, 32, 32, requires_grad=True) * 255
    assert not f(x).requires_grad
    with pytest.raises(ValueError, match="cell_size"):
        get_feature("lbp", cell_size=64)
    with pytest.raises(ValueError, match="smaller than cell_size"):
        f(torch.zeros(1, 1, 15, 40))


# ----------------------------------------------------------------------------
# dense SIFT


@needs_vlfeat
@pytest.mark.parametrize("step,bin_size", [(8, 8), (4, 4), (3, 5), (1, 3)])
def test_dsift_equals_vlfeat(step, bin_size, photos):
    """Tolerance 1e-4 (measured ~3e-6): see DSIFT's docstring."""
    f = get_feature("dsift", step=step, bin_size=bin_size)
    cases = [crop(p, h, w, 9, 4) for p in photos.values() for h, w in [(64, 64), (67, 53)]]
    cases += list(random_images(6))
    for x in cases:
        frames, ref = vlfeat.dsift(gray_np(x), step=step, bin_size=bin_size)
        out = f(x)
        _, ny, nx = f.output_shape(*x.shape[-2:])
        assert out.shape == (1, 128, ny, nx) and ny * nx == len(frames)
        # documented frame geometry: centres at 1.5 bin_size + step * index
        centres = 1.5 * bin_size + step * np.stack(
            np.meshgrid(np.arange(nx), np.arange(ny)), -1).reshape(-1, 2)
        np.testing.assert_allclose(frames, centres)
        err = np.abs(out[0].permute(1, 2, 0).reshape(-1, 128).numpy() - ref).max()
        assert err < TOL, f"dsift step {step} bin {bin_size} {tuple(x.shape)}: {err}"


def test_dsift_descriptors_are_normalised(photos):
    out = get_feature("dsift")(crop(photos["coffee"], 120, 100))
    n = out.norm(dim=1)
    torch.testing.assert_close(n, torch.ones_like(n), rtol=0, atol=1e-4)
    assert out.max() <= 0.5 and out.min() >= 0


def test_dsift_gradcheck_and_flat_images(one_thread):
    g = torch.Generator().manual_seed(0)
    f = get_feature("dsift", step=2, bin_size=2)  # one frame: 128 outputs
    x = (torch.rand(1, 1, 7, 7, generator=g, dtype=torch.float64) * 255).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), **GRADCHECK)
    f = get_feature("dsift", step=3, bin_size=3)
    x = (torch.rand(2, 3, 16, 15, generator=g, dtype=torch.float64) * 255).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), fast_mode=True, **GRADCHECK)
    y = torch.full((1, 1, 20, 20), 5.0, requires_grad=True)
    out = get_feature("dsift", step=4, bin_size=4)(y)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.isfinite(y.grad).all()


def test_dsift_params_and_errors():
    f = get_feature("dsift")
    assert f.params["step"] == 8 and f.params["bin_size"] == 8
    assert f.output_shape(256, 256) == (128, 29, 29)
    with pytest.raises(ValueError, match="step"):
        get_feature("dsift", step=0)
    with pytest.raises(ValueError, match="smaller than a descriptor"):
        f(torch.zeros(1, 1, 24, 40))


# ----------------------------------------------------------------------------
# sparse SIFT on the grid

from pipeline.features.sift import SIFT_CHANNELS, arrange_on_grid  # noqa: E402


def decode_grid(grid: np.ndarray, cell: int = 4):
    """Occupied cells of a (133, h, w) grid -> frames (x, y, sigma, angle), descriptors."""
    cy, cx = np.nonzero(np.abs(grid).sum(0))
    v = grid[:, cy, cx]
    frames = np.stack([cx * cell + v[128], cy * cell + v[129], np.exp(v[132]),
                       np.arctan2(v[130], v[131])], 1)
    return frames, v[:128].T


@needs_vlfeat
def test_sift_vlfeat_backend_keeps_vlfeat_frames(photos):
    """>= 95% of vl_sift's own frames (called directly) are on the grid,
    within 0.5 px and 5% scale."""
    f = get_feature("sift")
    assert f.params["backend"] == "vlfeat" and f.params["first_octave"] == 0
    x = torch.cat([crop(p, 256, 256).expand(1, 3, 256, 256) for p in photos.values()], 0)
    out = f(x).numpy()
    assert out.shape == (4, SIFT_CHANNELS, 64, 64)
    for i in range(4):
        frames, descr = vlfeat.sift(gray_np(x[i:i + 1]))
        assert 100 < len(frames) < 400
        got, got_descr = decode_grid(out[i])
        hit = 0
        for fx, fy, fs, fa in frames:
            d = np.hypot(got[:, 0] - fx, got[:, 1] - fy)
            hit += np.any((d < 0.5) & (np.abs(got[:, 2] / fs - 1) < 0.05))
        assert hit / len(frames) >= 0.95, (i, hit, len(frames))
        # every grid entry is one of VLFeat's frames, with its descriptor
        for (gx, gy, gs, ga), gd in zip(got, got_descr):
            j = np.argmin(np.hypot(frames[:, 0] - gx, frames[:, 1] - gy)
                          + np.abs(frames[:, 2] - gs) + np.abs(np.angle(np.exp(1j * (frames[:, 3] - ga)))))
            np.testing.assert_allclose([gx, gy, gs], frames[j, :3], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(gd, descr[j], atol=1e-6)


def test_sift_grid_layout():
    """Cell, offsets, sin/cos, log scale and the seeded choice among frames in one cell."""
    frames = np.array([
        [5.5, 9.25, 2.0, 0.3],  # cell (2, 1), offsets (1.5, 1.25)
        [17.0, 2.0, 3.5, -1.0],  # cell (0, 4)
        [18.9, 3.9, 1.2, 2.0],  # also cell (0, 4): the seeded choice
        [21.99, 13.0, 1.7, 3.0],  # cell (3, 5), last column of a 23-pixel-wide image
    ])
    descr = np.arange(4 * 128, dtype=np.float32).reshape(4, 128) / 512
    grid = arrange_on_grid(frames, descr, H=14, W=23, cell=4, rng=np.random.default_rng(0))
    assert grid.shape == (SIFT_CHANNELS, 4, 6)  # ceil(14/4), ceil(23/4)
    occupied = {tuple(c) for c in np.argwhere(np.abs(grid).sum(0) > 0)}
    assert occupied == {(2, 1), (0, 4), (3, 5)}
    np.testing.assert_allclose(grid[:, 2, 1], np.r_[descr[0], 1.5, 1.25, math.sin(0.3), math.cos(0.3),
                                                     math.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(grid[128:, 3, 5], [1.99, 1.0, math.sin(3.0), math.cos(3.0), math.log(1.7)],
                               rtol=1e-5)
    # the shared cell holds exactly one of the two frames, chosen by the seed
    chosen = []
    for seed in range(40):
        g = arrange_on_grid(frames, descr, 14, 23, 4, np.random.default_rng(seed))
        k = 1 if np.allclose(g[:128, 0, 4], descr[1]) else 2
        np.testing.assert_allclose(g[128:130, 0, 4], np.mod(frames[k, :2], 4), rtol=1e-6)
        np.testing.assert_array_equal(
            g, arrange_on_grid(frames, descr, 14, 23, 4, np.random.default_rng(seed)))
        chosen.append(k)
    assert set(chosen) == {1, 2}  # both get chosen across seeds
    assert 10 < chosen.count(1) < 30
    assert not arrange_on_grid(frames[:0], descr[:0], 14, 23).any()


def test_sift_module_shapes_and_batch_independence(photos):
    backend = "vlfeat" if vlfeat.available() else "opencv"
    f = get_feature("sift", backend=backend)
    x = crop(photos["astronaut"], 70, 61, 180, 200)
    assert f.output_shape(70, 61) == (133, 18, 16)
    a = f(x)
    b = f(torch.cat([crop(photos["coffee"], 70, 61), x], 0))
    assert a.shape == (1, 133, 18, 16) and a.dtype == torch.float32
    assert torch.equal(a[0], b[1]) and a.abs().sum() > 0
    with pytest.raises(ValueError, match="backend"):
        get_feature("sift", backend="sift++")


@needs_vlfeat
def test_sift_opencv_fallback_backend(photos):
    """The fallback finds keypoints with VLFeat's angle convention."""
    x = crop(photos["camera"], 256, 256)
    f = get_feature("sift", backend="opencv")
    assert f.params["backend"] == "opencv"
    got, descr = decode_grid(f(x)[0].numpy())
    assert len(got) > 50 and np.all(descr >= 0) and np.all(descr <= 0.5)
    frames, _ = vlfeat.sift(gray_np(x))
    da = []
    for fx, fy, fs, fa in frames:
        d = np.hypot(got[:, 0] - fx, got[:, 1] - fy)
        j = np.argmin(d)
        if d[j] < 1 and abs(got[j, 2] / fs - 1) < 0.2:
            da.append(abs(np.angle(np.exp(1j * (got[j, 3] - fa)))))
    assert len(da) >= 10 and np.median(da) < 0.2


@pytest.mark.parametrize("cell", [5, 16, 17, 18])
def test_lbp_default_packed_path_equals_complex_path(cell):
    """The default (packed 16-bit fields) histogram path equals the complex one,
    including on a flat image, where every span holds one bin (largest field sums)."""
    from pipeline.features.lbp import lbp_histograms

    rng = np.random.default_rng(cell)
    flat = torch.full((1, 256, 256), 77.0)
    ints = torch.from_numpy(rng.integers(0, 4, (2, 90, 120)).astype(np.float32))
    for g in (flat, ints):
        a = lbp_histograms(g, cell).double()
        b = lbp_histograms(g, cell, use_complex=True).double()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_sift_warns_once_when_it_falls_back_to_opencv(monkeypatch):
    import warnings

    from pipeline.features import sift as sift_module

    monkeypatch.setattr(sift_module.vlfeat, "available", lambda: False)
    monkeypatch.setattr(sift_module.vlfeat, "unavailable_reason", lambda: "libvl.so not found")
    monkeypatch.setattr(sift_module, "_warned_opencv_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = get_feature("sift")
        second = get_feature("sift")
    fallback = [w for w in caught if "OpenCV" in str(w.message)]
    assert first.params["backend"] == second.params["backend"] == "opencv"
    assert len(fallback) == 1 and issubclass(fallback[0].category, RuntimeWarning)
    assert "libvl.so not found" in str(fallback[0].message)
    with warnings.catch_warnings(record=True) as caught:  # an explicit backend is a choice: no warning
        warnings.simplefilter("always")
        monkeypatch.setattr(sift_module, "_warned_opencv_fallback", False)
        get_feature("sift", backend="opencv")
    assert not caught
