"""AlexNet representation: weights loading, layer shapes, taps, normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from skimage.transform import resize

from pipeline.features import get_feature
from pipeline.features import alexnet as ax
from pipeline.features import alexnet_weights as aw

# torchvision's AlexNet state dict: keys and shapes (alexnet-owt-7be5be79.pth).
TV_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}

# Dosovitskiy & Brox 2016, supplementary Table 3 (CaffeNet at 227x227): output of each layer.
CAFFENET_227 = {
    "conv1_raw": (96, 55, 55), "conv1": (96, 27, 27), "conv2": (256, 13, 13),
    "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5_raw": (256, 13, 13),
    "conv5": (256, 6, 6), "fc6": (4096, 1, 1), "fc7": (4096, 1, 1), "fc8": (1000, 1, 1),
}
TORCHVISION_227 = {
    "conv1_raw": (64, 56, 56), "conv1": (64, 27, 27), "conv2": (192, 13, 13),
    "conv3": (384, 13, 13), "conv4": (256, 13, 13), "conv5_raw": (256, 13, 13),
    "conv5": (256, 6, 6), "avgpool": (256, 6, 6), "fc6": (4096, 1, 1),
    "fc7": (4096, 1, 1), "fc8": (1000, 1, 1),
}


# One intra-op thread: the CPU is shared, oversubscription makes AlexNet 10x slower.
pytestmark = pytest.mark.usefixtures("one_thread_module")


def _random_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("weight"):
            fan_in = int(np.prod(shape[1:]))
            out[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def _caffe_blobs(seed: int) -> dict:
    sd = _random_state(
        {f"{n}.{s}": shp for n, shapes in aw.CAFFENET_SHAPES.items() for s, shp in zip(("weight", "bias"), shapes)},
        seed,
    )
    return {n: (sd[f"{n}.weight"].numpy(), sd[f"{n}.bias"].numpy()) for n in aw.CAFFENET_SHAPES}


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "alexnet-owt-test.pth"
    state = _random_state(TV_SHAPES, 1)
    torch.save(state, path)
    return str(path), state


@pytest.fixture(scope="module")
def caffe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "caffenet.pth"
    state = aw.caffe_to_state_dict(_caffe_blobs(2))
    torch.save(state, path)
    return str(path), state


def _photos(size=227):
    """(2, 3, size, size) float in [0, 255]: astronaut and coffee."""
    imgs = [resize(im, (size, size), anti_aliasing=True, preserve_range=True)
            for im in (skdata.astronaut(), skdata.coffee())]
    return torch.from_numpy(np.stack(imgs).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def photos():
    return _photos()


# ------------------------------------------------------------------ weights


def test_torchvision_strict_load(tv_file, photos):
    path, state = tv_file
    f = get_feature("alexnet", layer="conv1_raw", arch="torchvision", weights=path)
    assert f.trained and f.params == {"layer": "conv1_raw", "arch": "torchvision", "weights": path, "seed": 0}
    json.dumps(f.params)
    got = f.net.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == TV_SHAPES
    for k in TV_SHAPES:
        assert torch.equal(got[k], state[k]), k
    # conv1 by hand: (x / 255 - mean) / std, conv 11x11 stride 4 pad 2
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = photos[:1]
    ref = F.conv2d((x / 255 - mean) / std, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2)
    torch.testing.assert_close(f(x), ref, rtol=1e-4, atol=1e-4)


def test_wrong_key_or_shape_fails_clearly(tv_file, tmp_path):
    _, state = tv_file
    bad = dict(state)
    bad["features.00.weight"] = bad.pop("features.0.weight")
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"features\.0\.weight") as e:
        get_feature("alexnet", arch="torchvision", weights=str(p))
    assert "features.00.weight" in str(e.value) and "arch='torchvision'" in str(e.value)
    bad = dict(state)
    bad["classifier.6.weight"] = torch.zeros(10, 4096)
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"classifier\.6\.weight"):
        get_feature("alexnet", arch="torchvision", weights=str(p))


def test_torchvision_weights_into_caffenet_hint(tv_file):
    path, _ = tv_file
    with pytest.raises(ValueError, match=r"keys are those of arch='torchvision'"):
        get_feature("alexnet", arch="caffenet", weights=path)


@pytest.mark.parametrize("arch,hint", [("torchvision", "IMAGENET1K_V1"), ("caffenet", "caffemodel")])
def test_missing_weights_file(arch, hint, tmp_path):
    missing = str(tmp_path / "nope.pth")
    for call in (lambda: aw.check_weights(arch, missing),
                 lambda: get_feature("alexnet", arch=arch, weights=missing)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        msg = str(e.value)
        assert missing in msg and hint in msg and "weights='random'" in msg


def test_weights_torchvision_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match="network is unreachable") as e:
        aw.check_weights("torchvision", "torchvision")
    assert "alexnet-owt-7be5be79.pth" in str(e.value)
    with pytest.raises(ValueError, match="only exists for arch='torchvision'"):
        aw.check_weights("caffenet", "torchvision")


def test_weights_torchvision_uses_cache(monkeypatch, tmp_path, tv_file):
    path, state = tv_file
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.symlink_to(path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    f = get_feature("alexnet", layer="fc8", arch="torchvision", weights="torchvision")
    assert f.trained and f.params["weights"] == str(cached)
    assert torch.equal(f.net.classifier[6].bias, state["classifier.6.bias"])


# ------------------------------------------------------------------ caffe conversion


def test_caffe_to_state_dict_reshapes_and_validates():
    blobs = _caffe_blobs(3)
    old = dict(blobs)
    w, b = blobs["fc6"]
    old["fc6"] = (w.reshape(1, 1, 4096, 9216), b.reshape(1, 1, 1, 4096))  # old Caffe blob shapes
    sd = aw.caffe_to_state_dict(old)
    assert sd["fc6.weight"].shape == (4096, 9216) and torch.equal(sd["fc6.weight"], torch.from_numpy(w))
    assert list(sd) == [f"{n}.{s}" for n in aw.CAFFENET_SHAPES for s in ("weight", "bias")]
    with pytest.raises(KeyError, match="conv3"):
        aw.caffe_to_state_dict({k: v for k, v in blobs.items() if k != "conv3"})
    bad = dict(blobs)
    bad["conv2"] = (np.zeros((256, 96, 5, 5), np.float32), blobs["conv2"][1])  # no groups
    with pytest.raises(ValueError, match=r"conv2\.weight"):
        aw.caffe_to_state_dict(bad)


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, payload) -> bytes:
    """Encode one protobuf field: an int (varint) or bytes (length-delimited)."""
    if isinstance(payload, int):
        return _pb_varint(field << 3) + _pb_varint(payload)
    return _pb_varint(field << 3 | 2) + _pb_varint(len(payload)) + payload


def _blob_v1(a: np.ndarray) -> bytes:
    dims = (1,) * (4 - a.ndim) + a.shape
    return b"".join(_pb(i + 1, d) for i, d in enumerate(dims)) + _pb(5, a.astype("<f4").tobytes())


def _blob_new(a: np.ndarray) -> bytes:
    shape = _pb(1, b"".join(_pb_varint(d) for d in a.shape))
    return _pb(7, shape) + _pb(5, a.astype("<f4").tobytes())


@pytest.mark.parametrize("fmt", ["v1", "new"])
def test_read_caffemodel(fmt, tmp_path):
    rng = np.random.default_rng(0)
    params = {"conv1": [rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)],
              "fc6": [rng.standard_normal((5, 16)), rng.standard_normal(5)]}
    layers = []
    for name in ("data", "conv1", "relu1", "fc6"):
        blobs = params.get(name, [])
        if fmt == "v1":  # V1LayerParameter: name 4, type 5 (enum), blobs 6; NetParameter.layers = 2
            body = _pb(4, name.encode()) + _pb(5, 4) + b"".join(_pb(6, _blob_v1(a)) for a in blobs)
            layers.append(_pb(2, body))
        else:  # LayerParameter: name 1, type 2, blobs 7; NetParameter.layer = 100
            body = _pb(1, name.encode()) + _pb(2, b"Convolution") + b"".join(_pb(7, _blob_new(a)) for a in blobs)
            layers.append(_pb(100, body))
    path = tmp_path / "net.caffemodel"
    path.write_bytes(_pb(1, b"CaffeNet") + b"".join(layers))
    got = aw.read_caffemodel(str(path))
    assert sorted(got) == ["conv1", "fc6"]
    for name, arrays in params.items():
        assert len(got[name]) == 2
        for a, b in zip(arrays, got[name]):
            expect_shape = a.shape if fmt == "new" else (1,) * (4 - a.ndim) + a.shape
            assert b.shape == expect_shape and b.dtype == np.float32
            np.testing.assert_array_equal(b.reshape(a.shape), a.astype(np.float32))


# ------------------------------------------------------------------ network semantics


def _lrn_caffe(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
    sq = F.pad(x * x, (0, 0, 0, 0, n // 2, n // 2))
    s = sum(sq[:, j:j + x.shape[1]] for j in range(n))
    return x / (k + alpha / n * s) ** beta


def _conv_groups2(x, w, b, padding):
    c, o = x.shape[1] // 2, w.shape[0] // 2
    return torch.cat([F.conv2d(x[:, :c], w[:o], b[:o], padding=padding),
                      F.conv2d(x[:, c:], w[o:], b[o:], padding=padding)], 1)


def _caffenet_reference(x_rgb, sd):
    """CaffeNet by hand: BGR minus mean, conv/relu/pool/LRN with two filter groups."""
    x = x_rgb[:, [2, 1, 0]] - torch.tensor([104.0, 116.7, 122.7]).view(1, 3, 1, 1)
    out = {}
    x = F.relu(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], stride=4))
    out["conv1"] = x = _lrn_caffe(F.max_pool2d(x, 3, 2))
    x = F.relu(_conv_groups2(x, sd["conv2.weight"], sd["conv2.bias"], 2))
    out["conv2"] = x = _lrn_caffe(F.max_pool2d(x, 3, 2))
    out["conv3"] = x = F.relu(F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"], padding=1))
    out["conv4"] = x = F.relu(_conv_groups2(x, sd["conv4.weight"], sd["conv4.bias"], 1))
    out["conv5"] = x = F.max_pool2d(F.relu(_conv_groups2(x, sd["conv5.weight"], sd["conv5.bias"], 1)), 3, 2)
    out["fc6"] = x = F.relu(x.flatten(1) @ sd["fc6.weight"].T + sd["fc6.bias"])
    out["fc7"] = x = F.relu(x @ sd["fc7.weight"].T + sd["fc7.bias"])
    out["fc8"] = x @ sd["fc8.weight"].T + sd["fc8.bias"]
    return out


def test_caffenet_matches_hand_reference(caffe_file, photos):
    path, sd = caffe_file
    f = get_feature("alexnet", layer="fc8", arch="caffenet", weights=path)
    got = f.forward_taps(photos, ax.PAPER_LAYERS)
    with torch.no_grad():
        ref = _caffenet_reference(photos, sd)
    for layer in ax.PAPER_LAYERS:
        r = ref[layer] if ref[layer].dim() == 4 else ref[layer][:, :, None, None]
        torch.testing.assert_close(got[layer], r, rtol=1e-3, atol=1e-3 * float(r.abs().max())), layer
    assert got["fc8"].abs().max() > 0.1  # not a degenerate all-zero comparison


@pytest.mark.parametrize("arch", aw.ARCHS)
def test_mean_image_gives_bias(arch, tv_file, caffe_file):
    """An image equal to the normalisation mean enters the net as zeros (checks RGB->BGR)."""
    path, sd = tv_file if arch == "torchvision" else caffe_file
    if arch == "caffenet":
        rgb, bias = (122.7, 116.7, 104.0), sd["conv1.bias"]
    else:
        rgb, bias = tuple(255 * m for m in (0.485, 0.456, 0.406)), sd["features.0.bias"]
    f = get_feature("alexnet", layer="conv1_raw", arch=arch, weights=path)
    x = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 67, 67)
    out = f(x)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out), rtol=0, atol=1e-4)
    assert not torch.allclose(f(x.flip(1)), out, atol=1e-2)  # channel order matters


@pytest.mark.parametrize("arch,expected", [("caffenet", CAFFENET_227), ("torchvision", TORCHVISION_227)])
def test_layer_shapes_227(arch, expected, photos):
    f = get_feature("alexnet", layer="fc8", arch=arch)
    names = list(ax.LAYERS[arch]) + list(ax.PAPER_LAYERS)
    with torch.no_grad():
        out = f.forward_taps(photos[:1], names)
    for name in names:
        assert tuple(out[name].shape[1:]) == ax.layer_shape(arch, name, 227, 227), name
    for name, shape in expected.items():
        assert tuple(out[name].shape) == (1,) + shape, name
    assert get_feature("alexnet", layer="conv2", arch=arch).output_shape(227, 227) == expected["conv2"]


@pytest.mark.parametrize("arch", aw.ARCHS)
def test_output_shape_other_sizes(arch):
    x = torch.rand(1, 3, 150, 201) * 255
    f = get_feature("alexnet", layer="pool5", arch=arch)
    with torch.no_grad():
        conv_taps = ax.LAYERS[arch][:ax.LAYERS[arch].index("fc6_raw")]
        taps = f.forward_taps(x, conv_taps)
    for t, v in taps.items():
        assert tuple(v.shape[1:]) == ax.layer_shape(arch, t, 150, 201), t
    if arch == "caffenet":  # Caffe rounds pooling up: conv1 35x48 -> pool1 17x24 (floor: 17x23)
        assert taps["pool1"].shape[2:] == (17, 24)
        assert ax.layer_shape(arch, "pool1", 224, 224) == (96, 27, 27)  # conv1 54 -> ceil(51/2)+1
        with pytest.raises(ValueError, match="fc6.*227x227"):
            ax.layer_shape(arch, "fc6", 150, 201)
    else:  # adaptive pooling: fc layers at any size
        assert f.output_shape(150, 201) == (256, 3, 5)  # conv1 36x49, pool1 17x24, pool2 8x11
        assert ax.layer_shape(arch, "fc7", 150, 201) == (4096, 1, 1)


@pytest.mark.parametrize("arch", aw.ARCHS)
def test_truncated_forward_equals_hooked_full_forward(arch, photos):
    """Each tap from a truncated pass equals a forward hook on TAP_MODULES during the full pass."""
    f = get_feature("alexnet", layer="fc8", arch=arch, seed=3)
    x = photos[:1]
    captured, handles = {}, []
    for tap, path in ax.TAP_MODULES[arch].items():
        m = f.net.get_submodule(path)
        handles.append(m.register_forward_hook(lambda mod, i, o, tap=tap: captured.__setitem__(tap, o.clone())))
    with torch.no_grad():
        logits = f.net(f.normalize(x))
    for h in handles:
        h.remove()
    assert logits.shape == (1, 1000)
    assert set(captured) == set(ax.LAYERS[arch])
    for tap in ax.LAYERS[arch]:
        f.tap = tap  # the truncated forward of this module, stopped at another tap
        with torch.no_grad():
            got = f(x)
        assert got.dim() == 4
        torch.testing.assert_close(got, captured[tap].view(got.shape), rtol=1e-5, atol=1e-5), tap
    torch.testing.assert_close(got.flatten(1), logits)


def test_paper_layer_aliases():
    c, t = ax.PAPER_OUTPUT["caffenet"], ax.PAPER_OUTPUT["torchvision"]
    assert (c["conv1"], c["conv2"], c["conv5"], c["fc6"], c["fc8"]) == ("norm1", "norm2", "pool5", "relu6", "fc8_raw")
    assert (t["conv1"], t["conv2"], t["conv5"]) == ("pool1", "pool2", "pool5")
    assert ax.resolve_layer("caffenet", "mpool5") == "pool5"
    with pytest.raises(ValueError, match="layer 'norm1' for arch='torchvision'"):
        get_feature("alexnet", layer="norm1", arch="torchvision")
    with pytest.raises(ValueError, match="arch"):
        get_feature("alexnet", arch="vgg16")


def test_random_weights_deterministic(photos):
    x = photos[1:]
    a = get_feature("alexnet", layer="conv3", arch="caffenet", weights="random", seed=5)
    b = get_feature("alexnet", layer="conv3", arch="caffenet", weights="random", seed=5)
    c = get_feature("alexnet", layer="conv3", arch="caffenet", weights="random", seed=6)
    assert a.trained is False and a.params == {"layer": "conv3", "arch": "caffenet", "weights": "random", "seed": 5}
    with torch.no_grad():
        fa, fb, fc = a(x), b(x), c(x)
    assert torch.equal(fa, fb)
    assert (fa - fc).abs().mean() > 0.1 * fa.abs().mean()
    assert fa.std() > 0 and (fa > 0).float().mean() > 0.05  # not dead after three ReLUs


def test_grey_input_repeated(photos):
    f = get_feature("alexnet", layer="conv2", arch="torchvision")
    grey = photos[:1].mean(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(f(grey), f(grey.expand(1, 3, -1, -1)))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        f(torch.zeros(1, 2, 67, 67))


def test_gradient_to_input_and_frozen_eval(photos):
    f = get_feature("alexnet", layer="fc7", arch="torchvision")
    f.train()
    assert f.training and not f.net.training
    x = photos[:1].clone().requires_grad_(True)
    f(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in f.net.parameters())


def test_same_logits_as_torchvision(tv_file, photos):
    torchvision = pytest.importorskip("torchvision")
    path, state = tv_file
    ref = torchvision.models.alexnet(weights=None)
    ref.load_state_dict(state)
    ref.eval()
    f = get_feature("alexnet", layer="fc8", arch="torchvision", weights=path)
    x = photos
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expect = ref((x / 255 - mean) / std)
        got = f(x)
    torch.testing.assert_close(got.flatten(1), expect, rtol=1e-4, atol=1e-4)
