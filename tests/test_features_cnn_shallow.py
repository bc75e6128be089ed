"""CNN-HOG, CNN-HOGb, CNN-DSIFT and the 27-D HOG (pipeline.features.cnn_shallow) against
Mahendran & Vedaldi's definitions: deep-goggle's hog_net.m and dsift_net.m, transcribed
here line by line in numpy (MATLAB's 1-based loops, vl_nnconv as a correlation with zero
padding), and worked examples whose values follow by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.features import get_feature, traits

pytestmark = pytest.mark.usefixtures("one_thread_module")


# ----------------------------------------------------------------------------- the authors' networks in numpy


def single(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def vl_nnconv(x, f, stride=1, pad=0):
    """x (H, W, C), f (fh, fw, C, K) -> (H', W', K): MatConvNet's correlation, zero padding."""
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    fh, fw = f.shape[:2]
    Ho = (xp.shape[0] - fh) // stride + 1
    Wo = (xp.shape[1] - fw) // stride + 1
    out = np.zeros((Ho, Wo, f.shape[3]))
    for i in range(fh):
        for j in range(fw):
            patch = xp[i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            out += patch @ f[i, j]
    return out


def spatial_der(NO):
    dx = np.array([[0, 0, 0], [-1, 0, 1], [0, 0, 0]]) / 2
    dy = dx.T
    sd = [math.cos((2 * math.pi) / (2 * NO) * i) * dx + math.sin((2 * math.pi) / (2 * NO) * i) * dy
          for i in range(2 * NO)]
    return single(np.stack(sd, -1)[:, :, None, :])


def bilinear_filter(binSize, NO):
    a = 1 - np.abs((np.arange(1, 2 * binSize + 1) - (2 * binSize + 1) / 2) / binSize)
    return single(np.repeat((np.outer(a, a))[:, :, None, None], 2 * NO, axis=3))


def binning_forward(x, NO, bilinear):
    n = np.sqrt((x ** 2).sum(2, keepdims=True) / NO)
    if bilinear:
        cs = np.clip(x / np.maximum(n, 1e-10), -1, 1)
        w = np.maximum(0, 1 - (2 * NO) / (2 * math.pi) * np.arccos(cs))
    else:
        w = np.zeros_like(x)
        best = x.argmax(2)
        np.put_along_axis(w, best[:, :, None], 1, axis=2)
    return n * w


def depthwise(x, f, stride, pad):
    """repmat'ed filter over 2NO channels: each channel with its own copy (vl_nnconv groups)."""
    return np.stack([vl_nnconv(x[:, :, k:k + 1], f[:, :, :, k:k + 1], stride, pad)[:, :, 0]
                     for k in range(x.shape[2])], -1)


def hog_net(im, binSize=8, bilinear=False, NO=9):
    x = im - 128.0
    mask = []
    for j in range(1, 3):
        for i in range(1, 3):
            for o in range(1, 2 * NO + 1):
                m = np.zeros((2, 2, 2 * NO))
                m[i - 1, j - 1, o - 1] = 1
                mask.append(m)
            for o in range(2 * NO + 1, 3 * NO + 1):
                m = np.zeros((2, 2, 2 * NO))
                m[i - 1, j - 1, o - 2 * NO - 1] = 1
                m[i - 1, j - 1, o - NO - 1] = 1
                mask.append(m)
    mask = np.stack(mask, -1)
    dec = []
    for o in range(1, 3 * NO + 1):
        d = np.zeros((2, 2, 3 * NO * 4))
        for i in range(1, 3):
            for j in range(1, 3):
                u, v = 3 - i, 3 - j
                d[i - 1, j - 1, (u - 1 + (v - 1) * 2) * 3 * NO + o - 1] = 0.5
        dec.append(d)
    dec = np.stack(dec, -1)
    y = vl_nnconv(x[:, :, None], spatial_der(NO), 1, 1)
    y = binning_forward(y, NO, bilinear)
    y = depthwise(y, bilinear_filter(binSize, NO), binSize, binSize // 2)
    y = vl_nnconv(y, mask)
    sel = np.concatenate([2 * NO + np.arange(1, NO + 1) + 3 * NO * (i - 1) for i in range(1, 5)]) - 1
    n = np.maximum(np.sqrt((y[:, :, sel] ** 2).sum(2, keepdims=True)), 1e-6)
    y = np.minimum(y / n, 0.2)
    return vl_nnconv(y, dec, 1, 1)


def dsift_net(im, binSize=5, NO=4, sigma=1.5):
    x = im - 128.0
    mask = []
    for i in range(1, 5):
        for j in range(1, 5):
            for o in range(1, 2 * NO + 1):
                m = np.zeros((4, 4, 2 * NO))
                m[i - 1, j - 1, o - 1] = math.exp(-0.5 * ((i - 2.5) ** 2 + (j - 2.5) ** 2) / sigma ** 2)
                mask.append(m)
    mask = single(np.stack(mask, -1))
    y = vl_nnconv(x[:, :, None], spatial_der(NO))
    y = binning_forward(y, NO, True)
    y = depthwise(y, bilinear_filter(binSize, NO), binSize, 0)
    y = vl_nnconv(y, mask, 3)
    y = y * (1e-6 + (y ** 2).sum(2, keepdims=True)) ** -0.5  # vl_nnnormalize [256, 1e-6, 1, 0.5]
    return np.minimum(y, 0.2)


def ours(name, im, **params):
    x = torch.from_numpy(im)[None, None]
    return get_feature(name, **params)(x)[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(44, 52)), 0), 1)
    smooth = 255 * (smooth - smooth.min()) / np.ptp(smooth)
    return {"noise": rng.uniform(0, 255, (44, 52)), "smooth": smooth}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,bilinear", [("cnn_hog", False), ("cnn_hogb", True)])
