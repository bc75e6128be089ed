"""The built-in sample dataset: bundled photographs and dead-leaves images.

Nothing is downloaded.  ``dataset.sample.photos`` says which photographs:

``shipped``
    The 1000 labelled CC BY photographs shipped with the package
    (:mod:`pipeline.data.photoset`), split *by photograph*: training images
    are random crops (scales ``crop_scales``, random flips) of the photographs
    of ``train_split`` (``train``: 800, or ``fit``: the 700 outside ``dev``),
    validation images are the photographs of ``val_split`` (``val``: the 200
    held out, or ``dev``: 100 of the training photographs, on which choices
    are made), each once, whole (its centre square), resized to the shard
    size.  Their entries carry the photograph's ImageNet label.  Extra
    training data, both optional: ``skimage_crops`` crops of the photographs
    bundled with scikit-image and ``procedural`` dead-leaves images, whose
    colours and textures come from the photographs of ``train_split`` only.

``skimage``
    The photographs bundled with scikit-image, split by photograph into
    train and validation (``val_photos``; no photograph feeds both) and cut
    into deterministic multi-scale crops with random flips, for training and
    validation alike; for training, ``procedural`` dead-leaves images whose
    colours and textures come from the training photographs.  No labels.

The dead-leaves images are occluding discs and rectangles with power-law
sizes, colours drawn from the training photographs, mild blur and noise, the
classic model of natural-image statistics: with few photographs they give a
decoder the statistics of edges and occlusions, and validation stays on
held-out photographs only.

Everything random comes from :func:`_rng`, a generator keyed by the seed and
the entry (split, index), so an index and its images are reproducible.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from pipeline.data.photoset import load_photo, photo_split

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


#: ``dataset.sample.photos``: which photographs the sample source cuts.
PHOTO_SOURCES = ("shipped", "skimage")
#: The photo splits (pipeline.data.photoset) that may train and validate.
TRAIN_SPLITS, VAL_SPLITS = ("train", "fit"), ("val", "dev")
#: What a dataset config without the keys added for the shipped photographs
#: means (an index written before them, or a hand-written --dataset): the
#: scikit-image sample as it was.  The same as the schema's defaults
#: (tests/test_data.py checks).
LEGACY_DEFAULTS = {"photos": "skimage", "train_split": "train", "val_split": "val", "skimage_crops": 0}


def sample_settings(cfg: dict) -> dict:
    """``cfg`` (the config's ``dataset.sample``) with :data:`LEGACY_DEFAULTS` filled in, checked.

    Errors name the key.  The keys of the shipped photographs' splits and the
    extra scikit-image crops apply to ``photos: shipped`` only: set with
    ``photos: skimage`` they are refused rather than ignored.
    """
    cfg = {**LEGACY_DEFAULTS, **cfg}
    if cfg["photos"] not in PHOTO_SOURCES:
        raise ValueError(f"dataset.sample.photos: {cfg['photos']!r}; allowed: {', '.join(PHOTO_SOURCES)}")
    for key, allowed in (("train_split", TRAIN_SPLITS), ("val_split", VAL_SPLITS)):
        if cfg[key] not in allowed:
            raise ValueError(f"dataset.sample.{key}: {cfg[key]!r}; allowed: {', '.join(allowed)}")
    if cfg["photos"] == "skimage":
        for key in ("train_split", "val_split", "skimage_crops"):
            if cfg[key] != LEGACY_DEFAULTS[key]:
                raise ValueError(
                    f"dataset.sample.{key}: {cfg[key]!r} applies to dataset.sample.photos 'shipped' only "
                    f"(photos is 'skimage'; leave {key} at {LEGACY_DEFAULTS[key]!r})"
                )
        sample_photo_split("val", cfg["val_photos"])  # names unknown photographs
    return cfg


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
    Shipped photographs: :func:`shipped_index`.
    """
    cfg = sample_settings(cfg)
    if cfg["photos"] == "shipped":
        return shipped_index(split, cfg, seed)
    photos = sample_photo_split(split, cfg["val_photos"])
    n_crops = cfg["train_photo_crops"] if split == "train" else cfg["val_crops"]
    entries = _crop_entries(photos, n_crops, cfg["crop_scales"], seed, split, "crop", f"{split}_",
                            lambda p: load_sample_photo(p).shape[:2])
    if split == "train":
        entries += _deadleaves_entries(cfg["procedural"])
        entries = _interleave(entries, seed, split)
    return entries


def shipped_index(split: str, cfg: dict, seed: int) -> list[dict]:
    """Entries for ``split`` from the shipped photographs (``cfg``: :func:`sample_settings`).

    ``val``: each photograph of ``val_split`` once, in ImageId order, its
    centre square (``box``), unflipped, with its label.  ``train``:
    ``train_photo_crops`` crops of the photographs of ``train_split`` (drawn
    as in :func:`sample_index`, with labels), ``skimage_crops`` crops of the
    scikit-image photographs (all of them: none is validated on here) and
    ``procedural`` dead-leaves images, interleaved in a seeded order.
    """
    if split == "val":
        entries = []
        for pid, label in photo_split(cfg["val_split"]):
            h, w = load_photo(pid).shape[:2]
            side = min(h, w)
            entries.append({"key": f"val_{pid}", "kind": "shipped", "photo": pid,
                            "box": [(w - side) // 2, (h - side) // 2, side], "flip": False, "label": label})
        return entries
    labelled = photo_split(cfg["train_split"])
    labels = dict(labelled)
    entries = _crop_entries([pid for pid, _ in labelled], cfg["train_photo_crops"], cfg["crop_scales"], seed, split,
                            "crop", "train_", lambda p: load_photo(p).shape[:2], kind="shipped", labels=labels)
    entries += _crop_entries(sorted(SAMPLE_PHOTOS), cfg["skimage_crops"], cfg["crop_scales"], seed, split,
                             "skimage-crop", "train_skimage_", lambda p: load_sample_photo(p).shape[:2])
    entries += _deadleaves_entries(cfg["procedural"])
    return _interleave(entries, seed, split)


def _crop_entries(photos, n, scales, seed, split, what, prefix, shape, kind="photo", labels=None) -> list[dict]:
    """``n`` random crops, crop ``i`` of photograph ``i mod len(photos)`` (see :func:`sample_index`)."""
    entries = []
    sizes = {}
    for i in range(n):
        photo = photos[i % len(photos)]
        if photo not in sizes:
            sizes[photo] = shape(photo)
        rng = _rng(seed, what, split, i)
        h, w = sizes[photo]
        side = int(round(min(h, w) * float(rng.choice(scales))))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        flip = bool(rng.integers(0, 2))
        entries.append(
            {
                "key": f"{prefix}{photo}_{i:06d}",
                "kind": kind,
                "photo": photo,
                "box": [x, y, side],
                "flip": flip,
                "label": None if labels is None else labels[photo],
            }
        )
    return entries


def _deadleaves_entries(n: int) -> list[dict]:
    return [{"key": f"train_deadleaves_{i:07d}", "kind": "deadleaves", "index": i, "label": None} for i in range(n)]


def _interleave(entries: list[dict], seed: int, split: str) -> list[dict]:
    """Photo crops and procedural images interleaved across shards (a seeded order)."""
    order = _rng(seed, "order", split).permutation(len(entries))
    return [entries[j] for j in order]


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


def _render_crop(im: np.ndarray, entry: dict, size: int) -> np.ndarray:
    x, y, side = entry["box"]
    crop = Image.fromarray(im[y : y + side, x : x + side])
    crop = crop.resize((size, size), Image.BICUBIC, reducing_gap=None)
    arr = np.asarray(crop)
    return np.ascontiguousarray(arr[:, ::-1]) if entry["flip"] else arr


@functools.lru_cache(maxsize=2)
def _shipped_palette(split: str) -> list[np.ndarray]:
    """The photographs of ``split`` as dead leaves' colours and textures, at twice their size.

    The leaves are drawn at twice the output size (256 px for 128-px
    images); textures are cut at the photograph's resolution, and the shipped
    photographs are 160 px, smaller than the largest leaves: doubled (320 px)
    they fit all but the rarest.
    """
    out = []
    for pid, _ in photo_split(split):
        im = Image.fromarray(load_photo(pid))
        out.append(np.asarray(im.resize((2 * im.width, 2 * im.height), Image.BICUBIC)))
    return out


def render_sample_entry(entry: dict, size: int, cfg: dict, seed: int) -> np.ndarray:
    """The image (size, size, 3) uint8 of an index entry (``cfg``: the config's ``dataset.sample``)."""
    if entry["kind"] == "photo":
        return _render_crop(load_sample_photo(entry["photo"]), entry, size)
    if entry["kind"] == "shipped":
        return _render_crop(load_photo(entry["photo"]), entry, size)
    if entry["kind"] == "deadleaves":
        cfg = sample_settings(cfg)
        rng = _rng(seed, "deadleaves", entry["index"])
        if cfg["photos"] == "shipped":
            return dead_leaves(size, rng, _shipped_palette(cfg["train_split"]))
        photos = tuple(sample_photo_split("train", cfg["val_photos"]))
        return dead_leaves(size, rng, _training_photos(photos))
    raise ValueError(f"unknown sample entry kind {entry['kind']!r}")
