"""Train decoders and reconstruct images with them (seed 000, section 2.2).

``python -m pipeline train``: one decoder per representation, trained to
minimise the squared error between the image and the decoder's output
(equation 3 of seed 000), so that it predicts the expected pre-image.

Conventions
-----------
* **Pixels.**  Targets are the shard images (RGB uint8) in normalised units
  ``t = x / 127.5 - 1`` (x in [0, 255] -> t in [-1, 1]), resized (bilinear,
  antialiased) to the decoder's native size when that differs from the
  image size (see :mod:`pipeline.decoders`).  The loss is the mean over
  pixels and channels of ``(f(phi) - t)**2`` (a constant multiple of the
  paper's sum, which Adam does not see).
* **Features.**  The decoder multiplies its input by a fixed scalar
  ``in_scale = 1 / RMS`` of the features of the first (up to) 512 training
  images, stored as a buffer with the weights.  The paper feeds raw
  features; the scalar only puts AlexNet activations (tens) and HOG/LBP
  cells (<= 1) on one scale for the same learning rate.
* **Optimiser.**  Adam (beta1 0.9, beta2 0.999), batch 64, learning rate
  1e-3, "gradually decreased towards the end of training": multiplied by
  ``--lr-gamma`` (0.5) at each of ``--lr-milestones`` (0.6, 0.8, 0.9 of the
  total steps), i.e. 1e-3, 5e-4, 2.5e-4, 1.25e-4.  The rate is a pure
  function of the step.  The global gradient norm is clipped at
  ``--clip-grad`` (1.0; 0 turns it off).  The paper does not mention
  clipping; without it the sample HOG decoder diverged after about 1200
  steps at the constant rate 1e-3 (loss 0.095 -> 0.20, gradient norm 0.9 ->
  7.3, never recovering, as Adam's second moments then freeze the weights),
  while typical norms are 0.3-0.7, so the clip only cuts outliers.
* **Determinism and resume.**  The decoder is initialised from ``--seed``;
  the data order of epoch ``e`` is a permutation drawn from
  ``numpy.random.default_rng([seed, e])`` (split by rank like
  ``DistributedSampler``), and the torch RNG is reseeded from (seed, step,
  rank) before every step, so a run killed at any point and resumed from its
  last checkpoint (model, Adam, GradScaler, step, loss accumulators, RNG
  states) ends with bit-identical weights on CPU.  On GPU, cuDNN kernels are
  not bit-reproducible unless ``--deterministic`` is given.
* **Outputs** (``--out``, default ``results/models/{representation}``), all
  written atomically: ``decoder.pt`` (build arguments, state dict, feature
  name and parameters, the fine-tuned encoder in autoencoder mode),
  ``config.json`` (the exact configuration), ``metrics.csv`` (step, epoch,
  loss, lr, images_per_s, rewritten at every checkpoint) and
  ``checkpoint.pt``.
* **Data.**  Image shards (WebDataset tars) and feature stores (HDF5) are
  paired by position and must hold the same keys in the same order.  Images
  are read by random access into the tars (an index of member offsets), so
  a global per-epoch permutation works at ImageNet scale with DataLoader
  workers; small datasets (``--in-memory auto``: under 8 GiB) are decoded
  once into memory.  ``--shuffle-block K`` shuffles within groups of K
  shards (shard order permuted every epoch) for file-system locality.
  ``--on-the-fly`` computes the features on the training device with
  ``pipeline.features.get_feature``; ``--finetune-encoder`` also trains the
  encoder's parameters (the autoencoder of seed 000 section 4.2).
* **GPU.**  bf16 autocast (fp16 + GradScaler where bf16 is missing) and
  channels_last on CUDA; ``torchrun --nproc-per-node N python -m pipeline
  train ...`` (WORLD_SIZE > 1) runs DistributedDataParallel, ``--batch-size``
  being the global batch.

``python -m pipeline reconstruct`` applies a trained decoder to validation
shards and writes, per shard, an HDF5 store (``write_store``) keyed like the
shard whose ``features`` are the reconstructions ``(N, 3, H, W)`` as
float16 pixel values in [0, 255] at the image size (bilinear up-sampling of
the native output, as the paper's evaluation does), plus a PNG grid of
(input | reconstruction) pairs.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import __version__
from pipeline.decoders.architectures import KINDS, Decoder, build_decoder, decoder_from_args, kind_for, resize_images
from pipeline.io import atomic_path, sha256_file, write_json
from pipeline.shards import decode_image, index_shard
from pipeline.store import FeatureStore, write_store

DECODER_FORMAT = "pipeline-decoder/1"
IN_MEMORY_LIMIT = 8 << 30  # bytes (the train rule asks for 32 GB)
SCALE_SAMPLES = 512
PAPER_MS_PER_IMAGE = 5.0  # seed 000: "roughly 5 ms per image on a GPU"

# --------------------------------------------------------------------------- data


def _feature_shape(shape) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    if len(shape) == 3:
        return tuple(int(s) for s in shape)
    raise ValueError(f"features must be (N, D) or (N, D, h, w), got per-item shape {tuple(shape)}")


class PairedData(torch.utils.data.Dataset):
    """Images of tar shards, with the aligned rows of feature stores (or none).

    ``data[i] -> (image uint8 (H, W, 3), features float32 (D, h, w) or None)``.
    ``in_memory``: True, False or "auto" (decode everything at once when the
    images and features take under 8 GiB).
    """

    def __init__(self, image_shards, feature_stores=None, in_memory="auto"):
        self.image_shards = [str(p) for p in image_shards]
        if not self.image_shards:
            raise ValueError("no image shards given")
        self.feature_stores = [str(p) for p in feature_stores] if feature_stores else None
        if self.feature_stores is not None and len(self.feature_stores) != len(self.image_shards):
            raise ValueError(
                f"{len(self.image_shards)} image shards but {len(self.feature_stores)} feature stores: "
                "give one store per shard, in the same order"
            )
        self.keys: list[str] = []
        self._spans: list[list[tuple[int, int]]] = []
        self.counts: list[int] = []
        self.feature_name = None
        self.feature_params = None
        self.feature_shape = None
        store_dtype = None
        for i, shard in enumerate(self.image_shards):
            keys, spans = index_shard(shard)
            if self.feature_stores is not None:
                store = self.feature_stores[i]
                with FeatureStore(store) as fs:
                    _check_aligned(shard, keys, store, fs.keys)
                    shape = _feature_shape(fs.shape[1:])
                    name, params = str(fs.attrs.get("feature", "")), fs.params
                    store_dtype = fs.dtype
                if self.feature_shape is None:
                    self.feature_shape, self.feature_name, self.feature_params = shape, name, params
                elif (shape, name, params) != (self.feature_shape, self.feature_name, self.feature_params):
                    raise ValueError(
                        f"feature store {store} holds {name!r} {params} of shape {shape}, but "
                        f"{self.feature_stores[0]} holds {self.feature_name!r} {self.feature_params} "
                        f"of shape {self.feature_shape}: all stores must hold the same representation"
                    )
            self.keys += keys
            self._spans.append(spans)
            self.counts.append(len(keys))
        if not self.keys:
            raise ValueError(f"the image shards {self.image_shards} hold no images")
        self._starts = np.cumsum([0] + self.counts).tolist()
        self._files: dict = {}
        self._pid = None
        first = self._read_image(0, 0)
        self.image_size = tuple(first.shape[:2])
        self.images = self.features = None
        if in_memory == "auto":
            itemsize = 2 if store_dtype == np.float16 else 4  # as _preload keeps them
            d = math.prod(self.feature_shape) * itemsize if self.feature_shape else 0
            in_memory = len(self) * (first.size + d) <= IN_MEMORY_LIMIT
        self.in_memory = bool(in_memory)
        if self.in_memory:
            self._preload(store_dtype)

    def __len__(self):
        return len(self.keys)

    def _handles(self):
        if self._pid != os.getpid():  # reopen after fork (DataLoader workers)
            self._files, self._pid = {}, os.getpid()
        return self._files

    def _read_image(self, s: int, j: int) -> np.ndarray:
        files = self._handles()
        f = files.get(("img", s))
        if f is None:
            f = files[("img", s)] = open(self.image_shards[s], "rb")
        off, size = self._spans[s][j]
        f.seek(off)
        img = decode_image(f.read(size))
        if not img.flags.writeable:
            img = img.copy()
        if hasattr(self, "image_size") and tuple(img.shape[:2]) != self.image_size:
            raise ValueError(
                f"{self.image_shards[s]}: image {self.keys[self._starts[s] + j]!r} is "
                f"{img.shape[1]}x{img.shape[0]}, expected {self.image_size[1]}x{self.image_size[0]}: "
                "all training images must have one size"
            )
        return img

    def _read_feature(self, s: int, j: int) -> np.ndarray:
        files = self._handles()
        fs = files.get(("feat", s))
        if fs is None:
            fs = files[("feat", s)] = FeatureStore(self.feature_stores[s])
        return fs[j].reshape(self.feature_shape)

    def locate(self, i: int) -> tuple[int, int]:
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def __getitem__(self, i):
        i = int(i)
        if self.in_memory:
            f = None if self.features is None else torch.from_numpy(self.features[i].astype(np.float32))
            return torch.from_numpy(self.images[i]), f
        s, j = self.locate(i)
        img = torch.from_numpy(self._read_image(s, j))
        f = None if self.feature_stores is None else torch.from_numpy(self._read_feature(s, j))
        return img, f

    def _preload(self, store_dtype) -> None:
        h, w = self.image_size
        self.images = np.empty((len(self), h, w, 3), np.uint8)
        for i in range(len(self)):
            self.images[i] = self._read_image(*self.locate(i))
        if self.feature_stores is not None:
            dt = np.float16 if store_dtype == np.float16 else np.float32
            self.features = np.empty((len(self), *self.feature_shape), dt)
            for s, p in enumerate(self.feature_stores):
                with FeatureStore(p) as fs:
                    a, b = self._starts[s], self._starts[s + 1]
                    self.features[a:b] = fs.all().astype(dt, copy=False).reshape(b - a, *self.feature_shape)
        self.close()

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In-memory fast path: images (B, H, W, 3) uint8, features (B, D, h, w) float32."""
        idx = np.asarray(indices)
        f = None if self.features is None else torch.from_numpy(self.features[idx].astype(np.float32))
        return torch.from_numpy(self.images[idx]), f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state


