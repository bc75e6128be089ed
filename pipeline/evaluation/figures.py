"""The papers' figures: Figure 7's data (error per AlexNet layer) and every
figure as PNG (matplotlib, Agg backend): image grids, Figure 7's curves, and
the AlexNet studies of Dosovitskiy & Brox 2016 (Figures 3/5, 8, 9, 10, 11).

Every writer takes a ``caption`` (dataset, weights, "untrained" when the
encoder was random; see :func:`pipeline.evaluation.report.caption_text`),
puts it in the PNG as a title and writes it beside the file as
``<file>.caption.txt`` for the Snakemake report.  Files are written
atomically.

A *decoder* here is any callable mapping a feature batch ``(B, D, h, w)``
(torch tensor) to images ``(B, 3, H, W)`` float in [0, 255] (tensor or
array, any device), e.g. the first value of
:func:`pipeline.evaluation.commands.load_decoder_callable`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.evaluation.metrics import normalized_errors, prepare_reconstructions, summarize  # noqa: E402
from pipeline.features.perturbations import interpolate, perturb, top_k_only, without_top_k  # noqa: E402
from pipeline.evaluation.report import weights_in  # noqa: E402
from pipeline.evaluation.testset import TestSet, iter_reconstructions  # noqa: E402
from pipeline.images import image_grid, save_figure  # noqa: E402
from pipeline.vocabulary import ALEXNET_LAYERS, FIGURE7_CURVES  # noqa: E402

FIGURE7_COLUMNS = (
    "curve", "label", "layer", "dataset", "n_images", "error_mean", "error_std",
    "error_ci95_low", "error_ci95_high", "normaliser", "ci_method",
)

Decoder = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]

# --------------------------------------------------------------------------- Figure 7


def layer_order(points, layers: Sequence[str] | None = None) -> list[str]:
    """Figure 7's x axis: ``layers`` (the network's order, e.g. network.layers), else
    AlexNet's; layers of the points outside it follow in the order the points name them."""
    known = list(layers if layers is not None else ALEXNET_LAYERS)
    named = list(dict.fromkeys(layer for _, layer in points))
    return [l for l in known if l in named] + [l for l in named if l not in known]


def figure7(test: TestSet, points: dict[tuple[str, str], list[str]], *, dataset: str, labels: dict | None = None,
            ci: str = "bootstrap", seed: int = 0, norm_max_images: int | None = None,
            layers: Sequence[str] | None = None) -> tuple[list[dict], set]:
    """Figure 7 records, one per (curve, layer) given, in ``layers`` order (:func:`layer_order`),
    and the encoder weights seen in the stores."""
    labels = {**FIGURE7_CURVES, **(labels or {})}
    norm = test.normaliser(norm_max_images, seed)
    curves = list(dict.fromkeys(c for c, _ in points))
    order = layer_order(points, layers)
    records, weights = [], set()
    for c in curves:
        for layer in sorted((l for cc, l in points if cc == c), key=order.index):
            meta, err = [], []
            for idx, recs in iter_reconstructions(test, points[(c, layer)], meta):
                err.append(normalized_errors(test.take(idx), recs, norm)[0])
            for m in meta:
                weights |= weights_in(m.params)
            err = np.concatenate(err)
            s = summarize(err, ci=ci, seed=seed)
            records.append({"curve": c, "label": labels.get(c, c), "layer": layer, "dataset": dataset,
                            "n_images": s.n, "error_mean": s.mean, "error_std": s.std,
                            "error_ci95_low": s.ci_low, "error_ci95_high": s.ci_high,
                            "normaliser": norm, "ci_method": s.method})
    return records, weights


# --------------------------------------------------------------------------- drawing


def _decode(decoder: Decoder, feats) -> np.ndarray:
    with torch.no_grad():
        y = decoder(feats if isinstance(feats, torch.Tensor) else torch.as_tensor(feats))
    y = y.detach().float().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, np.float32))
    if y.dim() != 4 or y.shape[1] not in (1, 3):
        raise ValueError(f"decoder must return (B, 3, H, W) images, got shape {tuple(y.shape)}")
    return y.clamp(0, 255).numpy()


def reconstruction_grid(path, images, columns: Mapping[str, Sequence], *, caption: str = "",
                        input_label: str = "Image") -> None:
    """Dosovitskiy & Brox 2016, Figures 3/5: rows = images, columns = input | each labelled set of reconstructions.

    ``columns[label][i]`` is the reconstruction (3, h, w) of ``images[i]``
    (or None), resized bilinearly to the image size.
    """
    images = np.asarray(images)
    rows = []
    for i, im in enumerate(images):
        row = [im]
        for recs in columns.values():
            r = recs[i]
            row.append(None if r is None else prepare_reconstructions(np.asarray(r)[None], im.shape[:2])[0])
        rows.append(row)
    image_grid(path, rows, col_labels=[input_label, *columns], caption=caption)


