"""How the runs went, as figures for the report: the decoders' training loss
against the step (Dosovitskiy & Brox 2016; ``metrics.csv`` of each trained
decoder) and the energy of Mahendran & Vedaldi's 2015 (CVPR) inversions
against the iteration (the per-iteration CSV logs of ``invert-mv``).

Every figure is written by :func:`pipeline.images.save_figure` (PNG, a PDF
beside it, the caption as the title and in a ``.caption.txt`` sidecar).
Curves get their own marker and line style, so that curves lying on top of
each other stay visible.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.images import save_figure  # noqa: E402

MARKERS, STYLES = "osD^v<>phX*", ("-", "--", "-.", ":")


def _style(i: int) -> dict:
    return {"marker": MARKERS[i % len(MARKERS)], "ls": STYLES[i % len(STYLES)], "ms": 4, "markevery": None}


def _log_scale_if_wide(ax, values) -> None:
    """A log y axis when the values are positive and span more than a factor of 20."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) and v.min() > 0 and v.max() / v.min() > 20:
        ax.set_yscale("log")


def _rows(path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None


def _float(row: dict, column: str, path) -> float:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: no number in column {column!r} (row {row})") from None


# --------------------------------------------------------------------------- training


def read_training_metrics(path) -> dict[str, np.ndarray]:
    """``step`` and ``loss`` (arrays) of a decoder's ``metrics.csv`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no metrics rows (was the decoder trained?)")
    return {"step": np.array([_float(r, "step", path) for r in rows]),
            "loss": np.array([_float(r, "loss", path) for r in rows])}


def plot_training_curves(path, runs: Mapping[str, Mapping[str, np.ndarray]], *, caption: str = "",
                         dpi: int = 120) -> None:
    """Training loss against the step, one curve per decoder (log scale when the losses span a wide range)."""
    if not runs:
        raise ValueError("plot_training_curves: no runs")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=dpi)
    for i, (label, m) in enumerate(runs.items()):
        style = _style(i)
        style["markevery"] = max(1, len(m["step"]) // 12)
        ax.plot(m["step"], m["loss"], label=label, mfc="none" if i % 2 else None, **style)
    _log_scale_if_wide(ax, [v for m in runs.values() for v in m["loss"]])
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (mean squared error)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, caption)


# --------------------------------------------------------------------------- M&V energy


def read_inversion_logs(paths: Iterable) -> dict[str, np.ndarray]:
    """Per iteration, over the targets of the logs (the restart kept for each): the
    median, 10th and 90th percentile of the energy, and the median feature loss."""
    by_iteration: dict[int, tuple[list, list]] = {}
    for path in paths:
        for r in _rows(path):
            if r.get("best", "1") != "1":
                continue
            energy, loss = by_iteration.setdefault(int(_float(r, "iteration", path)), ([], []))
            energy.append(_float(r, "energy", path))
            loss.append(_float(r, "feature_loss", path))
    if not by_iteration:
        raise ValueError(f"{', '.join(map(str, paths))}: no iterations logged (were the inversions run with --log?)")
    its = sorted(by_iteration)
    e = [np.asarray(by_iteration[i][0]) for i in its]
    return {
        "iteration": np.array(its, dtype=float),
        "energy_median": np.array([np.median(v) for v in e]),
        "energy_p10": np.array([np.percentile(v, 10) for v in e]),
        "energy_p90": np.array([np.percentile(v, 90) for v in e]),
        "feature_loss_median": np.array([np.median(by_iteration[i][1]) for i in its]),
        "targets": np.array([len(v) for v in e]),
    }


def plot_mv_energy(path, runs: Mapping[str, Mapping[str, np.ndarray]], *, caption: str = "",
                   dpi: int = 120) -> None:
    """Two panels against the iteration: the energy (median over the targets, 10-90% band)
    and the feature loss (median), one curve per inverted representation."""
    if not runs:
        raise ValueError("plot_mv_energy: no runs")
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(9.6, 4.0), dpi=dpi)
    for i, (label, s) in enumerate(runs.items()):
        style = _style(i)
        style["markevery"] = max(1, len(s["iteration"]) // 12)
        n = int(s["targets"].max()) if len(s["targets"]) else 0
        line, = ax_e.plot(s["iteration"], s["energy_median"], label=f"{label} ({n} images)",
                          mfc="none" if i % 2 else None, **style)
        ax_e.fill_between(s["iteration"], s["energy_p10"], s["energy_p90"], color=line.get_color(), alpha=0.12)
        ax_f.plot(s["iteration"], s["feature_loss_median"], label=label, mfc="none" if i % 2 else None, **style)
    panels = ((ax_e, "energy", "median; band: 10-90% of the images",
               [v for s in runs.values() for v in (*s["energy_p10"], *s["energy_p90"])]),
              (ax_f, "feature loss ‖Φ(x) − Φ₀‖² / ‖Φ₀‖²", "median over the images",
               [v for s in runs.values() for v in s["feature_loss_median"]]))
    for ax, title, what, values in panels:
        _log_scale_if_wide(ax, values)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_e.legend(fontsize=7)
    save_figure(fig, path, caption)


# --------------------------------------------------------------------------- the figures


def training_curves_figure(path, runs: Mapping[str, list], caption: str = "") -> str:
    """``evaluate training-curves``: label -> [metrics.csv or its folder] -> the figure at ``path``."""
    data = {label: read_training_metrics(paths[0]) for label, paths in runs.items()}
    caption = f"Training loss of the decoders (Dosovitskiy & Brox 2016). {caption}".strip()
    plot_training_curves(path, data, caption=caption)
    return f"{len(data)} decoders"


def mv_energy_figure(path, runs: Mapping[str, list], caption: str = "") -> str:
    """``evaluate mv-energy``: label -> per-iteration logs of one representation -> the figure at ``path``."""
    data = {label: read_inversion_logs(paths) for label, paths in runs.items()}
    caption = f"Energy of the Mahendran & Vedaldi 2015 inversions. {caption}".strip()
    plot_mv_energy(path, data, caption=caption)
    return f"{len(data)} representations"


#: subcommand -> figure writer
FIGURES = {"training-curves": training_curves_figure, "mv-energy": mv_energy_figure}
