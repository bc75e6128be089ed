"""EfficientNet-Lite0 with ImageNet weights (``get_feature("efficientnet_lite0", ...)``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.photoset import load_photo, photo_split
from pipeline.features import available, get_feature, traits
from pipeline.features import efficientnet_lite0 as eff

#: The shapes documented in the module's docstring: (D, h, w) at 224 and at 128.
SHAPES = {
    "stem": ((32, 112, 112), (32, 64, 64)),
    "stage1": ((16, 112, 112), (16, 64, 64)),
    "stage2": ((24, 56, 56), (24, 32, 32)),
    "stage3": ((40, 28, 28), (40, 16, 16)),
    "stage4": ((80, 14, 14), (80, 8, 8)),
    "stage5": ((112, 14, 14), (112, 8, 8)),
    "stage6": ((192, 7, 7), (192, 4, 4)),
    "stage7": ((320, 7, 7), (320, 4, 4)),
    "head": ((1280, 7, 7), (1280, 4, 4)),
    "pool": ((1280, 1, 1), (1280, 1, 1)),
    "logits": ((1000, 1, 1), (1000, 1, 1)),
}


@pytest.fixture(scope="module")
def logits():
    return get_feature("efficientnet_lite0", layer="logits", weights="imagenet")


def _batch(ids, size=None) -> torch.Tensor:
    ims = [load_photo(i) for i in ids]
    if size is not None:
        ims = [eff.imagenet_crop(im, resize=256 * size // 224, crop=size) for im in ims]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float()


def test_classifies_held_out_photographs(logits):
    """Top-1 on the 200 validation photographs (shorter side 256, centre crop 224)."""
    val = photo_split("val")
    top1 = top5 = 0
    with torch.no_grad():
        for i in range(0, len(val), 50):
            chunk = val[i:i + 50]
            top = logits(_batch([p for p, _ in chunk], 224)).flatten(1).topk(5, dim=1).indices
            labels = torch.tensor([l for _, l in chunk])
            top1 += int((top[:, 0] == labels).sum())
            top5 += int((top == labels[:, None]).any(dim=1).sum())
    print(f"EfficientNet-Lite0 on {len(val)} validation photographs: top-1 {top1 / len(val):.3f}, "
          f"top-5 {top5 / len(val):.3f}")
    assert top1 / len(val) >= 0.8
    assert top5 / len(val) >= 0.9


def test_layers_in_forward_order():
    assert eff.LAYERS == tuple(SHAPES)


@pytest.mark.parametrize("size", [224, 128])
def test_every_tap_shape(logits, size):
    x = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        got = logits.forward_taps(x, eff.LAYERS)
    for layer, shapes in SHAPES.items():
        want = shapes[0] if size == 224 else shapes[1]
        assert tuple(got[layer].shape) == (1,) + want, layer
        assert eff.layer_shape(layer, size, size) == want
        f = get_feature("efficientnet_lite0", layer=layer)
        assert f.output_shape(size, size) == want
        if size == 128:  # each tap's own truncated pass gives what the full pass passed through
            with torch.no_grad():
                torch.testing.assert_close(f(x), got[layer], rtol=0, atol=0)


@pytest.mark.parametrize("H, W", [(97, 131), (227, 227), (33, 64)])
def test_output_shape_odd_sizes(H, W):
    """TensorFlow's SAME padding: each stride-2 step gives ceil(size / 2)."""
    f = get_feature("efficientnet_lite0", layer="head")
    with torch.no_grad():
        got = f.forward_taps(torch.zeros(1, 3, H, W), eff.LAYERS)
    for layer in eff.LAYERS:
        assert tuple(got[layer].shape[1:]) == eff.layer_shape(layer, H, W), layer


def test_gradient_reaches_input_weights_frozen():
    f = get_feature("efficientnet_lite0", layer="stage4")
    f.train()
    assert not f.net.training  # the network stays in eval mode (batch norm statistics)
    assert all(not p.requires_grad for p in f.parameters())
    x = (torch.rand(1, 3, 64, 64) * 255).requires_grad_(True)
    f(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in f.parameters())


def test_input_scaled_to_plus_minus_one_and_grey_repeated():
    f = get_feature("efficientnet_lite0", layer="stem")
    x = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(f.normalize(x).flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    g = torch.rand(1, 1, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(f(g), f(g.expand(-1, 3, -1, -1)))


def test_registry_traits_and_params():
    assert "efficientnet_lite0" in available()
    t = traits("efficientnet_lite0")
    assert not t.grey
    for layer in eff.LAYERS:
        f = get_feature("efficientnet_lite0", layer=layer)
        assert f.params == {"layer": layer, "weights": "imagenet"}
        assert t.decoder(f.params) == ("fc" if layer in ("pool", "logits") else "conv"), layer
        again = get_feature("efficientnet_lite0", **f.params)
        assert again.params == f.params


def test_weights_are_the_packaged_file_and_load_strictly(tmp_path):
    path = eff.weights_path()
    assert path.endswith(eff.WEIGHTS_FILE)
    state = torch.load(path, map_location="cpu", weights_only=True)
    f = get_feature("efficientnet_lite0", layer="pool")
    assert set(state) == set(f.net.state_dict())
    own = tmp_path / "copy.pth"
    torch.save(state, own)
    assert get_feature("efficientnet_lite0", layer="pool", weights=str(own)).params["weights"] == str(own)
    del state["_fc.bias"]
    torch.save(state, own)
    with pytest.raises(RuntimeError, match="_fc.bias"):
        get_feature("efficientnet_lite0", layer="pool", weights=str(own))


def test_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown layer"):
        get_feature("efficientnet_lite0", layer="conv5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_feature("efficientnet_lite0", weights=str(tmp_path / "none.pth"))
    monkeypatch.setattr(eff, "WEIGHTS_MODULE", "no_such_weights_module_here")
    with pytest.raises(FileNotFoundError, match=eff.WEIGHTS_PACKAGE):
        get_feature("efficientnet_lite0", weights="imagenet")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    f = get_feature("efficientnet_lite0", layer="logits")
    x = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        cpu = f(x)
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            gpu = f.to("cuda")(x.to("cuda")).cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = old
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-3)
