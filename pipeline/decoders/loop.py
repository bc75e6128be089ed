"""The training loop of a decoder: epochs of steps, metrics rows, checkpoints.

:func:`train_loop` runs :func:`train_one_epoch` until the last step of a
:class:`Run` that :mod:`pipeline.decoders.training` set up.  Before every
step the torch RNG is reseeded from (seed, step, rank), and the batches of
epoch ``e`` come from a permutation seeded by (seed, e), so a run resumed
from a checkpoint (:func:`save_checkpoint`: model, Adam, GradScaler, step,
loss accumulators, RNG states) ends bit-identical on the CPU.  A metrics
row (step, epoch, loss, lr, images_per_s, grad_norm) is appended every
``--log-every`` steps; SIGTERM (Slurm preemption) checkpoints at the next
step boundary and exits with status 143.  A non-finite loss stops the run
(:func:`_check_loss`, before any metrics row or checkpoint holds it) naming
the first step that gave it.
"""
from __future__ import annotations

import datetime

import argparse
import csv
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.decoders.architectures import Decoder
from pipeline.decoders.data import PairedData, epoch_batches, iter_batches
from pipeline.decoders.modelfile import _rng_states, _save_torch, save_decoder
from pipeline.decoders.step import InversionModel, lr_at, train_step
from pipeline.io import atomic_path, write_json


@dataclass
class Run:
    """One training run as :func:`pipeline.decoders.training.setup` makes it, and
    the progress that its checkpoints carry (``step``, metrics ``rows``, loss
    accumulators ``acc``)."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    out: Path
    data: PairedData
    encoder: nn.Module | None
    feature: dict
    decoder: Decoder
    model: InversionModel
    cfg: dict
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    local_batch: int
    steps_per_epoch: int
    total: int
    data_files: list
    step: int = 0
    rows: list = field(default_factory=list)
    acc: dict = field(default_factory=lambda: {"loss": 0.0, "n": 0, "gmax": 0.0})


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % 2**63


def _write_metrics(path, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "lr", "images_per_s", "grad_norm"])
            w.writeheader()
            w.writerows(rows)


class _Progress:
    """A plain progress line per ~1% of the run (at most ~100), with a timestamp and
    the estimated time left from this session's pace: readable in a job log."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.every = max(1, total // 100)
        self.last = self.initial = initial
        self.t0 = time.monotonic()

    def update(self, step: int, total: int, info: dict) -> None:
        if not self.enabled or not info or not (step - self.last >= self.every or step == total):
            return
        self.last = step
        done = step - self.initial
        left = (time.monotonic() - self.t0) / done * (total - step) if done else float("nan")
        eta = str(datetime.timedelta(seconds=round(left))) if left == left else "?"
        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} step {step}/{total} ({100 * step / total:.0f}%) "
              f"epoch {info['epoch']:.2f} loss {info['loss']:.5f} lr {info['lr']:.2e} "
              f"{info['images_per_s']:.1f} img/s, ETA {eta}", flush=True)

    def close(self):
        pass


def save_checkpoint(run: Run, final: bool = False) -> None:
    """``checkpoint.pt`` and ``metrics.csv`` (rank 0); ``final``: also ``decoder.pt`` and the finished config."""
    if run.rank != 0:
        return
    args = run.args
    state = {
        "step": run.step, "config": run.cfg, "decoder": run.decoder.state_dict(),
        "encoder": run.encoder.state_dict() if args.finetune_encoder else None,
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(), "rng": _rng_states(),
        "metrics": run.rows, "acc": run.acc, "data_files": run.data_files,
    }
    _save_torch(run.out / "checkpoint.pt", state)
    _write_metrics(run.out / "metrics.csv", run.rows)
    if final:
        save_decoder(run.out / "decoder.pt", run.decoder, representation=args.representation,
                     feature=run.feature, encoder=run.encoder if args.finetune_encoder else None, config=run.cfg)
        write_json(run.out / "config.json", dict(run.cfg, finished=True, steps_done=run.step))


class _Meter:
    """Loss sum and largest gradient norm since the last metrics row (on the device), images and time,
    and the first step whose loss was not finite (-1: none; kept on the device, read at the checks)."""

    def __init__(self, acc: dict, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.loss_sum += acc["loss"]
        self.gmax = torch.zeros((), device=device)
        self.gmax += acc["gmax"]
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.t0, self.n_img = time.perf_counter(), 0

    def note_loss(self, loss: torch.Tensor, step: int) -> None:
        """Remember ``step`` when its ``loss`` is NaN or Inf and no earlier step's was (no device sync)."""
        self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), step, self.first_bad)


