"""Natural pre-images (Mahendran & Vedaldi 2016, IJCV): maximisation, caricatures, masked inversion,
a generic layer end to end."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from pipeline.cli import main
from pipeline.decoders.architectures import build_decoder
from pipeline.features import get_feature
from pipeline.preimage.masks import feature_mask, mask_store, parse_channels
from pipeline.preimage.objectives import activation_scale, unit_direction
from pipeline.preimage.optimise import preimage
from pipeline.data.shards import Sample, write_shard
from pipeline.store import FeatureStore, write_store

SIZE = 32


class SmallNet(nn.Module):
    """conv 5x5/8 s2, ReLU, conv 3x3/16 s2, ReLU, fc 16*8*8 -> 10 (a generic model, random weights)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


MODEL = f"{__name__}:SmallNet"


def small(layer="features.2", **kw):
    return get_feature("torch", model=MODEL, layer=layer, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- maximisation


def test_maximising_a_unit_increases_its_activation_by_a_large_factor():
    f = small("features.2")  # pre-ReLU conv: (16, 8, 8)
    units = [0, 3, 7]
    out, log = preimage(f, "maximise", units=units, position="center", image_size=(SIZE, SIZE),
                        iterations=60, jitter=0, seed=0, preset="cvpr")
    assert out.shape == (3, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 255
    Z = log.settings["activation_scale"]
    assert Z == pytest.approx(activation_scale(f, None, (SIZE, SIZE)))
    with torch.no_grad():
        final = f(out)[torch.arange(3), torch.tensor(units), 4, 4]
    start = torch.as_tensor(log.first("objective"), dtype=final.dtype)
    # measured on the saved image, without jitter: many times the start and the layer's typical activation
    assert (final > 5 * start.abs()).all() and (final > 5 * Z).all(), (start / Z, final / Z)
    # a target's result does not depend on its batch
    one, _ = preimage(f, "maximise", units=[3], position="center", image_size=(SIZE, SIZE), iterations=60,
                      keys=[log.keys[1]], scale=Z, jitter=0, preset="cvpr")
    torch.testing.assert_close(one[0], out[1], rtol=1e-4, atol=1e-2)


def test_maximising_a_channel_mean_of_an_alexnet_layer():
    f = get_feature("alexnet", arch="caffenet", layer="conv1_raw", weights="random")
    out, log = preimage(f, "maximise", units=[5, 40], image_size=(35, 35), iterations=30, preset="cvpr")
    with torch.no_grad():
        final = f(out)[:, [5, 40]].mean((2, 3)).diagonal()
    Z = log.settings["activation_scale"]
    start = torch.as_tensor(log.first("objective"), dtype=final.dtype)
    assert (final > 10 * start.abs()).all() and (final > 0.5 * Z).all(), (start / Z, final / Z)


def test_unit_direction_and_restarts():
    e = unit_direction((4, 3, 5), 2, "center")
    assert e.sum() == 1 and e[2, 1, 2] == 1
    e = unit_direction((4, 3, 5), 1, "mean")
    assert e[1].sum() == pytest.approx(1) and e[[0, 2, 3]].sum() == 0
    with pytest.raises(ValueError, match="channel"):
        unit_direction((4, 3, 5), 4)
    f = small("features.2")
    out, log = preimage(f, "maximise", units=[1], position=(2, 5), image_size=(SIZE, SIZE), iterations=20,
                        restarts=3)
    assert log.values["energy"].shape[1:] == (1, 3)
    assert log.best[0] == np.argmin(log.values["energy"][-1, 0])


# ----------------------------------------------------------------------------- caricatures


def test_caricature_increases_the_inner_product_with_the_images_code(square_photos):
    f = small("features.3")
    x = square_photos(2, SIZE)
    # tiny downsampled photos have strong edges: Mahendran & Vedaldi 2015's TV weight (5) would mostly smooth them
    out, log = preimage(f, "caricature", images=x, iterations=40, lambda_tv=0.5, jitter=0, preset="cvpr")
    with torch.no_grad():
        phi0, phi = f(x), f(out)
    before = (phi0 * phi0).flatten(1).sum(1)
    after = (phi0 * phi).flatten(1).sum(1)
    assert (after > 2 * before).all(), after / before
    assert log.settings["init"] == "image"
    # with a mask: only the window's code is exaggerated
    m = feature_mask((16, 8, 8), window=3)
    out_m, log_m = preimage(f, "caricature", images=x, mask=m, iterations=40, lambda_tv=0.5, jitter=0,
                            preset="cvpr")
    with torch.no_grad():
        phi_m = f(out_m)
    inner = lambda a, b: (a * b * m).flatten(1).sum(1)  # noqa: E731
    assert (inner(phi0, phi_m) > 2 * inner(phi0, phi0)).all()
    assert log_m.settings["masked"]


# ----------------------------------------------------------------------------- masks


def test_feature_mask_windows_and_channel_groups():
    m = feature_mask((6, 13, 13), window=5)
    assert m.shape == (1, 6, 13, 13) and m.sum() == 6 * 25
    assert m[0, 0, 4:9, 4:9].all() and m[0, 0, 3].sum() == 0
    assert feature_mask((6, 13, 13), window=5, center=(0, 0)).sum() == 6 * 9  # cut at the border
    g = feature_mask((256, 6, 6), channels="2/2")
    assert g[0, :128].sum() == 0 and g[0, 128:].all()
    both = feature_mask((256, 6, 6), channels="0:10", window=1)
    assert both.sum() == 10 and both[0, :10, 3, 3].all()
    assert parse_channels("3,1", 4) == [3, 1]
    for bad in ("1/3", "0:0", "7"):
        with pytest.raises(ValueError, match="channels"):
            parse_channels(bad, 4)


def test_inverting_from_a_window_matches_only_the_window(square_photos):
    f = small("features.2")
    x = square_photos(1, SIZE)
    m = feature_mask((16, 8, 8), window=3)
    out, log = preimage(f, "invert", images=x, mask=m, iterations=80, optimizer="adam", lr=8, preset="cvpr")
    with torch.no_grad():
        phi0, phi = f(x), f(out)
    err = ((phi - phi0) ** 2 * m).sum() / ((phi0 ** 2) * m).sum()
    err_out = ((phi - phi0) ** 2 * (1 - m)).sum() / ((phi0 ** 2) * (1 - m)).sum()
    assert log.first("objective")[0] > 0.5 and err < 0.25 and err_out > 2 * err, (err, err_out)
    # the data term is invert.FeatureLoss with the mask: the logged objective is the masked loss
    assert log.final("objective")[0] == pytest.approx(float(err), rel=1e-2)  # output clipped to [0, 255]


def test_mask_store_zeroes_the_rest_and_keeps_provenance(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 8, 6, 6)).astype(np.float32)
    src, dst = tmp_path / "a.h5", tmp_path / "b.h5"
    write_store(src, ["a", "b", "c"], feats, feature="torch", params={"layer": "x"}, image_shard="s.tar",
                dtype="float32")
    m = feature_mask((8, 6, 6), window=2, channels="1/2")
    mask_store(src, dst, m)
    with FeatureStore(dst) as s:
        got, keys, params, attrs = s.all(), s.keys, s.params, s.attrs
    np.testing.assert_array_equal(got, feats * m.numpy())
    assert list(keys) == ["a", "b", "c"] and params["layer"] == "x" and attrs["image_shard"] == "s.tar"
    assert params["mask"]["channels"] == [0, 4] and params["mask"]["kept_fraction"] == pytest.approx(float(m.mean()))


# ----------------------------------------------------------------------------- a generic layer end to end


@pytest.fixture(scope="module")
def shards(tmp_path_factory, downsampled_crops):
    d = tmp_path_factory.mktemp("preimage_data")
    train = downsampled_crops(skimage.data.astronaut(), 12, 0, SIZE) + downsampled_crops(skimage.data.coffee(), 12, 1, SIZE)
    write_shard(d / "train.tar", [Sample(f"t{i:02d}", im) for i, im in enumerate(train)])
    val = downsampled_crops(skimage.data.chelsea(), 3, 2, SIZE)
    write_shard(d / "val.tar", [Sample(f"v{i}", im) for i, im in enumerate(val)])
    return {"train": str(d / "train.tar"), "val": str(d / "val.tar"), "val_images": np.stack(val)}


def test_a_generic_layer_of_a_tiny_model_is_inverted_end_to_end(shards, tmp_path):
    params = {"model": MODEL, "layer": "features.3"}
    f = get_feature("torch", **params)
    shape = f.output_shape(SIZE, SIZE)
    assert shape == (16, 8, 8)
    # learned: the decoders take the layer's shape and stride (8x8 grid -> 2 doublings -> 32x32)
    dec = build_decoder("conv", shape, SIZE, width=0.125)
    assert dec.native_size == (SIZE, SIZE)
    assert dec(torch.zeros(2, *shape)).shape == (2, 3, SIZE, SIZE)
    vec = get_feature("torch", model=MODEL, layer="fc").output_shape(SIZE, SIZE)
    assert vec == (10, 1, 1) and build_decoder("fc", vec, SIZE, width=0.0625)(torch.zeros(2, 10, 1, 1)).shape[1] == 3
    out = tmp_path / "model"
    common = ["--images", shards["train"], "--out", str(out), "--width", "0.125", "--batch-size", "8",
              "--log-every", "1", "--threads", "1", "--seed", "0", "--on-the-fly", "--feature", "torch",
              "--params", json.dumps(params)]
    assert main(["train", "--representation", "small_features3", "--steps", "12", *common]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "conv" and cfg["in_shape"] == [16, 8, 8] and cfg["native_size"] == [SIZE, SIZE]
    losses = [float(r.split(",")[2]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0]
    rec = tmp_path / "rec.h5"
    assert main(["reconstruct", "--model", str(out), "--images", shards["val"], "--on-the-fly",
                 "--out", str(rec)]) == 0
    with FeatureStore(rec) as s:
        assert s.shape == (3, 3, SIZE, SIZE)
    # optimisation: the same layer, inverted by the M&V energy through the CLI
    store, grid = tmp_path / "inv.h5", tmp_path / "inv.png"
    assert main(["preimage", "--mode", "invert", "--feature", "torch", "--params", json.dumps(params),
                 "--shard", shards["val"], "--iterations", "60", "--optimizer", "adam", "--lr", "8", "--preset", "cvpr",
                 "--out", str(store), "--grid", str(grid), "--threads", "1"]) == 0
    with h5py.File(store) as h:
        x = h["features"][:]
        assert x.dtype == np.float16 and x.shape == (3, 3, SIZE, SIZE) and h.attrs["method"] == "preimage-invert"
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h["keys"][:]]
        assert keys == [f"features.3/v{i}" for i in range(3)]
    target = torch.from_numpy(shards["val_images"]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        phi0 = f(target)
        rel = ((f(torch.from_numpy(x.astype(np.float32))) - phi0) ** 2).flatten(1).sum(1) / (phi0 ** 2).flatten(1).sum(1)
    assert (rel < 0.3).all(), rel
    assert Image.open(grid).size[0] > 2 * SIZE


def test_cli_maximise_writes_a_store_and_a_grid_over_layers(tmp_path):
    store, grid = tmp_path / "max.h5", tmp_path / "max.png"
    assert main(["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
                 "--layers", "features.0", "features.2", "--units", "0", "1", "--size", str(SIZE),
                 "--iterations", "10", "--out", str(store), "--grid", str(grid), "--threads", "1"]) == 0
    with h5py.File(store) as h:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h["keys"][:]]
        assert keys == ["features.0/c0000", "features.0/c0001", "features.2/c0000", "features.2/c0001"]
        assert h["features"].shape == (4, 3, SIZE, SIZE) and h["features"].dtype == np.float16
        assert h.attrs["method"] == "preimage-maximise"
        p = json.loads(h.attrs["params"])
        assert p["mode"] == "maximise" and p["runs"][1]["layer"] == "features.2"
    assert Image.open(grid).size[0] > 2 * SIZE
    assert "untrained" in (tmp_path / "max.png.caption.txt").read_text()
    with pytest.raises(SystemExit, match="units"):
        main(["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
              "--out", str(store)])


def test_grids_name_layers_and_channels_plainly(tmp_path, monkeypatch):
    from pipeline.preimage import commands

    assert commands.plain_layer_name("conv5_raw") == "conv5 (before ReLU)"
    assert commands.plain_layer_name("fc8_raw") == "fc8"
    assert commands.plain_layer_name("features.2") == "features.2"
    assert commands.plain_layer_name("x_rawest") == "x_rawest"
    seen = {}
    monkeypatch.setattr(commands, "image_grid", lambda path, rows, **kw: seen.update(kw))
    assert main(["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
                 "--layers", "features.0", "--units", "0", "3", "--size", str(SIZE), "--iterations", "2",
                 "--grid", str(tmp_path / "g.png"), "--threads", "1"]) == 0
    assert seen["col_labels"] == ["channel 0", "channel 3"] and seen["row_labels"] == ["features.0"]


def test_units_for_gives_one_tap_its_own_units(tmp_path, monkeypatch):
    """--units-for TAP=U,U (e.g. ImageNet classes of the logits) replaces --units for that tap only."""
    from pipeline.preimage import commands

    seen = {}
    monkeypatch.setattr(commands, "image_grid", lambda path, rows, **kw: seen.update(kw, rows=rows))
    store = tmp_path / "u.h5"
    assert main(["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
                 "--layers", "features.0", "features.2", "--units", "0", "1", "--units-for", "features.2=3,5",
                 "--size", str(SIZE), "--iterations", "2", "--out", str(store),
                 "--grid", str(tmp_path / "g.png"), "--threads", "1"]) == 0
    with h5py.File(store) as h:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h["keys"][:]]
    assert keys == ["features.0/c0000", "features.0/c0001", "features.2/c0003", "features.2/c0005"]
    assert seen["row_labels"] == ["features.0", "features.2: 3, 5"] and seen["col_labels"] == ["unit 1", "unit 2"]
    base = ["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
            "--layers", "features.0", "features.2", "--units", "0", "1", "--size", str(SIZE), "--iterations", "1",
            "--out", str(tmp_path / "never.h5")]
    with pytest.raises(ValueError, match="same number of units"):
        main(base + ["--units-for", "features.2=3"])
    with pytest.raises(ValueError, match="features.9=3.*one of --layers"):
        main(base + ["--units-for", "features.9=3"])


class NaNNet(SmallNet):
    """SmallNet whose first convolution has NaN biases: every layer's code is NaN."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.features[0].bias.fill_(float("nan"))


def test_a_non_finite_pre_image_is_an_error_naming_the_shard_and_keys(shards, tmp_path):
    from pipeline.baselines.descent import NonFiniteInversionError

    out = tmp_path / "nan.h5"
    with pytest.raises(NonFiniteInversionError, match=r"val\.tar \(features\.2, invert\).*'features\.2/v0'"):
        main(["preimage", "--mode", "invert", "--feature", "torch",
              "--params", json.dumps({"model": f"{__name__}:NaNNet", "layer": "features.2"}),
              "--shard", shards["val"], "--iterations", "2", "--out", str(out), "--threads", "1"])
    assert not out.exists()


# ----------------------------------------------------------------------------- the authors' settings (nnpreimage)


def test_ijcv_constants_and_jitter_from_the_layer_stride():
    from pipeline.preimage import ijcv

    assert ijcv.LAMBDA_RANGE == pytest.approx(80.0 ** -6) and ijcv.LAMBDA_TV == pytest.approx((6.5 / 80) ** 2)
    assert ijcv.LR == pytest.approx(0.05 * 80 ** 2 / 6) and ijcv.BOUND == 160.0
    # max(round(stride / 4), 1), stride of the tap's receptive field (AlexNet in the authors' MatConvNet)
    want = {"conv1_raw": 1, "conv1": 2, "conv2_raw": 2, "conv2": 4, "conv3": 4, "conv5_raw": 4, "conv5": 8,
            "fc6": 8, "fc8": 8}
    for layer, j in want.items():
        f = get_feature("alexnet", arch="caffenet", layer=layer, weights="random")
        assert ijcv.jitter_amount(f, (227, 227)) == j, layer
    assert ijcv.layer_stride(get_feature("alexnet", arch="torchvision", layer="conv1", weights="random"),
                             (64, 64)) == 8  # torchvision: conv1 is pool1
    # other networks: measured from output_shape (two stride-2 convolutions), 1 for a vector
    assert ijcv.layer_stride(small("features.2"), (SIZE, SIZE)) == 4
    assert ijcv.layer_stride(small("fc"), (SIZE, SIZE)) == 1
    x = ijcv.uniform_init(0, "k", 0, (3, 40, 40))
    assert torch.quantile(x.flatten(), 0.95) == pytest.approx(80 / np.sqrt(3)) and x.abs().max() < 60
    assert torch.equal(x, ijcv.uniform_init(0, "k", 0, (3, 40, 40)))


def test_adagrad_descent_is_the_authors_update():
    """nnpreimage.m: G = m G + g.^2; v = m v - g ./ (1/lr + sqrt(G)); x = x + v; reset at a rate change."""
    from pipeline.baselines.descent import descend

    target = torch.tensor([3.0, -1.0, 0.5])
    grad = lambda v: (2 * (v - target) * torch.tensor([1.0, 10.0, 0.1]), torch.zeros(1))  # noqa: E731
    x = torch.zeros(3)
    descend(x, grad, [(5, 2.0), (3, 0.5)], optimizer="adagrad", momentum=0.9)
    y, G, v = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    for n, lr in ((5, 2.0), (3, 0.5)):
        G.zero_(), v.zero_()
        for _ in range(n):
            g = grad(y)[0]
            G = 0.9 * G + g ** 2
            v = 0.9 * v - g / (1 / lr + G.sqrt())
            y = y + v
    torch.testing.assert_close(x, y)


def test_ijcv_inversion_jitters_a_canvas_then_refines_without_jitter(square_photos):
    from pipeline.preimage import ijcv

    f = small("features.3")
    x = square_photos(2, SIZE)
    out, log = preimage(f, "invert", images=x, iterations=40, jitter=3, objective_weight=100.0)
    st = log.settings
    assert (st["preset"], st["range"], st["optimizer"], st["clamp"], st["jitter"]) == \
        ("ijcv", "bounded", "adagrad", 1.25, 3)
    assert st["lambda_range"] == ijcv.LAMBDA_RANGE and st["lambda_tv"] == ijcv.LAMBDA_TV and st["sigma"] == 1.0
    # 300 + 50 iterations rescaled to 40: 34 with jitter at LR, 6 without at LR / 10; rates x pixels
    assert st["segments"] == [[34, pytest.approx(ijcv.LR * SIZE * SIZE)], [6, pytest.approx(0.1 * ijcv.LR * SIZE * SIZE)]]
    assert list(log.iteration) == list(range(1, 42))
    assert out.shape == (2, 3, SIZE, SIZE)
    mean = torch.tensor([122.7, 116.7, 104.0]).view(1, 3, 1, 1)
    assert ((out - mean).norm(dim=1) <= 160 + 1e-3).all()  # the colour-norm bound (then clipped to [0, 255])
    first, final = log.first("objective"), log.final("objective")
    assert (final < 0.5 * first).all(), (first, final)
    # the default multiplier C = 1 (nnpreimage's get_defaults), the 2015 multipliers are refused
    assert preimage(f, "invert", images=x[:1], iterations=2)[1].settings["objective_weight"] == 1.0
    with pytest.raises(ValueError, match="lambda_range"):
        preimage(f, "invert", images=x[:1], iterations=2, lambda_alpha=1e8)


def test_ijcv_maximisation_increases_the_unit(tmp_path):
    f = small("features.2")
    out, log = preimage(f, "maximise", units=[0, 3], position="center", image_size=(SIZE, SIZE), iterations=60)
    assert log.settings["optimizer"] == "adagrad" and len(log.settings["segments"]) == 1
    with torch.no_grad():
        final = f(out)[torch.arange(2), torch.tensor([0, 3]), 4, 4]
    Z = log.settings["activation_scale"]
    assert (final > 3 * Z).all() and (final > 3 * torch.as_tensor(log.first("objective")).abs().float()).all()
    # the command line's --preset reaches the runs
    store = tmp_path / "max.h5"
    for preset in ("ijcv", "cvpr"):
        assert main(["preimage", "--mode", "maximise", "--feature", "torch", "--params", json.dumps({"model": MODEL}),
                     "--layers", "features.2", "--units", "0", "--size", str(SIZE), "--iterations", "3",
                     "--preset", preset, "--out", str(store), "--threads", "1"]) == 0
        with h5py.File(store) as h:
            assert json.loads(h.attrs["params"])["runs"][0]["preset"] == preset
