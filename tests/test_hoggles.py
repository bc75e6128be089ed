"""HOGgles paired-dictionary inversion (pipeline.baselines.hoggles)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from skimage.transform import resize

from pipeline.baselines import hoggles as hg
from pipeline.features import available, get_feature, register, to_gray


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny problems: one torch thread


@register("test_hoggles_cellhist")
class CellHist(torch.nn.Module):
    """A HOG-like cell grid: 18 rectified gradient projections, cell-averaged, L2-normalised, clamped.

    Grid ``(H + cell/2) // cell`` as VLFeat's HOG; stands in for ``hog`` so
    these tests do not depend on it.
    """

    name = "test_hoggles_cellhist"

    def __init__(self, cell: int = 8):
        super().__init__()
        self.cell = cell
        self.params = {"cell": cell}
        k = torch.arange(18) * math.pi / 9
        self.register_buffer("u", torch.stack([k.cos(), k.sin()], 1))

    def output_shape(self, H, W):
        return (18, (H + self.cell // 2) // self.cell, (W + self.cell // 2) // self.cell)

    def forward(self, x):
        g = to_gray(x)
        gx = F.pad(g[..., :, 2:] - g[..., :, :-2], (1, 1))
        gy = F.pad(g[..., 2:, :] - g[..., :-2, :], (0, 0, 1, 1))
        p = torch.relu(gx * self.u[:, 0].view(1, -1, 1, 1) + gy * self.u[:, 1].view(1, -1, 1, 1))
        _, h, w = self.output_shape(*x.shape[-2:])
        c, (H, W) = self.cell, x.shape[-2:]
        p = F.pad(p, (0, max(0, w * c - W), 0, max(0, h * c - H)))[..., : h * c, : w * c]
        hist = F.avg_pool2d(p, c)
        return (hist / (hist.pow(2).sum(1, keepdim=True) + 1e-2).sqrt()).clamp(max=0.4)


def crops(size=64, per_photo=3, seed=0, photos=("astronaut", "camera", "coffee", "chelsea", "rocket", "cat")):
    """(N, size, size, 3) uint8 random half-size crops of scikit-image photos."""
    rng = np.random.default_rng(seed)
    out = []
    for n in photos:
        im = getattr(skdata, n)()
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        s = min(im.shape[:2]) // 2
        for _ in range(per_photo):
            y, x = rng.integers(0, im.shape[0] - s), rng.integers(0, im.shape[1] - s)
            out.append((resize(im[y:y + s, x:x + s], (size, size), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(out)


def corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def random_dictionary(pd: hg.PairedDictionary, seed=0) -> hg.PairedDictionary:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(pd.gray.shape)
    h = np.abs(rng.standard_normal(pd.hog.shape))
    n = np.linalg.norm(np.c_[g, h], axis=1, keepdims=True)
    return hg.PairedDictionary(gray=(g / n).astype(np.float32), hog=(h / n).astype(np.float32),
                               ny=pd.ny, nx=pd.nx, cell=pd.cell, lam=pd.lam)


@pytest.fixture(scope="module")
def trained():
    imgs = crops()
    f = CellHist()
    pd = hg.train_paired_dictionary(imgs, f, atoms=48, ny=3, nx=3, lam=0.02, n_windows=1000, epochs=3,
                                    batch_size=64, seed=0)
    return imgs, f, pd


def test_trained_dictionary_reconstructs_training_images_better_than_random(trained):
    imgs, f, pd = trained
    gray = hg._gray_tensor(imgs[:4]).numpy()
    rec = hg.invert_images(pd, imgs[:4], feature=f)
    rnd = hg.invert_images(random_dictionary(pd), imgs[:4], feature=f)
    assert rec.shape == (4, 1, 64, 64) and rec.min() >= 0 and rec.max() <= 255 + 1e-3
    c_tr = [corr(rec[i], gray[i]) for i in range(4)]
    c_rn = [corr(rnd[i], gray[i]) for i in range(4)]
    assert min(c_tr) > 0.5, c_tr
    assert max(np.abs(c_rn)) < 0.2, c_rn


def test_trained_patch_reconstruction_beats_random_dictionary(trained):
    """Code one training window's HOG and compare the grey patch it gives with the true patch."""
    imgs, f, pd = trained
    g, h = hg.sample_pairs(imgs, f, 200, pd.ny, pd.nx, seed=5)
    for d, name in ((pd, "trained"), (random_dictionary(pd), "random")):
        a = hg.sparse_code(h, d.hog, d.lam)
        rec = a @ d.gray
        c = np.array([corr(rec[i], g[i]) if rec[i].any() else 0.0 for i in range(len(g))])
        if name == "trained":
            c_tr = np.median(c)
        else:
            c_rn = np.median(c)
    assert c_tr > 0.5 and abs(c_rn) < 0.15 and c_tr > c_rn + 0.4


def test_windows_and_patches_are_aligned():
    """The grey patch of window (i, j) is the image at [(i-1) cell, (i+ny+1) cell) (edge padded)."""
    H = W = 40
    img = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    p = hg.gray_patches(img, 8, 5, 5, 3, 3)  # 5x5 cells, 3x3 windows -> 3x3 positions
    assert p.shape == (1, 9, 40 * 40)
    patch = p[0, 4].view(40, 40)  # window (1, 1): pixels [0, 40)
    assert torch.equal(patch, img[0, 0])
    first = p[0, 0].view(40, 40)  # window (0, 0): pixels [-8, 32), edge replicated
    assert torch.equal(first[8:, 8:], img[0, 0, :32, :32]) and torch.equal(first[0, 8:], img[0, 0, 0, :32])
    phi = torch.arange(2 * 5 * 5, dtype=torch.float64).view(1, 2, 5, 5)
    w = hg.hog_windows(phi, 3, 3)
    assert w.shape == (1, 9, 18)
    assert torch.equal(w[0, 4].view(2, 3, 3), phi[0, :, 1:4, 1:4])


