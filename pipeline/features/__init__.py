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
channel) and which decoder family of Dosovitskiy & Brox 2016 inverts it.
The rest of the pipeline reads them with :func:`traits`, never from a
representation's label.
"""
from __future__ import annotations

import importlib
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


_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}
_TRAITS: dict[str, Traits] = {}
# Modules that register the built-in representations when imported.
_BUILTIN_MODULES = ("hog", "lbp", "sift", "alexnet", "torchmodel", "efficientnet_lite0")
_loaded = False


def register(name: str, *, grey: bool = False, decoder: str | Callable[[dict], str] = "by-shape"):
    """Decorator: register a factory (class or function) under ``name`` with its traits."""
    if not callable(decoder) and decoder not in DECODER_FAMILIES:
        raise ValueError(f"feature {name!r}: decoder {decoder!r} is not one of {DECODER_FAMILIES}")

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"feature {name!r} registered twice")
        _REGISTRY[name] = factory
        _TRAITS[name] = Traits(grey=grey, decoder=decoder)
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


def get_feature(name: str, **params) -> torch.nn.Module:
    """Build the representation ``name`` with ``params``."""
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown feature {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(**params)


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
