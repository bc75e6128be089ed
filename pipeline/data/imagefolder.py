"""Image folders (the ImageNet layout, or any folder tree of images).

Listing: ``train/<wnid>/*.JPEG``, ``val/`` per class or flat with a label
file (:func:`_read_val_labels`); every file is listed, whatever its
extension.  Decoding: any PIL mode to RGB, shorter side resized to the
target size, centre crop, (size, size, 3) uint8, as in the papers'
preprocessing.  Inputs that cannot be used raise :class:`SkipImage` with the
reason, which the shard's manifest records.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pipeline.data.sample import _rng

# Never decode a truncated file as if it were whole: skip it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_KEY_RE = re.compile(r"[^A-Za-z0-9_-]")


def _key_from_path(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return _KEY_RE.sub("_", stem.replace("/", "__"))


def _read_val_labels(path: Path, classes: list[str]) -> dict[str, int]:
    """Validation labels from a text file.

    Two formats are accepted: lines ``<filename> <label>`` where label is a
    class directory name (wnid) or an integer index; or ImageNet's
    ``ILSVRC2012_validation_ground_truth.txt`` style of one integer per line,
    applied to the sorted file names (1-based labels in that file are taken
    as they are minus one when every label is >= 1).
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset.imagefolder.val_labels: no such file: {path}")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    cls_index = {c: i for i, c in enumerate(classes)}
    out: dict[str, int] = {}
    if all(len(ln) == 1 for ln in lines):
        vals = [int(ln[0]) for ln in lines]
        off = 1 if min(vals) >= 1 else 0
        return {f"#{i}": v - off for i, v in enumerate(vals)}
    for ln in lines:
        name, lab = ln[0].split(",")[0] if "," in ln[0] else ln[0], ln[-1].split(",")[-1]
        if lab in cls_index:
            out[Path(name).stem] = cls_index[lab]
        else:
            try:
                out[Path(name).stem] = int(lab)
            except ValueError:
                raise ValueError(f"{path}: label {lab!r} is neither a class name nor an integer") from None
    return out


def imagefolder_index(split: str, cfg: dict, seed: int) -> list[dict]:
    """Index entries of an image folder tree for ``split``.

    Classes are the sub-directories of the *training* directory, sorted (the
    ImageNet convention: wnid order gives labels 0..999).  Every regular file
    is listed, whatever its extension: files that turn out not to be images
    are skipped, with a reason, when the shard is made.
    """
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset.imagefolder.root: no such directory: {root}")
    split_dir = root / cfg[f"{split}_dir"]
    if not split_dir.is_dir():
        raise FileNotFoundError(f"dataset.imagefolder.{split}_dir: no such directory: {split_dir}")
    train_dir = root / cfg["train_dir"]
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else []
    cls_index = {c: i for i, c in enumerate(classes)}
    files = sorted(
        str(Path(dp, f).relative_to(split_dir))
        for dp, _, fs in os.walk(split_dir, followlinks=True)
        for f in fs
        if not f.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"dataset.imagefolder: no files under {split_dir}")
    labels = None
    if split == "val" and cfg.get("val_labels"):
        labels = _read_val_labels(Path(cfg["val_labels"]).expanduser(), classes)
    entries = []
    seen: set[str] = set()
    for i, rel in enumerate(files):
        parts = Path(rel).parts
        label = cls_index.get(parts[0]) if len(parts) > 1 else None
        if labels is not None:
            label = labels.get(Path(rel).stem, labels.get(f"#{i}", label))
        key = _key_from_path(rel)
        while key in seen:
            key += "_"
        seen.add(key)
        entries.append({"key": key, "kind": "file", "path": str(split_dir / rel), "label": label})
    max_images = (cfg.get("max_images") or {}).get(split)
    if max_images is not None and max_images < len(entries):
        pick = np.sort(_rng(seed, "subset", split).choice(len(entries), max_images, replace=False))
        entries = [entries[j] for j in pick]
    if split == "train":
        order = _rng(seed, "order", split).permutation(len(entries))
        entries = [entries[j] for j in order]
    return entries


class SkipImage(Exception):
    """An input that cannot be turned into an RGB image; the reason is the message."""


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to RGB; return the image and a note when converted."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB"), f"{mode} (16/32-bit) scaled to 8-bit RGB"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"{mode} with alpha composited on white"
    return im.convert("RGB"), f"{mode} converted to RGB"


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(sig) for sig in _SIGNATURES)


def load_image_file(path: str | Path, size: int, min_side: int = 1, draft: bool = True) -> tuple[np.ndarray, str | None]:
    """Decode, resize the shorter side to ``size``, centre crop: (size, size, 3) uint8.

    Raises :class:`SkipImage` with the reason for inputs that cannot be used.
    With ``draft`` a JPEG is decoded at a reduced scale (1/2, 1/4, 1/8) that
    still leaves its shorter side >= ``size``, which is much faster and gives
    the same result up to resampling.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                # PIL picks the largest reduction that keeps both sides >= the request.
                w0, h0 = im.size
                scale = min(w0, h0) / size
                im.draft(im.mode if im.mode in ("RGB", "L") else None, (int(np.ceil(w0 / scale)), int(np.ceil(h0 / scale))))
            im.load()
            orig = im.size
            rgb, note = _to_rgb(im)
    except SkipImage:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable/corrupt files
        msg = str(e) or type(e).__name__
        if "cannot identify image file" in msg:
            if _has_image_signature(path):
                raise SkipImage("corrupt image: has an image signature but cannot be decoded") from None
            raise SkipImage("not an image file") from None
        if "truncated" in msg:
            raise SkipImage(f"truncated or corrupt image: {msg}") from None
        raise SkipImage(f"unreadable: {msg}") from None
    except Exception as e:  # any decoder failure is a skip, never a crash
        raise SkipImage(f"unreadable: {type(e).__name__}: {e}") from None
    w, h = rgb.size
    if min(w, h) < min_side:
        raise SkipImage(f"too small: {w}x{h}, shorter side below dataset.imagefolder.min_side={min_side}")
    if min(orig) < size:
        note = (note + "; " if note else "") + f"upscaled from {orig[0]}x{orig[1]}"
    return resize_center_crop(rgb, size), note


def resize_center_crop(im: Image.Image, size: int) -> np.ndarray:
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)).convert("RGB"))
