"""Output of the evaluation: caption lines (dataset, AlexNet weights,
"untrained"; their ``.caption.txt`` sidecars for the Snakemake report are
written by :func:`pipeline.io.write_caption_sidecar`), CSV files, Markdown
tables, and those tables as a standalone HTML page for the Snakemake report
(:func:`markdown_page`).
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
from typing import Sequence

import numpy as np

from pipeline.io import write_text

# --------------------------------------------------------------------------- captions


def caption_text(dataset: str | None = None, weights: str | None = None, extra: str | None = None,
                 network: str | None = None) -> str:
    """One caption line: the dataset, then the network as the configuration names it
    (``network``, e.g. "EfficientNet-Lite0, ImageNet weights") or else the AlexNet
    weights, "untrained" when they were random."""
    parts = []
    if dataset:
        parts.append(f"Dataset: {dataset}.")
    if network:
        parts.append(f"Network: {network.rstrip('.')}.")
    elif weights:
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
    if isinstance(v, (float, np.floating)):  # numpy scalars as plain numbers ("0.48", not "np.float64(0.48)")
        return "" if math.isnan(v) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
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


# --------------------------------------------------------------------------- HTML


_PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
tr:nth-child(even) td { background: #f8f8f8; }
li.yes { color: #1a6b1a; } li.no { color: #b00020; font-weight: bold; }
p.notes { font-size: 0.9em; color: #444; max-width: 60em; }
"""


def _inline(text: str) -> str:
    """Escaped text with ``**bold**`` as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_page(markdown: str, title: str) -> str:
    """A standalone HTML page of the Markdown the table commands write (paragraphs,
    ``**bold**``, one pipe table, bullet lists), for the Snakemake report: the same
    words and numbers, as a table; a check ending in "yes" or "NO" is coloured."""
    parts = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if lines and all(ln.lstrip().startswith("|") for ln in lines):
            head, body = _cells(lines[0]), [_cells(ln) for ln in lines[2:]]
            rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            parts.append("<table>\n" + "\n".join(rows) + "\n</table>")
        elif lines and all(ln.startswith("- ") for ln in lines):
            items = []
            for ln in lines:
                text = ln[2:]
                verdict = "yes" if text.endswith(": yes") else "no" if text.endswith(": NO") else ""
                items.append(f'<li class="{verdict}">{_inline(text)}</li>' if verdict else f"<li>{_inline(text)}</li>")
            parts.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif lines:
            cls = ' class="notes"' if parts and parts[-1].startswith("<table>") else ""
            parts.append(f"<p{cls}>" + _inline(" ".join(ln.strip() for ln in lines)) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_PAGE_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