def test_fista_matches_sklearn(trained):
    imgs, f, pd = trained
    _, h = hg.sample_pairs(imgs, f, 150, pd.ny, pd.nx, seed=3)
    a1 = hg.sparse_code(h, pd.hog, pd.lam, solver="sklearn")
    a2 = hg.sparse_code(h, pd.hog, pd.lam, solver="fista")
    assert (a1 >= 0).all() and (a2 >= 0).all() and (a1 > 0).any()
    o1 = hg.lasso_objective(h, pd.hog.astype(np.float64), a1, pd.lam)
    o2 = hg.lasso_objective(h, pd.hog.astype(np.float64), a2, pd.lam)
    np.testing.assert_allclose(o2, o1, rtol=1e-4, atol=1e-7)
    r1, r2 = hg.invert_images(pd, imgs[:1], feature=f), hg.invert_images(pd, imgs[:1], feature=f, solver="fista")
    np.testing.assert_allclose(r1, r2, atol=1.0)


def test_save_load_roundtrip_and_errors(tmp_path, trained):
    _, f, pd = trained
    path = tmp_path / "dict.npz"
    pd.save(path)
    q = hg.PairedDictionary.load(path)
    np.testing.assert_array_equal(q.gray, pd.gray)
    np.testing.assert_array_equal(q.hog, pd.hog)
    assert (q.ny, q.nx, q.cell, q.lam, q.feature, q.feature_params) == (3, 3, 8, 0.02, "test_hoggles_cellhist", {"cell": 8})
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="paired dictionary"):
        hg.PairedDictionary.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="dimensions"):
        hg.invert_hoggles(pd, np.zeros((1, 31, 8, 8)), (64, 64))
    with pytest.raises(ValueError, match="atoms"):
        hg.train_paired_dictionary(crops(per_photo=1, photos=("camera",)), f, atoms=0)
    with pytest.raises(ValueError, match="solver"):
        hg.sparse_code(np.zeros((1, 4)), np.ones((2, 4)), 0.1, solver="lars")


def test_gaussian_window_is_fspecial():
    g = hg.gaussian_window(5, 5, 1.0)
    assert g.sum() == pytest.approx(1.0) and g[2, 2] == g.max() and g[0, 0] == pytest.approx(g[4, 4])
    assert g[2, 2] / g[2, 3] == pytest.approx(math.exp(0.5))


def test_cli_train_and_invert(tmp_path):
    from pipeline.cli import main
    from pipeline.data.shards import Sample, write_shard
    from pipeline.store import FeatureStore

    imgs = crops(size=48, per_photo=2)
    train = tmp_path / "train-000.tar"
    val = tmp_path / "val-000.tar"
    write_shard(train, [Sample(f"t{i}", im) for i, im in enumerate(imgs)])
    write_shard(val, [Sample(f"v{i}", im) for i, im in enumerate(imgs[:3])])
    # shards are streamed: the same windows as from the array
    ga, ha = hg.sample_pairs(imgs, CellHist(), 50, 3, 3, seed=1)
    gs, hs = hg.sample_pairs([train], CellHist(), 50, 3, 3, seed=1, batch=5)
    np.testing.assert_array_equal(ga, gs)
    np.testing.assert_array_equal(ha, hs)
    d = tmp_path / "pd.npz"
    assert main(["invert-hoggles", "train", "--shards", str(train), "--out", str(d), "--feature",
                 "test_hoggles_cellhist", "--params", json.dumps({"cell": 8}), "--atoms", "32", "--window", "3",
                 "--windows", "500", "--epochs", "2", "--batch-size", "64"]) == 0
    out = tmp_path / "rec.h5"
    assert main(["invert-hoggles", "invert", "--dict", str(d), "--shard", str(val), "--out", str(out),
                 "--batch-size", "2"]) == 0
    with FeatureStore(out) as s:
        assert s.keys == ["v0", "v1", "v2"] and s.shape == (3, 3, 48, 48) and str(s.dtype) == "float16"
        rec = s.all()
        assert s.attrs["method"] == "hoggles" and s.attrs["feature"] == "reconstruction"
        assert s.params["inversion"]["atoms"] == 32 and s.params["representation"] == "test_hoggles_cellhist"
    assert np.array_equal(rec[:, 0], rec[:, 1]) and np.array_equal(rec[:, 0], rec[:, 2])  # grey replicated
    assert rec.min() >= 0 and rec.max() <= 255
    direct = hg.invert_images(hg.PairedDictionary.load(d), imgs[:3], feature=CellHist())
    np.testing.assert_allclose(rec[:, :1], direct, atol=0.25)


@pytest.mark.skipif("hog" not in available(), reason="HOG not registered yet")
def test_hoggles_on_hog():
    imgs = crops(size=64, per_photo=2)
    f = get_feature("hog")
    pd = hg.train_paired_dictionary(imgs, f, atoms=48, ny=3, nx=3, n_windows=1000, epochs=3, batch_size=64)
    assert pd.cell == 8 and pd.hog.shape[1] == f.output_shape(64, 64)[0] * 9
    gray = hg._gray_tensor(imgs[:3]).numpy()
    rec = hg.invert_images(pd, imgs[:3], feature=f)
    rnd = hg.invert_images(random_dictionary(pd), imgs[:3], feature=f)
    assert np.mean([corr(rec[i], gray[i]) for i in range(3)]) > np.mean([corr(rnd[i], gray[i]) for i in range(3)]) + 0.3
