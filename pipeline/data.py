"""Image sources, preprocessing and the shard-making commands.

Two sources (``dataset.source`` in the config):

``sample``
    Built into the package, nothing downloaded.  Photographs bundled with
    scikit-image, split *by photograph* into train and validation (no
    photograph feeds both), cut into deterministic multi-scale crops with
    random flips; plus, for training only, procedurally generated "dead
    leaves" images (occluding discs and rectangles with power-law sizes,
    colours drawn from the training photographs, mild blur and noise), the
    classic model of natural-image statistics.  Twenty photographs are far
    too few to learn a decoder from; the procedural images give it the
    statistics of edges and occlusions, and validation stays on held-out
    photographs only.

``imagefolder``
    The ImageNet layout (``train/<wnid>/*.JPEG``; ``val/`` per class or flat
    with a label file) or any folder tree of images.

The work is split in three commands, each one Snakemake job:
``list-images`` writes a split's index (JSON: one entry per image, in shard
order), ``make-shard`` turns one slice of the index into one WebDataset tar
(plus a per-shard manifest), and ``manifest`` merges the per-shard manifests.
Images are preprocessed as in the papers: shorter side resized to the target
size, centre crop, RGB uint8.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pipeline.io import sha256_file, write_json
from pipeline.shards import Sample, write_shard

# Never decode a truncated file as if it were whole: skip it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# ----------------------------------------------------------------------------
# The built-in sample data
# ----------------------------------------------------------------------------

#: Natural photographs that ship inside scikit-image (name -> loader name).
#: ``stereo_motorcycle`` returns a stereo pair: only the left view is used.
SAMPLE_PHOTOS = {
    "astronaut": "astronaut",
    "brick": "brick",
    "camera": "camera",
    "cell": "cell",
    "chelsea": "chelsea",
    "clock": "clock",
    "coffee": "coffee",
    "coins": "coins",
    "grass": "grass",
    "gravel": "gravel",
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "moon": "moon",
    "motorcycle": "stereo_motorcycle",
    "page": "page",
    "retina": "retina",
    "rocket": "rocket",
    "text": "text",
}

SPLITS = ("train", "val")


@functools.lru_cache(maxsize=None)
def load_sample_photo(name: str) -> np.ndarray:
    """A bundled photograph as (H, W, 3) uint8 RGB (read-only, cached: some take a second to decode)."""
    import skimage.data

    if name not in SAMPLE_PHOTOS:
        raise KeyError(f"unknown sample photograph {name!r}; known: {', '.join(SAMPLE_PHOTOS)}")
    im = getattr(skimage.data, SAMPLE_PHOTOS[name])()
    if isinstance(im, tuple):  # stereo pair
        im = im[0]
    im = np.asarray(im)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    im = np.ascontiguousarray(im[:, :, :3].astype(np.uint8))
    im.flags.writeable = False
    return im


def sample_photo_split(split: str, val_photos: list[str]) -> list[str]:
    unknown = sorted(set(val_photos) - set(SAMPLE_PHOTOS))
    if unknown:
        raise ValueError(
            f"dataset.sample.val_photos: unknown photograph(s) {unknown}; "
            f"allowed: {', '.join(SAMPLE_PHOTOS)}"
        )
    if split == "val":
        return sorted(val_photos)
    return sorted(set(SAMPLE_PHOTOS) - set(val_photos))


def _rng(seed: int, *words) -> np.random.Generator:
    """A generator seeded by the seed and any number of strings/ints."""
    key = [int(seed)]
    for w in words:
        if isinstance(w, str):
            key.extend(w.encode())
            key.append(255)
        else:
            key.append(int(w))
    return np.random.default_rng(key)


def sample_index(split: str, cfg: dict, seed: int) -> list[dict]:
    """Entries of the sample source's index for ``split``.

    Photo crop ``i`` uses photograph ``i mod P`` of the split, a crop side
    drawn from ``crop_scales`` (fractions of the photograph's shorter side), a
    uniformly drawn position and a coin-flip mirror, all from a generator
    seeded by (seed, split, i).  Procedural images are keyed by their index.
    """
    photos = sample_photo_split(split, cfg["val_photos"])
    n_crops = cfg["train_photo_crops"] if split == "train" else cfg["val_crops"]
    entries = []
    sizes = {p: load_sample_photo(p).shape[:2] for p in photos}
    for i in range(n_crops):
        photo = photos[i % len(photos)]
        rng = _rng(seed, "crop", split, i)
        h, w = sizes[photo]
        side = int(round(min(h, w) * float(rng.choice(cfg["crop_scales"]))))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        flip = bool(rng.integers(0, 2))
        entries.append(
            {
                "key": f"{split}_{photo}_{i:06d}",
                "kind": "photo",
                "photo": photo,
                "box": [x, y, side],
                "flip": flip,
                "label": None,
            }
        )
    if split == "train":
        for i in range(cfg["procedural"]):
            entries.append(
                {"key": f"train_deadleaves_{i:07d}", "kind": "deadleaves", "index": i, "label": None}
            )
        # Interleave photo crops and procedural images across shards.
        order = _rng(seed, "order", split).permutation(len(entries))
        entries = [entries[j] for j in order]
    return entries


def _training_photos(photos: tuple[str, ...]) -> list[np.ndarray]:
    return [load_sample_photo(p) for p in photos]


def dead_leaves(size: int, rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    """One dead-leaves image, (size, size, 3) uint8.

    Shapes fall back to front (each new one occludes the old): discs and
    axis-aligned rectangles with radius density ~ r^-3 between size/64 and
    size/2 (scale invariant, as in natural images).  Each is filled either with
    a flat colour drawn from a pixel of a training photograph, weakly shaded,
    or (one in three) with a texture patch cut from a training photograph.
    Rendered at twice the size and downsampled (anti-aliased edges), then
    mildly blurred, plus a little Gaussian noise.
    """
    from scipy.ndimage import gaussian_filter

    s = 2 * size
    rmin, rmax = s / 64.0, s / 2.0

    def pick_colour():
        ph = photos[rng.integers(0, len(photos))]
        return ph[rng.integers(0, ph.shape[0]), rng.integers(0, ph.shape[1])].astype(np.float32)

    img = np.empty((s, s, 3), np.float32)
    img[:] = pick_colour()
    n_shapes = int(rng.integers(60, 160))
    for _ in range(n_shapes):
        u = rng.random()
        # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
        r = 1.0 / np.sqrt(1.0 / rmin**2 - u * (1.0 / rmin**2 - 1.0 / rmax**2))
        cx, cy = rng.uniform(0, s, size=2)
        rect = rng.random() < 0.5
        a, b = (r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)) if rect else (r, r)
        x0, x1 = int(max(0, np.floor(cx - a))), int(min(s, np.ceil(cx + a) + 1))
        y0, y1 = int(max(0, np.floor(cy - b))), int(min(s, np.ceil(cy + b) + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        if rect:
            mask = (np.abs(xx - cx) <= a) & (np.abs(yy - cy) <= b)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        h, w = y1 - y0, x1 - x0
        if rng.random() < 1 / 3:
            ph = photos[rng.integers(0, len(photos))]
            py = int(rng.integers(0, max(1, ph.shape[0] - h)))
            px = int(rng.integers(0, max(1, ph.shape[1] - w)))
            patch = ph[py : py + h, px : px + w].astype(np.float32)
            if patch.shape[:2] != (h, w):
                patch = np.resize(patch, (h, w, 3))
        else:
            gx, gy = rng.normal(0, 20.0 / s, size=2)
            shade = np.clip(1.0 + gx * (xx - cx) + gy * (yy - cy), 0.6, 1.4)
            patch = pick_colour()[None, None, :] * shade[:, :, None]
        region = img[y0:y1, x0:x1]
        region[mask] = patch[mask]
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    img = gaussian_filter(img, sigma=(rng.uniform(0.3, 0.8),) * 2 + (0,))
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_sample_entry(entry: dict, size: int, cfg: dict, seed: int) -> np.ndarray:
    if entry["kind"] == "photo":
        im = load_sample_photo(entry["photo"])
        x, y, side = entry["box"]
        crop = Image.fromarray(im[y : y + side, x : x + side])
        crop = crop.resize((size, size), Image.BICUBIC, reducing_gap=None)
        arr = np.asarray(crop)
        return np.ascontiguousarray(arr[:, ::-1]) if entry["flip"] else arr
    if entry["kind"] == "deadleaves":
        photos = tuple(sample_photo_split("train", cfg["val_photos"]))
        rng = _rng(seed, "deadleaves", entry["index"])
        return dead_leaves(size, rng, _training_photos(photos))
    raise ValueError(f"unknown sample entry kind {entry['kind']!r}")


# ----------------------------------------------------------------------------
# Image folders (ImageNet layout)
# ----------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------
# Index, shards and manifests
# ----------------------------------------------------------------------------


def build_index(dataset_cfg: dict, split: str, seed: int) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = dataset_cfg["source"]
    if source == "sample":
        return sample_index(split, dataset_cfg["sample"], seed)
    if source == "imagefolder":
        return imagefolder_index(split, dataset_cfg["imagefolder"], seed)
    raise ValueError(f"dataset.source must be 'sample' or 'imagefolder', got {source!r}")


def shard_slice(n: int, shard: int, n_shards: int) -> slice:
    """Contiguous, balanced slice of ``n`` items for ``shard`` of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range 0..{n_shards - 1}")
    return slice(shard * n // n_shards, (shard + 1) * n // n_shards)


@dataclass
class ShardResult:
    count: int
    skipped: list[dict]
    converted: dict[str, str]


def make_shard(index: dict, shard: int, n_shards: int, size: int, out_tar, out_manifest, fmt: str = "png") -> ShardResult:
    """Render/decode this shard's slice of the index and write tar + manifest."""
    entries = index["entries"][shard_slice(len(index["entries"]), shard, n_shards)]
    dataset_cfg, seed = index["dataset"], index["seed"]
    skipped: list[dict] = []
    converted: dict[str, str] = {}
    sources: dict[str, str] = {}

    def samples():
        for e in entries:
            if e["kind"] == "file":
                try:
                    img, note = load_image_file(e["path"], size, dataset_cfg["imagefolder"].get("min_side", 1))
                except SkipImage as err:
                    skipped.append({"key": e["key"], "path": e["path"], "reason": str(err)})
                    continue
                if note:
                    converted[e["key"]] = note
                source = e["path"]
            else:
                img = render_sample_entry(e, size, dataset_cfg["sample"], seed)
                source = e.get("photo", "deadleaves") if e["kind"] == "photo" else f"deadleaves:{e['index']}"
            sources[e["key"]] = source
            yield Sample(e["key"], img, e.get("label"), {"source": source})

    count = write_shard(out_tar, samples(), fmt=fmt)
    write_json(
        out_manifest,
        {
            "shard": shard,
            "n_shards": n_shards,
            "image_size": size,
            "count": count,
            "keys": list(sources),
            "sources": sources,
            "skipped": skipped,
            "converted": converted,
            "sha256": sha256_file(out_tar),
        },
    )
    return ShardResult(count, skipped, converted)


def merge_manifests(paths: list[str], out) -> dict:
    shards = [json.loads(Path(p).read_text()) for p in paths]
    merged = {
        "images": sum(s["count"] for s in shards),
        "skipped_count": sum(len(s["skipped"]) for s in shards),
        "converted_count": sum(len(s["converted"]) for s in shards),
        "shards": [
            {"shard": s["shard"], "file": str(Path(p).with_suffix(".tar")), "count": s["count"], "sha256": s["sha256"]}
            for p, s in zip(paths, shards)
        ],
        "sources": {k: v for s in shards for k, v in s["sources"].items()},
        "skipped": [x for s in shards for x in s["skipped"]],
        "converted": {k: v for s in shards for k, v in s["converted"].items()},
    }
    write_json(out, merged)
    return merged


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def configure_list_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="the config's 'dataset' section as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--out", required=True, help="index JSON to write")


def run_list(args) -> int:
    try:
        dataset = json.loads(args.dataset)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--dataset: not valid JSON ({e})")
    entries = build_index(dataset, args.split, args.seed)
    write_json(args.out, {"split": args.split, "seed": args.seed, "dataset": dataset, "entries": entries})
    print(f"{args.split}: {len(entries)} entries -> {args.out}", file=sys.stderr)
    return 0


def configure_shard_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index JSON written by list-images")
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--n-shards", type=int, required=True)
    p.add_argument("--size", type=int, required=True, help="side of the square output images")
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--out", required=True, help="tar shard to write")
    p.add_argument("--manifest", required=True, help="per-shard manifest JSON to write")


def run_shard(args) -> int:
    index = json.loads(Path(args.index).read_text())
    t = time.perf_counter()
    res = make_shard(index, args.shard, args.n_shards, args.size, args.out, args.manifest, args.format)
    print(
        f"shard {args.shard}/{args.n_shards}: wrote {res.count} images, skipped {len(res.skipped)}, "
        f"converted {len(res.converted)} in {time.perf_counter() - t:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    for s in res.skipped:
        print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
    return 0


def configure_manifest_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("manifests", nargs="+", help="per-shard manifests, in shard order")


def run_manifest(args) -> int:
    m = merge_manifests(args.manifests, args.out)
    print(f"{m['images']} images, {m['skipped_count']} skipped -> {args.out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------


def bench_data(argv: list[str]) -> int:
    """Images/s per core for decode + resize + crop + encode on ImageNet-sized JPEGs."""
    import tempfile

    from pipeline.shards import encode_image

    p = argparse.ArgumentParser(prog="python -m pipeline bench data")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, nargs="+", default=[256, 227, 128, 64], help="output sides (256 HOG/SIFT/LBP, 227 AlexNet)")
    p.add_argument("--format", default="jpg", choices=["png", "jpg"])
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        base = [load_sample_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket")]
        for i in range(args.images):
            src = Image.fromarray(base[i % len(base)]).resize((500, 375), Image.BICUBIC)
            if i % 2:
                src = src.transpose(Image.FLIP_LEFT_RIGHT)
            arr = np.asarray(src).astype(np.int16) + rng.integers(-3, 4, (375, 500, 3))
            path = Path(tmp, f"img{i:05d}.JPEG")
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
        print(f"bench data: {args.images} JPEGs 500x375, decode + resize + centre crop + encode {args.format}, one process (one core)")
        for size in args.size:
            rates = {}
            for draft in (False, True):
                t = time.perf_counter()
                for path in paths:
                    img, _ = load_image_file(path, size, draft=draft)
                    encode_image(img, args.format)
                rates[draft] = len(paths) / (time.perf_counter() - t)
            print(
                f"  {size:4d}px: full decode {rates[False]:7.1f} images/s | draft decode {rates[True]:7.1f} images/s"
                f" | ratio draft/full {rates[True] / rates[False]:.2f}x"
            )
    return 0
