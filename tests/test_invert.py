"""Mahendran & Vedaldi inversion (pipeline.baselines): loss, determinism, settings, CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from pipeline.baselines import descent, mv, terms
from pipeline.features import available, get_feature, register


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny problems: one torch thread


@register("test_invert_randconv")
class RandConv(torch.nn.Module):
    """A small fixed differentiable representation: 5x5 conv (16) + ReLU + 2x2 average pooling."""

    name = "test_invert_randconv"

    def __init__(self, channels: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(channels, 3, 5, 5, generator=g) / math.sqrt(75))
        self.params = {"channels": channels, "seed": seed}

    def forward(self, x):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        y = torch.relu(torch.nn.functional.conv2d((x - 120.0) / 60.0, self.w, padding=2))
        return torch.nn.functional.avg_pool2d(y, 2)

    def output_shape(self, H, W):
        return (self.w.shape[0], H // 2, W // 2)


def photo(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) float in [0, 255]: a central square of a scikit-image photo, resized."""
    im = getattr(skdata, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    s = min(im.shape[:2])
    im = im[(im.shape[0] - s) // 2:][:s, (im.shape[1] - s) // 2:][:, :s]
    im = resize(im, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)
    return torch.from_numpy(im.transpose(2, 0, 1))[None]


def test_loss_falls_and_feature_error_far_below_noise():
    feat = RandConv()
    target = photo("astronaut", 24)
    rec, log = mv.invert(feat, target, iterations=100, lambda_tv=0.5, seed=1)
    fl = log.values["feature_loss"][:, 0, 0]
    energy = log.values["energy"][:, 0, 0]
    # The first row is the starting noise, the last the result.
    assert fl[-1] < 0.25 * fl[0]
    assert energy[-1] < 0.5 * energy[0]
    # the logged loss is the true normalised loss of the returned (clipped) image, up to clipping
    with torch.no_grad():
        phi0, phi = feat(target), feat(rec)
    direct = float(((phi - phi0) ** 2).sum() / (phi0**2).sum())
    assert direct < 0.3 * fl[0]
    assert rec.shape == (1, 3, 24, 24) and rec.min() >= 0 and rec.max() <= 255
    # pixel-space error falls too
    pix = log.values["pixel_rmse"][:, 0, 0]
    assert pix[-1] < 0.7 * pix[0]


def test_batch_equals_single_runs():
    feat = RandConv()
    targets = torch.cat([photo("astronaut", 16), photo("coffee", 16), photo("chelsea", 16)])
    keys = ["a", "b", "c"]
    kw = dict(iterations=20, restarts=2, seed=7, schedule="cnn")
    rec, log = mv.invert(feat, targets, keys=keys, **kw)
    for i in range(3):
        r1, l1 = mv.invert(feat, targets[i:i + 1], keys=keys[i:i + 1], **kw)
        torch.testing.assert_close(r1[0], rec[i], atol=1e-3, rtol=0)
        np.testing.assert_allclose(l1.values["energy"][:, 0], log.values["energy"][:, i], rtol=1e-5)
        assert l1.best[0] == log.best[i]
    # restarts differ, and the kept one has the lowest final energy
    e = log.values["energy"][-1]
    assert not np.allclose(e[:, 0], e[:, 1])
    np.testing.assert_array_equal(log.best, e.argmin(1))
    # another seed gives another start
    _, l2 = mv.invert(feat, targets[:1], keys=keys[:1], **dict(kw, seed=8))
    assert l2.values["energy"][0, 0, 0] != log.values["energy"][0, 0, 0]


def test_features_as_target_equal_images_as_target():
    feat = RandConv()
    img = photo("coffee", 24)
    with torch.no_grad():
        phi0 = feat(img)
    a, la = mv.invert(feat, img, iterations=10, keys=["k"])
    b, lb = mv.invert(feat, phi0, image_size=(24, 24), iterations=10, keys=["k"])
    torch.testing.assert_close(a, b)
    assert np.isnan(lb.values["pixel_rmse"]).all() and not np.isnan(la.values["pixel_rmse"]).any()


def test_adam_option_reduces_loss():
    rec, log = mv.invert(RandConv(), photo("astronaut", 24), iterations=60, optimizer="adam", lr=32.0)
    fl = log.values["feature_loss"][:, 0, 0]
    assert fl[-1] < 0.6 * fl[0]
    assert log.settings["optimizer"] == "adam"


def test_schedules_and_momentum_reset():
    segs = descent.make_schedule("invert_nn")
    assert [n for n, _ in segs] == [800, 500, 500, 200, 100]
    assert [r for _, r in segs] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    segs = descent.make_schedule("shallow", iterations=10)
    assert sum(n for n, _ in segs) == 10 and [r for _, r in segs] == pytest.approx([4e-3, 4e-4, 4e-5, 4e-6])
    segs = descent.make_schedule("cnn", lr=1.0, iterations=4)
    assert [n for n, _ in segs] == [1, 2, 1] and [r for _, r in segs] == pytest.approx([1.0, 0.1, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        descent.make_schedule("nope")
    with pytest.raises(ValueError, match="iterations"):
        descent.make_schedule("cnn", iterations=0)
    _, log = mv.invert(RandConv(), photo("camera", 16), iterations=8, schedule="cnn")
    assert list(log.iteration) == list(range(1, 10))
    assert log.lr[:8] == pytest.approx([4e-3, 4e-3, 4e-4, 4e-4, 4e-4, 4e-4, 4e-5, 4e-5])
    assert np.isnan(log.lr[-1])


def test_momentum_matches_hand_written_update():
    """Two segments on a quadratic-free energy: check mu <- 0.9 mu - lr g, x <- x + mu, reset at rate change."""
    feat = RandConv()
    img = photo("camera", 16)
    _, log = mv.invert(feat, img, schedule=[(2, 1.0), (1, 0.1)], lr=1e-3, keys=["k"], lambda_tv=0.0, lambda_alpha=0.0)
    # redo by hand
    sigma = terms.sigma_for(16, 16)
    mean = torch.tensor(terms.RGB_MEAN).view(1, 3, 1, 1)
    x = descent.noise_init(0, "k", 0, (3, 16, 16)).float()[None].requires_grad_(True)
    phi0 = feat(img).detach()
    mu = torch.zeros_like(x)
    losses = []
    for rate, reset in ((1e-3, True), (1e-3, False), (1e-4, True)):
        if reset:
            mu.zero_()
        loss = ((feat(sigma * x + mean) - phi0) ** 2).sum() / (phi0**2).sum()
        losses.append(loss.item())
        (g,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            mu = 0.9 * mu - rate * g
            x += mu
    np.testing.assert_allclose(log.values["feature_loss"][:3, 0, 0], losses, rtol=1e-5)


def test_paper_constants_and_scaling():
    assert terms.sigma_for(227, 227) == pytest.approx(2.7098e4)
    assert terms.scale_lambda(2.16e8, 6, 227, 227) == pytest.approx(2.16e8)
    assert terms.scale_lambda(5.0, 2, 32, 32) == pytest.approx(5.0)
    # alpha-norm weight scales as (HW)^2 so that lambda * sum (x/sigma)^6 is size invariant
    assert terms.scale_lambda(2.16e8, 6, 454, 454) == pytest.approx(2.16e8 * 16)
    # the authors' code: lambdaL2 = 8e-10 on pixels -> lambda_alpha = 8e-10 / 2 * sigma^4 = 2.16e8
    assert 8e-10 / 2 * terms.SIGMA_REF**4 == pytest.approx(2.16e8, rel=0.01)
    la, lv = terms.paper_rule_lambdas()
    assert 1e8 < la < 1e10 and lv > 0
    # Table 3's bold rows: layers 1-6 -> 0.5, 7-12 -> 5, 13-20 -> 50
    cases = {"conv1": 0.5, "relu2": 0.5, "pool2": 5.0, "conv3": 5.0, "conv4": 5.0, "conv4_raw": 5.0,
             "conv5_raw": 50.0, "conv5": 50.0, "fc6": 50.0, "fc8": 50.0, "mpool1": 0.5}
    for layer, lam in cases.items():
        assert terms.default_lambda_tv("alexnet", {"layer": layer, "arch": "caffenet"})[0] == lam, layer
    assert terms.cnn_a_layer_index("conv2", "torchvision") == 7
    assert terms.default_lambda_tv("hog")[0] == 5.0
    # the paper's text (5) and the authors' Table 1 script (lambdaTV = 1 -> 0.5), for every shallow variant
    for name in ("hog", "hogb", "dsift", "cnn_hog", "cnn_hogb", "cnn_dsift"):
        assert terms.default_lambda_tv(name, source="paper")[0] == 5.0
        assert terms.default_lambda_tv(name, source="script")[0] == 0.5
    assert terms.default_lambda_tv("alexnet", {"layer": "fc8"}, source="script")[0] == 50.0
    with pytest.raises(ValueError, match="source"):
        terms.default_lambda_tv("hog", source="code")
    assert descent.default_schedule("alexnet") == "cnn" and descent.default_schedule("hog") == "shallow"
    with pytest.raises(ValueError, match="layer"):
        terms.cnn_a_layer_index("conv9")


def test_bad_parameters_are_named():
    feat, img = RandConv(), photo("camera", 16)
    for kw, word in [({"restarts": 0}, "restarts"), ({"channels": 2}, "channels"),
                     ({"optimizer": "sgd"}, "optimizer"), ({"keys": ["a", "b"]}, "keys"),
                     ({"lr": -1.0}, "lr"), ({"log_every": 0}, "log_every")]:
        with pytest.raises(ValueError, match=word):
            mv.invert(feat, img, iterations=1, **kw)


def test_grey_reconstruction_for_grey_representations():
    class Grey(RandConv):
        grayscale = True

    rec, log = mv.invert(Grey(), photo("camera", 16), iterations=3)
    assert rec.shape == (1, 1, 16, 16) and log.settings["channels"] == 1 and log.settings["mean"] == [128.0]


def test_clamp_safeguard_stops_alpha_norm_divergence():
    """A too-large step makes the x^6 term blow up on the grey noise's outliers; the clamp keeps it finite."""

    class Grey(RandConv):
        grayscale = True

    kw = dict(iterations=30, schedule=[(30, 1.0)], lr=0.05, keys=["k"])
    with np.errstate(all="ignore"):
        _, free = mv.invert(Grey(), photo("camera", 16), clamp=None, **kw)
    assert not np.isfinite(free.values["energy"][-1]).all() or free.values["energy"][-1].max() > 1e6
    rec, safe = mv.invert(Grey(), photo("camera", 16), **kw)
    assert np.isfinite(safe.values["energy"]).all() and safe.settings["clamp"] == 4.0
    with pytest.raises(ValueError, match="clamp"):
        mv.invert(Grey(), photo("camera", 16), clamp=-1.0, iterations=1)


@pytest.mark.skipif("hog" not in available(), reason="differentiable HOG not registered yet")
def test_hog_inversion_reduces_feature_error():
    hog = get_feature("hog")
    target = photo("camera", 48)
    rec, log = mv.invert(hog, target, iterations=120, seed=0)
    fl = log.values["feature_loss"][:, 0, 0]
    assert np.isfinite(fl).all()
    assert fl[-1] < 0.5 * fl[0]
    assert rec.shape[1] == 1


def test_alexnet_layer_inversion_runs_and_reduces_loss():
    feat = get_feature("alexnet", layer="conv1", arch="caffenet", weights="random", seed=0)
    target = photo("astronaut", 67)
    rec, log = mv.invert(feat, target, iterations=30, seed=0)
    fl = log.values["feature_loss"][:, 0, 0]
    # conv1 = norm1, layer 4 of Table 2: the first lambda_V group; the CNN schedule
    assert log.settings["lambda_tv"] == 0.5 and log.settings["schedule"] == "cnn"
    assert rec.shape == (1, 3, 67, 67)
    assert fl[-1] < 0.5 * fl[0]


def test_tv_source_option_sets_the_shallow_weight(tmp_path):
    from pipeline.cli import main
    from pipeline.data.shards import Sample, write_shard
    from pipeline.store import ReconstructionStore

    shard = tmp_path / "val.tar"
    write_shard(shard, [Sample("k0", photo("coffee", 32)[0].permute(1, 2, 0).numpy().round().astype(np.uint8))])
    for source, lam in (("paper", 5.0), ("script", 0.5)):
        out = tmp_path / f"{source}.h5"
        assert main(["invert-mv", "--shard", str(shard), "--out", str(out), "--feature", "cnn_hog",
                     "--iterations", "2", "--tv-source", source]) == 0
        with ReconstructionStore(out) as st:
            inv = st.meta.params["inversion"]
            assert inv["lambda_tv"] == lam and inv["tv_source"] == source and inv["channels"] == 1


def test_cli_writes_store_and_log(tmp_path):
    from pipeline.cli import main
    from pipeline.data.shards import Sample, write_shard
    from pipeline.store import FeatureStore

    imgs = [photo(n, 24)[0].permute(1, 2, 0).numpy().round().astype(np.uint8) for n in ("astronaut", "coffee", "chelsea")]
    shard = tmp_path / "val-000.tar"
    write_shard(shard, [Sample(f"k{i}", im) for i, im in enumerate(imgs)])
    out, logp = tmp_path / "rec.h5", tmp_path / "log.csv"
    rc = main(["invert-mv", "--shard", str(shard), "--out", str(out), "--log", str(logp),
               "--feature", "test_invert_randconv", "--params", json.dumps({"channels": 8}),
               "--iterations", "6", "--restarts", "2", "--batch-size", "2", "--max-images", "3", "--seed", "3"])
    assert rc == 0
    with FeatureStore(out) as s:
        assert s.keys == ["k0", "k1", "k2"] and s.shape == (3, 3, 24, 24) and str(s.dtype) == "float16"
        allrec = s.all()
        assert s.attrs["feature"] == "reconstruction" and s.attrs["pixel_range"] == "0-255"
        assert s.attrs["method"] == "mahendran-vedaldi" and s.params["representation"] == "test_invert_randconv"
        assert s.params["feature"] == {"name": "test_invert_randconv", "params": {"channels": 8, "seed": 0}}
        assert s.params["inversion"]["restarts"] == 2 and s.params["inversion"]["iterations"] == 6
    assert 0 <= allrec.min() and allrec.max() <= 255
    rows = list(csv.DictReader(open(logp)))
    assert len(rows) == 3 * 2 * 7  # targets x restarts x (6 iterations + final)
    assert {r["key"] for r in rows} == {"k0", "k1", "k2"}
    assert sum(int(r["best"]) for r in rows if r["iteration"] == "7") == 3
    # the batch split does not change the result (keys seed the noise)
    feat = RandConv(channels=8)
    single, _ = mv.invert(feat, torch.from_numpy(imgs[2].transpose(2, 0, 1)[None].astype(np.float32)),
                          keys=["k2"], iterations=6, restarts=2, seed=3)
    np.testing.assert_allclose(allrec[2], single[0].numpy(), atol=0.25)  # float16 store


def test_cli_first_images_of_the_split_with_preceding_manifests(tmp_path):
    """--max-images N --preceding MANIFEST...: the split's first N images, across shards."""
    from pipeline.cli import main
    from pipeline.data.shards import Sample, write_shard
    from pipeline.store import FeatureStore

    imgs = [photo(n, 16)[0].permute(1, 2, 0).numpy().round().astype(np.uint8) for n in ("astronaut", "coffee", "chelsea")]
    shards, manifests = [], []
    for s, keys in enumerate((["a0", "a1"], ["b0", "b1"], ["c0"])):
        shards.append(tmp_path / f"{s:05d}.tar")
        write_shard(shards[-1], [Sample(k, imgs[i]) for i, k in enumerate(keys)])
        manifests.append(tmp_path / f"{s:05d}.json")
        manifests[-1].write_text(json.dumps({"shard": s, "count": len(keys)}))
    common = ["--feature", "test_invert_randconv", "--params", json.dumps({"channels": 4}), "--iterations", "2",
              "--max-images", "3"]
    got = []
    for s in range(3):
        out = tmp_path / f"rec{s}.h5"
        preceding = ["--preceding", *map(str, manifests[:s])]
        assert main(["invert-mv", "--shard", str(shards[s]), "--out", str(out), *common, *preceding]) == 0
        with FeatureStore(out) as st:
            got.append(list(st.keys))
    assert got == [["a0", "a1"], ["b0"], []]
    # without --preceding: the first 3 of each shard
    assert main(["invert-mv", "--shard", str(shards[1]), "--out", str(tmp_path / "own.h5"), *common]) == 0
    with FeatureStore(tmp_path / "own.h5") as st:
        assert st.keys == ["b0", "b1"]


def test_dsift_gradient_is_finite_where_gx_equals_gy():
    """DSIFT's orientation binning divided both ways and selected with torch.where: where
    gx = |gy| (saturated or ramp regions, common once the iterate is clamped to [0, 255]) the
    unused branch divided by zero and every gradient of the inversion became NaN (Table 1's
    DSIFT row was NaN on the sample data)."""
    i, j = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    ramp = (2 * (i + j)).expand(1, 3, 48, 48).clone().requires_grad_(True)
    crops = [np.asarray(getattr(skdata, n)())[100:164, 200:264] for n in ("astronaut", "coffee", "chelsea")]
    photos = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().clamp(20, 235).requires_grad_(True)
    feat = get_feature("dsift")
    for x in (ramp, photos):
        feat(x).pow(2).sum().backward()
        assert torch.isfinite(x.grad).all()
    rec, log = mv.invert(feat, photos.detach(), iterations=8, seed=0)
    assert torch.isfinite(rec).all() and np.isfinite(log.values["feature_loss"]).all()


@register("test_invert_nan")
class NaNFeature(RandConv):
    """RandConv whose values are NaN: an inversion through it cannot be finite."""

    name = "test_invert_nan"

    def forward(self, x):
        return super().forward(x) * float("nan")


def test_a_non_finite_inversion_is_an_error_naming_the_shard_and_keys(tmp_path):
    from pipeline.cli import main
    from pipeline.data.shards import Sample, write_shard

    imgs = [photo(n, 16)[0].permute(1, 2, 0).numpy().round().astype(np.uint8) for n in ("astronaut", "coffee")]
    shard = tmp_path / "val-000.tar"
    write_shard(shard, [Sample(f"k{i}", im) for i, im in enumerate(imgs)])
    out = tmp_path / "rec.h5"
    with pytest.raises(descent.NonFiniteInversionError, match=r"val-000\.tar.*feature_loss.*'k0', 'k1'"):
        main(["invert-mv", "--shard", str(shard), "--out", str(out), "--feature", "test_invert_nan",
              "--iterations", "2"])
    assert not out.exists()
    ok = torch.zeros(2, 1, 4, 4)
    descent.check_finite("s", ["a", "b"], ok, {"energy": np.array([1.0, 2.0])})
    with pytest.raises(descent.NonFiniteInversionError, match=r"s: .*pixels.* 1 of 2 .*'b'"):
        descent.check_finite("s", ["a", "b"], torch.stack([ok[0], ok[1] / 0]), {"energy": np.ones(2)})
