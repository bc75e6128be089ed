"""The files a decoder leaves: ``decoder.pt`` and the checkpoint helpers.

``decoder.pt`` (format ``pipeline-decoder/1``) holds the decoder's build
arguments, its state dict on the CPU, the representation and feature it
inverts, the fine-tuned encoder in autoencoder mode (Dosovitskiy & Brox 2016,
section 4.2) and the training configuration; :func:`load_model` rebuilds the
networks from it.  ``checkpoint.pt`` carries the RNG states saved by
:func:`_rng_states`, the data files' fingerprints and the configuration
keys of :data:`_IDENTITY`, so that a run resumes only from its own
checkpoint (:func:`checkpoint_mismatch`) and ends bit-identical.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.decoders.architectures import Decoder, decoder_from_args
from pipeline.features import get_feature
from pipeline.io import atomic_path

DECODER_FORMAT = "pipeline-decoder/1"


def _save_torch(path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_decoder(path, decoder: Decoder, *, representation: str, feature: dict | None = None,
                 encoder: nn.Module | None = None, config: dict | None = None) -> None:
    """Write ``decoder.pt``: build arguments, state dict (CPU), feature, optional encoder."""
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    _save_torch(path, {
        "format": DECODER_FORMAT,
        "build_args": decoder.build_args,
        "native_size": list(decoder.native_size),
        "state_dict": cpu(decoder.state_dict()),
        "representation": representation,
        "feature": feature,
        "encoder_state_dict": cpu(encoder.state_dict()) if encoder is not None else None,
        "pixel_units": "x / 127.5 - 1",
        "config": config,
    })


def _decoder_file(path) -> Path:
    path = Path(path)
    return path / "decoder.pt" if path.is_dir() else path


def load_model(path, device="cpu") -> tuple[Decoder, nn.Module | None, dict]:
    """(decoder, fine-tuned encoder or None, the saved payload) from ``decoder.pt`` or its folder."""
    file = _decoder_file(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no trained decoder (run `python -m pipeline train` first)")
    payload = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != DECODER_FORMAT:
        raise ValueError(f"{file}: not a decoder file written by pipeline.decoders")
    decoder = decoder_from_args(payload["build_args"])
    try:
        decoder.load_state_dict(payload["state_dict"])
    except RuntimeError as e:  # written by a version of pipeline.decoders that built another architecture
        detail = (str(e).splitlines()[1:] or [str(e)])[0].strip()
        raise ValueError(f"{file}: its weights do not fit the {type(decoder).__name__} that this version of "
                         f"pipeline.decoders builds for {payload['build_args']} ({detail}); retrain it, "
                         "e.g. snakemake <target> -R train_decoder") from None
    encoder = None
    if payload.get("encoder_state_dict") is not None:
        feat = payload["feature"]
        encoder = get_feature(feat["name"], **feat["params"])
        encoder.load_state_dict(payload["encoder_state_dict"])
        encoder.to(device).eval()
    return decoder.to(device).eval(), encoder, payload


def load_decoder(path, device="cpu") -> Decoder:
    """The trained decoder of ``path`` (``decoder.pt`` or its folder), in eval mode."""
    return load_model(path, device)[0]


def _rng_states():
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(s) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


# keys of config.json that must match to resume a run
_IDENTITY = ("representation", "kind", "width", "in_shape", "out_size", "native_size", "images", "features",
             "feature", "finetune_encoder", "total_steps", "batch_size", "lr", "betas", "lr_milestones",
             "lr_gamma", "clip_grad", "seed", "shuffle_block", "world_size", "n_train", "parameter_shapes")


def file_fingerprints(paths) -> list[list]:
    """``[path, size, mtime_ns]`` of each file: a shard or store rewritten since a
    checkpoint (even with the same name and size) no longer matches it."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def checkpoint_mismatch(ck: dict, cfg: dict, data_files: list) -> str | None:
    """Why the checkpoint ``ck`` may not resume the run ``cfg`` on ``data_files``
    (completes "checkpoint.pt was written by ..."), or None when it may."""
    diff = [k for k in _IDENTITY if ck["config"].get(k) != cfg.get(k)]
    changed = [f[0] for f, g in zip(data_files, ck.get("data_files") or []) if f != g]
    if len(data_files) != len(ck.get("data_files") or []):
        changed = ["the list of data files"]
    return (f"a different configuration ({', '.join(diff)} differ)" if diff else
            f"other data (rewritten since: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''})"
            if changed else None)
