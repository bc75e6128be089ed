"""Evaluation (pipeline.evaluation): metrics, perturbations, tables, figures, CLI."""
from __future__ import annotations

import csv
import json
import math
from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from skimage.transform import resize

from pipeline.cli import main
from pipeline.evaluation import figures, metrics, tables
from pipeline.features import perturbations
from pipeline.features import get_feature, register, to_gray
from pipeline.images import image_grid
from pipeline.data.shards import Sample, write_shard
from pipeline.store import FeatureStore, ReconstructionStore, write_reconstructions, write_store
from pipeline.vocabulary import FIGURE7_CURVES


@register("test_eval_grad")
class GradCells(torch.nn.Module):
    """Rectified grey-level gradients (+x, -x, +y, -y) averaged over cells: sparse, non-negative."""

    name = "test_eval_grad"

    def __init__(self, cell: int = 4):
        super().__init__()
        self.cell = cell
        self.params = {"cell": cell}

    def forward(self, x):
        g = to_gray(x) / 255.0
        dx = F.pad(g[..., :, 1:] - g[..., :, :-1], (0, 1, 0, 0))
        dy = F.pad(g[..., 1:, :] - g[..., :-1, :], (0, 0, 0, 1))
        f = torch.cat([dx.relu(), (-dx).relu(), dy.relu(), (-dy).relu()], dim=1)
        f = torch.where(f > 0.02, f, torch.zeros_like(f))  # small gradients -> exact zeros
        return F.avg_pool2d(f, self.cell)

    def output_shape(self, H, W):
        return (4, H // self.cell, W // self.cell)


SIZE = 32


def photo_crops(size: int = SIZE) -> np.ndarray:
    """(8, size, size, 3) uint8: two crops each of four scikit-image photographs."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = getattr(skdata, name)()
        h, w = im.shape[:2]
        s = min(h, w)
        for y, x, side in (((h - s) // 2, (w - s) // 2, s), (0, 0, s // 2)):
            crop = im[y:y + side, x:x + side]
            out.append(resize(crop, (size, size), anti_aliasing=True, preserve_range=True).round().astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def photos():
    return photo_crops()


def brute_norm(x: np.ndarray) -> float:
    """Mean distance over ordered pairs i != j, by explicit loops."""
    v = x.reshape(len(x), -1).astype(np.float64)
    d = [np.linalg.norm(v[i] - v[j]) for i, j in permutations(range(len(v)), 2)]
    return float(np.mean(d))


def nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).astype(np.float32)


def blurred(x: np.ndarray, half: bool = True) -> np.ndarray:
    """(N, 3, S/2, S/2) (or full size) smoothed reconstructions of photos."""
    t = torch.from_numpy(nchw(x))
    t = F.avg_pool2d(t, 2)
    if not half:
        t = F.interpolate(t, scale_factor=2, mode="nearest")
    return t.numpy()


# --------------------------------------------------------------------------- metrics


def test_mean_pairwise_distance_matches_loops_and_is_permutation_invariant(photos):
    ref = brute_norm(photos)
    got = metrics.mean_pairwise_distance(photos)
    assert got == pytest.approx(ref, rel=1e-10)
    perm = np.random.default_rng(1).permutation(len(photos))
    assert metrics.mean_pairwise_distance(photos[perm], block=3) == pytest.approx(ref, rel=1e-10)
    # translation invariance and scaling: distances of x + c are those of x; of 2x twice as large
    assert metrics.mean_pairwise_distance(photos.astype(np.float64) + 1000) == pytest.approx(ref, rel=1e-9)
    assert metrics.mean_pairwise_distance(2.0 * photos.astype(np.float64)) == pytest.approx(2 * ref, rel=1e-10)
    # a subset estimate uses exactly the pairs of that subset
    idx = np.sort(np.random.default_rng(3).choice(len(photos), 5, replace=False))
    assert metrics.mean_pairwise_distance(photos, max_items=5, seed=3) == pytest.approx(brute_norm(photos[idx]), rel=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_pairwise_distance(photos[:1])


def test_streamed_normaliser_is_exact_in_blocks_and_the_test_set_streams(tmp_path, photos):
    """By pairs of blocks (little memory) the mean pairwise distance is the in-memory one to float64
    rounding; within one block it is the in-memory computation itself; subsets pick the same images."""
    from pipeline.evaluation.testset import RowFile, TestSet

    x = metrics.images_nchw(photos)
    reads = []

    def read(i):
        reads.append(len(i))
        return x[torch.from_numpy(i)]

    ref = metrics.mean_pairwise_distance(x)
    item = x[0].numel() * 8
    assert metrics.mean_pairwise_distance_streamed(read, len(x)) == ref  # one block: identical
    reads.clear()
    assert metrics.mean_pairwise_distance_streamed(read, len(x), memory=4 * item) == pytest.approx(ref, rel=1e-12)
    assert max(reads) == 2  # blocks of 2 items (the least)
    for memory in (6 * item, 8 * item):  # blocks of 3 and 4 items
        got = metrics.mean_pairwise_distance_streamed(read, len(x), memory=memory, max_items=7, seed=3)
        assert got == pytest.approx(metrics.mean_pairwise_distance(x, max_items=7, seed=3), rel=1e-12)
    # the test set: images streamed to a temporary file and read back by index
    shards = [tmp_path / "a.tar", tmp_path / "b.tar"]
    write_shard(shards[0], [Sample(f"k{i}", im) for i, im in enumerate(photos[:4])])
    write_shard(shards[1], [Sample(f"k{i + 4}", im) for i, im in enumerate(photos[4:])])
    test = TestSet.load(shards, max_images=len(photos) - 1)
    assert len(test) == len(photos) - 1 and test.skipped == {f"k{len(photos) - 1}"}
    np.testing.assert_array_equal(test.take([5, 0, 1, 2, 6]), photos[[5, 0, 1, 2, 6]])
    np.testing.assert_array_equal(np.concatenate([b for _, b in test.blocks(3)]), photos[:-1])
    assert test.normaliser() == metrics.mean_pairwise_distance(metrics.images_nchw(photos[:-1]))
    np.testing.assert_array_equal(test.mean_image(), photos[:-1].astype(np.float64).mean(axis=0))
    rows = RowFile((2,), np.float32)
    rows.put([3, 1], np.array([[3, 3], [1, 1]], np.float32))
    np.testing.assert_array_equal(rows.take([1, 3, 0]), [[1, 1], [3, 3], [0, 0]])


def test_perfect_reconstruction_has_zero_error_infinite_psnr_unit_ssim(photos):
    err, norm = metrics.normalized_errors(photos, nchw(photos))
    assert np.all(err == 0) and norm == pytest.approx(brute_norm(photos))
    assert np.all(np.isinf(metrics.psnr_per_image(photos, nchw(photos))))
    assert np.allclose(metrics.ssim_per_image(photos, nchw(photos)), 1.0)


def test_errors_match_independent_computation_and_grow_with_noise(photos):
    rng = np.random.default_rng(0)
    norm = brute_norm(photos)
    errs = []
    for sigma in (5.0, 20.0, 60.0):
        rec = np.clip(nchw(photos) + rng.normal(0, sigma, (len(photos), 3, SIZE, SIZE)), 0, 255).astype(np.float32)
        err, n = metrics.normalized_errors(photos, rec)
        manual = [np.linalg.norm(photos[i].astype(np.float64).transpose(2, 0, 1) - rec[i]) / norm
                  for i in range(len(photos))]
        np.testing.assert_allclose(err, manual, rtol=1e-6)
        psnr = metrics.psnr_per_image(photos, rec)
        mse = ((photos.astype(np.float64).transpose(0, 3, 1, 2) - rec) ** 2).reshape(len(photos), -1).mean(1)
        np.testing.assert_allclose(psnr, 10 * np.log10(255.0 ** 2 / mse), rtol=1e-6)
        errs.append((err.mean(), psnr.mean(), metrics.ssim_per_image(photos, rec).mean()))
    assert errs[0][0] < errs[1][0] < errs[2][0]          # error grows with the noise
    assert errs[0][1] > errs[1][1] > errs[2][1]          # PSNR falls
    assert errs[0][2] > errs[1][2] > errs[2][2]          # SSIM falls


def test_reconstructions_are_resized_bilinearly_and_clipped(photos):
    # a constant image stays constant under bilinear up-sampling: a half-size constant
    # reconstruction of a constant image has zero error
    const = np.full((3, SIZE, SIZE, 3), 77, np.uint8)
    const[1] = 200
    const[2] = 10
    rec = np.stack([np.full((3, 8, 8), v, np.float32) for v in (77.0, 200.0, 10.0)])
    err, _ = metrics.normalized_errors(const, rec)
    assert np.all(err == 0)
    # a half-size reconstruction is compared after torch's bilinear up-sampling (align_corners=False)
    half = blurred(photos)
    up = F.interpolate(torch.from_numpy(half), size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(metrics.normalized_errors(photos, half)[0], metrics.normalized_errors(photos, up)[0], rtol=1e-6)
    # values outside [0, 255] are clipped before the error
    sat = np.clip((photos.astype(np.int64) - 64) * 2, 0, 255).astype(np.uint8)  # contrast-stretched
    over = nchw(sat)
    assert (over == 255).sum() > 10 and (over == 0).sum() > 10
    over[over == 255] = 400.0
    over[over == 0] = -100.0
    np.testing.assert_allclose(metrics.normalized_errors(sat, over)[0], 0.0, atol=1e-12)


def test_mean_image_error_matches_independent_value(photos):
    m = photos.astype(np.float64).mean(axis=0)
    norm = brute_norm(photos)
    expected = np.mean([np.linalg.norm(photos[i].astype(np.float64) - m) for i in range(len(photos))]) / norm
    err, n = metrics.mean_image_errors(photos, m)
    assert n == pytest.approx(norm)
    assert err.mean() == pytest.approx(expected, rel=1e-9)
    # the mean image is the best constant predictor in squared error: beats a grey image
    grey = np.full_like(m, 128.0)
    assert np.mean(metrics.mean_image_errors(photos, grey, norm)[0] ** 2) > np.mean(err ** 2)


def test_feature_errors(photos):
    f = GradCells()(torch.from_numpy(nchw(photos)))
    err, norm = metrics.feature_errors(f, f)
    assert np.all(err == 0) and norm == pytest.approx(brute_norm(f.numpy()), rel=1e-9)
    g = GradCells()(torch.from_numpy(blurred(photos, half=False)))
    err, _ = metrics.feature_errors(g, f)
    manual = np.linalg.norm((g - f).reshape(len(f), -1).double().numpy(), axis=1) / norm
    np.testing.assert_allclose(err, manual, rtol=1e-6)
    assert np.all(err > 0)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.feature_errors(g[:, :2], f)


def test_squared_feature_errors_are_the_authors_my_meanstd(photos):
    """deep-goggle's my_meanstd: temp = pdist2(y0', y0'); N2 = mean(temp(:).^2) (diagonal included);
    e_i = sum((y - y0).^2) / N2."""
    f = GradCells()(torch.from_numpy(nchw(photos))).double()
    g = GradCells()(torch.from_numpy(blurred(photos, half=False))).double()
    y0, y = f.reshape(len(f), -1).numpy(), g.reshape(len(g), -1).numpy()
    pd = np.sqrt(((y0[:, None] - y0[None]) ** 2).sum(-1))
    n2 = np.mean(pd.ravel() ** 2)
    assert metrics.mean_squared_pairwise_distance(f) == pytest.approx(n2, rel=1e-12)
    err, norm = metrics.squared_feature_errors(g, f)
    assert norm == pytest.approx(n2, rel=1e-12)
    np.testing.assert_allclose(err, ((y - y0) ** 2).sum(1) / n2, rtol=1e-10)
    # the unsquared ratio of the paper's text is a different number
    assert not np.allclose(err, metrics.feature_errors(g, f)[0])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_squared_pairwise_distance(f[:1])
    # streamed by blocks (a block of 2 items here) it is the same number
    flat = f.reshape(len(f), -1)
    streamed = metrics.mean_squared_pairwise_distance_streamed(lambda i: flat[torch.as_tensor(i)], len(f),
                                                               memory=32 * flat.shape[1])
    assert streamed == pytest.approx(n2, rel=1e-12)


def test_summarize_t_and_bootstrap():
    v = np.array([0.2, 0.25, 0.31, 0.18, 0.4, 0.22, 0.27])
    s = metrics.summarize(v, ci="t")
    from scipy import stats

    h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    assert (s.mean, s.std, s.n) == pytest.approx((v.mean(), v.std(ddof=1), 7))
    assert (s.ci_low, s.ci_high) == pytest.approx((v.mean() - h, v.mean() + h))
    b = metrics.summarize(v, seed=4)
    assert b.ci_low < v.mean() < b.ci_high
    assert v.min() < b.ci_low and b.ci_high < v.max()
    assert b == metrics.summarize(v, seed=4)  # reproducible
    one = metrics.summarize([0.5])
    assert one.mean == one.ci_low == one.ci_high == 0.5 and math.isnan(one.std)
    with pytest.raises(ValueError, match="ci must be"):
        metrics.summarize(v, ci="normal")


# --------------------------------------------------------------------------- perturbations


@pytest.fixture(scope="module")
def feats(photos):
    return GradCells()(torch.from_numpy(nchw(photos)))


def _norms(x):
    return x.reshape(len(x), -1).norm(dim=1)


@pytest.mark.parametrize("kind", ["binarize", "drop50", "drop50-smallest", "drop50+binarize", "drop50-smallest+binarize"])
def test_perturbations_keep_the_l2_norm(feats, kind):
    y = perturbations.perturb(feats, kind, seed=1)
    assert y.shape == feats.shape
    torch.testing.assert_close(_norms(y), _norms(feats), rtol=1e-5, atol=0)
    assert not torch.equal(y, feats)


def test_binarize_keeps_signs_and_sets_one_magnitude(feats):
    x = torch.cat([feats, -feats[:2]])  # signed vectors too (fc8 has negative entries)
    y = perturbations.binarize(x)
    assert torch.equal(torch.sign(y), torch.sign(x))
    for v in y.reshape(len(y), -1):
        mags = v[v != 0].abs()
        assert torch.allclose(mags, mags[0].expand_as(mags))
    z = torch.zeros(2, 5)
    assert torch.equal(perturbations.binarize(z), z)


def test_dropout_zeroes_half_at_random_and_is_seeded(feats):
    y = perturbations.dropout(feats, 0.5, seed=3)
    flat_x, flat_y = feats.reshape(len(feats), -1), y.reshape(len(y), -1)
    n = flat_x.shape[1]
    kept = flat_y != 0
    # at most the surviving non-zeros, and the survivors are the original values times one factor
    for vx, vy, k in zip(flat_x, flat_y, kept):
        ratio = vy[k] / vx[k]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    dropped_any = (flat_x != 0) & (flat_y == 0)
    frac = dropped_any.sum(1).float() / (flat_x != 0).sum(1).float()
    assert 0.3 < frac.mean() < 0.7  # about half of the non-zeros fall among the dropped half
    assert torch.equal(y, perturbations.dropout(feats, 0.5, seed=3))
    assert not torch.equal(y, perturbations.dropout(feats, 0.5, seed=4))
    # exactly half of the entries are chosen: on a dense vector half are zero
    d = perturbations.dropout(torch.arange(1.0, 101.0)[None], 0.5, seed=0)
    assert int((d == 0).sum()) == 50
    with pytest.raises(ValueError, match="dropout fraction"):
        perturbations.dropout(feats, 1.0)


def test_drop_smallest_removes_the_smallest_nonzeros(feats):
    y = perturbations.drop_smallest(feats, 0.5)
    for vx, vy in zip(feats.reshape(len(feats), -1), y.reshape(len(y), -1)):
        nz = vx != 0
        k = int(math.floor(0.5 * int(nz.sum())))
        dropped = nz & (vy == 0)
        assert int(dropped.sum()) == k
        if k:
            assert vx[dropped].abs().max() <= vx[nz & (vy != 0)].abs().min()


def test_top_k_split(feats):
    v = torch.randn(3, 1000, 1, 1, generator=torch.Generator().manual_seed(0))
    top, rest = perturbations.top_k_only(v, 5), perturbations.without_top_k(v, 5)
    assert torch.equal(top + rest, v)
    assert ((top != 0).reshape(3, -1).sum(1) == 5).all()
    assert torch.equal(top.reshape(3, -1).max(1).values, v.reshape(3, -1).max(1).values)


def test_interpolate_endpoints(feats):
    seq = perturbations.interpolate(feats[0], feats[1], 5)
    assert seq.shape == (5, *feats.shape[1:])
    torch.testing.assert_close(seq[0], feats[0])
    torch.testing.assert_close(seq[-1], feats[1])
    torch.testing.assert_close(seq[2], 0.5 * (feats[0] + feats[1]))


def test_histogram_sampler_matches_sparsity_and_range(photos):
    # reference features of many crops of photos (the paper used 4096 images)
    crops = np.stack([photos[i % 8][(i // 8) % 4:][:24, (i // 32) % 4:][:, :24] for i in range(64)])
    f = GradCells()(torch.from_numpy(nchw(crops)))
    s = perturbations.HistogramSampler(bins=16, contrast=2.0).fit(f)
    x = s.sample(400, seed=0)
    assert x.shape == (400, *f.shape[1:])
    ref_sparsity = float((f != 0).float().mean())
    assert float((x != 0).float().mean()) == pytest.approx(ref_sparsity, abs=0.02)
    flat_f, flat_x = f.reshape(len(f), -1), x.reshape(len(x), -1)
    assert (flat_x >= 0).all()
    assert (flat_x <= 2.0 * flat_f.max(0).values + 1e-6).all()  # contrast 2 times the observed range
    # dimensions never non-zero in the reference stay zero
    dead = (flat_f == 0).all(0)
    assert (flat_x[:, dead] == 0).all()
    assert torch.equal(x, s.sample(400, seed=0)) and not torch.equal(x, s.sample(400, seed=1))


def test_truncated_gaussian_sampler_recovers_a_rectified_gaussian():
    rng = np.random.default_rng(0)
    data = np.maximum(rng.normal(0.5, 2.0, (4000, 16)), 0).astype(np.float32)
    s = perturbations.TruncatedGaussianSampler().fit(torch.from_numpy(data))
    assert s.rectified and s.mu == pytest.approx(0.5, abs=0.08) and s.sigma == pytest.approx(2.0, rel=0.03)
    x = s.sample(2000, seed=1)
    assert float((x == 0).float().mean()) == pytest.approx(float((data == 0).mean()), abs=0.02)
    signed = perturbations.TruncatedGaussianSampler().fit(torch.from_numpy(rng.normal(-1, 3, (500, 8)).astype(np.float32)))
    assert not signed.rectified and signed.mu == pytest.approx(-1, abs=0.2)


# --------------------------------------------------------------------------- files and CLI


@pytest.fixture()
def workspace(tmp_path, photos):
    keys = [f"img{i:02d}" for i in range(len(photos))]
    shards = [tmp_path / "val-0.tar", tmp_path / "val-1.tar"]
    write_shard(shards[0], [Sample(k, im) for k, im in zip(keys[:5], photos[:5])])
    write_shard(shards[1], [Sample(k, im) for k, im in zip(keys[5:], photos[5:])])
    rng = np.random.default_rng(7)

    def store(name, recs, sl, **kw):
        p = tmp_path / f"{name}.h5"
        kw.setdefault("feature", "reconstruction")
        kw.setdefault("params", {"representation": name})
        write_store(p, [keys[i] for i in range(len(keys))[sl]], recs[sl], dtype="float32", **kw)
        return str(p)

    good = blurred(photos)  # half size: tests the resize
    noisy = np.clip(nchw(photos) + rng.normal(0, 40, (len(photos), 3, SIZE, SIZE)), 0, 255).astype(np.float32)
    mv_params = {"representation": "test_eval_grad", "method": "mahendran-vedaldi",
                 "feature": {"name": "test_eval_grad", "params": {"cell": 4}}}
    exact_params = {"representation": "test_eval_grad", "feature": {"name": "test_eval_grad", "params": {"cell": 4}}}
    w = {"keys": keys, "shards": [str(s) for s in shards], "good": good, "noisy": noisy, "tmp": tmp_path,
         "ours0": store("ours0", good, slice(0, 5)), "ours1": store("ours1", good, slice(5, None)),
         # the layout of invert-mv and reconstruct stores: the representation under params["feature"]
         "mv0": store("mv0", noisy, slice(0, 5), params=mv_params, extra_attrs={"method": "mahendran-vedaldi"}),
         "mv1": store("mv1", noisy, slice(5, None), params=mv_params),
         "exact0": store("exact0", nchw(photos), slice(0, 5), params=exact_params),
         "exact1": store("exact1", nchw(photos), slice(5, None), params=exact_params)}
    return w


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table2_cli_rows_columns_values_and_captions(workspace, photos):
    w = workspace
    out = w["tmp"] / "results" / "table2.csv"
    mean_npy = w["tmp"] / "mean.npy"
    train = w["tmp"] / "train-0.tar"
    train_imgs = photo_crops(48)[::-1]  # other size: resized to the test size
    write_shard(train, [Sample(f"t{i}", im) for i, im in enumerate(train_imgs)])
    assert main(["evaluate", "mean-image", "--shards", str(train), "--size", str(SIZE), str(SIZE),
                 "--out", str(mean_npy)]) == 0
    rc = main(["evaluate", "table2", "--images", *w["shards"],
               "--row", f"ours-hog={w['ours0']},{w['ours1']}", "--row", f"mv-hog={w['mv1']}", "--row",
               f"mv-hog={w['mv0']}", "--mean-image", str(mean_npy), "--dataset", "skimage photos",
               "--out", str(out), "--per-image", str(w["tmp"] / "per_image.csv")])
    assert rc == 0
    rows = read_csv(out)
    assert list(rows[0]) == list(tables.TABLE2_COLUMNS)
    # paper order, rows without inputs (HOGgles, SIFT, LBP) omitted, the floor last
    assert [r["row"] for r in rows] == ["mv-hog", "ours-hog", "mean-image"]
    assert [r["paper_error"] for r in rows] == ["0.63", "0.24", ""]
    assert all(r["dataset"] == "skimage photos" and r["n_images"] == "8" for r in rows)
    per_image = read_csv(w["tmp"] / "per_image.csv")
    assert len(per_image) == 3 * 8 and all(float(r["error"]) > 0 for r in per_image)  # plain numbers
    norm = brute_norm(photos)
    up = F.interpolate(torch.from_numpy(w["good"]), size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    ours = np.mean([np.linalg.norm(photos[i].transpose(2, 0, 1) - up[i]) for i in range(8)]) / norm
    assert float(rows[1]["error_mean"]) == pytest.approx(ours, rel=1e-6)
    m = np.load(mean_npy)
    floor = np.mean([np.linalg.norm(photos[i] - m) for i in range(8)]) / norm
    assert float(rows[2]["error_mean"]) == pytest.approx(floor, rel=1e-6)
    assert float(rows[1]["rel_to_floor"]) == pytest.approx(ours / floor, rel=1e-6)
    # smooth reconstructions beat noisy ones, both beat the floor here
    assert float(rows[1]["error_mean"]) < float(rows[0]["error_mean"]) < float(rows[2]["error_mean"])
    for r in rows:
        assert float(r["error_ci95_low"]) <= float(r["error_mean"]) <= float(r["error_ci95_high"])
    md = out.with_suffix(".md").read_text()
    assert "Dataset: skimage photos." in md and "HOG ours" in md and "HOGgles" not in md and "0.24" in md
    assert "below the baselines (HOG⁻¹ [Mahendran & Vedaldi] 0.4" in md and ": yes" in md
    assert (w["tmp"] / "results" / "table2.csv.caption.txt").read_text().startswith("Dataset: skimage photos.")
    per = read_csv(w["tmp"] / "per_image.csv")
    assert len(per) == 3 * 8 and {p["row"] for p in per} == {"mv-hog", "ours-hog", "mean-image"}


def test_table2_floor_from_val_subset_and_errors(workspace, photos, capsys):
    w = workspace
    out = w["tmp"] / "t2.csv"
    assert main(["evaluate", "table2", "--images", *w["shards"], "--row", f"ours-sift={w['ours0']}",
                 "--floor-from-val", "--out", str(out), "--ci", "t"]) == 0
    rows = read_csv(out)
    assert [r["row"] for r in rows] == ["ours-sift", "mean-image"]
    assert rows[0]["n_images"] == "5" and rows[1]["n_images"] == "8"  # a store may cover a subset
    assert "in-sample" in rows[1]["name"]
    m = photos.astype(np.float64).mean(0)
    expected = np.mean([np.linalg.norm(photos[i] - m) for i in range(8)]) / brute_norm(photos)
    assert float(rows[1]["error_mean"]) == pytest.approx(expected, rel=1e-6)
    # --max-images: the normaliser and the rows use the first N images only
    assert main(["evaluate", "table2", "--images", *w["shards"], "--row", f"ours-hog={w['ours0']},{w['ours1']}",
                 "--max-images", "4", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert rows[0]["n_images"] == "4"
    assert float(rows[0]["normaliser"]) == pytest.approx(brute_norm(photos[:4]))
    # bad inputs: named errors, exit code 2
    assert main(["evaluate", "table2", "--images", *w["shards"], "--row", f"ours-cnn={w['ours0']}",
                 "--out", str(out)]) == 2
    assert "unknown row" in capsys.readouterr().err
    other = w["tmp"] / "other.h5"
    write_store(other, ["nope"], w["good"][:1], feature="reconstruction", params={})
    assert main(["evaluate", "table2", "--images", *w["shards"], "--row", f"ours-hog={other}",
                 "--out", str(out)]) == 2
    assert "not in the --images" in capsys.readouterr().err


def test_mv_table1_cli_feature_space_errors(workspace, photos):
    w = workspace
    out = w["tmp"] / "mv_table1.csv"
    # HOG row: exact reconstructions -> 0; DSIFT row: noisy ones; representation read from the stores
    rc = main(["evaluate", "mv-table1", "--images", *w["shards"],
               "--row", f"hog={w['exact0']},{w['exact1']}", "--row", f"dsift={w['mv0']},{w['mv1']}",
               "--dataset", "photos", "--out", str(out)])
    assert rc == 0
    rows = read_csv(out)
    assert list(rows[0]) == list(tables.MV_TABLE1_COLUMNS)
    assert [r["row"] for r in rows] == ["hog", "dsift"]
    assert [r["paper_error_pct"] for r in rows] == ["28.1", "10.89"]
    assert float(rows[0]["error_pct_mean"]) == 0.0
    feat = GradCells()
    fx = feat(torch.from_numpy(nchw(photos))).numpy()
    fr = feat(torch.from_numpy(w["noisy"])).numpy()
    n_phi = brute_norm(fx)
    expected = 100 * np.mean([np.linalg.norm(fr[i] - fx[i]) for i in range(8)]) / n_phi
    assert float(rows[1]["error_pct_mean"]) == pytest.approx(expected, rel=1e-5)
    assert float(rows[1]["normaliser"]) == pytest.approx(n_phi, rel=1e-6)
    assert json.loads(rows[1]["feature_params"]) == {"cell": 4}
    # the authors' metric (their Table 1 script): squared error over the mean squared pairwise
    # distance of all N^2 pairs, on their CNN-DSIFT (the default for the dsift row)
    assert float(rows[0]["authors_error_pct_mean"]) == 0.0
    assert json.loads(rows[0]["authors_feature"])["name"] == "cnn_hog"
    assert json.loads(rows[1]["authors_feature"]) == {"name": "cnn_dsift", "params": get_feature("cnn_dsift").params}
    ad = get_feature("cnn_dsift")
    ax, ar = ad(torch.from_numpy(nchw(photos))).double().numpy(), ad(torch.from_numpy(w["noisy"])).double().numpy()
    n2 = np.mean([np.sum((ax[i] - ax[j]) ** 2) for i in range(8) for j in range(8)])
    a_err = [100 * np.sum((ar[i] - ax[i]) ** 2) / n2 for i in range(8)]
    assert float(rows[1]["authors_normaliser"]) == pytest.approx(n2, rel=1e-6)
    assert float(rows[1]["authors_error_pct_mean"]) == pytest.approx(np.mean(a_err), rel=1e-5)
    assert float(rows[1]["authors_error_pct_std"]) == pytest.approx(np.std(a_err, ddof=1), rel=1e-5)
    md = out.with_suffix(".md").read_text()
    assert "28.10 ±7.9" in md and "Dataset: photos." in md and "authors' metric" in md
    # another representation for the authors' column: the same formula on GradCells
    out3 = w["tmp"] / "mv3.csv"
    assert main(["evaluate", "mv-table1", "--images", *w["shards"], "--row", f"dsift={w['mv0']},{w['mv1']}",
                 "--authors-feature", "dsift=test_eval_grad", "--out", str(out3)]) == 0
    n2g = np.mean([np.sum((fx[i] - fx[j]) ** 2) for i in range(8) for j in range(8)])
    expect3 = 100 * np.mean([np.sum((fr[i] - fx[i]) ** 2) for i in range(8)]) / n2g
    assert float(read_csv(out3)[0]["authors_error_pct_mean"]) == pytest.approx(expect3, rel=1e-5)
    # precomputed features of the test images give the same numbers
    fstore = w["tmp"] / "fx.h5"
    write_store(fstore, w["keys"], fx, feature="test_eval_grad", params={"cell": 4}, dtype="float32")
    out2 = w["tmp"] / "mv2.csv"
    assert main(["evaluate", "mv-table1", "--images", *w["shards"], "--row", f"dsift={w['mv0']},{w['mv1']}",
                 "--features", f"dsift={fstore}", "--out", str(out2)]) == 0
    assert float(read_csv(out2)[0]["error_pct_mean"]) == pytest.approx(expected, rel=1e-5)


def test_figure7_cli_csv_png_and_untrained_caption(workspace):
    w = workspace
    tmp = w["tmp"]
    params = {"representation": "alexnet", "feature": {"name": "alexnet", "params": {"layer": "conv1", "weights": "random"}}}
    stores = {}
    for name, recs in (("good", w["good"]), ("noisy", w["noisy"])):
        stores[name] = tmp / f"f7-{name}.h5"
        write_store(stores[name], w["keys"], recs, feature="reconstruction", params=params, dtype="float32")
    out = tmp / "results" / "figure7.csv"
    rc = main(["evaluate", "figure7", "--images", *w["shards"], "--dataset", "photos",
               "--point", f"ours:conv2={stores['noisy']}", "--point", f"ours:conv1={stores['good']}",
               "--point", f"ours-bin:conv1={stores['noisy']}", "--point", f"mine:fc8={stores['good']}",
               "--label", "mine=My curve", "--out", str(out)])
    assert rc == 0
    rows = read_csv(out)
    assert list(rows[0]) == list(figures.FIGURE7_COLUMNS)
    assert [(r["curve"], r["layer"]) for r in rows] == [("ours", "conv1"), ("ours", "conv2"),
                                                       ("ours-bin", "conv1"), ("mine", "fc8")]
    assert rows[0]["label"] == FIGURE7_CURVES["ours"] and rows[3]["label"] == "My curve"
    assert float(rows[0]["error_mean"]) < float(rows[1]["error_mean"])
    png = out.with_suffix(".png")
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 150
        assert np.asarray(im.convert("L")).std() > 5  # not blank
    cap = (tmp / "results" / "figure7.csv.caption.txt").read_text()
    assert "untrained" in cap and "photos" in cap
    assert "untrained" in (tmp / "results" / "figure7.png.caption.txt").read_text()
    # another network: its layers' order from --layers (not AlexNet's), its name from --network
    rc = main(["evaluate", "figure7", "--images", *w["shards"], "--dataset", "photos",
               "--point", f"ours:logits={stores['noisy']}", "--point", f"ours:stage4={stores['good']}",
               "--point", f"ours:extra={stores['good']}", "--layers", "stem", "stage4", "logits",
               "--network", "EfficientNet-Lite0, ImageNet weights", "--out", str(out)])
    assert rc == 0
    assert [r["layer"] for r in read_csv(out)] == ["stage4", "logits", "extra"]
    cap = (tmp / "results" / "figure7.csv.caption.txt").read_text()
    assert "Network: EfficientNet-Lite0, ImageNet weights." in cap and "untrained" not in cap


def test_grid_cli_and_perturb_cli(workspace):
    w = workspace
    tmp = w["tmp"]
    png = tmp / "grid.png"
    assert main(["evaluate", "grid", "--images", *w["shards"], "--count", "3", "--dataset", "photos",
                 "--column", f"HOG ours={w['ours0']},{w['ours1']}", "--column", f"noisy={w['mv0']}",
                 "--out", str(png)]) == 0
    _nonblank_png(png)
    with Image.open(png) as im:
        assert min(im.size) > 3 * SIZE  # 3 x 3 cells (input + 2 columns) of at least the image size
    assert "photos" in (tmp / "grid.png.caption.txt").read_text()
    # perturb: a feature store in, a binarised store out, norms kept, provenance recorded
    f = GradCells()(torch.from_numpy(nchw(photo_crops()))).numpy()
    src, dst = tmp / "feat.h5", tmp / "feat-bin.h5"
    write_store(src, w["keys"], f, feature="test_eval_grad", params={"cell": 4}, dtype="float32")
    assert main(["evaluate", "perturb", "--features", str(src), "--kind", "binarize", "--out", str(dst)]) == 0
    with FeatureStore(dst) as st:
        g = st.all()
        assert st.keys == w["keys"] and st.attrs["feature"] == "test_eval_grad"
        assert json.loads(st.attrs["perturbation"])["kind"] == "binarize"
    np.testing.assert_allclose(np.linalg.norm(g.reshape(8, -1), axis=1), np.linalg.norm(f.reshape(8, -1), axis=1),
                               rtol=1e-5)
    # random dropout: each image's draw is seeded by (seed, key), so a perturbed store holds exactly
    # what an autoencoder's on-the-fly features get (reconstruct --perturb), whatever the store order
    from pipeline.features.perturbations import perturb_features

    drop = tmp / "feat-drop.h5"
    assert main(["evaluate", "perturb", "--features", str(src), "--kind", "drop50", "--seed", "3",
                 "--out", str(drop)]) == 0
    with FeatureStore(drop) as st:
        d = st.all()
    want = perturb_features(torch.from_numpy(f[::-1].copy()), w["keys"][::-1], "drop50", 3).numpy()[::-1]
    np.testing.assert_array_equal(d, want)
    assert 0.3 < (d == 0).mean() < 0.7 and (d[f != 0] == 0).any()


def _fake_decoder(in_shape, size=SIZE):
    """A fixed random linear map features -> (B, 3, size, size) in [0, 255] (a stand-in decoder)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(int(np.prod(in_shape)), 3 * 8 * 8, generator=g) / math.sqrt(np.prod(in_shape))

    def dec(f):
        y = torch.sigmoid(f.reshape(len(f), -1).float() @ W * 3).reshape(-1, 3, 8, 8) * 255
        return F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)

    return dec


