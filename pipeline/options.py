"""Values of command-line options shared by the commands: ``--device`` and
``--params`` (a representation's parameters as a JSON object).

Both raise :class:`ValueError` with a one-line message naming the option,
which the command line prints as one line (exit code 2).
"""
from __future__ import annotations

import json
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
