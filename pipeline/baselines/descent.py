"""The descent of Mahendran & Vedaldi (CVPR 2015) inversion: schedules, optimiser, log.

Optimisation (Mahendran & Vedaldi 2015, section 2.1): gradient descent with
momentum ``mu <- m mu - eta_t grad E(x); x <- x + mu``, ``m = 0.9``, a learning
rate held fixed for a few hundred iterations and divided by ten, with the
momentum reset at each change (``invert_nn.m``).  No per-target gradient
normalisation: the paper normalises only the loss.  Schedules
(:data:`SCHEDULES`), all from deep-goggle:

* ``cnn`` (default for AlexNet layers): ``experiment_cnn.m``, the script that
  produced Table 3 / Fig. 6: lr 0.004 for 100, 200, 100 iterations at x1,
  x0.1, x0.01;
* ``shallow`` (default for HOG, HOGb, DSIFT and anything else):
  ``experiment_shallow_quantitative.m`` (Table 1): lr 0.004 for 4 x 200
  iterations at x1 ... x0.001;
* ``invert_nn``: the defaults of ``invert_nn.m``: lr 0.001 for 800, 500, 500,
  200, 100 iterations at x1 ... x1e-4.

``iterations`` rescales a schedule's segments proportionally (the sample
configuration and the tests use few).  ``optimizer="adam"`` is an option (the
experience in ``features.md`` was with Adam, which is less sensitive to the
gradient scale of a representation); there ``lr`` is the step in grey levels.
``optimizer="adagrad"`` is the momentum with AdaGrad-like scaling of the
authors' pre-image code (Mahendran & Vedaldi 2016, nnpreimage's
``nnpreimage.m``): ``G <- m G + g^2``, ``mu <- m mu - g / (1/eta + sqrt(G))``,
``x <- x + mu``, both reset at each rate change.

Initialisation: ``x`` is Gaussian noise scaled to unit norm (``invert_nn``:
``x = randn; x = x / norm(x) * x0_sigma`` in pixels), drawn per target and
restart from a generator seeded by ``(seed, key, restart)``
(:func:`noise_init`), so a target's result does not depend on the rest of its
batch.

The energy being minimised is in :mod:`pipeline.baselines.terms`.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------

#: Momentum of the gradient descent (``invert_nn.m``).
MOMENTUM = 0.9
#: name -> (base learning rate, ((iterations, lr factor), ...)).
SCHEDULES: dict[str, tuple[float, tuple[tuple[int, float], ...]]] = {
    "cnn": (0.004, ((100, 1.0), (200, 0.1), (100, 0.01))),
    "shallow": (0.004, ((200, 1.0), (200, 0.1), (200, 0.01), (200, 0.001))),
    "invert_nn": (0.001, ((800, 1.0), (500, 0.1), (500, 0.01), (200, 1e-3), (100, 1e-4))),
}
#: Default base step for Adam, grey levels per iteration.
ADAM_LR = 16.0


def default_schedule(name: str) -> str:
    return "cnn" if name in ("alexnet", "caffenet") else "shallow"


def make_schedule(schedule: str | Sequence[tuple[int, float]] = "shallow", *, lr: float | None = None,
                  iterations: int | None = None) -> list[tuple[int, float]]:
    """A list of ``(iterations, learning rate)`` segments.

    ``schedule`` is a name in :data:`SCHEDULES` or explicit ``(iterations,
    factor)`` pairs; ``lr`` replaces the base learning rate; ``iterations``
    rescales the segment lengths proportionally (rounding the cumulative
    boundaries, dropping empty segments).
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        base, segs = SCHEDULES[schedule]
    else:
        base, segs = 1.0, tuple((int(n), float(f)) for n, f in schedule)
        if not segs or any(n < 0 for n, _ in segs):
            raise ValueError(f"schedule must be non-empty (iterations, factor) pairs, got {schedule!r}")
    if lr is not None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        base = lr
    total = sum(n for n, _ in segs)
    if iterations is not None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        cum, out, prev = 0, [], 0
        for n, f in segs:
            cum += n
            b = round(cum * iterations / total)
            out.append((b - prev, f))
            prev = b
        segs = tuple(out)
    return [(n, base * f) for n, f in segs if n > 0]


# --------------------------------------------------------------------------
# The optimiser and its log
# --------------------------------------------------------------------------


LOG_COLUMNS = ("energy", "feature_loss", "alpha_term", "tv_term", "pixel_rmse")


