"""Build the shipped photo set ``pipeline/data/photos/`` (maintenance; not run by the pipeline).

Source: the 1000 photographs of the NIPS 2017 adversarial competition's
"ImageNet-compatible" development set, as kept in the public repository
yuyang-long/SSA (``dataset/images.csv``, ``dataset/images/<ImageId>.png``):
Flickr photographs, each under CC BY 2.0, 299x299, with an ImageNet label.

What it writes (and the pipeline reads through :mod:`pipeline.data.photoset`):

* ``<ImageId>.jpg``: the whole photograph (nothing cropped; they are square)
  resized so that its shorter side is 160 px (Lanczos), baseline JPEG,
  quality 90, 4:2:0 chroma.
* ``attribution.csv``: ``ImageId, file, label, split, dev, Author,
  AuthorProfileURL, OriginalLandingURL, License``.  ``label`` is the ImageNet
  class index 0..999 in the standard (sorted WordNet id) order, i.e. the
  source's 1001-class ``TrueLabel`` minus 1.
* The split, by photograph: the ImageIds sorted, permuted by
  ``numpy.random.default_rng(SEED)``; the first ``N_VAL`` (200) are the
  held-out validation photographs (``split=val``), the rest training
  (``split=train``, 800).  The first ``N_DEV`` (100) training photographs in
  that permutation are the development photographs (``dev=1``): choices are
  made on them, never on the validation photographs.

Run from the repository root::

    python tools/make_photo_set.py SOURCE [--out pipeline/data/photos]

where SOURCE is either the repository's ``dataset`` folder (holding
``images.csv`` and ``images/``) or a git directory of the repository (read
with ``git show HEAD:dataset/...``).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess

import numpy as np
from PIL import Image

SHORT_SIDE = 160
QUALITY = 90
SEED = 2017
N_VAL = 200
N_DEV = 100
LICENSE = "https://creativecommons.org/licenses/by/2.0/"
COLUMNS = ("ImageId", "file", "label", "split", "dev", "Author", "AuthorProfileURL", "OriginalLandingURL", "License")


def read_source(source: str, name: str) -> bytes:
    """The bytes of ``dataset/<name>`` from a folder or a git directory."""
    if os.path.isfile(os.path.join(source, "images.csv")):
        with open(os.path.join(source, name), "rb") as f:
            return f.read()
    return subprocess.run(["git", "-C", source, "show", f"HEAD:dataset/{name}"],
                          check=True, capture_output=True).stdout


def resize(png: bytes) -> bytes:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = im.size
    scale = SHORT_SIDE / min(w, h)
    im = im.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=QUALITY, subsampling="4:2:0", optimize=True)
    return buf.getvalue()


def split_of(ids: list[str]) -> dict[str, tuple[str, int]]:
    """ImageId -> (split, dev) as described in the module docstring."""
    order = [sorted(ids)[i] for i in np.random.default_rng(SEED).permutation(len(ids))]
    out = {i: ("val", 0) for i in order[:N_VAL]}
    out.update({i: ("train", int(k < N_DEV)) for k, i in enumerate(order[N_VAL:])})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="the SSA repository's dataset folder, or a git directory of the repository")
    ap.add_argument("--out", default=os.path.join("pipeline", "data", "photos"))
    a = ap.parse_args(argv)
    rows = list(csv.DictReader(io.StringIO(read_source(a.source, "images.csv").decode("utf-8"))))
    splits = split_of([r["ImageId"] for r in rows])
    os.makedirs(a.out, exist_ok=True)
    table, total = [], 0
    for r in sorted(rows, key=lambda r: r["ImageId"]):
        if r["License"] != LICENSE:
            raise ValueError(f"{r['ImageId']}: licence {r['License']!r}, expected CC BY 2.0")
        label = int(r["TrueLabel"]) - 1
        if not 0 <= label < 1000:
            raise ValueError(f"{r['ImageId']}: TrueLabel {r['TrueLabel']} is not in 1..1000")
        name = f"{r['ImageId']}.jpg"
        data = resize(read_source(a.source, f"images/{r['ImageId']}.png"))
        with open(os.path.join(a.out, name), "wb") as f:
            f.write(data)
        total += len(data)
        split, dev = splits[r["ImageId"]]
        table.append({"ImageId": r["ImageId"], "file": name, "label": label, "split": split, "dev": dev,
                      "Author": r["Author"], "AuthorProfileURL": r["AuthorProfileURL"],
                      "OriginalLandingURL": r["OriginalLandingURL"], "License": r["License"]})
    with open(os.path.join(a.out, "attribution.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)
    counts = {s: sum(t["split"] == s for t in table) for s in ("train", "val")}
    print(f"{len(table)} photographs ({counts}, dev {sum(t['dev'] for t in table)}), "
          f"{total / 1e6:.2f} MB of JPEG in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