def _nonblank_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert np.asarray(im.convert("L")).std() > 5
    assert path.with_name(path.name + ".caption.txt").read_text().strip()


def test_figure_functions_with_a_decoder_callable(tmp_path, photos, feats):
    fc8 = torch.randn(3, 1000, 1, 1, generator=torch.Generator().manual_seed(1)) * 3
    figures.figure_topk(tmp_path / "fig8.png", photos[:3], fc8, _fake_decoder((1000, 1, 1)),
                        labels=["a", "b", "c"], caption="Dataset: photos. AlexNet weights: random (untrained encoder).")
    _nonblank_png(tmp_path / "fig8.png")
    dec = _fake_decoder(feats.shape[1:])
    figures.figure_perturbed(tmp_path / "fig9.png", photos[:2], {"l1": (feats[:2], dec), "l2": (feats[:2] * 2, dec)},
                             caption="perturbed")
    _nonblank_png(tmp_path / "fig9.png")
    figures.figure_interpolation(tmp_path / "fig10.png", {"l1": (feats[0], feats[1], dec)}, steps=4,
                                 caption="interp", endpoints=photos[:2])
    _nonblank_png(tmp_path / "fig10.png")
    s = perturbations.HistogramSampler(bins=8).fit(feats)
    figures.figure_random(tmp_path / "fig11.png", {"l1": (dec, s)}, count=4, caption="random")
    _nonblank_png(tmp_path / "fig11.png")
    figures.reconstruction_grid(tmp_path / "g.png", photos[:2], {"half": list(blurred(photos[:2]))}, caption="grid")
    _nonblank_png(tmp_path / "g.png")
    with pytest.raises(ValueError, match="no images"):
        image_grid(tmp_path / "empty.png", [])


