"""Image grids as PNG files, written atomically: the one grid writer of the
package (decoders' reconstruction grids, natural pre-images, the
evaluation's figures), and the figure saving it shares with the
evaluation's plots.

:func:`image_grid` draws either a matplotlib figure (cells of a fixed size,
optional row and column labels, a caption as the title and in a
``<file>.caption.txt`` sidecar for the Snakemake report) or, with ``gap``,
the images at their own pixel size on a white canvas.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.io import atomic_path, write_caption_sidecar  # noqa: E402


def to_uint8_hwc(img) -> np.ndarray:
    """An image (H, W, 3) uint8, (3, H, W) or (H, W, 3) float in [0, 255] -> (H, W, 3) uint8."""
    a = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim != 3:
        raise ValueError(f"expected one image (3, H, W) or (H, W, 3), got shape {a.shape}")
    if a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def side_by_side(*images) -> np.ndarray:
    """Images (see :func:`to_uint8_hwc`) next to each other, top-aligned, white below the shorter ones."""
    arrays = [to_uint8_hwc(im) for im in images]
    h = max(a.shape[0] for a in arrays)
    out = np.full((h, sum(a.shape[1] for a in arrays), 3), 255, np.uint8)
    x = 0
    for a in arrays:
        out[:a.shape[0], x:x + a.shape[1]] = a
        x += a.shape[1]
    return out


def save_figure(fig, path, caption: str) -> None:
    """Write a matplotlib figure as PNG, and as PDF beside it (same name, ``.pdf``),
    with ``caption`` as its title and in ``<path>.caption.txt``.  The caption is
    wrapped to the figure's width and sits above everything else in it."""
    if caption:
        width = max(40, int(fig.get_figwidth() * 15))  # characters of 8 pt text per line
        fig.suptitle("\n".join(textwrap.wrap(caption, width)), fontsize=8, y=1.0, va="bottom")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    with atomic_path(Path(path).with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight")
    plt.close(fig)
    write_caption_sidecar(path, caption)


def _fit(label, cell: float) -> str:
    """A column label wrapped to the width of a ``cell``-inch column (8 pt text)."""
    return "\n".join(textwrap.wrap(str(label), max(6, int(cell * 12)), break_long_words=False)) or str(label)


def image_grid(path, rows: Sequence[Sequence], *, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, caption: str = "", cell: float = 1.2, dpi: int = 100,
               gap: int | None = None, col_gap: int | None = None) -> None:
    """Write a PNG grid: ``rows[i][j]`` an image (see :func:`to_uint8_hwc`) or None (blank cell).

    By default a matplotlib figure of ``cell``-inch cells at ``dpi`` with the
    labels and the caption (see :func:`save_figure`).  With ``gap`` (pixels):
    the images at their own size, top-left in cells of the largest image's
    size, on a white canvas with a margin of ``gap`` at the top and left,
    ``gap`` below each row and ``col_gap`` (default ``gap``) right of each
    column; no labels, caption or sidecar.
    """
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid: no images")
    if gap is not None:
        if row_labels is not None or col_labels is not None or caption:
            raise ValueError("image_grid: a pixel grid (gap) has no labels or caption")
        _pixel_grid(path, rows, n_cols, gap, gap if col_gap is None else col_gap)
        return
    titles = [_fit(c, cell) for c in col_labels or []]
    head = 0.1 + 0.14 * max((t.count("\n") + 1 for t in titles), default=0)  # inches above the first row
    height = cell * n_rows + 0.3 + head
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + (0.8 if row_labels else 0), height),
                             dpi=dpi, squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            im = rows[i][j] if j < len(rows[i]) else None
            if im is not None:
                ax.imshow(to_uint8_hwc(im), interpolation="nearest")
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
            if j == 0 and row_labels is not None and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(wspace=0.04, hspace=0.08, top=1 - head / height, bottom=0.3 / height)
    save_figure(fig, path, caption)


def _pixel_grid(path, rows: Sequence[Sequence], n_cols: int, gap: int, col_gap: int) -> None:
    cells = [[None if im is None else to_uint8_hwc(im) for im in r] for r in rows]
    drawn = [a for r in cells for a in r if a is not None]
    if not drawn:
        raise ValueError("image_grid: no images")
    h = max(a.shape[0] for a in drawn)
    w = max(a.shape[1] for a in drawn)
    canvas = np.full((gap + len(cells) * (h + gap), gap + n_cols * (w + col_gap), 3), 255, np.uint8)
    for i, r in enumerate(cells):
        for j, a in enumerate(r):
            if a is not None:
                y, x = gap + i * (h + gap), gap + j * (w + col_gap)
                canvas[y:y + a.shape[0], x:x + a.shape[1]] = a
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
