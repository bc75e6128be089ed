"""``python -m pipeline train``: train a decoder (Dosovitskiy & Brox 2016, section 2.2).

One decoder per representation, trained to minimise the squared error
between the image and the decoder's output (equation 3 of the paper), so
that it predicts the expected pre-image.  :func:`train` is a handful of
steps: :func:`setup` (process, data, networks, configuration, optimiser),
:func:`resume` (the checkpoint, or the input scale of a new run),
:func:`wrap_model`, then :func:`pipeline.decoders.loop.train_loop` (epochs
of steps, metrics, checkpoints).

Conventions
-----------
* **Pixels.**  Targets are the shard images (RGB uint8) in normalised units
  ``t = x / 127.5 - 1`` (x in [0, 255] -> t in [-1, 1]), resized (bilinear,
  antialiased) to the decoder's native size when that differs from the
  image size (see :mod:`pipeline.decoders.architectures`).  The loss is the
  mean over pixels and channels of ``(f(phi) - t)**2`` (a constant multiple
  of the paper's sum, which Adam does not see).
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
* **Data** (:mod:`pipeline.decoders.data`).  Image shards and feature
  stores paired by position; ``--on-the-fly`` computes the features on the
  training device with ``pipeline.features.get_feature``;
  ``--finetune-encoder`` also trains the encoder's parameters (the
  autoencoder of the paper's section 4.2).
* **Memory format.**  channels_last on CUDA, and on the CPU when the
  features come from stores (no encoder in the step): measured with
  ``python -m pipeline bench train --size 128 --out-size 64 --width 0.25
  --channels-last both`` on 2 CPU cores, it trains the LBP decoder ~1.25x,
  HOG ~1.1x and SIFT 1.0-1.06x as fast, and decodes 1.1-1.7x as fast.
* **GPU.**  bf16 autocast (fp16 + GradScaler where bf16 is missing); ``torchrun --nproc-per-node N python -m pipeline
  train ...`` (WORLD_SIZE > 1) runs DistributedDataParallel, ``--batch-size``
  being the global batch.
"""
from __future__ import annotations

import argparse
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline import __version__, code_commit
from pipeline.decoders.architectures import KINDS, Decoder, build_decoder, decoder_kind
from pipeline.decoders.data import PairedData, _collate
from pipeline.decoders.loop import Run, _catch_sigterm, _finish, _Progress, train_loop
from pipeline.decoders.modelfile import _set_rng_states, checkpoint_mismatch, file_fingerprints
from pipeline.decoders.step import InversionModel, _amp_dtype
from pipeline.features import get_feature
from pipeline.io import remove_stale_temporaries, write_json
from pipeline.options import (
    nonnegative_float, nonnegative_int, parse_device, parse_json_params, positive_float, positive_int, torch_threads,
)
from pipeline.store import feature_mismatch
from pipeline.torchfile import load_torch_file

SCALE_SAMPLES = 512
#: The files of a training run (``--out``).
OUTPUTS = ("checkpoint.pt", "decoder.pt", "config.json", "metrics.csv")
#: Keys of ``checkpoint.pt``.
CHECKPOINT_KEYS = ("step", "config", "decoder", "encoder", "optimizer", "scaler", "rng", "metrics", "acc",
                   "data_files")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--representation", required=True,
                   help="representation name (hog, lbp, sift, alexnet_conv5, ...): output folder and decoder kind")
    p.add_argument("--images", nargs="+", required=True, metavar="SHARD", help="training image shards (.tar)")
    p.add_argument("--features", nargs="+", metavar="STORE",
                   help="feature stores (.h5) aligned with --images (same keys, same order)")
    p.add_argument("--on-the-fly", action="store_true", help="compute features during training (--feature)")
    p.add_argument("--feature", help="registered feature name for --on-the-fly; with --features, the "
                                      "representation the stores must hold")
    p.add_argument("--params", default="{}", help="feature parameters as JSON for --on-the-fly; with --features "
                                                  "and --feature, parameters the stores must have")
    p.add_argument("--finetune-encoder", action="store_true",
                   help="autoencoder mode: train the encoder's parameters too (needs --on-the-fly)")
    p.add_argument("--out", help="output folder (default results/models/{representation})")
    p.add_argument("--kind", default="auto", choices=("auto",) + KINDS, help="decoder architecture")
    p.add_argument("--width", type=positive_float, default=1.0, help="channel width multiplier (1.0 = paper)")
    p.add_argument("--image-size", type=positive_int, help="image size to reconstruct (default: the shards' size)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=positive_float, default=15.0, help="passes over the data (default 15)")
    g.add_argument("--steps", type=positive_int, help="optimisation steps (overrides --epochs)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global mini-batch (paper: 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate (paper: 0.001)")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam's beta1 (paper: 0.9)")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's beta2 (paper: 0.999)")
    p.add_argument("--lr-milestones", type=float, nargs="*", default=[0.6, 0.8, 0.9],
                   help="fractions of training after which the rate is multiplied by --lr-gamma")
    p.add_argument("--lr-gamma", type=positive_float, default=0.5,
                   help="factor applied to the learning rate at each milestone")
    p.add_argument("--clip-grad", type=nonnegative_float, default=1.0,
                   help="clip the global gradient norm to this value (default 1.0; 0 disables, as in the paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the shuffling")
    p.add_argument("--shuffle-block", type=nonnegative_int, default=0,
                   help="0: global permutation per epoch; K: shuffle within groups of K shards")
    p.add_argument("--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints")
    p.add_argument("--log-every", type=positive_int, default=10, help="steps per metrics row")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16)")
    p.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (CUDA)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="DataLoader workers (when not in memory)")
    p.add_argument("--in-memory", default="auto", choices=("auto", "yes", "no"),
                   help="decode all training images into memory first (auto: when they fit in the limit)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="start over when the checkpoint comes from other settings or other data files "
                        "(default: fail and say what differs); the workflow's rules pass it")
    # tests: send this process --kill-signal (KILL or TERM) right after step --kill-at-step
    p.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--kill-signal", default="KILL", choices=("KILL", "TERM"), help=argparse.SUPPRESS)