def test_figure_cli_with_a_saved_decoder(workspace):
    from pipeline.decoders.architectures import build_decoder
    from pipeline.decoders.modelfile import save_decoder

    w = workspace
    tmp = w["tmp"]
    feat = GradCells()
    dec = build_decoder("conv", feat.output_shape(SIZE, SIZE), SIZE, width=0.05)
    model = tmp / "model"
    model.mkdir()
    save_decoder(model / "decoder.pt", dec, representation="test_eval_grad",
                 feature={"name": "test_eval_grad", "params": {"cell": 4}})
    common = ["--images", *w["shards"], "--dataset", "photos", "--weights", "random"]
    for cmd, extra in (("fig9", ["--count", "2"]), ("fig10", ["--steps", "3"]),
                       ("fig11", ["--count", "3", "--sampler", "gaussian"]),
                       ("fig11", ["--count", "3"])):  # histogram sampler on a conv map (conv5 in the paper)
        out = tmp / f"{cmd}.png"
        assert main(["evaluate", cmd, *common, "--model", f"grad={model}", *extra, "--out", str(out)]) == 0
        _nonblank_png(out)
        assert "untrained" in out.with_name(out.name + ".caption.txt").read_text()
    out = tmp / "fig8.png"
    assert main(["evaluate", "fig8", *common, "--model", str(model), "--out", str(out)]) == 0
    _nonblank_png(out)