def _check_loss(run: Run, meter: _Meter) -> None:
    """Stop the run when a loss since the last check was NaN or Inf: before a metrics
    row or a checkpoint records it (the last checkpoint stays the last good one)."""
    bad = int(meter.first_bad)
    if bad >= 0:
        raise ValueError(
            f"{run.out}: the training loss is not finite (NaN or Inf) at step {bad} of {run.total}; nothing "
            "from that step on was saved. Check the features for extreme values, or lower --lr "
            "(or --amp off on CUDA), then rerun (it resumes from the last checkpoint)"
        )


def _metrics_row(run: Run, meter: _Meter, lr: float) -> dict:
    """Append a metrics row (averaged over the processes) and reset the meter."""
    if run.world > 1:
        dist.all_reduce(meter.loss_sum)
        meter.loss_sum /= run.world
        dist.all_reduce(meter.gmax, op=dist.ReduceOp.MAX)
    dt = time.perf_counter() - meter.t0
    info = {"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4),
            "loss": float(meter.loss_sum) / run.acc["n"], "lr": lr,
            "images_per_s": round(meter.n_img / dt, 2) if dt > 0 else 0.0,
            "grad_norm": float(meter.gmax)}
    run.rows.append(info)
    meter.loss_sum.zero_()
    meter.gmax.zero_()
    run.acc["n"] = 0
    meter.t0, meter.n_img = time.perf_counter(), 0
    return info


def train_one_epoch(run: Run, net: nn.Module, meter: _Meter, progress: _Progress, stop: dict) -> None:
    """The remaining steps of the current epoch (until the last step, or SIGTERM)."""
    args, device = run.args, run.device
    epoch, pos = divmod(run.step, run.steps_per_epoch)
    batches = epoch_batches(run.data.counts, epoch, args.seed, run.local_batch, run.rank, run.world,
                            args.shuffle_block)[pos:]
    for imgs, feats in iter_batches(run.data, batches, args.workers, device.type == "cuda"):
        torch.manual_seed(_step_seed(args.seed, run.step, run.rank))
        lr = lr_at(run.step, run.total, args.lr, args.lr_milestones, args.lr_gamma)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        imgs = imgs.to(device, non_blocking=True)
        feats = None if feats is None else feats.to(device, non_blocking=True)
        loss, gnorm = train_step(net, run.optimizer, run.scaler, imgs, feats, run.decoder.native_size,
                                 run.amp_dtype, run.cfg["channels_last"], args.clip_grad or None)
        meter.loss_sum += loss
        meter.gmax = torch.maximum(meter.gmax, gnorm)
        run.acc["n"] += 1
        run.step += 1
        meter.note_loss(loss, run.step)
        meter.n_img += imgs.shape[0] * run.world
        info = {}
        row_due = run.step % args.log_every == 0 or run.step == run.total
        checkpoint_due = run.step % args.checkpoint_every == 0 and run.step < run.total
        if row_due or checkpoint_due:
            _check_loss(run, meter)
        if row_due:
            info = _metrics_row(run, meter, lr)
        progress.update(run.step, run.total, info)
        if checkpoint_due:
            run.acc["loss"], run.acc["gmax"] = float(meter.loss_sum), float(meter.gmax)
            save_checkpoint(run)
        if args.kill_at_step is not None and run.step == args.kill_at_step:
            os.kill(os.getpid(), getattr(signal, f"SIG{args.kill_signal}"))
        if run.step >= run.total or stop["flag"]:
            return


def train_loop(run: Run, net: nn.Module, progress: _Progress, stop: dict) -> None:
    """Epochs until the last step, then the final checkpoint and ``decoder.pt``;
    after SIGTERM, a checkpoint and exit status 143."""
    net.train()
    meter = _Meter(run.acc, run.device)
    while run.step < run.total and not stop["flag"]:
        train_one_epoch(run, net, meter, progress, stop)
    _check_loss(run, meter)
    run.acc["loss"], run.acc["gmax"] = float(meter.loss_sum), float(meter.gmax)
    if stop["flag"] and run.step < run.total:
        save_checkpoint(run)
        if run.rank == 0:
            print(f"stopped by SIGTERM at step {run.step}; rerun the same command to resume", flush=True)
        raise SystemExit(143)
    save_checkpoint(run, final=True)


def _catch_sigterm(world: int):
    """(flag set by SIGTERM, the handler replaced or None): Slurm preemption
    checkpoints at the next step boundary; under torchrun the launcher owns the signals."""
    stop = {"flag": False}

    def _on_term(signum, frame):
        stop["flag"] = True

    old_handler = None
    if world == 1:
        try:
            old_handler = signal.signal(signal.SIGTERM, _on_term)
        except ValueError:  # not the main thread
            pass
    return stop, old_handler


def _finish(run: Run, progress: _Progress, old_handler) -> None:
    progress.close()
    run.data.close()
    if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