def _dist_setup(device_arg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, parse_device(device_arg)
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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def run(args) -> int:
    with torch_threads(args.threads):
        train(args)
    return 0


def check_args(args, world: int) -> None:
    """Refuse contradictory options before any data is read."""
    if args.on_the_fly == bool(args.features):
        raise ValueError("give either --features STORE... or --on-the-fly --feature NAME")
    if args.finetune_encoder and not args.on_the_fly:
        raise ValueError("--finetune-encoder needs --on-the-fly features (the encoder runs inside training)")
    if args.batch_size < 1 or args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a positive multiple of the {world} processes")


def _set_kernels(args, device: torch.device) -> None:
    if args.deterministic:
        # warn_only: some CUDA backward kernels have no deterministic version
        # (adaptive average pooling in AlexNet, for the autoencoder); they warn
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def load_data(args) -> PairedData:
    """The training images, paired with the rows of ``--features`` (none ``--on-the-fly``)."""
    return PairedData(args.images, None if args.on_the_fly else args.features,
                      in_memory={"auto": "auto", "yes": True, "no": False}[args.in_memory])


def load_encoder(args, data: PairedData, device: torch.device):
    """(encoder for ``--on-the-fly`` or None, ``{"name", "params"}`` of the feature, its shape (D, h, w))."""
    encoder = None
    if args.on_the_fly:
        if not args.feature:
            raise ValueError("--on-the-fly needs --feature NAME (a registered representation)")
        feature = {"name": args.feature, "params": parse_json_params(args.params)}
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
        if args.feature:  # the representation the stores must hold
            why = feature_mismatch(feature, {"name": args.feature, "params": parse_json_params(args.params)})
            if why:
                raise ValueError(f"feature store {args.features[0]} {why} (expected: --feature {args.feature} "
                                 f"--params {args.params})")
    return encoder, feature, in_shape


def plan_steps(args, n_train: int, world: int) -> tuple[int, int, int]:
    """(batch per process, steps per epoch, total steps)."""
    local_batch = args.batch_size // world
    steps_per_epoch = (n_train // world) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {n_train} training images "
            f"({n_train // world} per process)"
        )
    total = args.steps if args.steps is not None else max(1, int(round(args.epochs * steps_per_epoch)))
    return local_batch, steps_per_epoch, total


def make_config(args, *, kind, in_shape, out_size, decoder: Decoder, feature: dict, data: PairedData,
                steps_per_epoch: int, total: int, world: int, device: torch.device) -> dict:
    """The exact configuration (``config.json``; its keys in ``_IDENTITY`` decide resuming)."""
    return {
        "representation": args.representation, "kind": kind, "width": args.width,
        "code_version": __version__, "code_commit": code_commit(),
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
        "channels_last": use_channels_last(device, args), "loss": "mean squared error, pixels as x / 127.5 - 1",
        "target": "shard image resized (bilinear, antialiased) to native_size",
        "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
        "in_memory": data.in_memory, "torch": str(torch.__version__), "pipeline": str(__version__),
        # the architecture as built: a checkpoint of another one is not resumed
        "parameter_shapes": {k: list(v.shape) for k, v in decoder.state_dict().items()},
    }


def make_optimizer(args, decoder: Decoder, encoder: nn.Module | None, device: torch.device):
    """(Adam over the decoder, and the encoder with ``--finetune-encoder``; autocast dtype; GradScaler)."""
    params = [{"params": list(decoder.parameters())}]
    if args.finetune_encoder:
        params.append({"params": [p for p in encoder.parameters() if p.requires_grad]})
    optimizer = torch.optim.Adam(params, lr=args.lr, betas=(args.beta1, args.beta2))
    amp_dtype = _amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return optimizer, amp_dtype, scaler


def setup(args) -> Run:
    """Process, data, encoder, decoder (initialised from ``--seed``), configuration, optimiser."""
    rank, world, device = _dist_setup(args.device)
    out = Path(args.out or f"results/models/{args.representation}")
    check_args(args, world)
    if rank == 0:  # what a killed run left half-written
        for name in OUTPUTS:
            remove_stale_temporaries(out / name)
    _set_kernels(args, device)
    data = load_data(args)
    encoder, feature, in_shape = load_encoder(args, data, device)
    out_size = (args.image_size, args.image_size) if args.image_size else data.image_size
    kind = decoder_kind(feature["name"], feature["params"], in_shape) if args.kind == "auto" else args.kind
    local_batch, steps_per_epoch, total = plan_steps(args, len(data), world)

    _seed_all(args.seed)
    decoder = build_decoder(kind, in_shape, out_size, args.width)
    model = InversionModel(decoder, encoder, finetune=args.finetune_encoder).to(device)
    cfg = make_config(args, kind=kind, in_shape=in_shape, out_size=out_size, decoder=decoder, feature=feature,
                      data=data, steps_per_epoch=steps_per_epoch, total=total, world=world, device=device)
    optimizer, amp_dtype, scaler = make_optimizer(args, decoder, encoder, device)
    data_files = file_fingerprints(list(args.images) + list(args.features or []))
    return Run(args, rank, world, device, out, data, encoder, feature, decoder, model, cfg, optimizer, amp_dtype,
               scaler, local_batch, steps_per_epoch, total, data_files)


def resume(run: Run) -> None:
    """Continue from ``checkpoint.pt`` when it comes from the same settings and data
    (else fail, or start over with ``--restart-if-changed``); a new run sets ``in_scale``."""
    args, ckpt_path = run.args, run.out / "checkpoint.pt"
    ck = None
    if ckpt_path.exists() and not args.restart:
        ck, unreadable = _load_checkpoint(ckpt_path, run.device)
        if unreadable and args.restart_if_changed:
            if run.rank == 0:
                print(f"{unreadable}: starting over", flush=True)
            ck = None
        elif unreadable:
            raise ValueError(f"{unreadable}; rerun with --restart-if-changed (or --restart) to start over, "
                             "or delete it")
        why = checkpoint_mismatch(ck, run.cfg, run.data_files) if ck is not None else None
        if why and args.restart_if_changed:
            if run.rank == 0:
                print(f"{ckpt_path} was written by {why}: starting over", flush=True)
            ck = None
        elif why:
            raise ValueError(f"{ckpt_path} was written by {why}; rerun with --restart to start over")
    if ck is not None:
        run.decoder.load_state_dict(ck["decoder"])
        if ck.get("encoder") is not None:
            run.encoder.load_state_dict(ck["encoder"])
        run.optimizer.load_state_dict(ck["optimizer"])
        run.scaler.load_state_dict(ck["scaler"])
        _set_rng_states(ck["rng"])
        run.step, run.rows, run.acc = ck["step"], ck["metrics"], ck["acc"]
        if run.rank == 0:
            print(f"resuming {run.out} at step {run.step}/{run.total}", flush=True)
    else:
        run.decoder.in_scale.fill_(1.0 / _feature_rms(run.model, run.data, run.device))
    run.cfg["in_scale"] = float(run.decoder.in_scale)


def _load_checkpoint(path: Path, device) -> tuple[dict | None, str | None]:
    """(the checkpoint, None), or (None, why it cannot be resumed from: damaged, crafted, not a checkpoint)."""
    try:
        ck = load_torch_file(path, what="checkpoint", map_location=device)
    except ValueError as e:
        return None, str(e)
    missing = [k for k in CHECKPOINT_KEYS if k not in ck] if isinstance(ck, dict) else ["everything"]
    if missing or not isinstance(ck.get("config"), dict):
        return None, f"{path}: not a training checkpoint (no {missing or ['config']})"
    return ck, None


def use_channels_last(device: torch.device, args) -> bool:
    """channels_last memory format: on CUDA; on the CPU without an encoder in the step (module doc)."""
    return device.type == "cuda" or not args.on_the_fly


def wrap_model(run: Run) -> nn.Module:
    """The module the steps run: channels_last (:func:`use_channels_last`), DistributedDataParallel, ``--compile``."""
    if run.cfg["channels_last"]:
        run.model = run.model.to(memory_format=torch.channels_last)
    net = run.model
    if run.world > 1:
        net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.args.compile:
        net = torch.compile(net)
    return net


def train(args) -> dict:
    """Train (or resume) a decoder as configured by the parsed ``args``; returns config."""
    run = setup(args)
    resume(run)
    if run.rank == 0:
        write_json(run.out / "config.json", run.cfg)
    net = wrap_model(run)
    stop, old_handler = _catch_sigterm(run.world)
    progress = _Progress(run.total, run.step, enabled=run.rank == 0)
    try:
        train_loop(run, net, progress, stop)
    finally:
        _finish(run, progress, old_handler)
    return run.cfg
