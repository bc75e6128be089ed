"""Decoder architectures: the paper's tables layer by layer, and generalised sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import traits
from pipeline.decoders.architectures import (
    Block,
    Decoder,
    build_decoder,
    decoder_from_args,
    decoder_kind,
    layer_shapes,
    resize_images,
)


def hwc(s: str) -> tuple[int, ...]:
    """'32x32x128' (the tables' H x W x C) -> (C, H, W); '4096' -> (4096,)."""
    v = tuple(int(t) for t in s.split("x"))
    return v if len(v) == 1 else (v[2], v[0], v[1])


# (layer, OutSize) rows of Dosovitskiy & Brox 2016's supplementary tables.
TABLE4_HOG = [
    ("convA1", "16x16x256"), ("convA2", "8x8x512"), ("convA3", "4x4x1024"),
    ("upconvA1", "8x8x512"), ("upconvA2", "16x16x256"), ("upconvA3", "32x32x128"),
    ("convB1", "32x32x128"), ("convB2", "32x32x128"),
    ("convJ1", "32x32x256"), ("convJ2", "32x32x128"),
    ("upconvJ4", "64x64x64"), ("upconvJ5", "128x128x32"), ("upconvJ6", "256x256x3"),
]
TABLE5_SIFT = [
    ("conv1", "32x32x256"), ("conv2", "16x16x512"), ("conv3", "8x8x1024"), ("conv4", "4x4x2048"),
    ("conv5", "4x4x2048"), ("conv6", "4x4x1024"),
    ("upconv1", "8x8x512"), ("upconv2", "16x16x256"), ("upconv3", "32x32x128"),
    ("upconv4", "64x64x64"), ("upconv5", "128x128x32"), ("upconv6", "256x256x3"),
]
TABLE6_LBP = [
    ("convA1", "8x8x256"), ("convA2", "4x4x512"), ("convA3", "4x4x1024"),
    ("upconvA1", "8x8x512"), ("upconvA2", "16x16x256"),
    ("convB1", "16x16x128"), ("convB2", "16x16x128"),
    ("convJ1", "16x16x256"), ("convJ2", "16x16x128"),
    ("upconvJ3", "32x32x128"), ("upconvJ4", "64x64x64"), ("upconvJ5", "128x128x32"),
    ("upconvJ6", "256x256x3"),
]
TABLE7_CONV5 = [
    ("conv1", "6x6x256"), ("conv2", "6x6x256"), ("conv3", "6x6x256"),
    ("upconv1", "12x12x256"), ("upconv2", "24x24x128"), ("upconv3", "48x48x64"),
    ("upconv4", "96x96x32"), ("upconv5", "192x192x3"),
]
TABLE8_FC8 = [
    ("fc1", "4096"), ("fc2", "4096"), ("fc3", "4096"), ("reshape", "4x4x256"),
    ("upconv1", "8x8x256"), ("upconv2", "16x16x128"), ("upconv3", "32x32x64"),
    ("upconv4", "64x64x32"), ("upconv5", "128x128x3"),
]

# (kind, input shape (D, h, w), image size, table, kernel sizes and strides of the table)
PAPER = {
    "hog": ("hog", (31, 32, 32), 256, TABLE4_HOG,
            {"convA1": (5, 2), "convA3": (3, 2), "upconvA1": (4, 2), "convB1": (5, 1), "convJ2": (3, 1)}),
    "lbp": ("lbp", (58, 16, 16), 256, TABLE6_LBP,
            {"convA2": (5, 2), "convA3": (3, 1), "upconvJ3": (4, 2), "convB2": (3, 1)}),
    "sift": ("sift", (133, 64, 64), 256, TABLE5_SIFT,
             {"conv1": (5, 2), "conv4": (3, 2), "conv5": (3, 1), "upconv1": (4, 2)}),
    "conv5": ("conv", (256, 6, 6), 227, TABLE7_CONV5, {"conv1": (3, 1), "upconv1": (5, 2)}),
    "fc8": ("fc", (1000, 1, 1), 227, TABLE8_FC8, {"upconv5": (5, 2)}),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_tables_layer_by_layer(name):
    kind, in_shape, size, table, kernels = PAPER[name]
    with torch.device("meta"):  # paper-sized networks, shapes only
        dec = build_decoder(kind, in_shape, size, width=1.0)
    trace = layer_shapes(dec)
    assert [n for n, _ in trace] == [n for n, _ in table]
    assert [s for _, s in trace] == [hwc(s) for _, s in table]
    blocks = {n.rsplit(".", 1)[-1]: m for n, m in dec.named_modules() if isinstance(m, Block)}
    for layer, (k, s) in kernels.items():
        assert blocks[layer].layer.kernel_size == (k, k), layer
        assert blocks[layer].layer.stride == (s, s), layer
    assert dec.native_size == hwc(table[-1][1])[1:]


def test_fc_decoder_input_widths_and_reshape():
    with torch.device("meta"):
        dec = build_decoder("fc", (4096, 1, 1), 227)  # fc6 / fc7 input
    fc1 = dict(dec.layers.named_children())["fc1"].layer
    assert (fc1.in_features, fc1.out_features) == (4096, 4096)


def test_leaky_relu_after_every_layer_but_the_last():
    for name, (kind, in_shape, size, table, _) in PAPER.items():
        with torch.device("meta"):
            dec = build_decoder(kind, in_shape, size)
        blocks = {n.rsplit(".", 1)[-1]: m for n, m in dec.named_modules() if isinstance(m, Block)}
        last = table[-1][0]
        for layer, block in blocks.items():
            if layer in (last, "reshape"):
                assert isinstance(block.act, nn.Identity), (name, layer)
            else:
                assert isinstance(block.act, nn.LeakyReLU) and block.act.negative_slope == 0.2, (name, layer)


@pytest.mark.parametrize(
    "kind, in_shape, size",
    [
        ("hog", (31, 8, 8), 64),  # sample config: HOG cell 8 on 64 px
        ("lbp", (58, 4, 4), 64),  # LBP cell 16
        ("sift", (133, 16, 16), 64),  # SIFT cells of 4
        ("conv", (256, 2, 2), 64),  # a small AlexNet conv map
        ("fc", (1000, 1, 1), 64),
        ("hog", (31, 4, 6), (32, 48)),  # non-square
    ],
)
def test_small_configurations_give_the_requested_size(kind, in_shape, size):
    torch.manual_seed(0)
    dec = build_decoder(kind, in_shape, size, width=0.125)
    y = dec(torch.rand(2, *in_shape))
    want = (size, size) if isinstance(size, int) else size
    assert tuple(y.shape) == (2, 3, *want)
    assert dec.native_size == want
    assert torch.isfinite(y).all()
    # the network actually depends on its input
    assert not torch.allclose(y, dec(torch.rand(2, *in_shape)))


def test_two_stream_depth_follows_the_cell_size():
    with torch.device("meta"):
        hog = build_decoder("hog", (31, 8, 8), 64)
        lbp = build_decoder("lbp", (58, 4, 4), 64)
        tiny = build_decoder("hog", (31, 2, 2), 16)
    # stream A reaches a map 64 times smaller than the image: 1x1 at 64 px
    assert (hog.n_down, hog.n_up) == (3, 3)
    assert (lbp.n_down, lbp.n_up) == (2, 4)
    assert tiny.n_down == 1  # limited by the 2x2 grid


def test_sift_bottleneck_stops_at_4x4():
    with torch.device("meta"):
        paper = build_decoder("sift", (133, 64, 64), 256)
        paper227 = build_decoder("sift", (133, 57, 57), 227)
        sample = build_decoder("sift", (133, 32, 32), 64, width=0.25)
        small = build_decoder("sift", (133, 3, 3), 12)
    # the paper's four stride-2 convolutions (64 -> 4, 57 -> 4) are kept
    assert paper.n_down == paper227.n_down == 4
    # at 128 px (grid 32), 1/64 of the image would be 2x2; the map stops at 4x4
    assert sample.n_down == 3
    shapes = dict(layer_shapes(sample))
    assert shapes["conv6"] == (256, 4, 4)  # 1024 channels at width 0.25
    assert small.n_down == 0 and small.native_size == (12, 12)


def test_grids_that_are_not_powers_of_two():
    # HOG at 227 px: rounded grid 28 -> 224 native; SIFT ceil grid 57 -> 228
    for kind, in_shape, size, native in [("hog", (31, 28, 28), 227, 224), ("sift", (133, 57, 57), 227, 228),
                                         ("lbp", (58, 14, 14), 227, 224), ("conv", (384, 13, 13), 227, 208),
                                         ("conv", (96, 27, 27), 227, 216)]:
        with torch.device("meta"):
            dec = build_decoder(kind, in_shape, size)
        assert dec.native_size == (native, native), kind
        assert layer_shapes(dec)[-1][1] == (3, native, native)
        assert dec.out_size == (size, size)


def test_upconvolution_is_zero_insertion_then_convolution():
    """The paper's up-convolution (value in the top-left of a 2x2 block of zeros,
    then a convolution) equals our ConvTranspose2d layer."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 7)
    for k in (4, 5):
        p = (k - 1) // 2
        t = nn.ConvTranspose2d(3, 4, k, stride=2, padding=p, output_padding=2 + 2 * p - k)
        y = t(x)
        assert y.shape[-2:] == (10, 14)
        u = torch.zeros(2, 3, 10, 14)
        u[..., ::2, ::2] = x  # each value in the top-left corner of a 2x2 block
        before, after = k - 1 - p, p
        w = t.weight.flip(-1, -2).transpose(0, 1)
        ref = F.conv2d(F.pad(u, (before, after, before, after)), w, t.bias)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # our decoders use exactly these layers
    dec = build_decoder("conv", (3, 5, 7), (10, 14), width=0.05)
    up = dict(dec.layers.named_children())["upconv1"].layer
    assert isinstance(up, nn.ConvTranspose2d)
    assert (up.kernel_size, up.stride, up.padding, up.output_padding) == ((5, 5), (2, 2), (2, 2), (1, 1))


def test_decoder_family_comes_from_the_feature_registry():
    """The feature's registry traits, never the representation's label, pick the decoder."""
    assert decoder_kind("hog", {}, (31, 8, 8)) == decoder_kind("hogb", {}, (31, 8, 8)) == "hog"
    assert decoder_kind("lbp", {"cell_size": 8}, (58, 8, 8)) == "lbp"
    assert decoder_kind("sift", {}, (133, 16, 16)) == decoder_kind("dsift", {}, (128, 5, 5)) == "sift"
    for layer in ("fc6", "fc7", "fc8", "relu7", "fc8_raw"):
        assert decoder_kind("alexnet", {"layer": layer}, (1000, 1, 1)) == "fc"
    for layer in ("conv1", "conv5", "pool5", "pool1", "norm2", "relu3"):
        # conv5 of a 64-px image is a 1x1 map: still the convolutional decoder
        assert decoder_kind("alexnet", {"layer": layer}, (256, 1, 1)) == "conv"
    assert decoder_kind("torch", {"model": "m", "layer": "x"}, (10, 1, 1)) == "fc"
    assert decoder_kind("torch", {"model": "m", "layer": "x"}, (10, 4, 4)) == "conv"
    assert traits("hog").grey and traits("lbp").grey and not traits("alexnet").grey
    with pytest.raises(ValueError, match="mystery.*--kind"):
        decoder_kind("mystery", {}, (10, 4, 4))


def test_rebuild_from_build_args_and_pixel_units():
    dec = build_decoder("lbp", (58, 4, 4), 64, width=0.1)
    again = decoder_from_args(dec.build_args)
    assert type(again) is type(dec) and again.build_args == dec.build_args
    again.load_state_dict(dec.state_dict())
    x = torch.tensor([0.0, 127.5, 255.0])
    assert torch.equal(Decoder.to_target(x), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(Decoder.to_image(torch.tensor([-2.0, 0.0, 1.0])), torch.tensor([0.0, 127.5, 255.0]))


def test_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        build_decoder("vgg", (3, 4, 4), 32)
    with pytest.raises(ValueError, match="width"):
        build_decoder("hog", (31, 8, 8), 64, width=0)
    with pytest.raises(ValueError, match="too small"):
        build_decoder("fc", (10, 1, 1), 6)
    dec = build_decoder("hog", (31, 8, 8), 64, width=0.05)
    with pytest.raises(ValueError, match=r"\(B, 31, 8, 8\)"):
        dec(torch.zeros(1, 30, 8, 8))


def test_resize_images():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert resize_images(x, 4) is x
    assert resize_images(x, (2, 2)).shape == (1, 1, 2, 2)
    up = resize_images(torch.full((1, 3, 2, 2), 7.0), 5)
    assert torch.allclose(up, torch.full((1, 3, 5, 5), 7.0))