@dataclass
class InversionLog:
    """Per-iteration values, arrays of shape (T, N, R) (iteration, target, restart).

    ``iteration[t]`` is the iteration number (1-based) of row t, ``lr[t]`` its
    learning rate; values are those of the iterate *before* that update.  The
    last row (``lr`` NaN) is the final iterate.  ``pixel_rmse`` is the RMS
    error in grey levels of the clipped image against the reference image
    (its grey version for grey reconstructions; NaN without a reference).
    ``best[n]`` is the restart kept for target n.
    """

    keys: list[str]
    iteration: np.ndarray
    lr: np.ndarray
    values: dict[str, np.ndarray]
    best: np.ndarray
    settings: dict = field(default_factory=dict)

    def final(self, column: str) -> np.ndarray:
        """(N,) value of ``column`` at the end, for the kept restart."""
        v = self.values[column][-1]
        return v[np.arange(len(self.best)), self.best]

    def rows(self):
        T, N, R = self.values["energy"].shape
        for n in range(N):
            for r in range(R):
                for t in range(T):
                    yield {
                        "key": self.keys[n], "restart": r, "iteration": int(self.iteration[t]),
                        "lr": float(self.lr[t]), "best": int(self.best[n] == r),
                        **{c: float(self.values[c][t, n, r]) for c in LOG_COLUMNS},
                    }

    def write_csv(self, path, append: bool = False) -> None:
        path = Path(path)
        new = not (append and path.exists())
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["key", "restart", "iteration", "lr", "best", *LOG_COLUMNS])
            if new:
                w.writeheader()
            for row in self.rows():
                w.writerow(row)


class NonFiniteInversionError(RuntimeError):
    """An inversion ended with non-finite pixels or energy (never written as a result)."""


def check_finite(where: str, keys: Sequence[str], images: torch.Tensor, values: dict[str, np.ndarray]) -> None:
    """Raise :class:`NonFiniteInversionError` naming ``where`` (a shard) and the targets
    whose result ``images`` (N, ...) or final ``values`` (name -> (N,)) are not finite."""
    bad_img = ~torch.isfinite(images.detach().reshape(len(keys), -1)).all(dim=1).cpu().numpy()
    bad = {name: ~np.isfinite(np.asarray(v, dtype=np.float64)) for name, v in values.items()}
    any_bad = bad_img | np.logical_or.reduce(list(bad.values())) if bad else bad_img
    if any_bad.any():
        idx = np.flatnonzero(any_bad)
        what = ", ".join([n for n, b in bad.items() if b.any()] + (["pixels"] if bad_img.any() else []))
        names = ", ".join(repr(str(keys[i])) for i in idx[:5]) + (" ..." if len(idx) > 5 else "")
        raise NonFiniteInversionError(
            f"{where}: inversion not finite ({what}) for {len(idx)} of {len(keys)} target(s): {names}")


def noise_init(seed: int, key: str, restart: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Unit-norm Gaussian noise from a generator seeded by (seed, key, restart) (CPU, float64)."""
    h = hashlib.sha256(f"{int(seed)}/{key}/{int(restart)}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    return z / z.norm()


def descend(x: torch.Tensor, step_eval, segments, *, optimizer: str = "momentum", momentum: float = MOMENTUM,
            sigma: float = 1.0, project=None, log_every: int = 1) -> tuple[list, list[int], list[float]]:
    """Minimise an energy over ``x`` (in place) following the schedule ``segments``.

    ``step_eval(x) -> (grad, row)`` gives the gradient at ``x`` and a log row
    (values of the iterate before the update).  ``segments`` are
    ``(iterations, rate)`` pairs (:func:`make_schedule`).  ``momentum``:
    gradient descent with momentum, reset when the rate changes (the authors'
    ``invert_nn.m``); ``adam``: Adam with the rate in grey levels (divided by
    ``sigma`` into normalised units); ``adagrad``: nnpreimage's momentum with
    AdaGrad-like scaling (module docstring), state reset when the rate changes.  ``project(x)``, if given, runs under
    ``no_grad`` after every update (clamping, projection on a constraint).
    Returns the logged rows (every ``log_every``-th iteration, from the
    first), their 1-based iteration numbers and their rates.
    """
    rows, its, lrs = [], [], []
    it = 0
    if optimizer == "adam":
        opt = torch.optim.Adam([x], lr=1.0)
    else:
        mom = torch.zeros_like(x)
        sq = torch.zeros_like(x) if optimizer == "adagrad" else None
    for n_it, rate in segments:
        if optimizer == "adam":
            for grp in opt.param_groups:
                grp["lr"] = rate / sigma  # grey levels -> normalised units
        else:
            mom.zero_()
            if sq is not None:
                sq.zero_()
        for _ in range(n_it):
            g, row = step_eval(x)
            it += 1
            if (it - 1) % log_every == 0:
                rows.append(row)
                its.append(it)
                lrs.append(rate)
            if optimizer == "adam":
                x.grad = g
                opt.step()
            elif sq is not None:
                with torch.no_grad():
                    sq.mul_(momentum).addcmul_(g, g)
                    mom.mul_(momentum).sub_(g / (sq.sqrt() + 1.0 / rate))
                    x.add_(mom)
            else:
                with torch.no_grad():
                    mom.mul_(momentum).sub_(g, alpha=rate)
                    x.add_(mom)
            if project is not None:
                with torch.no_grad():
                    project(x)
    return rows, its, lrs
