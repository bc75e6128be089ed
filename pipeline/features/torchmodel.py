"""Any layer of any PyTorch model as a representation: ``get_feature("torch", ...)``.

``get_feature("torch", model="resnet18", layer="layer3.1", weights="resnet18.pth")``
returns a :class:`TorchModelFeature`: a module mapping ``(B, 3|1, H, W)``
images with values in [0, 255] to the output of the module ``layer`` of the
network, ``(B, D, h, w)`` (the input contract of every representation).

Model (``model``)
-----------------
* ``"package.module:callable"`` (an attribute path after the colon may be
  dotted): imported and called with ``**model_kwargs``; must return an
  ``nn.Module``.  E.g. ``"pipeline.features.alexnet:TorchvisionAlexNet"``.
* A torchvision-style constructor name (``"resnet18"``, ``"vgg16"``,
  ``"vit_b_16"``): ``torchvision.models.get_model(name, weights=None,
  **model_kwargs)`` when torchvision is installed.  Without torchvision,
  ``"alexnet"`` falls back on :class:`pipeline.features.alexnet.TorchvisionAlexNet`
  (the same module layout and state-dict keys); other names raise an
  ``ImportError`` saying so.

Weights (``weights``)
---------------------
``None`` or ``"random"``: the constructor's own initialisation, run under
``torch.manual_seed(seed)`` (restoring the global RNG afterwards), so the same
``seed`` gives the same network; ``trained`` is False (say "untrained" in
outputs).  Otherwise the path of a ``torch.save``'d state dict, loaded with
``strict=True`` (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and
DataParallel's ``module.`` prefixes are removed).

Layer (``layer``)
-----------------
A dotted module name as in ``model.named_modules()`` (``"features.4"``,
``"layer3.1.relu"``); ``""`` is the whole model's output.  The output is
captured by a forward hook that *clones* it (later in-place operations, e.g.
``ReLU(inplace=True)``, cannot alter it) and then raises a private exception,
so the forward pass stops at the layer (nothing after it is computed).  If the
module runs several times in one forward pass, its first call is the one
captured.  A tuple/list output gives its first tensor.  Output layouts:
``(B, D, h, w)`` as is; vectors ``(B, D)`` -> ``(B, D, 1, 1)``; token
sequences ``(B, T, D)`` -> ``(B, D, T, 1)``.

Input normalisation (``input``)
-------------------------------
The network sees ``(P(x) / scale - mean) / std`` where ``P`` reorders RGB
to BGR when ``bgr`` is true; a preset name or a dict with keys ``scale``
(default 255), ``mean`` (0), ``std`` (1), ``bgr`` (False) and ``channels``
(3: grey input is repeated to RGB; 1: colour input is converted to grey with
:func:`pipeline.features.to_gray`).  Presets (:data:`INPUT_PRESETS`):
``"imagenet"`` (torchvision: RGB / 255, mean (0.485, 0.456, 0.406), std
(0.229, 0.224, 0.225)), ``"caffe"`` (BGR, 0..255 minus (104.0, 116.7,
122.7)), ``"unit"`` (x / 255), ``"raw"`` (x unchanged).

``params`` are exactly the constructor's keyword arguments, so
``get_feature("torch", **f.params)`` rebuilds ``f``.  Parameters are frozen
(``requires_grad=False``), the network always stays in eval mode, and the
features are differentiable with respect to the input.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from torch import nn

from pipeline.torchfile import load_torch_file

from . import register, to_gray

#: Input normalisation presets: network input = (P(x) / scale - mean) / std.
INPUT_PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "caffe": {"scale": 1.0, "mean": [104.0, 116.7, 122.7], "std": [1.0, 1.0, 1.0], "bgr": True},
    "unit": {"scale": 255.0},
    "raw": {"scale": 1.0},
}
_INPUT_KEYS = ("scale", "mean", "std", "bgr", "channels")

#: torchvision constructor names usable without torchvision (same layout and keys).
LOCAL_CONSTRUCTORS = {"alexnet": "pipeline.features.alexnet:TorchvisionAlexNet"}


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass at the layer."""


