"""Image folders (the ImageNet layout, or any folder tree of images).

Listing: ``train/<wnid>/*.JPEG``, ``val/`` per class or flat with a label
file (:func:`_read_val_labels`); every regular file is listed, whatever its
extension.  The listing is exact (:func:`list_files`): symbolic links are
followed but no directory is listed twice (a symlink loop, a second link),
and unreadable directories and files that are not regular files (FIFOs,
sockets, devices: never opened) are reported as skipped with the reason.
The val label file's problems (labels of missing files, unlabelled images,
unknown labels) are reported too (:func:`imagefolder_listing`).
Decoding: any PIL mode to RGB, the EXIF orientation applied, shorter side
resized to the target size, centre crop, (size, size, 3) uint8, as in the
papers' preprocessing.  Inputs that cannot be used raise :class:`SkipImage`
with the reason, which the shard's manifest records.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline.data.sample import _rng

# Never decode a truncated file as if it were whole: skip it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_KEY_RE = re.compile(r"[^A-Za-z0-9_-]")


def _key_from_path(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return _KEY_RE.sub("_", stem.replace("/", "__"))


def _read_val_labels(path: Path, classes: list[str], unknown: list | None = None) -> dict[str, int | None]:
    """Validation labels from a text file.

    Two formats are accepted: lines ``<filename> <label>`` or
    ``<filename>,<label>[ ...]`` where label is a class directory name (wnid)
    or an integer index (ImageNet's ``LOC_val_solution.csv``: the label is the
    wnid after the name, the boxes after it are ignored); or ImageNet's
    ``ILSVRC2012_validation_ground_truth.txt`` style of one integer per line,
    applied to the sorted file names (1-based labels in that file are taken
    as they are minus one when every label is >= 1).  A label that is
    neither a class name nor an index of the classes (when they are known)
    gives the label None and is appended to ``unknown`` as
    ``{"line", "name", "label"}``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset.imagefolder.val_labels: no such file: {path}")
    unknown = [] if unknown is None else unknown
    lines = [(n, ln.split()) for n, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if lines and lines[0][1][0].lower().startswith("imageid,"):  # LOC_val_solution.csv's header line
        lines = lines[1:]
    cls_index = {c: i for i, c in enumerate(classes)}
    out: dict[str, int | None] = {}

    def index_of(lab: str, n: int, name: str, by_name: bool = True) -> int | None:
        if by_name and lab in cls_index:
            return cls_index[lab]
        try:
            v = int(lab)
        except ValueError:
            v = None
        if v is None or v < 0 or (classes and v >= len(classes)):
            unknown.append({"line": n, "name": name, "label": lab})
            return None
        return v

    if lines and all(len(ln) == 1 for _, ln in lines):
        try:
            vals = [int(ln[0]) for _, ln in lines]
        except ValueError as e:
            raise ValueError(f"{path}: one label per line must be integers ({e})") from None
        off = 1 if min(vals) >= 1 else 0
        return {f"#{i}": index_of(str(v - off), n, f"#{i}", by_name=False)
                for i, ((n, _), v) in enumerate(zip(lines, vals))}
    for n, ln in lines:
        name, _, rest = ln[0].partition(",")
        lab = rest.split(",")[0] if rest else (ln[1].strip(",") if len(ln) > 1 else "")
        out[Path(name).stem] = index_of(lab, n, name)
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def list_files(top: Path) -> tuple[list[str], list[dict]]:
    """The files under ``top`` (paths relative to it, sorted) and what was skipped.

    Symbolic links are followed, but every directory is listed once: real
    directories first, then linked ones not already listed (a link back to
    an ancestor, a second link to a directory: skipped, with the reason).
    Unreadable directories and files that are not regular (FIFO, socket,
    device, a symlink loop) are skipped with the reason and never opened.
    Hidden files (``.*``) are ignored; dangling symlinks are listed (making
    the shard reports them unreadable).  Skipped: ``{"path", "reason"}``.
    """
    files: list[str] = []
    skipped: list[dict] = []
    seen: dict[tuple[int, int], str] = {}
    real, linked = [top], []  # directories to list; linked ones only once no real ones are left
    while real or linked:
        d = real.pop() if real else linked.pop(0)
        try:
            st = os.stat(d)
        except OSError as e:
            skipped.append({"path": str(d), "reason": f"unreadable directory: {e.strerror or e}"})
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            skipped.append({"path": str(d), "reason": f"directory already listed as {seen[ident]} "
                                                      "(a symlink loop or a second link to it)"})
            continue
        seen[ident] = str(d)
        try:
            with os.scandir(d) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append({"path": str(d), "reason": f"unreadable directory: {e.strerror or e}"})
            continue
        subdirs = []
        for e in items:
            path = Path(e.path)
            try:
                st = os.stat(path)
            except OSError as err:
                if e.is_symlink() and err.errno == getattr(os, "ELOOP", 40):
                    skipped.append({"path": str(path), "reason": "a symlink loop"})
                elif not e.name.startswith("."):
                    files.append(str(path.relative_to(top)))  # dangling or unreadable: the shard says why
                continue
            if stat.S_ISDIR(st.st_mode):
                (linked.append(path) if e.is_symlink() else subdirs.append(path))
            elif e.name.startswith("."):
                continue
            elif stat.S_ISREG(st.st_mode):
                files.append(str(path.relative_to(top)))
            else:
                skipped.append({"path": str(path), "reason": f"not a regular file ({_kind(st.st_mode)})"})
        real.extend(reversed(subdirs))
    return sorted(files), skipped


@dataclass
class Listing:
    """What :func:`imagefolder_listing` found: the index entries, what was
    skipped (``{"path", "reason"}``) and the val label file's problems."""

    entries: list[dict]
    skipped: list[dict] = field(default_factory=list)
    labels: dict | None = None


def imagefolder_listing(split: str, cfg: dict, seed: int) -> Listing:
    """Index entries of an image folder tree for ``split``, what the listing
    skipped, and the val label file's problems.

    Classes are the sub-directories of the *training* directory, sorted (the
    ImageNet convention: wnid order gives labels 0..999).  Every regular file
    is listed, whatever its extension: files that turn out not to be images
    are skipped, with a reason, when the shard is made.  The label report
    (``labels``, with a label file) lists ``missing`` (names in the file
    without an image), ``unlabelled`` (images without a label) and
    ``unknown`` (labels that are no class).
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
    files, skipped = list_files(split_dir)
    if not files:
        raise FileNotFoundError(f"dataset.imagefolder: no files under {split_dir}"
                                + (f" ({len(skipped)} skipped: {skipped[0]['reason']})" if skipped else ""))
    labels, report = None, None
    if split == "val" and cfg.get("val_labels"):
        label_file = Path(cfg["val_labels"]).expanduser()
        report = {"file": str(label_file), "missing": [], "unlabelled": [], "unknown": []}
        labels = _read_val_labels(label_file, classes, report["unknown"])
        stems = {Path(rel).stem for rel in files}
        report["missing"] = sorted(k for k in labels if not k.startswith("#") and k not in stems)
        extra = sum(1 for k in labels if k.startswith("#")) - len(files)
        if extra > 0:
            report["missing"].append(f"{extra} labels beyond the {len(files)} images")
    entries = []
    seen: set[str] = set()
    for i, rel in enumerate(files):
        parts = Path(rel).parts
        label = cls_index.get(parts[0]) if len(parts) > 1 else None
        if labels is not None:
            if Path(rel).stem not in labels and f"#{i}" not in labels and label is None:
                report["unlabelled"].append(rel)
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
    return Listing(entries, skipped, report)


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


_ORIENTATION = 0x0112  # the EXIF tag

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
        st = os.stat(path)
    except OSError as e:
        raise SkipImage(f"unreadable: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block forever: never opened
        raise SkipImage(f"not a regular file ({_kind(st.st_mode)})")
    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                # PIL picks the largest reduction that keeps both sides >= the request.
                w0, h0 = im.size
                scale = min(w0, h0) / size
                im.draft(im.mode if im.mode in ("RGB", "L") else None, (int(np.ceil(w0 / scale)), int(np.ceil(h0 / scale))))
            im.load()
            orientation = im.getexif().get(_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(im) if orientation not in (1, None) else im
            orig = upright.size
            rgb, note = _to_rgb(upright)
            if upright is not im:
                note = f"EXIF orientation {orientation} applied" + (f"; {note}" if note else "")
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
