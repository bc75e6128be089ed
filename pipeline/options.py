"""Values of command-line options shared by the commands: ``--device`` and
``--params`` (a representation's parameters as a JSON object), and the
``argparse`` types of numbers that must be positive (:func:`positive_int`,
:func:`positive_float`, ...).

The parsers raise :class:`ValueError` with a one-line message naming the
option, which the command line prints as one line (exit code 2); argparse
refuses a number of the wrong sign naming the option (exit code 2).

torch is imported where a device or thread count is used, not with this module:
the data commands (``list-images``, ``make-shard``, ``manifest``) run without it,
which saves each of their jobs the seconds of importing it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import typing

if typing.TYPE_CHECKING:
    import torch

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def parse_device(name: str, option: str = "--device") -> torch.device:
    """The torch device of ``name``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise ValueError(f"{option} {name!r}: expected {DEVICE_NAMES}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {name}: CUDA is not available")
    return device


def parse_json_params(text: str, option: str = "--params") -> dict:
    """The JSON object ``text`` as a dict."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option} is not valid JSON ({e}): {text!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{option} must be a JSON object, got {text!r}")
    return params


# --------------------------------------------------------------------------- argparse types


def _bounded(cast, ok, what: str):
    """An ``argparse`` type: ``cast(text)`` that ``ok`` accepts (argparse names the option when refused)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = what.replace(" ", "_")
    return parse


positive_int = _bounded(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _bounded(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
nonnegative_float = _bounded(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch CPU threads (0: torch's default), then restore them."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(old)