def _check_aligned(shard, shard_keys, store, store_keys) -> None:
    if list(shard_keys) == list(store_keys):
        return
    n1, n2 = len(shard_keys), len(store_keys)
    i = next((k for k, (a, b) in enumerate(zip(shard_keys, store_keys)) if a != b), min(n1, n2))
    a = shard_keys[i] if i < n1 else "<end>"
    b = store_keys[i] if i < n2 else "<end>"
    raise ValueError(
        f"image shard {shard} ({n1} images) and feature store {store} ({n2} rows) do not hold the "
        f"same keys in the same order: first difference at position {i}: {a!r} vs {b!r}"
    )


def _collate(items):
    imgs = torch.stack([a for a, _ in items])
    feats = None if items[0][1] is None else torch.stack([b for _, b in items])
    return imgs, feats


def epoch_order(counts, epoch: int, seed: int, shuffle_block: int = 0) -> np.ndarray:
    """Global sample order of one epoch, a pure function of (seed, epoch).

    ``shuffle_block == 0``: a uniform permutation of all samples.  ``K > 0``:
    shards in a permuted order, samples permuted within groups of K shards.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = int(sum(counts))
    if shuffle_block <= 0:
        return rng.permutation(n)
    starts = np.cumsum([0] + list(counts))
    shards = rng.permutation(len(counts))
    parts = []
    for g in range(0, len(shards), shuffle_block):
        idx = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards[g:g + shuffle_block]])
        parts.append(rng.permutation(idx))
    return np.concatenate(parts)


def epoch_batches(counts, epoch, seed, batch, rank=0, world=1, shuffle_block=0) -> list[np.ndarray]:
    """This rank's batches of one epoch: ``order[rank::world]``, then full batches."""
    order = epoch_order(counts, epoch, seed, shuffle_block)
    per_rank = len(order) // world
    mine = order[rank::world][:per_rank]
    nb = per_rank // batch
    return [mine[b * batch:(b + 1) * batch] for b in range(nb)]