def resolve_input(spec) -> dict[str, Any]:
    """Normalisation ``{"scale", "mean" (C,), "std" (C,), "bgr", "channels"}`` of an ``input`` spec."""
    if isinstance(spec, str):
        if spec not in INPUT_PRESETS:
            raise ValueError(f"torch: input must be one of {sorted(INPUT_PRESETS)} or a dict, got {spec!r}")
        spec = INPUT_PRESETS[spec]
    if not isinstance(spec, dict):
        raise TypeError(f"torch: input must be a preset name or a dict, got {spec!r}")
    bad = set(spec) - set(_INPUT_KEYS)
    if bad:
        raise ValueError(f"torch: input has unknown keys {sorted(bad)}; allowed: {list(_INPUT_KEYS)}")
    channels = int(spec.get("channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"torch: input channels must be 1 or 3, got {channels}")

    def vec(key, default):
        v = spec.get(key, default)
        v = [float(v)] * channels if isinstance(v, (int, float)) else [float(t) for t in v]
        if len(v) != channels:
            raise ValueError(f"torch: input {key} needs {channels} values, got {v}")
        return v

    scale = float(spec.get("scale", 255.0))
    std = vec("std", 1.0)
    if not scale > 0 or min(std) <= 0:
        raise ValueError(f"torch: input scale and std must be positive, got scale={scale}, std={std}")
    return {"scale": scale, "mean": vec("mean", 0.0), "std": std, "bgr": bool(spec.get("bgr", False)),
            "channels": channels}


def _import_callable(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"torch: model {spec!r} must be 'package.module:callable'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"torch: model {spec!r}: cannot import {mod_name!r} ({e})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"torch: model {spec!r}: {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"torch: model {spec!r} is not callable")
    return obj


def build_model(model: str, model_kwargs: dict | None = None) -> nn.Module:
    """The network named by ``model`` (see the module docstring), with the constructor's initialisation."""
    if not isinstance(model, str) or not model:
        raise TypeError(f"torch: model must be a constructor name or 'module:callable', got {model!r}")
    kwargs = dict(model_kwargs or {})
    if ":" in model:
        net = _import_callable(model)(**kwargs)
    else:
        try:
            import torchvision.models as tvm
        except ImportError:
            if model in LOCAL_CONSTRUCTORS:
                net = _import_callable(LOCAL_CONSTRUCTORS[model])(**kwargs)
            else:
                raise ImportError(
                    f"torch: model {model!r} is a torchvision constructor name but torchvision is not "
                    f"installed; install it (pip install 'repinvert[torchvision]') or pass "
                    f"model='package.module:callable' (without torchvision only {sorted(LOCAL_CONSTRUCTORS)} "
                    f"are built in)") from None
        else:
            if hasattr(tvm, "get_model"):
                try:
                    net = tvm.get_model(model, weights=None, **kwargs)
                except ValueError as e:
                    raise ValueError(f"torch: model {model!r}: {e}") from None
            elif callable(getattr(tvm, model, None)):
                net = getattr(tvm, model)(**kwargs)
            else:
                raise ValueError(f"torch: model {model!r} is not a torchvision.models constructor")
    if not isinstance(net, nn.Module):
        raise TypeError(f"torch: model {model!r} returned {type(net).__name__}, not an nn.Module")
    return net


def load_state_dict_file(path: str) -> dict:
    """A state dict from a ``torch.save`` file (unwraps ``state_dict``/``model``, strips ``module.``),
    read with ``weights_only=True``: a file holding anything but tensors and plain containers is refused."""
    state = load_torch_file(path, what="weights file", fix="give a state dict saved with torch.save")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"torch: weights {path!r} do not hold a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def first_tensor(out, where: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for t in out:
            if isinstance(t, torch.Tensor):
                return t
    raise TypeError(f"torch: layer {where!r} returned {type(out).__name__}, not a tensor")


def as_feature_map(y: torch.Tensor, where: str) -> torch.Tensor:
    """(B, D, h, w) as is; (B, D) -> (B, D, 1, 1); (B, T, D) -> (B, D, T, 1)."""
    if y.dim() == 4:
        return y
    if y.dim() == 2:
        return y[:, :, None, None]
    if y.dim() == 3:
        return y.transpose(1, 2)[..., None]
    raise ValueError(f"torch: layer {where!r} gives a {y.dim()}-d output {tuple(y.shape)}; expected 2, 3 or 4-d")


def capture(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Output of the submodule ``layer`` of ``net`` on input ``x`` (cloned), the pass stopped there."""
    if not layer:
        return first_tensor(net(x), "")
    module = net.get_submodule(layer)
    box: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output):
        box["y"] = first_tensor(output, layer).clone()
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "y" not in box:
        raise RuntimeError(f"torch: layer {layer!r} was not called in the model's forward pass")
    return box["y"]


def _load_weights(net: nn.Module, model: str, weights, assign: bool = False) -> None:
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch: weights file {path!r} (model {model!r}) does not exist")
    try:
        net.load_state_dict(load_state_dict_file(path), strict=True, assign=assign)
    except RuntimeError as e:
        raise ValueError(f"torch: weights {path!r} do not match model {model!r}: {e}") from None


def verify_weights_file(model: str, layer: str = "", weights: str | None = None, input="imagenet",
                        model_kwargs: dict | None = None, seed: int = 0) -> None:
    """Check the weights file of a ``torch`` representation without building it: loaded
    with ``weights_only=True`` into the model built on the meta device (names and shapes)."""
    if weights in (None, "random"):
        return
    with torch.device("meta"):
        net = build_model(model, model_kwargs)
    _load_weights(net, model, weights, assign=True)


@register("torch", weights_check=verify_weights_file)
class TorchModelFeature(nn.Module):
    """The output of one module of a PyTorch network as a representation of [0, 255] images."""

    name = "torch"

    def __init__(self, model: str, layer: str = "", weights: str | None = None, input="imagenet",
                 model_kwargs: dict | None = None, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(layer, str):
            raise TypeError(f"torch: layer must be a dotted module name (str), got {layer!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"torch: seed must be an int, got {seed!r}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"torch: model_kwargs must be a dict, got {model_kwargs!r}")
        self._params = {"model": model, "layer": layer, "weights": weights, "input": input,
                        "model_kwargs": model_kwargs, "seed": seed}
        self.norm = resolve_input(input)
        self.layer = layer
        self.trained = weights not in (None, "random")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(model, model_kwargs)
        if self.trained:
            _load_weights(net, model, weights)
        if layer:
            names = dict(net.named_modules())
            if layer not in names:
                some = [n for n in names if n][:40]
                raise ValueError(f"torch: model {model!r} has no module {layer!r} (layer); modules: {some}"
                                 + (" ..." if len(names) > 41 else ""))
        self.net = net.requires_grad_(False).eval()
        c = self.norm["channels"]
        self.register_buffer("mean", torch.tensor(self.norm["mean"]).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.norm["std"]).view(1, c, 1, 1), persistent=False)
        self._shapes: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._meta: list = []  # a meta-device copy of the architecture for output_shape (not a submodule)

    @property
    def params(self) -> dict:
        return dict(self._params)

    def train(self, mode: bool = True):
        """Sets ``self.training``; the network itself always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 255] (B, 1|3, H, W) -> the network's input (see ``input`` in the module docstring)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"torch: expected a (B, 1|3, H, W) tensor, got shape {tuple(x.shape)}")
        x = x.to(self.mean.dtype)
        if self.norm["channels"] == 1:
            x = to_gray(x)
        elif x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.norm["bgr"]:
            x = x.flip(1)
        return (x / self.norm["scale"] - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_feature_map(capture(self.net, self.layer, self.normalize(x)), self.layer)

    def output_shape(self, H: int, W: int) -> tuple[int, int, int]:
        """(D, h, w) for an H x W input: a dry run on a meta tensor (a zero image if the model
        cannot run on the meta device)."""
        key = (int(H), int(W))
        if key not in self._shapes:
            c = self.norm["channels"]
            y = None
            try:
                if not self._meta:
                    with torch.device("meta"), torch.random.fork_rng(devices=[]):
                        self._meta.append(build_model(self._params["model"], self._params["model_kwargs"]).eval())
                with torch.no_grad():
                    y = capture(self._meta[0], self.layer, torch.zeros(1, c, *key, device="meta"))
            except Exception:
                y = None
            if y is None:
                with torch.no_grad():
                    y = self(torch.zeros(1, c, *key, device=self.mean.device, dtype=self.mean.dtype))
            y = as_feature_map(y, self.layer)
            self._shapes[key] = tuple(int(v) for v in y.shape[1:])
        return self._shapes[key]

    def extra_repr(self) -> str:
        p = self._params
        return (f"model={p['model']!r}, layer={p['layer']!r}, weights={p['weights']!r}, "
                f"trained={self.trained}, input={p['input']!r}")
