"""AlexNet weight files: checking them, and converting BVLC's CaffeNet.

:func:`check_weights` validates an ``alexnet`` feature's ``weights`` at config
time (a path, ``"torchvision"`` for torchvision's cached
``alexnet-owt-7be5be79.pth``, downloaded through torch hub when allowed, or
``"random"``) and says how to get a missing file (:func:`how_to_get_weights`).

:func:`read_caffemodel` reads the blobs of a binary ``.caffemodel`` without
Caffe or protobuf installed, and :func:`caffe_to_state_dict` renames BVLC's
``bvlc_reference_caffenet`` blobs to the state-dict keys of
:class:`pipeline.features.alexnet.CaffeNet` (shapes: :data:`CAFFENET_SHAPES`).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np
import torch

#: The AlexNet architectures of :mod:`pipeline.features.alexnet`.
ARCHS = ("caffenet", "torchvision")

TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/" + TORCHVISION_FILE

#: Layers of CaffeNet that hold parameters, and their (weight, bias) shapes.
CAFFENET_SHAPES = OrderedDict(
    conv1=((96, 3, 11, 11), (96,)),
    conv2=((256, 48, 5, 5), (256,)),
    conv3=((384, 256, 3, 3), (384,)),
    conv4=((384, 192, 3, 3), (384,)),
    conv5=((256, 192, 3, 3), (256,)),
    fc6=((4096, 9216), (4096,)),
    fc7=((4096, 4096), (4096,)),
    fc8=((1000, 4096), (1000,)),
)


def how_to_get_weights(arch: str) -> str:
    """Instructions for obtaining a weights file for ``arch``."""
    if arch == "torchvision":
        return (
            "get torchvision's ImageNet AlexNet weights with "
            "`python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` "
            f"(caches {torchvision_weights_path()}) or download {TORCHVISION_URL}; "
            "then pass weights=<that path> (or weights='torchvision' to use the cache), "
            "or weights='random' for an untrained network"
        )
    return (
        "convert BVLC's bvlc_reference_caffenet.caffemodel (Caffe model zoo) once: "
        "`python -c \"import torch; from pipeline.features.alexnet_weights import read_caffemodel, "
        "caffe_to_state_dict as c; torch.save(c(read_caffemodel('bvlc_reference_caffenet.caffemodel')), "
        "'caffenet.pth')\"`, then pass weights='caffenet.pth'; "
        "or weights='random' for an untrained network"
    )


def torchvision_weights_path() -> str:
    """Where torchvision caches ``alexnet-owt-7be5be79.pth`` (torch hub dir)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILE)


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"alexnet: unknown arch {arch!r}; expected one of {ARCHS}")


def check_weights(arch: str, weights, download: bool = True) -> str:
    """Validate ``weights`` for ``arch`` at config time; return what to record.

    Returns ``"random"`` or the path of the weights file (for ``"torchvision"``:
    torchvision's cache file, downloaded through torch hub if ``download`` and
    online).  Raises ``FileNotFoundError`` saying how to get weights when the file
    is missing.
    """
    check_arch(arch)
    if weights is None:
        raise ValueError(f"alexnet: weights must be a path, 'torchvision' or 'random'; {how_to_get_weights(arch)}")
    if weights == "random":
        return "random"
    if weights == "torchvision":
        if arch != "torchvision":
            raise ValueError(
                "alexnet: weights='torchvision' only exists for arch='torchvision'; "
                + how_to_get_weights(arch)
            )
        path = torchvision_weights_path()
        if not os.path.isfile(path) and download:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.hub.download_url_to_file(TORCHVISION_URL, path, hash_prefix="7be5be79", progress=False)
            except Exception as e:  # offline, proxy, hash mismatch ...
                raise FileNotFoundError(
                    f"alexnet: weights='torchvision': {path} is not cached and downloading "
                    f"{TORCHVISION_URL} failed ({type(e).__name__}: {e}); {how_to_get_weights(arch)}"
                ) from e
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"alexnet: weights='torchvision' but {path} does not exist; {how_to_get_weights(arch)}"
            )
        return path
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"alexnet: weights file {path!r} (arch={arch!r}) does not exist; {how_to_get_weights(arch)}"
        )
    return path