def iter_batches(data: PairedData, batches, workers: int = 0, pin: bool = False):
    if data.in_memory:
        for b in batches:
            yield data.get_batch(b)
        return
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
        collate_fn=_collate, pin_memory=pin,
    )
    yield from loader


# -------------------------------------------------------------------------- model


class InversionModel(nn.Module):
    """Optional encoder (on-the-fly features) followed by the decoder.

    ``forward(images, features=None)``: images (B, 3, H, W) float in [0, 255];
    when ``features`` is None they are computed by the encoder, without
    gradients unless ``finetune`` (autoencoder mode).
    """

    def __init__(self, decoder: Decoder, encoder: nn.Module | None = None, finetune: bool = False):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.finetune = finetune
        if encoder is not None and not finetune:
            encoder.requires_grad_(False)

    def encode(self, images):
        if self.finetune:
            return self.encoder(images)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.encoder(images.float()).float()

    def forward(self, images, features=None):
        if features is None:
            features = self.encode(images)
        return self.decoder(features)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.finetune:
            self.encoder.eval()
        return self


def lr_at(step: int, total: int, base: float, milestones=(0.6, 0.8, 0.9), gamma: float = 0.5) -> float:
    """Step decay: ``base * gamma ** (number of milestones m with step >= m * total)``."""
    return base * gamma ** sum(step >= m * total for m in milestones)


