"""Values of command-line options shared by the commands: ``--device`` and
``--params`` (a representation's parameters as a JSON object), and the
``argparse`` types of numbers that must be positive (:func:`positive_int`,
:func:`positive_float`, ...).

The parsers raise :class:`ValueError` with a one-line message naming the
option, which the command line prints as one line (exit code 2); argparse
refuses a number of the wrong sign naming the option (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import math
import re

import torch

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def parse_device(name: str, option: str = "--device") -> torch.device:
    """The torch device of ``name``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
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


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (argparse names the option when refused)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """An ``argparse`` type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value