def test_cnn_hog_equals_the_authors_hog_net(images, name, bilinear):
    for im in images.values():
        ref = hog_net(im, 8, bilinear)
        got = ours(name, im)
        assert got.shape == ref.shape == (5, 6, 27)
        np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)
    assert get_feature(name).output_shape(44, 52) == (27, 5, 6)


def test_cnn_dsift_equals_the_authors_dsift_net(images):
    for im in images.values():
        ref = dsift_net(im)
        got = ours("cnn_dsift", im)
        assert got.shape == ref.shape == (2, 2, 128)
        np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)
    assert get_feature("cnn_dsift").output_shape(44, 52) == (128, 2, 2)
    assert get_feature("cnn_dsift").output_shape(128, 128) == (128, 7, 7)


def test_worked_example_a_horizontal_ramp():
    """A ramp I = 2x: every gradient is (2, 0), along the first direction.

    CNN-HOG(b), interior cells: one cell's histogram is 2 x (sum of the triangle
    filter) = 2 x 8^2 in directed bin 0 and undirected bin 0 (channel 18), a block's
    norm sqrt(4) times that, so every block gives 1/2, clamped to 0.2, and a cell
    sums 0.5 x 4 x 0.2 = 0.4 there and zero elsewhere.
    CNN-DSIFT: orientation 0 of cell (i, j) holds g_ij = exp(-((i-2.5)^2 + (j-2.5)^2) / 4.5)
    times a constant; normalised: g_ij / ||g||, clamped at 0.2: the corners
    exp(-1) / ||g|| = 0.1457, all other cells 0.2 (0.354 and 0.227 before clamping).
    """
    j = np.arange(48.0)[None, :].repeat(48, 0)
    ramp = 2 * j
    for name in ("cnn_hog", "cnn_hogb"):
        y = ours(name, ramp)[2:4, 2:4]
        expect = np.zeros(27)
        expect[[0, 18]] = 0.4
        np.testing.assert_allclose(y, np.broadcast_to(expect, y.shape), atol=1e-6)
    d = ours("cnn_dsift", ramp).reshape(2, 2, 4, 4, 8)
    g = np.exp(-0.5 * ((np.arange(1, 5)[:, None] - 2.5) ** 2 + (np.arange(1, 5)[None, :] - 2.5) ** 2) / 1.5 ** 2)
    corner = math.exp(-1) / np.linalg.norm(g)
    assert corner == pytest.approx(0.1457, abs=1e-4)
    expect = np.full((4, 4), 0.2)
    expect[[0, 0, 3, 3], [0, 3, 0, 3]] = corner
    np.testing.assert_allclose(d[..., 0], np.broadcast_to(expect, (2, 2, 4, 4)), atol=1e-6)
    np.testing.assert_allclose(d[..., 1:], 0, atol=1e-6)


def test_hog27_is_vlfeat_hog_without_the_texture_components(images):
    x = torch.from_numpy(images["smooth"]).float()[None, None]
    np.testing.assert_array_equal(get_feature("hog27")(x).numpy(), get_feature("hog")(x)[:, :27].numpy())
    assert get_feature("hog27").output_shape(44, 52) == (27, 6, 7)


def test_traits_grey_input_and_decoder_families():
    for name, fam in (("cnn_hog", "hog"), ("cnn_hogb", "hog"), ("cnn_dsift", "sift"), ("hog27", "hog")):
        t = traits(name)
        assert t.grey and t.decoder == fam
        f = get_feature(name)
        assert get_feature(name, **f.params).params == f.params
    colour = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 255
    from pipeline.features import to_gray

    for name in ("cnn_hog", "cnn_dsift"):
        f = get_feature(name)
        torch.testing.assert_close(f(colour), f(to_gray(colour)))
    with pytest.raises(ValueError, match="even"):
        get_feature("cnn_hog", cell_size=5)
    with pytest.raises(ValueError, match="smaller than one descriptor"):
        get_feature("cnn_dsift")(torch.zeros(1, 1, 20, 20))


@pytest.mark.parametrize("name", ["cnn_hog", "cnn_hogb", "cnn_dsift"])
def test_differentiable_gradcheck_and_finite_on_flat_images(name):
    g = torch.Generator().manual_seed(1)
    size = 28 if name == "cnn_dsift" else 16
    x = (torch.rand(1, 1, size, size, generator=g, dtype=torch.float64) * 255).requires_grad_(True)
    f = get_feature(name, **({"cell_size": 4} if name != "cnn_dsift" else {}))
    # fast mode: one random projection u^T J v (the authors' acos derivative, 1 / sqrt(1.0000001 - cs^2),
    # departs from the exact one for single pixels within ~1e-3 rad of a bin centre)
    assert torch.autograd.gradcheck(lambda t: f(t), (x,), eps=1e-4, atol=1e-5, rtol=1e-3, fast_mode=True)
    for flat in (torch.full((1, 1, 40, 40), 128.0), torch.full((1, 1, 40, 40), 30.0)):
        flat.requires_grad_(True)
        get_feature(name)(flat).pow(2).sum().backward()
        assert torch.isfinite(flat.grad).all()