def _amp_dtype(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def train_step(model, optimizer, scaler, images_u8, features, native_size, amp_dtype=None,
               channels_last=False, clip_grad: float | None = None):
    """One optimisation step; returns the detached (loss, gradient norm) tensors.

    ``images_u8`` (B, H, W, 3) uint8 and ``features`` (B, D, h, w) or None, on
    the training device.  ``clip_grad``: rescale the gradients so that their
    global L2 norm is at most this (None: no clipping); the norm returned is
    the one before clipping.
    """
    x = images_u8.permute(0, 3, 1, 2).float()
    target = Decoder.to_target(resize_images(x, native_size))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        if features is not None and features.dim() == 4:
            features = features.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        pred = model(x, features)
    loss = F.mse_loss(pred.float(), target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), norm.detach()


# ------------------------------------------------------------------------ the CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--representation", required=True,
                   help="representation name (hog, lbp, sift, alexnet_conv5, ...): output folder and decoder kind")
    p.add_argument("--images", nargs="+", required=True, metavar="SHARD", help="training image shards (.tar)")
    p.add_argument("--features", nargs="+", metavar="STORE",
                   help="feature stores (.h5) aligned with --images (same keys, same order)")
    p.add_argument("--on-the-fly", action="store_true", help="compute features during training (--feature)")
    p.add_argument("--feature", help="registered feature name for --on-the-fly")
    p.add_argument("--params", default="{}", help="feature parameters as JSON for --on-the-fly")
    p.add_argument("--finetune-encoder", action="store_true",
                   help="autoencoder mode: train the encoder's parameters too (needs --on-the-fly)")
    p.add_argument("--out", help="output folder (default results/models/{representation})")
    p.add_argument("--kind", default="auto", choices=("auto",) + KINDS, help="decoder architecture")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = paper)")
    p.add_argument("--image-size", type=int, help="image size to reconstruct (default: the shards' size)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, default=15.0, help="passes over the data (default 15)")
    g.add_argument("--steps", type=int, help="optimisation steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=64, help="global mini-batch (paper: 64)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--lr-milestones", type=float, nargs="*", default=[0.6, 0.8, 0.9],
                   help="fractions of training after which the rate is multiplied by --lr-gamma")
    p.add_argument("--lr-gamma", type=float, default=0.5)
    p.add_argument("--clip-grad", type=float, default=1.0,
                   help="clip the global gradient norm to this value (default 1.0; 0 disables, as in the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle-block", type=int, default=0,
                   help="0: global permutation per epoch; K: shuffle within groups of K shards")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics row")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16)")
    p.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (when not in memory)")
    p.add_argument("--in-memory", default="auto", choices=("auto", "yes", "no"))
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="start over when the checkpoint comes from other settings or other data files "
                        "(default: fail and say what differs); the workflow's rules pass it")
    # tests: send this process --kill-signal (KILL or TERM) right after step --kill-at-step
    p.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--kill-signal", default="KILL", choices=("KILL", "TERM"), help=argparse.SUPPRESS)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return dev