def test_table2_checks_report_failures():
    def rec(row, method, e):
        return {"row": row, "name": row, "method": method, "error_mean": e}

    good = [rec("hoggles", "hoggles", 0.6), rec("mv-hog", "mahendran-vedaldi", 0.63), rec("ours-hog", "ours", 0.3),
            rec("ours-lbp", "ours", 0.5), rec("mean-image", "mean-image", 0.7)]
    lines = tables.table2_checks(good)
    assert len(lines) == 2 and lines[0].endswith("yes") and lines[1].endswith("yes")
    bad = [dict(r, error_mean=0.65) if r["row"] == "ours-lbp" else r for r in good]
    assert tables.table2_checks(bad)[1].endswith("NO")  # 0.65 > 0.9 * 0.7
    worse = [dict(r, error_mean=0.62) if r["row"] == "ours-hog" else r for r in good]
    assert tables.table2_checks(worse)[0].endswith("NO")  # above HOGgles
    assert tables.table2_checks([rec("ours-hog", "ours", 0.3)]) == []


def test_reconstruction_stores_one_layout(tmp_path, photos):
    keys = [f"img{i:02d}" for i in range(3)]
    rec = tmp_path / "rec.h5"
    write_reconstructions(rec, keys, nchw(photos[:3]), method="mahendran-vedaldi", representation="hog",
                          feature="hog", feature_params={"cell": 8}, details={"inversion": {"iterations": 3}})
    with ReconstructionStore(rec) as st:
        m = st.meta
        assert st.dtype == np.float16 and st.attrs["pixel_range"] == "0-255" and st.attrs["method"] == m.method
        assert (m.method, m.representation, m.feature, m.feature_params) == ("mahendran-vedaldi", "hog", "hog", {"cell": 8})
        assert m.params["inversion"] == {"iterations": 3}
        assert tables.representation_of_store(m) == ("hog", {"cell": 8})
    # a store that does not record its representation, and a feature store, are named errors
    bare = tmp_path / "bare.h5"
    write_store(bare, keys, nchw(photos[:3]), feature="reconstruction", params={"representation": "hog"})
    with ReconstructionStore(bare) as st, pytest.raises(ValueError, match="bare.h5.*--feature"):
        tables.representation_of_store(st.meta)
    feats = tmp_path / "feats.h5"
    write_store(feats, keys, nchw(photos[:3]), feature="hog", params={"cell": 8})
    with pytest.raises(ValueError, match="not a reconstruction store"):
        ReconstructionStore(feats)


def test_figure7_keeps_identical_curves_visible_and_writes_a_pdf(tmp_path, monkeypatch):
    """Curves lying on top of each other (equal errors) still draw distinguishably:
    each its own marker and line style, slightly offset along x."""
    rec = lambda curve, layer, e: {"curve": curve, "label": curve, "layer": layer, "error_mean": e,
                                   "error_ci95_low": e - 0.01, "error_ci95_high": e + 0.01}
    recs = [rec(c, l, 0.5) for c in ("ours", "mv", "autoencoder") for l in ("conv1", "fc8")]
    figures.plot_layer_errors(tmp_path / "three.png", recs)
    assert (tmp_path / "three.png").stat().st_size > 0 and (tmp_path / "three.pdf").stat().st_size > 0
    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, caption: seen.setdefault("fig", fig))
    figures.plot_layer_errors(tmp_path / "again.png", recs)
    lines = [c.lines[0] for c in seen["fig"].axes[0].containers]  # each errorbar's data line
    assert len(lines) == 3
    assert len({ln.get_marker() for ln in lines}) == 3 and len({ln.get_linestyle() for ln in lines}) == 3
    assert len({tuple(ln.get_xdata()) for ln in lines}) == 3