def plot_layer_errors(path, records: Sequence[dict], *, caption: str = "", layers: Sequence[str] = ALEXNET_LAYERS,
                      dpi: int = 120) -> None:
    """Dosovitskiy & Brox 2016, Figure 7: mean normalised error per layer, one line per curve, 95% interval bars."""
    if not records:
        raise ValueError("plot_layer_errors: no records")
    order = list(layers) + sorted({r["layer"] for r in records} - set(layers))
    present = [l for l in order if any(r["layer"] == l for r in records)]
    xpos = {l: i for i, l in enumerate(present)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=dpi)
    # each curve its own marker, line style and a small horizontal offset, so that
    # curves lying on top of each other (e.g. identical errors) all stay visible
    curves = list(dict.fromkeys(r["curve"] for r in records))
    markers, styles = "osD^v<>phX*", ("-", "--", "-.", ":")
    for i, curve in enumerate(curves):
        pts = sorted((r for r in records if r["curve"] == curve), key=lambda r: xpos[r["layer"]])
        x = np.array([xpos[r["layer"]] for r in pts]) + 0.06 * (i - (len(curves) - 1) / 2)
        y = np.array([r["error_mean"] for r in pts], dtype=float)
        lo = np.array([r.get("error_ci95_low", np.nan) for r in pts], dtype=float)
        hi = np.array([r.get("error_ci95_high", np.nan) for r in pts], dtype=float)
        yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=yerr, marker=markers[i % len(markers)], ls=styles[i % len(styles)], ms=5,
                    mfc="none" if i % 2 else None, capsize=2, label=pts[0].get("label", curve))
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(present)
    ax.set_xlabel("layer to reconstruct from")
    ax.set_ylabel("average normalised reconstruction error")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, caption)


def figure_topk(path, images, features, decoder: Decoder, *, k: int = 5, labels: Sequence[str] | None = None,
                caption: str = "") -> None:
    """Dosovitskiy & Brox 2016, Figure 8: image | from all fc8 | top-k only | without top-k, one row per image."""
    f = torch.as_tensor(features).float()
    recs = [_decode(decoder, g) for g in (f, top_k_only(f, k), without_top_k(f, k))]
    rows = [[images[i], recs[0][i], recs[1][i], recs[2][i]] for i in range(len(images))]
    image_grid(path, rows, col_labels=["Image", "all", f"top{k}", f"no top{k}"], row_labels=labels, caption=caption)


def figure_perturbed(path, images, rows: Mapping[str, tuple], *, kinds: Sequence[str] = ("none", "binarize", "drop50"),
                     seed: int = 0, caption: str = "") -> None:
    """Dosovitskiy & Brox 2016, Figure 9: per image a block of rows (one per perturbation kind), columns image | layers.

    ``rows[layer] = (features of the images (B, ...), decoder)``.
    """
    layers = list(rows)
    recs = {(l, kind): _decode(dec, perturb(torch.as_tensor(f).float(), kind, seed=seed))
            for l, (f, dec) in rows.items() for kind in kinds}
    grid, labels = [], []
    for i, im in enumerate(images):
        for j, kind in enumerate(kinds):
            grid.append([im if j == 0 else None] + [recs[(l, kind)][i] for l in layers])
            labels.append(kind)
    image_grid(path, grid, col_labels=["Image", *layers], row_labels=labels, caption=caption)


def figure_interpolation(path, rows: Mapping[str, tuple], *, steps: int = 8, caption: str = "",
                         endpoints=None) -> None:
    """Dosovitskiy & Brox 2016, Figure 10: rows = layers, columns = reconstructions of ``(1-t) a + t b``.

    ``rows[layer] = (features of image A, features of image B, decoder)``
    (single items without the batch dimension); ``endpoints`` optionally the
    two input images, shown first and last.
    """
    grid = []
    for fa, fb, dec in rows.values():
        seq = _decode(dec, interpolate(fa, fb, steps))
        row = list(seq)
        if endpoints is not None:
            row = [endpoints[0], *row, endpoints[1]]
        grid.append(row)
    cols = [f"t={t:.2f}" for t in np.linspace(0, 1, steps)]
    if endpoints is not None:
        cols = ["A", *cols, "B"]
    image_grid(path, grid, row_labels=list(rows), col_labels=cols, caption=caption)


def figure_random(path, rows: Mapping[str, tuple], *, count: int = 7, seed: int = 0, caption: str = "") -> None:
    """Dosovitskiy & Brox 2016, Figure 11: rows = layers, ``count`` images from random feature vectors.

    ``rows[layer] = (decoder, fitted sampler)`` (a
    :class:`pipeline.features.perturbations.HistogramSampler` or ``TruncatedGaussianSampler``).
    """
    grid = [list(_decode(dec, sampler.sample(count, seed=seed))) for dec, sampler in rows.values()]
    image_grid(path, grid, row_labels=list(rows), caption=caption)
