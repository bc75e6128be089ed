"""The files a decoder leaves: ``decoder.pt`` and the checkpoint helpers.

``decoder.pt`` (format ``pipeline-decoder/1``) holds the decoder's build
arguments, its state dict on the CPU, the representation and feature it
inverts, the fine-tuned encoder in autoencoder mode (Dosovitskiy & Brox 2016,
section 4.2) and the training configuration; :func:`load_model` rebuilds the
networks from it.  ``checkpoint.pt`` carries the RNG states saved by
:func:`_rng_states`, the data files' fingerprints and the configuration
keys of :data:`_IDENTITY`, so that a run resumes only from its own
checkpoint (:func:`checkpoint_mismatch`) and ends bit-identical.

Both files hold only tensors and plain containers (versions as strings, RNG
states as tensors and lists) and are read with ``weights_only=True``
(:mod:`pipeline.torchfile`): a crafted file is refused, never run.
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
from pipeline.torchfile import load_torch_file, save_torch_file

DECODER_FORMAT = "pipeline-decoder/1"
#: What to do about a decoder file that cannot be used.
RETRAIN = "delete it and retrain, e.g. snakemake <target> -R train_decoder"


def _save_torch(path, obj) -> None:
    save_torch_file(path, obj, fix="Free space and rerun the same command (training resumes from its "
                                   "last checkpoint).")


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
    payload = load_torch_file(file, what="decoder file", fix=RETRAIN)
    if not isinstance(payload, dict) or payload.get("format") != DECODER_FORMAT:
        raise ValueError(f"{file}: not a decoder file written by pipeline.decoders; {RETRAIN}")
    missing = [k for k in ("build_args", "state_dict", "feature") if k not in payload]
    if missing:
        raise ValueError(f"{file}: a decoder file without {missing}; {RETRAIN}")
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
    """The RNG states as tensors and plain containers (readable with ``weights_only=True``)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [str(kind), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def _set_rng_states(s) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    kind, key, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, np.asarray(key).astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))


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