def _dist_setup(device_arg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, _device(device_arg)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_arg in ("auto", "cuda"):
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, device


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % 2**63


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


def _save_torch(path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_metrics(path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "lr", "images_per_s", "grad_norm"])
            w.writeheader()
            w.writerows(rows)


def _feature_rms(model: InversionModel, data: PairedData, device, n: int = SCALE_SAMPLES) -> float:
    """RMS of the features of the first ``n`` training images (dataset order)."""
    n = min(n, len(data))
    total, count = 0.0, 0
    enc = model.encoder
    was_training = enc.training if enc is not None else False
    if enc is not None:
        enc.eval()
    for s in range(0, n, 64):
        items = [data[i] for i in range(s, min(n, s + 64))]
        imgs, feats = _collate(items)
        if feats is None:
            x = imgs.to(device).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                feats = enc(x).float()
        feats = feats.double()
        total += float((feats ** 2).sum())
        count += feats.numel()
    if enc is not None:
        enc.train(was_training)
    rms = math.sqrt(total / max(count, 1))
    return rms if rms > 0 and math.isfinite(rms) else 1.0


def _parse_params(text: str) -> dict:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--params is not valid JSON ({e}): {text!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"--params must be a JSON object, got {text!r}")
    return params


class _Progress:
    """tqdm when installed, else a plain line per metrics row, at most ~100 per run."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.every = max(1, total // 100)
        self.last = initial
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, step: int, total: int, info: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if info:
                self.bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.1e}")
        elif info and (step - self.last >= self.every or step == total):
            self.last = step
            print(f"step {step}/{total} epoch {info['epoch']:.2f} loss {info['loss']:.5f} "
                  f"lr {info['lr']:.2e} {info['images_per_s']:.1f} img/s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(args) -> int:
    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(args)
    finally:
        if args.threads:
            torch.set_num_threads(old_threads)
    return 0


def train(args) -> dict:
    """Train (or resume) a decoder as configured by the parsed ``args``; returns config."""
    rank, world, device = _dist_setup(args.device)
    out = Path(args.out or f"results/models/{args.representation}")
    if args.on_the_fly == bool(args.features):
        raise ValueError("give either --features STORE... or --on-the-fly --feature NAME")
    if args.finetune_encoder and not args.on_the_fly:
        raise ValueError("--finetune-encoder needs --on-the-fly features (the encoder runs inside training)")
    if args.batch_size < 1 or args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a positive multiple of the {world} processes")
    if args.deterministic:
        # warn_only: some CUDA backward kernels have no deterministic version
        # (adaptive average pooling in AlexNet, for the autoencoder); they warn
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = PairedData(args.images, None if args.on_the_fly else args.features,
                      in_memory={"auto": "auto", "yes": True, "no": False}[args.in_memory])
    encoder = None
    if args.on_the_fly:
        if not args.feature:
            raise ValueError("--on-the-fly needs --feature NAME (a registered representation)")
        from pipeline.features import get_feature

        feature = {"name": args.feature, "params": _parse_params(args.params)}
        encoder = get_feature(args.feature, **feature["params"]).to(device)
        in_shape = tuple(int(v) for v in encoder.output_shape(*data.image_size))
        if args.finetune_encoder:
            # representations freeze their weights (e.g. AlexNet); the autoencoder trains them
            encoder.requires_grad_(True)
        if args.finetune_encoder and not any(p.requires_grad for p in encoder.parameters()):
            raise ValueError(f"--finetune-encoder: feature {args.feature!r} has no trainable parameters")
    else:
        feature = {"name": data.feature_name, "params": data.feature_params}
        in_shape = data.feature_shape
    out_size = (args.image_size, args.image_size) if args.image_size else data.image_size
    kind = kind_for(args.representation, in_shape) if args.kind == "auto" else args.kind

    local_batch = args.batch_size // world
    steps_per_epoch = (len(data) // world) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {len(data)} training images "
            f"({len(data) // world} per process)"
        )
    total = args.steps if args.steps is not None else max(1, int(round(args.epochs * steps_per_epoch)))

    _seed_all(args.seed)
    decoder = build_decoder(kind, in_shape, out_size, args.width)
    model = InversionModel(decoder, encoder, finetune=args.finetune_encoder).to(device)

    cfg = {
        "representation": args.representation, "kind": kind, "width": args.width,
        "in_shape": list(in_shape), "out_size": list(out_size), "native_size": list(decoder.native_size),
        "images": list(args.images), "features": list(args.features or []), "feature": feature,
        "on_the_fly": bool(args.on_the_fly), "finetune_encoder": bool(args.finetune_encoder),
        "n_train": len(data), "image_size": list(data.image_size), "epochs": total / steps_per_epoch,
        "steps_per_epoch": steps_per_epoch, "total_steps": total, "batch_size": args.batch_size,
        "optimizer": "Adam", "lr": args.lr, "betas": [args.beta1, args.beta2],
        "lr_milestones": list(args.lr_milestones), "lr_gamma": args.lr_gamma, "seed": args.seed,
        "clip_grad": args.clip_grad or None,
        "shuffle_block": args.shuffle_block, "world_size": world, "device": device.type,
        "amp": str(_amp_dtype(device, args.amp)).replace("torch.", "") if _amp_dtype(device, args.amp) else "off",
        "channels_last": device.type == "cuda", "loss": "mean squared error, pixels as x / 127.5 - 1",
        "target": "shard image resized (bilinear, antialiased) to native_size",
        "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
        "in_memory": data.in_memory, "torch": torch.__version__, "pipeline": __version__,
        # the architecture as built: a checkpoint of another one is not resumed
        "parameter_shapes": {k: list(v.shape) for k, v in decoder.state_dict().items()},
    }

    params = [{"params": list(decoder.parameters())}]
    if args.finetune_encoder:
        params.append({"params": [p for p in encoder.parameters() if p.requires_grad]})
    optimizer = torch.optim.Adam(params, lr=args.lr, betas=(args.beta1, args.beta2))
    amp_dtype = _amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    ckpt_path = out / "checkpoint.pt"
    step, rows, acc = 0, [], {"loss": 0.0, "n": 0, "gmax": 0.0}
    data_files = file_fingerprints(list(args.images) + list(args.features or []))
    ck = None
    if ckpt_path.exists() and not args.restart:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        diff = [k for k in _IDENTITY if ck["config"].get(k) != cfg.get(k)]
        changed = [f[0] for f, g in zip(data_files, ck.get("data_files") or []) if f != g]
        if len(data_files) != len(ck.get("data_files") or []):
            changed = ["the list of data files"]
        why = (f"a different configuration ({', '.join(diff)} differ)" if diff else
               f"other data (rewritten since: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''})"
               if changed else None)
        if why and args.restart_if_changed:
            if rank == 0:
                print(f"{ckpt_path} was written by {why}: starting over", flush=True)
            ck = None
        elif why:
            raise ValueError(f"{ckpt_path} was written by {why}; rerun with --restart to start over")
    if ck is not None:
        decoder.load_state_dict(ck["decoder"])
        if ck.get("encoder") is not None:
            encoder.load_state_dict(ck["encoder"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_states(ck["rng"])
        step, rows, acc = ck["step"], ck["metrics"], ck["acc"]
        if rank == 0:
            print(f"resuming {out} at step {step}/{total}", flush=True)
    else:
        decoder.in_scale.fill_(1.0 / _feature_rms(model, data, device))
    cfg["in_scale"] = float(decoder.in_scale)
    if rank == 0:
        write_json(out / "config.json", cfg)

    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)

    def save(final: bool = False) -> None:
        if rank != 0:
            return
        state = {
            "step": step, "config": cfg, "decoder": decoder.state_dict(),
            "encoder": encoder.state_dict() if args.finetune_encoder else None,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_states(),
            "metrics": rows, "acc": acc, "data_files": data_files,
        }
        _save_torch(ckpt_path, state)
        _write_metrics(out / "metrics.csv", rows)
        if final:
            save_decoder(out / "decoder.pt", decoder, representation=args.representation, feature=feature,
                         encoder=encoder if args.finetune_encoder else None, config=cfg)
            write_json(out / "config.json", dict(cfg, finished=True, steps_done=step))

    stop = {"flag": False}

    def _on_term(signum, frame):  # Slurm preemption: checkpoint at the next step boundary
        stop["flag"] = True

    old_handler = None
    if world == 1:  # under torchrun the launcher owns the signals
        try:
            old_handler = signal.signal(signal.SIGTERM, _on_term)
        except ValueError:  # not the main thread
            pass
    progress = _Progress(total, step, enabled=rank == 0)
    net.train()
    pin = device.type == "cuda"
    loss_sum = torch.zeros((), device=device)
    loss_sum += acc["loss"]
    gmax = torch.zeros((), device=device)
    gmax += acc["gmax"]
    t0, n_img = time.perf_counter(), 0
    try:
        while step < total and not stop["flag"]:
            epoch, pos = divmod(step, steps_per_epoch)
            batches = epoch_batches(data.counts, epoch, args.seed, local_batch, rank, world,
                                    args.shuffle_block)[pos:]
            for imgs, feats in iter_batches(data, batches, args.workers, pin):
                torch.manual_seed(_step_seed(args.seed, step, rank))
                lr = lr_at(step, total, args.lr, args.lr_milestones, args.lr_gamma)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                imgs = imgs.to(device, non_blocking=True)
                feats = None if feats is None else feats.to(device, non_blocking=True)
                loss, gnorm = train_step(net, optimizer, scaler, imgs, feats, decoder.native_size, amp_dtype,
                                         device.type == "cuda", args.clip_grad or None)
                loss_sum += loss
                gmax = torch.maximum(gmax, gnorm)
                acc["n"] += 1
                step += 1
                n_img += imgs.shape[0] * world
                info = {}
                if step % args.log_every == 0 or step == total:
                    if world > 1:
                        import torch.distributed as dist

                        dist.all_reduce(loss_sum)
                        loss_sum /= world
                        dist.all_reduce(gmax, op=dist.ReduceOp.MAX)
                    dt = time.perf_counter() - t0
                    info = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                            "loss": float(loss_sum) / acc["n"], "lr": lr,
                            "images_per_s": round(n_img / dt, 2) if dt > 0 else 0.0,
                            "grad_norm": float(gmax)}
                    rows.append(info)
                    loss_sum.zero_()
                    gmax.zero_()
                    acc["n"] = 0
                    t0, n_img = time.perf_counter(), 0
                progress.update(step, total, info)
                if step % args.checkpoint_every == 0 and step < total:
                    acc["loss"], acc["gmax"] = float(loss_sum), float(gmax)
                    save()
                if args.kill_at_step is not None and step == args.kill_at_step:
                    os.kill(os.getpid(), getattr(signal, f"SIG{args.kill_signal}"))
                if step >= total or stop["flag"]:
                    break
        acc["loss"], acc["gmax"] = float(loss_sum), float(gmax)
        if stop["flag"] and step < total:
            save()
            if rank == 0:
                print(f"stopped by SIGTERM at step {step}; rerun the same command to resume", flush=True)
            raise SystemExit(143)
        save(final=True)
    finally:
        progress.close()
        data.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
    return cfg


# ------------------------------------------------------------ saving and loading


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
        raise ValueError(f"{file}: not a decoder file written by pipeline.train")
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
        from pipeline.features import get_feature

        feat = payload["feature"]
        encoder = get_feature(feat["name"], **feat["params"])
        encoder.load_state_dict(payload["encoder_state_dict"])
        encoder.to(device).eval()
    return decoder.to(device).eval(), encoder, payload


def load_decoder(path, device="cpu") -> Decoder:
    """The trained decoder of ``path`` (``decoder.pt`` or its folder), in eval mode."""
    return load_model(path, device)[0]


def reconstruct_batch(decoder: Decoder, features: torch.Tensor, size=None) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 255] reconstructed from ``features``.

    The decoder's native output is resized bilinearly to ``size`` (int or
    (H, W); default the decoder's ``out_size``, the image size it was trained
    for), as the paper does before computing errors.  Runs without gradients
    on the decoder's device; the result stays there.
    """
    p = next(decoder.parameters())
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.no_grad():
            y = decoder(torch.as_tensor(features).to(device=p.device, dtype=p.dtype))
            return Decoder.to_image(resize_images(y.float(), size or decoder.out_size, antialias=True))
    finally:
        decoder.train(was_training)


# -------------------------------------------------------------------- reconstruct


def configure_reconstruct_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained model: decoder.pt or its folder")
    p.add_argument("--images", nargs="+", required=True, metavar="SHARD", help="validation image shards")
    p.add_argument("--features", nargs="+", metavar="STORE", help="feature stores aligned with --images")
    p.add_argument("--on-the-fly", action="store_true",
                   help="compute features (default: the model's feature, or --feature/--params)")
    p.add_argument("--feature", help="feature name for --on-the-fly (default: the model's)")
    p.add_argument("--params", help="feature parameters (JSON) for --on-the-fly (default: the model's)")
    o = p.add_mutually_exclusive_group(required=True)
    o.add_argument("--out", nargs="+", metavar="STORE", help="one output store per image shard")
    o.add_argument("--out-dir", help="folder for the output stores ({shard name}.h5)")
    p.add_argument("--grid", help="PNG of (input | reconstruction) pairs")
    p.add_argument("--grid-count", type=int, default=16, help="pairs in the grid")
    p.add_argument("--grid-cols", type=int, default=4, help="pairs per grid row")
    p.add_argument("--size", type=int, help="reconstruction size (default: each image's size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)


def run_reconstruct(args) -> int:
    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        reconstruct(args)
    finally:
        if args.threads:
            torch.set_num_threads(old_threads)
    return 0


def reconstruct(args) -> list[str]:
    device = _device(args.device)
    decoder, encoder, payload = load_model(args.model, device)
    shards = [str(s) for s in args.images]
    if args.features and args.on_the_fly:
        raise ValueError("give either --features or --on-the-fly, not both")
    if args.features:
        if len(args.features) != len(shards):
            raise ValueError(f"{len(shards)} image shards but {len(args.features)} feature stores")
    else:
        cfg = payload.get("config") or {}
        if not (args.on_the_fly or cfg.get("on_the_fly")):
            raise ValueError("the model was trained on feature stores: give --features STORE... (or --on-the-fly)")
        if encoder is None or args.feature:
            from pipeline.features import get_feature

            feat = payload.get("feature") or {}
            name = args.feature or feat.get("name")
            params = _parse_params(args.params) if args.params else feat.get("params", {})
            if not name:
                raise ValueError("--on-the-fly: the model records no feature; give --feature NAME")
            encoder = get_feature(name, **params).to(device).eval()
    if args.out:
        outs = [str(p) for p in args.out]
        if len(outs) != len(shards):
            raise ValueError(f"{len(shards)} image shards but {len(outs)} --out stores")
    else:
        outs = [str(Path(args.out_dir) / (Path(s).name.split(".")[0] + ".h5")) for s in shards]

    grid_pairs = []
    for i, (shard, out) in enumerate(zip(shards, outs)):
        data = PairedData([shard], [args.features[i]] if args.features else None, in_memory=False)
        size = (args.size, args.size) if args.size else data.image_size
        if tuple(decoder.in_shape) != tuple(data.feature_shape or decoder.in_shape):
            raise ValueError(f"{args.features[i]}: features of shape {data.feature_shape}, but the decoder "
                             f"expects {tuple(decoder.in_shape)}")
        recon = np.empty((len(data), 3, *size), np.float16)
        for s in range(0, len(data), args.batch_size):
            imgs, feats = _collate([data[j] for j in range(s, min(len(data), s + args.batch_size))])
            if feats is None:
                x = imgs.to(device).permute(0, 3, 1, 2).float()
                with torch.no_grad():
                    feats = encoder(x).float()
            y = reconstruct_batch(decoder, feats, size).cpu()
            recon[s:s + len(y)] = y.numpy().astype(np.float16)
            for j in range(len(y)):
                if len(grid_pairs) < args.grid_count:
                    grid_pairs.append((imgs[j].numpy(), y[j].permute(1, 2, 0).round().byte().numpy()))
        data.close()
        write_store(
            out, data.keys, recon, feature="reconstruction",
            params={"representation": payload.get("representation"), "decoder": payload["build_args"],
                    "feature": payload.get("feature"), "model": str(_decoder_file(args.model))},
            image_shard=shard, image_shard_sha256=sha256_file(shard), dtype="float16",
            extra_attrs={"pixel_range": "0-255", "native_size": json.dumps(payload.get("native_size"))},
        )
        print(f"{out}: {len(data)} reconstructions from {shard}", flush=True)
    if args.grid:
        write_grid(args.grid, grid_pairs, args.grid_cols)
    return outs


def write_grid(path, pairs, cols: int = 4, gap: int = 2) -> None:
    """PNG of (input | reconstruction) pairs, ``cols`` pairs per row, white gaps."""
    from PIL import Image

    if not pairs:
        raise ValueError("no images for the grid")
    h = max(max(a.shape[0], b.shape[0]) for a, b in pairs)
    w = max(a.shape[1] + b.shape[1] for a, b in pairs)
    cols = max(1, min(cols, len(pairs)))
    rows = (len(pairs) + cols - 1) // cols
    canvas = np.full((rows * (h + gap) + gap, cols * (w + 2 * gap) + gap, 3), 255, np.uint8)
    for k, (a, b) in enumerate(pairs):
        r, c = divmod(k, cols)
        y, x = gap + r * (h + gap), gap + c * (w + 2 * gap)
        canvas[y:y + a.shape[0], x:x + a.shape[1]] = a
        canvas[y:y + b.shape[0], x + a.shape[1]:x + a.shape[1] + b.shape[1]] = b
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


# -------------------------------------------------------------------------- bench


def _bench_shape(kind: str, size: int) -> tuple[int, int, int]:
    return {
        "hog": (31, (size + 4) // 8, (size + 4) // 8),
        "lbp": (58, max(1, size // 16), max(1, size // 16)),
        "sift": (133, -(-size // 4), -(-size // 4)),
        "conv": (256, max(1, round(size / 37.8)), max(1, round(size / 37.8))),
        "fc": (1000, 1, 1),
    }[kind]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(argv: list[str]) -> int:
    """Training images/s and inference ms/image of decoders, CPU and GPU when present."""
    p = argparse.ArgumentParser(prog="python -m pipeline bench train", description=bench_train.__doc__)
    p.add_argument("--size", type=int, default=64, help="image size")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--kinds", nargs="+", default=["hog", "fc"], choices=KINDS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"decoder benchmark: {a.size}x{a.size} images, width {a.width}, batch {a.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':8} {'kind':5} {'in_shape':>14} {'params':>8} {'train img/s':>12} {'infer ms/img':>13} "
          f"{'vs paper 5 ms':>14}")
    results = {}
    for dev_name in devices:
        device = _device(dev_name)
        amp = _amp_dtype(device, "auto")
        for kind in a.kinds:
            torch.manual_seed(0)
            shape = _bench_shape(kind, a.size)
            dec = build_decoder(kind, shape, a.size, a.width).to(device)
            model = InversionModel(dec).to(device)
            cl = device.type == "cuda"
            if cl:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
            feats = torch.rand(a.batch_size, *shape, device=device)
            imgs = torch.randint(0, 256, (a.batch_size, a.size, a.size, 3), dtype=torch.uint8, device=device)
            for i in range(a.warmup + a.steps):
                if i == a.warmup:
                    _sync(device)
                    t = time.perf_counter()
                train_step(model, opt, scaler, imgs, feats, dec.native_size, amp, cl, 1.0)
            _sync(device)
            ips = a.steps * a.batch_size / (time.perf_counter() - t)
            dec.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                for i in range(a.warmup + a.steps):
                    if i == a.warmup:
                        _sync(device)
                        t = time.perf_counter()
                    dec(feats)
                _sync(device)
            ms = 1000 * (time.perf_counter() - t) / (a.steps * a.batch_size)
            n_par = sum(q.numel() for q in dec.parameters()) / 1e6
            results[(dev_name, kind)] = (ips, ms)
            print(f"{dev_name:8} {kind:5} {str(shape):>14} {n_par:7.2f}M {ips:12.1f} {ms:13.3f} "
                  f"{PAPER_MS_PER_IMAGE / ms:13.2f}x", flush=True)
    print(f"reference: seed 000 reports ~{PAPER_MS_PER_IMAGE:g} ms per image for one forward pass on a 2015 GPU "
          "(paper-sized networks); 'vs paper' > 1 means faster than that")
    for kind in a.kinds:
        if ("cpu", kind) in results and ("cuda", kind) in results:
            c, g = results[("cpu", kind)], results[("cuda", kind)]
            print(f"{kind}: GPU/CPU speed-up training {g[0] / c[0]:.1f}x, inference {c[1] / g[1]:.1f}x")
    return 0
