"""Output of the evaluation: caption lines (dataset, AlexNet weights,
"untrained"; their ``.caption.txt`` sidecars for the Snakemake report are
written by :func:`pipeline.io.write_caption_sidecar`), CSV files and
Markdown tables.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from pipeline.io import write_text

# --------------------------------------------------------------------------- captions


def caption_text(dataset: str | None = None, weights: str | None = None, extra: str | None = None) -> str:
    """One caption line: the dataset, the AlexNet weights, "untrained" when they were random."""
    parts = []
    if dataset:
        parts.append(f"Dataset: {dataset}.")
    if weights:
        if str(weights) == "random":
            parts.append("AlexNet weights: random (untrained encoder).")
        else:
            parts.append(f"AlexNet weights: {weights}.")
    if extra:
        parts.append(extra.strip())
    return " ".join(parts)


def weights_in(params) -> set[str]:
    """All values under a ``weights`` key anywhere in a nested params dict (store provenance)."""
    found: set[str] = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "weights" and isinstance(v, (str, int, float)):
                    found.add(str(v))
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(params)
    return found


# --------------------------------------------------------------------------- CSV and Markdown


def write_csv(path, rows: list[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines) + "\n"
