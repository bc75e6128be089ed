"""The shipped real photographs: 1000 labelled CC BY 2.0 Flickr photographs.

The "ImageNet-compatible" development set of the NIPS 2017 adversarial
competition (Flickr photographs, each under CC BY 2.0, with an ImageNet
label), shipped inside the package as 160x160 JPEGs in
``pipeline/data/photos/`` with ``attribution.csv`` (author, their profile,
the original page and the licence of every photograph).  Nothing is
downloaded.  ``tools/make_photo_set.py`` built them and documents how.

Labels are ImageNet class indices 0..999 in the standard order (sorted
WordNet ids), the order of the logits of
:mod:`pipeline.features.efficientnet_lite0`.

Splits (:data:`SPLITS`), fixed and by photograph (no photograph in both
training and validation):

``train``  800 photographs for training (includes ``dev``);
``val``    200 held-out photographs: measurements only, no choices;
``dev``    100 of the training photographs on which choices are made;
``fit``    the 700 training photographs outside ``dev`` (fit on ``fit``,
           choose on ``dev``).
"""
from __future__ import annotations

import csv
import functools
import importlib.resources
import io

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "dev", "fit")
ATTRIBUTION = "attribution.csv"


def _photos_dir():
    return importlib.resources.files("pipeline.data") / "photos"


@functools.lru_cache(maxsize=None)
def photo_table() -> tuple[dict, ...]:
    """The rows of ``attribution.csv`` (``label`` and ``dev`` as int), sorted by ImageId."""
    text = (_photos_dir() / ATTRIBUTION).read_text(encoding="utf-8")
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        r["label"], r["dev"] = int(r["label"]), int(r["dev"])
        rows.append(r)
    return tuple(sorted(rows, key=lambda r: r["ImageId"]))


def photo_split(split: str) -> list[tuple[str, int]]:
    """(ImageId, label) of every photograph of ``split``, sorted by ImageId."""
    if split not in SPLITS:
        raise ValueError(f"unknown photo split {split!r}; splits: {', '.join(SPLITS)}")
    keep = {
        "train": lambda r: r["split"] == "train",
        "val": lambda r: r["split"] == "val",
        "dev": lambda r: r["split"] == "train" and r["dev"] == 1,
        "fit": lambda r: r["split"] == "train" and r["dev"] == 0,
    }[split]
    return [(r["ImageId"], r["label"]) for r in photo_table() if keep(r)]


@functools.lru_cache(maxsize=None)
def _files() -> dict[str, str]:
    return {r["ImageId"]: r["file"] for r in photo_table()}


@functools.lru_cache(maxsize=None)
def load_photo(image_id: str) -> np.ndarray:
    """A shipped photograph as (H, W, 3) uint8 RGB (read-only, cached)."""
    try:
        name = _files()[image_id]
    except KeyError:
        raise KeyError(f"unknown photograph {image_id!r}; see {ATTRIBUTION} in pipeline/data/photos") from None
    with (_photos_dir() / name).open("rb") as f:
        im = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
    im = np.ascontiguousarray(im)
    im.flags.writeable = False
    return im