def caffe_to_state_dict(blobs: dict) -> "OrderedDict[str, torch.Tensor]":
    """Caffe-style CaffeNet parameters -> our ``arch='caffenet'`` state dict.

    ``blobs`` maps ``conv1 .. conv5, fc6, fc7, fc8`` to ``(W, b)`` numpy arrays
    (as pycaffe's ``net.params[name][0].data, [1].data`` or
    :func:`read_caffemodel`).  Conv weights are (out, in/groups, kh, kw) on BGR
    input and fc weights (out, in), as in Caffe; arrays of the right size but
    another shape (old Caffe's (1, 1, out, in) fc blobs, biases (1, 1, 1, out))
    are reshaped.  Keys are ``<layer>.weight`` and ``<layer>.bias``.
    """
    missing = [k for k in CAFFENET_SHAPES if k not in blobs]
    if missing:
        raise KeyError(f"caffe_to_state_dict: missing layers {missing}; got {sorted(blobs)}")
    out = OrderedDict()
    for name, shapes in CAFFENET_SHAPES.items():
        pair = blobs[name]
        if len(pair) != 2:
            raise ValueError(f"caffe_to_state_dict: {name} must be (weight, bias), got {len(pair)} arrays")
        for suffix, arr, shape in zip(("weight", "bias"), pair, shapes):
            a = np.asarray(arr, dtype=np.float32)
            if a.size != math.prod(shape):
                raise ValueError(
                    f"caffe_to_state_dict: {name}.{suffix} has shape {a.shape}, expected {shape}"
                )
            out[f"{name}.{suffix}"] = torch.from_numpy(np.array(a.reshape(shape), dtype=np.float32, order="C"))
    return out


# ----------------------------------------------------------- minimal .caffemodel reader
# NetParameter: layer = 100 (LayerParameter: name = 1, blobs = 7),
#               layers = 2 (V1LayerParameter: name = 4, blobs = 6).
# BlobProto: num 1, channels 2, height 3, width 4, data 5 (float), shape 7
# (BlobShape: dim 1, int64), double_data 8.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            ln, i = _varint(buf, i)
            val, i = buf[i:i + ln], i + ln
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"caffemodel: unsupported protobuf wire type {wire}")
        yield field, wire, val


def _blob(buf: bytes) -> np.ndarray:
    legacy = {}
    shape: list[int] = []
    data: list[np.ndarray] = []
    for f, w, v in _fields(buf):
        if f in (1, 2, 3, 4) and w == 0:
            legacy[f] = v
        elif f == 7 and w == 2:
            for f2, w2, v2 in _fields(v):
                if f2 == 1 and w2 == 2:  # packed
                    j = 0
                    while j < len(v2):
                        d, j = _varint(v2, j)
                        shape.append(d)
                elif f2 == 1 and w2 == 0:
                    shape.append(v2)
        elif f == 5:
            data.append(np.frombuffer(v, dtype="<f4").astype(np.float32))
        elif f == 8:
            data.append(np.frombuffer(v, dtype="<f8").astype(np.float32))
    arr = (data[0] if len(data) == 1 else np.concatenate(data)) if data else np.zeros(0, np.float32)
    if not shape:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
    return arr.reshape(shape)


def read_caffemodel(path: str) -> dict[str, list[np.ndarray]]:
    """Blobs of every layer with parameters in a binary ``.caffemodel``.

    A dependency-free protobuf reader for Caffe's NetParameter (new ``layer``
    and V1 ``layers`` formats): returns ``{layer name: [blob arrays]}``.
    """
    with open(path, "rb") as f:
        buf = memoryview(f.read())  # slices of a memoryview do not copy
    out: dict[str, list[np.ndarray]] = {}
    for field, wire, val in _fields(buf):
        if wire != 2 or field not in (2, 100):
            continue
        name_f, blob_f = (1, 7) if field == 100 else (4, 6)
        name, blobs = None, []
        for f, w, v in _fields(val):
            if f == name_f and w == 2:
                name = bytes(v).decode("utf-8")
            elif f == blob_f and w == 2:
                blobs.append(_blob(v))
        if name is not None and blobs:
            out[name] = blobs
    return out
