"""The generic deep representation get_feature("torch", model=..., layer=...)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import get_feature, to_gray
from pipeline.features.torchmodel import INPUT_PRESETS, TorchModelFeature

HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None


class Boom(nn.Module):
    """Fails if the forward pass ever reaches it (truncation check)."""

    def forward(self, x):
        raise AssertionError("the forward pass was not truncated at the layer")


class TinyNet(nn.Module):
    """conv(3->4, s2) ReLU(inplace) conv(4->6, s2) ReLU(inplace) | flatten fc(6*8*8 -> 5)."""

    def __init__(self, boom: bool = False, in_ch: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_ch, 4, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(6 * 8 * 8, 5)
        self.boom = Boom() if boom else nn.Identity()

    def forward(self, x):
        x = self.body(x)
        x = self.head(x.flatten(1))
        return self.boom(x)


TINY = f"{__name__}:TinyNet"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_by_name_matches_the_modules_own_output(square_photos):
    x = square_photos()
    f = get_feature("torch", model=TINY, layer="body.2", input="unit")
    net = f.net
    want = net.body[2](F.relu(net.body[0](x / 255.0)))
    got = f(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == (2, 6, 8, 8) and (got < 0).any()  # pre-ReLU, not altered by the in-place ReLU
    # the in-place ReLU after a captured conv does not alter the captured tensor
    c0 = get_feature("torch", model=TINY, layer="body.0", input="unit")(x)
    torch.testing.assert_close(c0, net.body[0](x / 255.0), rtol=0, atol=0)
    assert (c0 < 0).any()
    # vector layers are (B, D, 1, 1); the whole model is layer ""
    v = get_feature("torch", model=TINY, layer="head", input="unit")(x)
    whole = get_feature("torch", model=TINY, layer="", input="unit")(x)
    torch.testing.assert_close(v[:, :, 0, 0], net(x / 255.0))
    torch.testing.assert_close(whole, v)


def test_forward_stops_at_the_layer(square_photos):
    x = square_photos()
    f = get_feature("torch", model=TINY, layer="head", model_kwargs={"boom": True})
    assert f(x).shape == (2, 5, 1, 1)
    with pytest.raises(AssertionError, match="not truncated"):
        get_feature("torch", model=TINY, layer="", model_kwargs={"boom": True})(x)


def test_params_rebuild_the_representation_and_seed_sets_the_weights(square_photos):
    x = square_photos()
    f = get_feature("torch", model=TINY, layer="body.3", input="caffe", seed=3)
    assert f.params == {"model": TINY, "layer": "body.3", "weights": None, "input": "caffe",
                        "model_kwargs": None, "seed": 3}
    g = get_feature("torch", **f.params)
    torch.testing.assert_close(f(x), g(x), rtol=0, atol=0)
    h = get_feature("torch", **dict(f.params, seed=4))
    assert not torch.allclose(f(x), h(x))
    assert not f.trained


def test_output_shape_matches_forward(square_photos):
    for layer, size in (("body.0", 32), ("body.3", 32), ("body.1", 21), ("head", 32)):
        f = get_feature("torch", model=TINY, layer=layer)
        y = f(square_photos(1, size))
        assert f.output_shape(size, size) == tuple(y.shape[1:]), layer


def test_input_normalisation_presets_and_grey_models(square_photos):
    x = square_photos()
    f = get_feature("torch", model=TINY, layer="body.0", input="caffe")
    mean = torch.tensor(INPUT_PRESETS["caffe"]["mean"]).view(1, 3, 1, 1)
    torch.testing.assert_close(f.normalize(x), x.flip(1) - mean)
    f = get_feature("torch", model=TINY, layer="body.0")  # imagenet
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(f.normalize(x), (x / 255 - m) / s)
    torch.testing.assert_close(f(x[:, :1]), f(x[:, :1].expand(-1, 3, -1, -1)))  # grey -> RGB
    g = get_feature("torch", model=TINY, layer="body.0", model_kwargs={"in_ch": 1},
                    input={"scale": 255.0, "mean": 0.5, "std": 0.25, "channels": 1})
    torch.testing.assert_close(g.normalize(x), (to_gray(x) / 255 - 0.5) / 0.25)
    assert g(x).shape == (2, 4, 16, 16) and g.output_shape(32, 32) == (4, 16, 16)
    with pytest.raises(ValueError, match="input"):
        get_feature("torch", model=TINY, input="bgr255")
    with pytest.raises(ValueError, match="input"):
        get_feature("torch", model=TINY, input={"mean": [0.5, 0.5]})


def test_weights_file_is_loaded_strictly(tmp_path, square_photos):
    x = square_photos()
    ref = TinyNet()
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    f = get_feature("torch", model=TINY, layer="head", weights=str(path), input="unit")
    assert f.trained
    torch.testing.assert_close(f(x)[:, :, 0, 0], ref(x / 255.0))
    bad = tmp_path / "bad.pth"
    torch.save({"body.0.weight": torch.zeros(4, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="do not match"):
        get_feature("torch", model=TINY, weights=str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        get_feature("torch", model=TINY, weights=str(tmp_path / "nope.pth"))


def test_errors_name_the_bad_parameter():
    with pytest.raises(ValueError, match="layer"):
        get_feature("torch", model=TINY, layer="body.9")
    with pytest.raises(ValueError, match="module:callable"):
        get_feature("torch", model="tests_nothing:")
    with pytest.raises(AttributeError, match="NoSuchNet"):
        get_feature("torch", model=f"{__name__}:NoSuchNet")
    with pytest.raises(TypeError, match="not an nn.Module"):
        get_feature("torch", model="builtins:dict")
    if not HAVE_TORCHVISION:
        with pytest.raises(ImportError, match="torchvision is not installed"):
            get_feature("torch", model="resnet18")


def test_alexnet_is_the_same_capture_as_the_named_shortcut(tmp_path, square_photos):
    """get_feature("torch", TorchvisionAlexNet, "features.4") == get_feature("alexnet", torchvision, "relu2")."""
    from pipeline.features.alexnet import TAP_MODULES

    a2 = get_feature("alexnet", arch="torchvision", layer="relu2", weights="random", seed=0)
    path = tmp_path / "alexnet.pth"
    torch.save(a2.net.state_dict(), path)
    x = square_photos(size=67)
    for tap, size in (("relu2", 67), ("pool1", 67), ("relu7", 227)):
        xs = x if size == 67 else square_photos(1, 227)
        a = get_feature("alexnet", arch="torchvision", layer=tap, weights=str(path))
        t = get_feature("torch", model="pipeline.features.alexnet:TorchvisionAlexNet",
                        layer=TAP_MODULES["torchvision"][tap], weights=str(path))
        with torch.no_grad():  # fc layers: BLAS may sum in another order
            tol = 1e-4 if tap == "relu7" else 1e-5
            torch.testing.assert_close(t(xs), a(xs), rtol=tol, atol=tol)
        assert t.output_shape(size, size) == a.output_shape(size, size)
    # the torchvision constructor name: torchvision's AlexNet, or without torchvision the same layout
    t = get_feature("torch", model="alexnet", layer="features.4", weights=str(path))
    with torch.no_grad():
        torch.testing.assert_close(t(x), a2.__class__(layer="relu2", arch="torchvision", weights=str(path))(x),
                                   rtol=1e-5, atol=1e-5)


def test_features_are_differentiable_and_frozen(square_photos):
    f = get_feature("torch", model=TINY, layer="body.3")
    x = square_photos(1, 32).requires_grad_(True)
    f(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in f.parameters())
    f.train()
    assert not f.net.training
    assert isinstance(f, TorchModelFeature)
