"""Registry of image representations.

``get_feature(name, **params)`` returns a ``torch.nn.Module`` mapping a float
tensor ``(B, C, H, W)`` with values in [0, 255] (C = 1 or 3) to features
``(B, D, h, w)``.  Shallow features convert colour input to grey first with
:func:`to_gray` (ITU-R BT.601 luma, the weights of MATLAB's ``rgb2gray`` that
the papers' VLFeat/MATLAB code used: 0.2989 R + 0.5870 G + 0.1140 B).

Every module carries ``name`` (str), ``params`` (dict of its parameters, as
recorded in feature stores) and ``output_shape(H, W) -> (D, h, w)``.

Each registered name declares its traits (:class:`Traits`): whether it is
computed on grey images (the optimisation baselines then reconstruct one
channel), which decoder family of Dosovitskiy & Brox 2016 inverts it, and
whether it runs on the CPU whatever device it is given (``cpu_only``: the
workflow's extraction jobs of such a representation hold no GPU, and
``python -m pipeline extract`` computes it on the CPU).
The rest of the pipeline reads them with :func:`traits`, never from a
representation's label.

:func:`check_params` checks a representation's parameters against its
factory's signature (naming an unknown or missing one) without building it,
and :func:`verify_weights` loads the weights file a representation names
(``weights_only=True``) and compares it with the architecture: both are
cheap enough for the workflow to run on every configured representation
when it starts.
"""
from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass
from typing import Callable

import torch

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)

#: Decoder families (Dosovitskiy & Brox 2016, Tables 4-8); ``by-shape``: ``fc`` for a
#: 1x1 feature map, ``conv`` otherwise (the deep networks' layers).
DECODER_FAMILIES = ("hog", "lbp", "sift", "conv", "fc", "by-shape")


@dataclass(frozen=True)
class Traits:
    """What the pipeline needs to know of a representation besides its values."""

    grey: bool = False  # computed on grey images (colour input goes through to_gray)
    # the decoder family that inverts it (DECODER_FAMILIES), or a function of the
    # feature's parameters giving one (a network's layer decides it)
    decoder: str | Callable[[dict], str] = "by-shape"
    # computed on the CPU whatever the device (e.g. VLFeat's sparse SIFT in numpy):
    # its extraction needs no GPU
    cpu_only: bool = False


_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}
_TRAITS: dict[str, Traits] = {}
#: name -> function(**params) that loads and checks the weights file the parameters name
_WEIGHT_CHECKS: dict[str, Callable[..., None]] = {}
# Modules that register the built-in representations when imported.
_BUILTIN_MODULES = ("hog", "lbp", "sift", "cnn_shallow", "alexnet", "torchmodel", "efficientnet_lite0")
_loaded = False


def register(name: str, *, grey: bool = False, decoder: str | Callable[[dict], str] = "by-shape",
             cpu_only: bool = False, weights_check: Callable[..., None] | None = None):
    """Decorator: register a factory (class or function) under ``name`` with its traits.

    ``cpu_only``: the representation computes on the CPU whatever the device of
    its input (it needs no GPU); see :class:`Traits`.

    ``weights_check(**params)``: loads and checks the weights file that the
    parameters name, for :func:`verify_weights` (representations with weights).
    """
    if not callable(decoder) and decoder not in DECODER_FAMILIES:
        raise ValueError(f"feature {name!r}: decoder {decoder!r} is not one of {DECODER_FAMILIES}")

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"feature {name!r} registered twice")
        _REGISTRY[name] = factory
        _TRAITS[name] = Traits(grey=grey, decoder=decoder, cpu_only=bool(cpu_only))
        if weights_check is not None:
            _WEIGHT_CHECKS[name] = weights_check
        return factory

    return deco


def traits(name: str) -> Traits:
    """The registered traits of the representation ``name``."""
    _load_builtins()
    try:
        return _TRAITS[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"{__name__}.{mod}")
        _loaded = True


def available() -> list[str]:
    """Names of all registered representations."""
    _load_builtins()
    return sorted(_REGISTRY)


def _factory(name: str):
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown feature {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_feature(name: str, **params) -> torch.nn.Module:
    """Build the representation ``name`` with ``params`` (checked by :func:`check_params` first)."""
    factory = _factory(name)
    check_params(name, params)
    return factory(**params)


def _signature_params(fn) -> tuple[set[str], set[str], bool]:
    """(accepted names, required names, open): the keyword parameters of ``fn``
    (a class: its ``__init__``); ``open`` when ``**kwargs`` go somewhere this
    cannot follow.  ``**kwargs`` forwarded to the class the function is
    annotated to return are followed into that class."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), set(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {n for n, q in sig.parameters.items() if q.kind in kinds}
    required = {n for n, q in sig.parameters.items() if q.kind in kinds and q.default is inspect.Parameter.empty}
    if not any(q.kind is inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values()):
        return accepted, required, False
    try:
        target = typing.get_type_hints(fn).get("return") if not inspect.isclass(fn) else None
    except Exception:  # annotations that do not resolve
        target = None
    if not inspect.isclass(target):
        return accepted, required, True
    more, _, open_ = _signature_params(target)
    return accepted | more, required, open_


def check_params(name: str, params: dict) -> None:
    """Raise :class:`ValueError` naming the parameter when ``params`` does not fit the
    signature of the representation ``name`` (an unknown name, a missing required
    one); :class:`KeyError` for an unknown representation.  Builds nothing."""
    factory = _factory(name)
    if not isinstance(params, dict):
        raise ValueError(f"feature {name!r}: parameters must be a mapping, got {params!r}")
    accepted, required, open_ = _signature_params(factory)
    unknown = [] if open_ else sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"feature {name!r}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; its parameters are {', '.join(sorted(accepted)) or 'none'}")
    missing = sorted(required - set(params))
    if missing:
        raise ValueError(f"feature {name!r}: missing parameter{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(repr, missing))}")


def verify_weights(name: str, params: dict) -> None:
    """Load the weights file that the parameters ``params`` of the representation
    ``name`` name (``weights_only=True``) and check it against the architecture:
    :class:`ValueError` or :class:`FileNotFoundError` naming the file when it is
    missing, is not a file of tensors, or does not fit.  Representations without
    weights pass."""
    _factory(name)
    check = _WEIGHT_CHECKS.get(name)
    if check is not None:
        check(**params)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1|3, H, W) -> (B, 1, H, W) with the luma weights in GRAY_WEIGHTS."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c == 1:
        return x
    if c != 3:
        raise ValueError(f"expected 1 or 3 channels, got {c}")
    if x.dtype not in (torch.float32, torch.float64):  # e.g. half: sum accumulates in float
        w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    # ((R w0) + G w1) + B w2: bit-identical to (x * w).sum(1) in float32/64, with
    # output-sized temporaries instead of a (B, 3, H, W) product.
    w0, w1, w2 = (torch.tensor(w, dtype=x.dtype).item() for w in GRAY_WEIGHTS)
    return (x[:, 0:1] * w0).add_(x[:, 1:2] * w1).add_(x[:, 2:3] * w2)
